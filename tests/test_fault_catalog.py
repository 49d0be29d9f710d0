"""A few rows of benchmarks/fault_catalog.py, so the catalog keeps running and its faults stay handled.

The whole catalog (a launched app, a vLLM server, a killed worker, a mounted tmpfs) runs as a
benchmark; these rows are the quick ones, through the same CLI subprocesses and checks.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def catalog():
    spec = importlib.util.spec_from_file_location("fault_catalog", REPO / "benchmarks" / "fault_catalog.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_catalog"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fault_catalog", None)


@pytest.fixture
def workspace(catalog, demo_model_dir, tmp_path):
    ws = catalog.Workspace(tmp_path / "catalog")
    ws.__dict__["demo"] = demo_model_dir  # the session's demo model stands in for the catalog's build
    return ws


def fault(catalog, name: str):
    (found,) = [f for f in catalog.FAULTS if f.name == name]
    return found


# (fault, the error line expected, checked by hand against the input the catalog writes)
ROWS = [
    ("preset: YAML syntax error",
     "error: plan: syntax.yaml is not valid YAML (line 3, column 7): expected ',' or '}', but got ':'"),
    ("preset: unsafe YAML tag",
     "error: plan: unsafe.yaml is not valid YAML (line 1, column 7): could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("preset: width not a multiple", "error: layer 0: intermediate_size 300 is not a multiple of 128"),
    ("job spec: unknown field",
     "error: colour: unknown field (allowed: model, output, dtype, plan, flap, calibration, quantize, export, evaluate)"),
    ("config of another architecture",
     "error: --model: {inputs}/llama/config.json describes a 'llama' model (LlamaForCausalLM); the studio works on "
     "Gemma 4 (model_type 'gemma4' or 'gemma4_text')"),
    ("truncated safetensors shard",
     "error: --model: {inputs}/truncated-shard/model.safetensors is not a readable safetensors file (incomplete "
     "metadata, file not fully covered)"),
]


@pytest.mark.parametrize("name, expected", ROWS, ids=[row[0] for row in ROWS])
def test_catalog_rows_are_handled(catalog, workspace, name, expected):
    outcome, handled = catalog.run_fault(workspace, fault(catalog, name))
    assert outcome.error == expected.replace("{inputs}", str(workspace.inputs))
    assert outcome.status == "2" and outcome.clean and outcome.left == []
    assert handled
    assert not list(workspace.root.rglob("PWNED"))  # the unsafe tag's os.system never ran


def test_the_judgement_counts_tracebacks_leftovers_and_unnamed_errors(catalog):
    named = fault(catalog, "preset: unknown key")  # must name 'colour'
    good = catalog.Outcome("2", "error: preset: unknown key 'colour'")
    assert named.handled(good)
    assert not named.handled(catalog.Outcome("1", "error: preset: unknown key 'colour'", clean=False))
    assert not named.handled(catalog.Outcome("2", "error: preset: unknown key 'colour'", left=["work/x.partial"]))
    assert not named.handled(catalog.Outcome("2", "error: something went wrong"))
    assert not named.handled(catalog.Outcome("0", "colour", failed=False))


def test_main_prints_rows_and_the_count(catalog, demo_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(catalog.Workspace, "demo", property(lambda _self: demo_model_dir))
    assert catalog.main(["--only", "preset: width zero", "--no-app"]) == 0
    header, row, count = capsys.readouterr().out.strip().splitlines()
    assert header.startswith("fault ") and count == "1/1 faults handled"
    assert [cell.strip() for cell in row.split(" | ")] == [
        "preset: width zero", "cli", "2", "error: layer 0: intermediate_size must be positive, got 0", "-", "handled",
    ]


def test_the_catalog_covers_every_fault_of_the_issue(catalog):
    names = {f.name for f in catalog.FAULTS if f.via == "cli"}
    for required in ("preset: YAML syntax error", "preset: unsafe YAML tag", "preset: unknown key",
                     "preset: wrong layer count", "preset: width not a multiple", "preset: width above the original",
                     "preset: width zero", "ratio >= 1", "model path does not exist", "model folder without config.json",
                     "config of another architecture", "hub id while offline", "calibration: too little text",
                     "calibration: empty file", "calibration: binary file", "truncated safetensors shard",
                     "safetensors header whose sizes lie", "pruned: intermediate_sizes disagree with tensors",
                     "job spec: unknown field", "job spec: wrong type", "export served without the plugin",
                     "full disk during export", "worker killed mid-stage", "job spec: path-traversal output name"):
        assert required in names
    app_names = {f.name for f in catalog.FAULTS if f.via == "app"}
    assert {"upload over the preset limit", "upload over the app's cap", "preset name with a path traversal"} <= app_names
