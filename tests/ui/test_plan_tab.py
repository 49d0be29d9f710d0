"""The plan tab holds the plan's FLAP choices: a job submitted from the plan (the Jobs tab's submit_job
endpoint) takes its compensation and sequential calibration from the plan tab's controls."""

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
    assert ids[-2:] == ["plan-compensation", "plan-sequential"]  # the plan tab's controls, not a copy
    plan_controls = [component for component in page.blocks.values()
                     if getattr(component, "elem_id", None) in ("plan-compensation", "plan-sequential")]
    assert [(c.elem_id, c.value) for c in plan_controls] == [("plan-compensation", "bias"), ("plan-sequential", False)]

    model_state, summary = load_model(DEMO_MODEL, ctx)
    assert isinstance(model_state, dict), summary
    _table, plan_state, _message = default_plan(model_state, ctx)
    for compensation, sequential in (("refit", True), ("none", False)):
        job_id, message = submit.fn("flap-choice", False, False, model_state, plan_state, str(OFFLINE_CALIBRATION_TEXT),
                                    4, 64, 0, compensation, sequential)
        assert job_id, message
        flap = job_store(ctx.home).spec(job_id).flap
        assert (flap.compensation, flap.sequential) == (compensation, sequential)
