"""Publishing an export folder to a Hugging Face Hub model repo.

A push is two commits, so that the repo never shows a card describing files it does not hold:

1. every file of the export except the model card (`README.md`); the same commit deletes a card
   left in the repo by an earlier push, since it describes other files;
2. the model card, last.

A Hub commit lands whole or not at all, so after a failure the repo holds either nothing new, or
the new files without a card (never a card without its files). `push_export` raises `PushFailed`
carrying a `PushReport` that says which steps landed and what the repo holds now.

The token is the user's: the OAuth token of the signed-in visitor on a Space; elsewhere the local
login (`HF_TOKEN`, else the token `hf auth login` saved) or a token file (`push --token-file`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CARD_FILE = "README.md"
# Files an export folder always has; a folder without them is not an export.
REQUIRED_FILES = (CARD_FILE, "config.json")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
FILES_COMMIT_MESSAGE = "Upload compressed checkpoint (Gemma Lite Studio)"
CARD_COMMIT_MESSAGE = "Add model card (Gemma Lite Studio)"


@dataclass
class PushReport:
    """What a push did, step by step; complete after a failure too."""

    repo_id: str
    endpoint: str
    private: bool
    repo_url: str | None = None
    repo_ready: bool = False  # the repo exists (created now or before) and we can write to it
    files: list[str] = field(default_factory=list)  # export files meant for the first commit
    files_commit: str | None = None  # commit id once the files landed
    card_commit: str | None = None  # commit id once the card landed
    remote_files: list[str] | None = None  # what the repo holds after a failure (None: unknown)
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.card_commit is not None

    def describe(self) -> str:
        """A few lines for the CLI and the UI."""
        where = self.repo_url or f"{self.endpoint}/{self.repo_id}"
        if self.complete:
            visibility = "private" if self.private else "public"
            return (
                f"pushed {len(self.files)} files and the model card to {where} "
                f"(requested {visibility}; an existing repo keeps its visibility), commit {self.card_commit}"
            )
        lines = [f"push to {where} failed: {self.error}"]
        if not self.repo_ready:
            lines.append("the repo was not created or could not be reached; nothing was uploaded")
        elif self.files_commit is None:
            lines.append("the repo exists; no file of this export was uploaded (the files commit did not land)")
        else:
            lines.append(
                f"uploaded {len(self.files)} files in commit {self.files_commit}; "
                "the model card was NOT uploaded, so the repo has no card (run the push again to add it)"
            )
        if self.remote_files is not None:
            lines.append(f"the repo now holds: {', '.join(self.remote_files) or '(no files)'}")
        else:
            lines.append("what the repo holds now could not be listed")
        return "\n".join(lines)


class PushFailed(RuntimeError):
    """A push stopped midway; `report` says what landed."""

    def __init__(self, report: PushReport):
        super().__init__(report.describe())
        self.report = report


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id) or ".." in repo_id:
        raise ValueError(f"repo_id: expected 'owner/name' (letters, digits, '-', '_', '.'), got {repo_id!r}")
    return repo_id


def check_export_folder(export_dir: str | Path) -> Path:
    """The export folder, resolved; it must hold a model card and a config."""
    folder = Path(export_dir).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"export: no such folder: {folder}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"export: {folder} is not an export folder (missing {', '.join(missing)})")
    return folder


def export_files(folder: Path) -> list[str]:
    """Relative paths the files commit uploads: what `upload_folder` picks, less the card."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    present = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return list(filter_repo_objects(present, ignore_patterns=[CARD_FILE, *DEFAULT_IGNORE_PATTERNS]))


def read_token_file(path: str | Path) -> str:
    """The token held in a file (surrounding whitespace dropped), for `push --token-file`."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--token-file: no such file: {file}") from None
    except (IsADirectoryError, UnicodeDecodeError) as err:
        raise ValueError(f"--token-file: {file} is not a text file holding a token ({type(err).__name__})") from None
    token = text.strip()
    if not token or len(token.split()) != 1:
        raise ValueError(f"--token-file: {file} must hold exactly one token (got {len(token.split())} words)")
    return token


def resolve_token(token: str | None) -> str:
    """The given token, else the local login (`HF_TOKEN`, then the token saved by `hf auth login`)."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise ValueError("token: no Hugging Face token: set HF_TOKEN, run `hf auth login` or pass --token-file")
    return found


def push_export(
    export_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = True,
    endpoint: str | None = None,
) -> PushReport:
    """Create (or reuse) the model repo `repo_id` and upload the export, card last.

    Returns the report of a complete push; raises `PushFailed` (with the report) when a step fails,
    and ValueError / FileNotFoundError for bad input before anything is sent.
    """
    from huggingface_hub import HfApi, constants

    folder = check_export_folder(export_dir)
    check_repo_id(repo_id)
    token = resolve_token(token)
    if constants.is_offline_mode():
        raise ValueError("endpoint: HF_HUB_OFFLINE is set; publishing needs the Hub (unset it to push)")

    api = HfApi(endpoint=endpoint, token=token)
    report = PushReport(repo_id=repo_id, endpoint=api.endpoint, private=private, files=export_files(folder))
    try:
        report.repo_url = str(api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True))
        report.repo_ready = True
        files_commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=folder,
            commit_message=FILES_COMMIT_MESSAGE,
            ignore_patterns=[CARD_FILE],
            delete_patterns=[CARD_FILE],  # an older push's card describes other files
        )
        report.files_commit = files_commit.oid
        card_commit = api.upload_file(
            repo_id=repo_id,
            repo_type="model",
            path_or_fileobj=str(folder / CARD_FILE),
            path_in_repo=CARD_FILE,
            commit_message=CARD_COMMIT_MESSAGE,
        )
        report.card_commit = card_commit.oid
    except Exception as err:  # any failure: say what landed, then raise with the report
        report.error = f"{type(err).__name__}: {_first_line(err)}"
        if report.repo_ready:
            report.remote_files = _remote_files(api, repo_id)
        raise PushFailed(report) from err
    return report


def _remote_files(api, repo_id: str) -> list[str] | None:
    try:
        return sorted(api.list_repo_files(repo_id, repo_type="model"))
    except Exception:
        return None  # the Hub is unreachable too; the report says so


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"
