"""The Chat tab offers a job's export once it finishes: `finished_export` finds the folder the
export stage recorded, and nothing for jobs without one."""

from __future__ import annotations

import json
import types

from studio.jobs.client import job_store
from studio.paths import exports_dir
from studio.ui.chat_tab import finished_export, model_choices


def _job_with_export(home, job_id: str, output: str):
    export = exports_dir(home) / output
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    record = job_store(home).job_dir(job_id) / "stages" / "export" / "export.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"path": str(export)}))
    return export


def test_a_finished_job_offers_its_export_as_a_pane_choice(tmp_path):
    ctx = types.SimpleNamespace(home=tmp_path, demo_dir=tmp_path / "demo")
    export = _job_with_export(tmp_path, "20261201-000000-abcd", "lite")
    assert finished_export(ctx, "20261201-000000-abcd") == export
    # the value the tab sets is one of the dropdown's labelled choices
    assert (f"export: {export.name}", str(export)) in model_choices(ctx, None)


def test_jobs_without_an_export_offer_nothing(tmp_path):
    ctx = types.SimpleNamespace(home=tmp_path, demo_dir=tmp_path / "demo")
    (job_store(tmp_path).job_dir("20261201-000000-dcba") / "stages").mkdir(parents=True)
    assert finished_export(ctx, "20261201-000000-dcba") is None
    assert finished_export(ctx, None) is None
    assert finished_export(ctx, "../escape") is None
