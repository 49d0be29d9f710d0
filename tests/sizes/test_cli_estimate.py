"""`python -m studio estimate` on the published E4B config with the card's preset."""

from __future__ import annotations

import json

from studio.cli import main
from tests.conftest import E4B_CONFIG


def test_estimate_command_compares_with_the_card(capsys):
    args = ["estimate", "--config", str(E4B_CONFIG), "--plan", "gemma4-lite-round2", "--base-bytes", "15.9e9", "--compare-card"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vision + audio towers (combined)" in out and "15.900" in out
    assert "the plan's widths remove 10.7% of FFN channels" in out and "the card overstates it" in out
    assert "GPTQ storage is 26.0% of the same weights in bfloat16" in out


def test_estimate_command_json_and_errors(capsys):
    assert main(["estimate", "--config", str(E4B_CONFIG), "--no-quant", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"] is None and data["base"] == data["estimate"]
    assert data["base"]["params"] == 7_463_013_418
    assert main(["estimate", "--config", str(E4B_CONFIG), "--base-bytes", "1e9"]) == 2
    assert "--base-bytes: 1e+09 is below the text model alone" in capsys.readouterr().err
