"""Publishing an export folder through huggingface_hub, against a stand-in Hub on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import constants

from studio.cli import main
from studio.export.hub import PushFailed, push_export
from tests.space.fake_hub import FakeHub

REPO = "alice/demo-lite"
CARD = "---\nlicense: apache-2.0\nbase_model: google/gemma-4-E4B-it\n---\n# demo-lite\nA pruned model.\n"
WEIGHTS = bytes(range(256)) * 8  # 2 KiB stands in for the shards


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """tests/conftest.py turns hub access off; these tests only talk to the loopback stand-in."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def export_dir(tmp_path):
    folder = tmp_path / "exports" / "demo-lite"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(CARD)
    (folder / "config.json").write_text(json.dumps({"architectures": ["Gemma4FlapForConditionalGeneration"]}))
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    (folder / "flap_plugin").mkdir()
    (folder / "flap_plugin" / "__init__.py").write_text("# plugin\n")
    return folder


@pytest.fixture
def hub():
    with FakeHub(token="hf_alice") as fake:
        yield fake


EXPORT_FILES = {"config.json", "flap_plugin/__init__.py", "model.safetensors"}


def test_push_creates_a_private_repo_and_uploads_the_card_last(export_dir, hub):
    report = push_export(export_dir, REPO, token="hf_alice", endpoint=hub.url)

    assert report.complete and report.repo_ready
    assert report.repo_url == f"{hub.url}/{REPO}"
    repo = hub.state.repos[REPO]
    assert repo.private is True
    assert set(repo.files) == EXPORT_FILES | {"README.md", ".gitattributes"}
    assert repo.files["model.safetensors"] == WEIGHTS
    assert repo.files["README.md"].decode() == CARD
    # Two commits: everything but the card, then the card alone.
    assert [c["added"] for c in repo.commits] == [sorted(EXPORT_FILES), ["README.md"]]
    assert [c["oid"] for c in repo.commits] == [report.files_commit, report.card_commit]
    assert hub.state.calls() == [
        "POST /api/repos/create",
        f"GET /api/models/{REPO}/tree/main",  # looking for an older card to delete
        f"POST /api/models/{REPO}/preupload/main",
        f"POST /api/models/{REPO}/commit/main",
        "POST /api/validate-yaml",  # the card's metadata, checked before its upload
        f"POST /api/models/{REPO}/preupload/main",
        f"POST /api/models/{REPO}/commit/main",
    ]
    assert "pushed 3 files and the model card" in report.describe()


def test_push_to_an_existing_repo_removes_the_old_card_with_the_new_files(export_dir, hub):
    push_export(export_dir, REPO, token="hf_alice", endpoint=hub.url, private=False)
    hub.state.repos[REPO].files["notes.txt"] = b"kept"
    (export_dir / "README.md").write_text(CARD.replace("A pruned model.", "Second version."))

    push_export(export_dir, REPO, token="hf_alice", endpoint=hub.url, private=True)

    repo = hub.state.repos[REPO]
    assert repo.private is False  # an existing repo keeps its visibility
    second_files_commit = repo.commits[2]
    assert second_files_commit["deleted"] == ["README.md"]
    assert "README.md" not in second_files_commit["added"]
    assert repo.files["README.md"].decode().endswith("Second version.\n")
    assert repo.files["notes.txt"] == b"kept"


def test_failed_card_commit_leaves_files_without_a_card_and_says_so(export_dir, hub):
    hub.state.fail_commit_adding = "README.md"

    with pytest.raises(PushFailed) as failed:
        push_export(export_dir, REPO, token="hf_alice", endpoint=hub.url)

    report = failed.value.report
    assert report.repo_ready and report.files_commit is not None and report.card_commit is None
    assert "403" in report.error
    assert report.remote_files == sorted(EXPORT_FILES | {".gitattributes"})
    assert "README.md" not in hub.state.repos[REPO].files
    text = report.describe()
    assert f"uploaded 3 files in commit {report.files_commit}" in text
    assert "the model card was NOT uploaded" in text


def test_failed_files_commit_uploads_nothing_and_lists_the_repo(export_dir, hub):
    hub.state.fail_commit_adding = "config.json"

    with pytest.raises(PushFailed) as failed:
        push_export(export_dir, REPO, token="hf_alice", endpoint=hub.url)

    report = failed.value.report
    assert report.repo_ready and report.files_commit is None and report.card_commit is None
    assert report.remote_files == [".gitattributes"]
    assert hub.state.repos[REPO].commits == []
    assert "no file of this export was uploaded" in report.describe()
    # the card's commit was never attempted
    assert "POST /api/validate-yaml" not in hub.state.calls()


def test_rejected_token_reports_that_nothing_was_created(export_dir, hub):
    with pytest.raises(PushFailed) as failed:
        push_export(export_dir, REPO, token="hf_mallory", endpoint=hub.url)

    report = failed.value.report
    assert not report.repo_ready and report.remote_files is None
    assert "401" in report.error
    assert hub.state.repos == {}
    assert "nothing was uploaded" in report.describe()


