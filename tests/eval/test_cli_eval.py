"""`python -m studio eval` prints the perplexity as one JSON object."""

from __future__ import annotations

import json

from studio.cli import main
from tests.conftest import TEST_TEXT


def test_eval_prints_json(demo_model_dir, capsys):
    code = main(
        ["eval", "--model", str(demo_model_dir), "--text", str(TEST_TEXT), "--seqlen", "64", "--stride", "32",
         "--max-tokens", "300", "--batch-size", "4"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"model", "text", "ppl", "nll", "tokens", "seqlen", "stride"}
    # The demo tokenizer adds BOS (as Gemma's): every window is BOS + 63 text tokens, every text token scored.
    assert (result["tokens"], result["seqlen"], result["stride"]) == (300, 64, 32)
    # A random-weight model over a 2048-token vocabulary: roughly uniform guesses, far from 1.
    assert 100 < result["ppl"] < 100_000


def test_eval_rejects_a_stride_above_seqlen(demo_model_dir, capsys):
    code = main(["eval", "--model", str(demo_model_dir), "--text", str(TEST_TEXT), "--seqlen", "64", "--stride", "65"])
    assert code == 2
    assert "stride: must be between 1 and seqlen (64), got 65" in capsys.readouterr().err


def test_eval_reports_a_missing_model_folder(tmp_path, capsys):
    code = main(["eval", "--model", str(tmp_path / "absent"), "--text", str(TEST_TEXT)])
    assert code == 2
    assert "model: no config.json" in capsys.readouterr().err


def test_eval_runs_a_gptq_export(demo_model_dir, tmp_path, capsys):
    """An INT4 export loads through GPTQModel's kernel and scores close to its float source."""
    from transformers import AutoTokenizer

    from studio.calibration import CalibrationSpec, build_calibration_ids
    from studio.gptq.quantize import QuantizeSettings, quantize_checkpoint
    from tests.conftest import CALIBRATION_TEXT

    spec = CalibrationSpec(source=str(CALIBRATION_TEXT), samples=8, seqlen=64, seed=0)
    ids = build_calibration_ids(AutoTokenizer.from_pretrained(demo_model_dir), spec)
    quantize_checkpoint(demo_model_dir, tmp_path / "int4", ids, QuantizeSettings(calibration=spec), device="cpu")
    capsys.readouterr()  # GPTQModel's own output while quantizing
    args = ["--text", str(TEST_TEXT), "--seqlen", "64", "--max-tokens", "512", "--batch-size", "8"]

    assert main(["eval", "--model", str(tmp_path / "int4"), *args]) == 0
    int4 = json.loads(capsys.readouterr().out)
    assert main(["eval", "--model", str(demo_model_dir), *args]) == 0
    base = json.loads(capsys.readouterr().out)

    assert int4["tokens"] == base["tokens"] == 512  # BOS-led windows: every one of the 512 text tokens is scored
    assert int4["ppl"] != base["ppl"]
    assert abs(int4["nll"] - base["nll"]) < 0.05  # 4-bit weights of a random model: a small shift
