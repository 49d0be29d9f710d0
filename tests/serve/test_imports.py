"""`studio.serve` is library code: none of its modules imports Gradio or the UI, directly or
through another studio module (the UI imports the library, never the other way round)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import studio.serve

SERVE = Path(studio.serve.__file__).parent
FORBIDDEN = ("gradio", "studio.ui")


def imported_names(source: Path) -> set[str]:
    """Every module an `import` or `from ... import` statement in the file names (relative imports
    resolved against studio.serve)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(["studio", "serve"][: 3 - node.level] + ([module] if module else []))
            names.add(module)
    return names


def forbidden(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in FORBIDDEN)


def test_the_walk_finds_forbidden_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import gradio as gr\nfrom studio.ui.context import Shared\nfrom studio.serve import chat\n")
    assert sorted(filter(forbidden, imported_names(sample))) == ["gradio", "studio.ui.context"]


def test_no_serve_module_imports_gradio_or_the_ui():
    modules = sorted(SERVE.glob("*.py"))
    assert len(modules) >= 10  # the walk sees the package
    found = {path.name: sorted(filter(forbidden, imported_names(path))) for path in modules}
    assert {name: imports for name, imports in found.items() if imports} == {}


def test_importing_every_serve_module_loads_neither_gradio_nor_the_ui():
    modules = [f"studio.serve.{path.stem}" for path in sorted(SERVE.glob("*.py")) if path.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if any(m == r or m.startswith(r + '.') for r in {FORBIDDEN!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=SERVE.parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