def test_bad_inputs_fail_before_any_request(export_dir, hub, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="repo_id: expected 'owner/name'"):
        push_export(export_dir, "../etc", token="hf_alice", endpoint=hub.url)
    with pytest.raises(ValueError, match=r"export: .* is not an export folder \(missing README.md\)"):
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "config.json").write_text("{}")
        push_export(tmp_path / "half", REPO, token="hf_alice", endpoint=hub.url)
    with pytest.raises(FileNotFoundError, match="export: no such folder"):
        push_export(tmp_path / "missing", REPO, token="hf_alice", endpoint=hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ValueError, match="token: no Hugging Face token"):
        push_export(export_dir, REPO, endpoint=hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        push_export(export_dir, REPO, token="hf_alice", endpoint=hub.url)
    assert hub.state.requests == []


def test_cli_push(export_dir, hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_alice")  # the local login, as `hf auth login` would leave it
    assert main(["push", str(export_dir), REPO, "--public", "--endpoint", hub.url]) == 0
    assert hub.state.repos[REPO].private is False
    assert f"to {hub.url}/{REPO}" in capsys.readouterr().out

    hub.state.fail_commit_adding = "README.md"
    assert main(["push", str(export_dir), "alice/other", "--token", "hf_alice", "--endpoint", hub.url]) == 1
    err = capsys.readouterr().err
    assert "the model card was NOT uploaded" in err and "the repo now holds: .gitattributes, config.json" in err

    assert main(["push", str(export_dir), "not-a-repo-id", "--endpoint", hub.url]) == 2
    assert "error: repo_id: expected 'owner/name'" in capsys.readouterr().err


def test_push_a_real_export_of_the_demo_model(demo_model_dir, tmp_path, hub):
    from studio.export import export_checkpoint

    export = export_checkpoint(demo_model_dir, tmp_path / "exports" / "demo-export", dtype="float32").out_dir
    local = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())

    report = push_export(export, "alice/demo-export", token="hf_alice", endpoint=hub.url)

    repo = hub.state.repos["alice/demo-export"]
    assert sorted(set(repo.files) - {".gitattributes"}) == local
    assert all(repo.files[name] == (export / name).read_bytes() for name in local)
    assert repo.commits[-1]["added"] == ["README.md"] and "README.md" not in repo.commits[0]["added"]
    assert report.files == [name for name in local if name != "README.md"]


@pytest.fixture
def no_local_login(monkeypatch, tmp_path):
    """No HF_TOKEN and an empty login cache: the token must come from where the test puts it."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    return Path(constants.HF_TOKEN_PATH)


def test_cli_push_reads_the_login_cache(export_dir, hub, capsys, no_local_login):
    no_local_login.parent.mkdir(parents=True)
    no_local_login.write_text("hf_alice")  # what `hf auth login` leaves at HF_TOKEN_PATH
    assert main(["push", str(export_dir), REPO, "--endpoint", hub.url]) == 0
    captured = capsys.readouterr()
    assert f"to {hub.url}/{REPO}" in captured.out
    assert "warning" not in captured.err
    assert hub.state.repos[REPO].files["README.md"] == CARD.encode()


def test_cli_push_reads_a_token_file(export_dir, hub, capsys, no_local_login, tmp_path):
    token_file = tmp_path / "token.txt"
    token_file.write_text("  hf_alice\n")
    assert main(["push", str(export_dir), REPO, "--token-file", str(token_file), "--endpoint", hub.url]) == 0
    assert "warning" not in capsys.readouterr().err
    assert set(hub.state.repos[REPO].files) == {".gitattributes", "README.md", *EXPORT_FILES}

    # The file's token is the one sent: another user's token is refused by the Hub (exit 1).
    token_file.write_text("hf_mallory\n")
    assert main(["push", str(export_dir), "alice/other", "--token-file", str(token_file), "--endpoint", hub.url]) == 1
    assert "alice/other" not in hub.state.repos


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"error: --token-file: no such file: .*missing\.txt"),
        ("", r"error: --token-file: .*token\.txt must hold exactly one token \(got 0 words\)"),
        ("hf_alice hf_bob\n", r"error: --token-file: .*token\.txt must hold exactly one token \(got 2 words\)"),
        (b"\xff\xfe\x00", r"error: --token-file: .*token\.txt is not a text file holding a token \(UnicodeDecodeError\)"),
    ],
)
def test_cli_push_bad_token_files_exit_2_before_any_request(export_dir, hub, capsys, no_local_login, tmp_path, content, message):
    path = tmp_path / ("missing.txt" if content is None else "token.txt")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert main(["push", str(export_dir), REPO, "--token-file", str(path), "--endpoint", hub.url]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert hub.state.requests == []


def test_cli_push_token_on_the_command_line_works_but_warns(export_dir, hub, capsys, no_local_login):
    assert main(["push", str(export_dir), REPO, "--token", "hf_alice", "--endpoint", hub.url]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: --token puts the token on the command line")
    assert "other users of this machine" in captured.err and "--token-file" in captured.err
    assert REPO in hub.state.repos


def test_cli_push_takes_one_token_source(export_dir, hub, capsys, tmp_path):
    (tmp_path / "token.txt").write_text("hf_alice")
    with pytest.raises(SystemExit) as exited:
        main(["push", str(export_dir), REPO, "--token", "hf_alice", "--token-file", str(tmp_path / "token.txt")])
    assert exited.value.code == 2
    assert "argument --token-file: not allowed with argument --token" in capsys.readouterr().err
    assert hub.state.requests == []
