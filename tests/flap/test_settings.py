"""The compensation and sequential choices everywhere they can be made: FlapSettings, job specs, the CLI, the
job runner and the job form; bad values are refused naming the field."""

from __future__ import annotations

import json

import pytest
import torch

from studio.cli import main
from studio.flap.pipeline import load_statistics
from studio.flap.settings import FlapSettings
from studio.jobs.spec import JobSpec, parse_spec
from tests.conftest import CALIBRATION_TEXT


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"compensation": "lsq"}, "flap.compensation: must be one of bias, refit, none, got 'lsq'"),
        ({"refit_damp": 1.0}, r"flap.refit_damp: must be a number in \[0, 1\), got 1.0"),
        ({"refit_damp": True}, r"flap.refit_damp: must be a number in \[0, 1\), got True"),
        ({"sequential": "yes"}, "flap.sequential: must be true or false, got 'yes'"),
        ({"metric": "magnitude"}, "flap.metric: must be one of wifv, wifn, ifv, obs, got 'magnitude'"),
        ({"batch_size": 0}, "flap.batch_size: must be a positive integer, got 0"),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        FlapSettings(**fields)


def _spec(flap: dict) -> dict:
    return {"model": "google/gemma-4-E4B-it", "output": "x", "plan": 0.2, "flap": flap}


def test_job_spec_fields_defaults_and_the_older_bias_compensation_spelling():
    spec = parse_spec(_spec({"compensation": "refit", "sequential": True, "refit_damp": 0.05}))
    assert spec.flap == FlapSettings(compensation="refit", sequential=True, refit_damp=0.05, layerwise=True)
    assert parse_spec(_spec({})).flap == FlapSettings(layerwise=True)  # jobs default to layer-by-layer
    assert parse_spec(_spec({"bias_compensation": False})).flap.compensation == "none"
    assert parse_spec(_spec({"bias_compensation": True})).flap.compensation == "bias"
    with pytest.raises(ValueError, match="flap.bias_compensation: replaced by flap.compensation"):
        parse_spec(_spec({"bias_compensation": True, "compensation": "refit"}))
    with pytest.raises(ValueError, match="flap.compensation: must be one of"):
        parse_spec(_spec({"compensation": "ridge"}))
    with pytest.raises(ValueError, match="flap.sequentail: unknown field"):
        parse_spec(_spec({"sequentail": True}))
    # A job stored before `compensation` existed still loads.
    stored = parse_spec(_spec({})).to_dict()
    stored["flap"] = {"metric": "wifv", "max_ratio": 0.5, "bias_compensation": False, "batch_size": 1, "layerwise": True}
    assert JobSpec.from_dict(stored).flap.compensation == "none"
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_cli_sequential_refit_prune_writes_its_choices_and_the_sequential_statistics(demo_model_dir, tmp_path):
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(demo_model_dir), "--ratio", "0.25", "--calib", str(CALIBRATION_TEXT),
            "--samples", "4", "--seqlen", "64", "--compensation", "refit", "--refit-damp", "0.02", "--sequential",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "prune_summary.json").read_text())
    assert (summary["compensation"], summary["refit_damp"], summary["sequential"]) == ("refit", 0.02, True)
    widths = [layer["kept_width"] for layer in summary["layers"]]
    assert sum(widths) == 8 * 512 - 1024
    # The saved statistics are those the channels were chosen from: the sequential pass's, not the one-shot ones.
    stats, scores, _metric = load_statistics(out / "flap_stats.safetensors")
    one_shot_dir = tmp_path / "one-shot"
    assert main([*args[: args.index("--compensation")], "--out", str(one_shot_dir)]) == 0
    one_shot, _, _ = load_statistics(one_shot_dir / "flap_stats.safetensors")
    torch.testing.assert_close(stats.layers[0].mean, one_shot.layers[0].mean)
    assert not torch.allclose(stats.layers[-1].mean, one_shot.layers[-1].mean)
    # Same widths: FLAP's global search ran on the one-shot scores in both.
    assert widths == [layer["kept_width"] for layer in json.loads((one_shot_dir / "prune_summary.json").read_text())["layers"]]


