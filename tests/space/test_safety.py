"""User paths stay in the data folder, uploads have size limits, specs stay data, hosts stay local."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from studio.safety import (
    MIB,
    SPEC_UPLOAD_MAX_BYTES,
    check_upload,
    confine,
    expand_path,
    read_text_upload,
    readable_roots,
    resolve_inside,
    studio_path,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_SOURCES = sorted(
    [REPO_ROOT / "app.py", *(REPO_ROOT / "studio").rglob("*.py"), *(REPO_ROOT / "benchmarks").rglob("*.py")]
)


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "studio-home"
    (root / "exports" / "demo-lite").mkdir(parents=True)
    (root / "exports" / "demo-lite" / "config.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("outside")
    return root


def test_paths_inside_the_data_folder_are_accepted(home):
    assert resolve_inside(home, "exports/demo-lite", "export") == (home / "exports" / "demo-lite").resolve()
    assert resolve_inside(home, str(home / "exports"), "export") == (home / "exports").resolve()
    # not created yet (an output folder) is fine; `..` that stays inside is fine too
    assert resolve_inside(home, "exports/new/../newer", "output") == (home / "exports" / "newer").resolve()


@pytest.mark.parametrize(
    "user_path",
    ["../secret.txt", "exports/../../secret.txt", "/etc/passwd", "~/.ssh/id_rsa", "exports/demo-lite/../../../.."],
)
def test_traversal_is_refused_naming_the_field(home, user_path):
    with pytest.raises(ValueError, match=r"^calibration\.source: .* is outside the studio's data folder"):
        resolve_inside(home, user_path, "calibration.source")


def test_symlink_escapes_are_refused_and_inner_links_accepted(home, tmp_path):
    (home / "exports" / "leak").symlink_to(tmp_path / "secret.txt")
    (home / "exports" / "alias").symlink_to(home / "exports" / "demo-lite")
    with pytest.raises(ValueError, match="export: 'exports/leak' is outside"):
        resolve_inside(home, "exports/leak", "export")
    assert resolve_inside(home, "exports/alias", "export") == (home / "exports" / "demo-lite").resolve()


@pytest.mark.parametrize("bad, message", [("", "a path is required"), ("  ", "a path is required"), ("a\x00b", "the path contains a NUL byte"), (None, "a path is required")])
def test_empty_and_malformed_paths(home, bad, message):
    with pytest.raises(ValueError, match=f"^export: {message}"):
        resolve_inside(home, bad, "export")


def test_several_roots_and_tilde(home, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "text.txt").write_text("words")
    roots = [home, data]
    # relative paths start at the first root; absolute ones may lie in any
    assert confine("exports/demo-lite", "model", roots) == (home / "exports" / "demo-lite").resolve()
    assert confine(str(data / "text.txt"), "text", roots) == (data / "text.txt").resolve()
    assert confine("../data/text.txt", "text", roots) == (data / "text.txt").resolve()
    with pytest.raises(ValueError, match=rf"^text: '\.\./secret\.txt' is outside the folders the studio may read \({re.escape(str(home.resolve()))}, {re.escape(str(data.resolve()))}\)$"):
        confine("../secret.txt", "text", roots)
    monkeypatch.setenv("HOME", str(home))  # `~` is the user's home, expanded before the check
    assert confine("~/exports", "export", roots) == (home / "exports").resolve()
    assert expand_path("~/x/../y", "output") == (home / "y").resolve()
    assert expand_path("rel", "output", base=data) == (data / "rel").resolve()


def test_readable_roots_are_studio_home_then_the_bundled_texts(home):
    from studio.calibration import BUNDLED_DATA, OFFLINE_CALIBRATION_TEXT, OFFLINE_EVALUATION_TEXT

    assert readable_roots(home) == (home, BUNDLED_DATA)
    for text in (OFFLINE_CALIBRATION_TEXT, OFFLINE_EVALUATION_TEXT):
        assert confine(text, "calibration.source", readable_roots(home)) == text.resolve()


def test_studio_path_uses_studio_home(home, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(home))
    assert studio_path("exports/demo-lite", "export") == (home / "exports" / "demo-lite").resolve()
    with pytest.raises(ValueError, match="export: '../secret.txt' is outside"):
        studio_path("../secret.txt", "export")


def test_oversized_uploads_are_rejected_with_sizes(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"#" * (SPEC_UPLOAD_MAX_BYTES + 1))
    with pytest.raises(ValueError, match=r"^spec file: the upload 'spec.yaml' is 1,048,577 bytes \(1\.0 MiB\), over the 1 MiB limit$"):
        check_upload(spec, "spec file", SPEC_UPLOAD_MAX_BYTES)
    big = tmp_path / "calib.txt"
    big.write_bytes(b"a" * (3 * MIB))
    with pytest.raises(ValueError, match=r"calibration text: the upload 'calib.txt' is 3,145,728 bytes \(3\.0 MiB\), over the 2 MiB limit"):
        read_text_upload(big, "calibration text", max_bytes=2 * MIB)
    small = tmp_path / "ok.txt"
    small.write_text("héllo")
    assert read_text_upload(small, "calibration text") == "héllo"
    assert check_upload(small, "calibration text", 6) == small  # 6 bytes: the limit is inclusive
    with pytest.raises(ValueError, match=r"^calibration text: the upload 'ok.txt' is 6 bytes, over the 5 bytes limit$"):
        check_upload(small, "calibration text", 5)


def test_non_text_and_missing_uploads(tmp_path):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\xff\xfe\x00\x80")
    with pytest.raises(ValueError, match="calibration text: the upload 'weights.bin' is not UTF-8 text"):
        read_text_upload(binary, "calibration text")
    with pytest.raises(ValueError, match="spec file: the upload 'gone.yaml' is not a file"):
        check_upload(tmp_path / "gone.yaml", "spec file", SPEC_UPLOAD_MAX_BYTES)


# --- the tree: data stays data, servers stay local ------------------------------------------------


def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_trust_remote_code_is_never_turned_on():
    offending = []
    for path in PYTHON_SOURCES:
        for node in ast.walk(_parsed(path)):
            # f(trust_remote_code=<anything but False>) and {"trust_remote_code": <not False>}
            values = [kw.value for kw in getattr(node, "keywords", []) if kw.arg == "trust_remote_code"]
            if isinstance(node, ast.Dict):
                values += [v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant) and k.value == "trust_remote_code"]
            offending += [f"{path.relative_to(REPO_ROOT)}:{v.lineno}" for v in values if not (isinstance(v, ast.Constant) and v.value is False)]
            # a default of True in a signature
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args[len(node.args.args) - len(node.args.defaults):] + node.args.kwonlyargs
                defaults = node.args.defaults + node.args.kw_defaults
                offending += [
                    f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                    for arg, default in zip(args, defaults)
                    if arg.arg == "trust_remote_code" and isinstance(default, ast.Constant) and default.value is True
                ]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "--trust-remote-code" in node.value:
                offending.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert offending == []


def test_yaml_is_only_read_with_the_safe_loader():
    unsafe = []
    for path in PYTHON_SOURCES:
        for node in ast.walk(_parsed(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                if node.func.value.id == "yaml" and node.func.attr in ("load", "unsafe_load", "full_load", "load_all"):
                    unsafe.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert unsafe == []


def test_code_binds_to_loopback_and_only_the_space_dockerfiles_use_all_interfaces():
    wildcard = [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
        for path in PYTHON_SOURCES
        for node in ast.walk(_parsed(path))
        if isinstance(node, ast.Constant) and node.value in ("0.0.0.0", "::")
    ]
    assert wildcard == []
    sys.path.insert(0, str(REPO_ROOT))
    try:
        import app
    finally:
        sys.path.remove(str(REPO_ROOT))
    assert app.parse_args([], environ={}).host == "127.0.0.1"  # loopback unless asked otherwise
    from studio.serve import manager

    assert manager.HOST == "127.0.0.1"
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        text = (REPO_ROOT / dockerfile).read_text()
        assert '"--host", "0.0.0.0", "--port", "7860"' in text, dockerfile
    assert "127.0.0.1:7860" in (REPO_ROOT / "README.md").read_text()
