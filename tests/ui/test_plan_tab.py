"""The plan tab holds the plan's FLAP choices: a job submitted from the plan (the Jobs tab's submit_job
endpoint) takes its channel score, compensation and sequential calibration from the plan tab's controls."""

from __future__ import annotations

from studio.calibration import OFFLINE_CALIBRATION_TEXT
from studio.jobs.client import job_store
from studio.ui.context import DEMO_MODEL, StudioContext


def test_a_job_submitted_from_the_plan_uses_the_plans_compensation_and_calibration(demo_model_dir, tmp_path, monkeypatch):
    from studio.ui.app import build_app
    from studio.ui.model_tab import load_model
    from studio.ui.plan_tab import default_plan

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    ctx = StudioContext(home=tmp_path / "home", demo_dir=demo_model_dir)
    page = build_app(ctx)
    submit = next(block for block in page.fns.values() if block.api_name == "submit_job")
    ids = [component.elem_id for component in submit.inputs]
    controls = ["plan-compensation", "plan-sequential", "plan-metric", "plan-refit-damp"]
    assert ids[-4:] == controls  # the plan tab's controls, not a copy
    plan_controls = {component.elem_id: component.value for component in page.blocks.values()
                     if getattr(component, "elem_id", None) in controls}
    assert plan_controls == {"plan-metric": "wifv", "plan-compensation": "bias", "plan-sequential": False,
                             "plan-refit-damp": 0.01}

    model_state, summary = load_model(DEMO_MODEL, ctx)
    assert isinstance(model_state, dict), summary
    _table, plan_state, _message = default_plan(model_state, ctx)
    for metric, compensation, sequential, damp in (("obs", "refit", True, 0.5), ("ifv", "none", False, 0.01)):
        job_id, message = submit.fn("flap-choice", False, False, model_state, plan_state, str(OFFLINE_CALIBRATION_TEXT),
                                    4, 64, 0, compensation, sequential, metric, damp)
        assert job_id, message
        flap = job_store(ctx.home).spec(job_id).flap
        assert (flap.metric, flap.compensation, flap.sequential, flap.refit_damp) == (metric, compensation, sequential, damp)


def test_a_bad_refit_ridge_weight_is_refused_naming_the_field_and_nothing_is_queued(demo_model_dir, tmp_path, monkeypatch):
    from studio.ui.app import build_app
    from studio.ui.model_tab import load_model
    from studio.ui.plan_tab import default_plan

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    ctx = StudioContext(home=tmp_path / "home", demo_dir=demo_model_dir)
    submit = next(block for block in build_app(ctx).fns.values() if block.api_name == "submit_job")
    model_state, _ = load_model(DEMO_MODEL, ctx)
    _table, plan_state, _message = default_plan(model_state, ctx)
    for damp in (1.5, None):
        job_id, message = submit.fn("bad-damp", False, False, model_state, plan_state, str(OFFLINE_CALIBRATION_TEXT),
                                    4, 64, 0, "refit", False, "wifv", damp)
        assert not job_id
        assert f"flap.refit_damp: must be a number in [0, 1), got {damp!r}" in message
    assert job_store(ctx.home).all_jobs() == []
