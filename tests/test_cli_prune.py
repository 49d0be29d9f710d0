import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from studio.cli import main
from studio.flap.pipeline import load_statistics
from studio.modeling import load_model

ROOT = Path(__file__).resolve().parent.parent


def _prune_args(model, out, calibration_text, *plan):
    return ["prune", "--model", str(model), *plan, "--calib", str(calibration_text),
            "--samples", "4", "--seqlen", "64", "--out", str(out)]


def test_prune_with_preset_writes_model_stats_and_summary(demo_model_dir, calibration_text, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(_prune_args(demo_model_dir, out, calibration_text, "--plan", "uniform-20")) == 0
    summary = json.loads((out / "prune_summary.json").read_text())
    assert [layer["kept_width"] for layer in summary["layers"]] == [384] * 8
    assert [layer["original_width"] for layer in summary["layers"]] == [512] * 8
    layer0 = summary["layers"][0]
    assert layer0["params_before"] - layer0["params_after"] == 128 * 128 * 3 - 128
    assert summary["totals"]["ffn_params_before"] == 8 * 512 * 128 * 3
    assert summary["totals"]["model_params_before"] - summary["totals"]["model_params_after"] == 8 * (128 * 128 * 3 - 128)
    stats = load_file(str(out / "flap_stats.safetensors"))
    assert stats["layers.7.mean"].shape == stats["layers.7.variance"].shape == stats["layers.7.scores"].shape == (512,)
    loaded_stats, scores, metric = load_statistics(out / "flap_stats.safetensors")
    assert metric == "wifv" and loaded_stats.tokens == 4 * 64
    model = load_model(out)
    assert model.config.text_config.intermediate_sizes == [384] * 8
    assert (out / "tokenizer.json").is_file() and (out / "processor_config.json").is_file()
    assert "widths: 384, 384" in capsys.readouterr().out


def test_prune_with_ratio_suggests_widths(demo_model_dir, calibration_text, tmp_path):
    out = tmp_path / "pruned"
    assert main(_prune_args(demo_model_dir, out, calibration_text, "--ratio", "0.25", "--layerwise")) == 0
    widths = [layer["kept_width"] for layer in json.loads((out / "prune_summary.json").read_text())["layers"]]
    assert sum(widths) == 8 * 512 - 1024 and all(w % 128 == 0 for w in widths)


def test_bad_input_fails_with_one_line_and_no_output(demo_model_dir, calibration_text, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(_prune_args(demo_model_dir, out, calibration_text, "--ratio", "1.5")) == 2
    assert "--ratio: must be in [0, 1)" in capsys.readouterr().err
    too_long = _prune_args(demo_model_dir, out, calibration_text, "--plan", "uniform-20")
    too_long[too_long.index("--samples") + 1] = "100000"
    assert main(too_long) == 2
    assert "calibration.samples x calibration.seqlen" in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pruned")]


def test_interrupted_prune_leaves_no_folder(demo_model_dir, calibration_text, tmp_path, monkeypatch, capsys):
    """A failure while writing leaves neither the output nor its staging folder, and says so in one
    line naming the output (exit status 1: the machine's failure, not bad input)."""
    import studio.flap.pipeline as pipeline

    def broken_save(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "save_statistics", broken_save)
    out = tmp_path / "pruned"
    assert main(_prune_args(demo_model_dir, out, calibration_text, "--plan", "uniform-20")) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {out.resolve()}: No space left on device while writing it (the partial output was removed)"
    )
    assert list(tmp_path.iterdir()) == []


def test_demo_model_command_is_deterministic(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "studio", "demo-model", "--out", str(tmp_path / name), "--layers", "4", "--seed", "7"],
            check=True, env=env, capture_output=True,
        )
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "a" / "config.json").read_text())["text_config"]
    assert config["num_hidden_layers"] == 4 and config["intermediate_size"] % 128 == 0
    assert config["num_kv_shared_layers"] >= 1 and config["hidden_size_per_layer_input"] > 0
    assert {"sliding_attention", "full_attention"} <= set(config["layer_types"])
