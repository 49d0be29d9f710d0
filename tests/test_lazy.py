"""The packages with lazy name tables: the CLI, the queue and the spec parser import without torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from studio.lazy import lazy_exports

REPO = Path(__file__).resolve().parents[1]


def test_a_name_loads_its_module_on_first_use():
    getattr_, names = lazy_exports("pkg", {"dumps": "json", "sqrt": "math"})
    import json
    import math

    assert names == ["dumps", "sqrt"]
    assert getattr_("dumps") is json.dumps and getattr_("sqrt") is math.sqrt
    with pytest.raises(AttributeError, match="module 'pkg' has no attribute 'loads'"):
        getattr_("loads")


def test_spec_parsing_and_the_cli_import_without_torch(tmp_path):
    # A job spec with every section is parsed (and the CLI's parser built) without importing torch.
    code = (
        "import sys\n"
        "import studio, studio.flap, studio.eval, studio.cli, studio.jobs.client\n"
        "from studio.jobs.spec import parse_spec\n"
        "spec = parse_spec({'model': 'google/gemma-4-E4B-it', 'output': 'x', 'plan': {'ratio': 0.2},\n"
        "                   'flap': {'compensation': 'refit'}, 'quantize': {'bits': 4},\n"
        "                   'evaluate': {'seqlen': 128}})\n"
        "assert spec.flap.compensation == 'refit' and spec.evaluate.seqlen == 128\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