def test_cli_one_shot_refit_with_a_ratio_keeps_the_bias_prunes_channels(demo_model_dir, tmp_path):
    """--ratio: widths and channels come from the one-shot statistics pass; the refit's own pass changes only down_proj."""
    from studio.modeling import decoder_layers, load_model

    outs = {}
    for compensation in ("bias", "refit"):
        outs[compensation] = tmp_path / compensation
        args = ["prune", "--model", str(demo_model_dir), "--ratio", "0.25", "--calib", str(CALIBRATION_TEXT),
                "--samples", "4", "--seqlen", "64", "--layerwise", "--compensation", compensation,
                "--out", str(outs[compensation])]  # fmt: skip
        assert main(args) == 0
    bias, refit = load_model(outs["bias"]), load_model(outs["refit"])
    assert bias.config.text_config.intermediate_sizes == refit.config.text_config.intermediate_sizes
    for a, b in zip(decoder_layers(bias), decoder_layers(refit)):
        torch.testing.assert_close(a.mlp.up_proj.weight, b.mlp.up_proj.weight, rtol=0, atol=0)
    assert any(
        not torch.allclose(a.mlp.down_proj.weight, b.mlp.down_proj.weight)
        for a, b in zip(decoder_layers(bias), decoder_layers(refit))
    )


def test_cli_refuses_a_bad_refit_damp_naming_the_flag(demo_model_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(demo_model_dir), "--plan", "uniform-20", "--calib", str(CALIBRATION_TEXT),
            "--samples", "4", "--seqlen", "64", "--compensation", "refit", "--refit-damp", "1.5", "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    assert "--refit-damp: must be a number in [0, 1), got 1.5" in capsys.readouterr().err
    assert not out.exists()


def test_job_runner_prunes_with_refit_sequentially(tmp_path, demo_model_dir):
    from studio.jobs.stages import StageRunner, stage_dir
    from studio.jobs.store import JobStore, this_worker
    from tests.jobs.conftest import small_spec

    store = JobStore(tmp_path / "jobs")
    spec = parse_spec(small_spec(demo_model_dir, flap={"compensation": "refit", "sequential": True}))
    job_id = store.create(spec)
    assert store.claim(job_id, this_worker())
    runner = StageRunner(store, job_id, tmp_path, device="cpu")
    assert runner.run() == "done", store.get(job_id)["error"]
    model_dir = stage_dir(store.job_dir(job_id), "prune") / "model"
    summary = json.loads((model_dir / "prune_summary.json").read_text())
    assert (summary["compensation"], summary["sequential"]) == ("refit", True)
    statistics, _, _ = load_statistics(stage_dir(store.job_dir(job_id), "statistics") / "flap_stats.safetensors")
    pruned_stats, _, _ = load_statistics(model_dir / "flap_stats.safetensors")
    assert not torch.allclose(pruned_stats.layers[-1].mean, statistics.layers[-1].mean)


def test_job_form_passes_the_choices_into_the_spec(demo_model_dir):
    from studio.plans.plan import uniform_plan
    from studio.modeling import load_text_config
    from studio.ui.jobs_tab import build_spec
    from studio.plans.table import plan_to_state

    plan_state = plan_to_state(uniform_plan(load_text_config(demo_model_dir), 0.25))
    model_state = {"label": "demo", "checkpoint": str(demo_model_dir)}
    calibration = {"source": str(CALIBRATION_TEXT), "samples": 4, "seqlen": 64, "seed": 0}
    flap = {"compensation": "refit", "sequential": True}
    spec = parse_spec(build_spec(model_state, plan_state, "out", calibration, False, False, str(CALIBRATION_TEXT), flap))
    assert (spec.flap.compensation, spec.flap.sequential, spec.flap.layerwise) == ("refit", True, True)
    default = parse_spec(build_spec(model_state, plan_state, "out", calibration, False, False, str(CALIBRATION_TEXT)))
    assert default.flap == FlapSettings(layerwise=True)
