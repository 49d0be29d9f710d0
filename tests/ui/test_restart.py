"""Restarting the app loses nothing: a job running when the app stops is requeued and, after the
restart, resumes (a second attempt, finished stages reused) and runs to done."""

from __future__ import annotations

import json
import time

from gradio_client import Client

from studio.calibration import OFFLINE_CALIBRATION_TEXT
from studio.jobs.stages import FAILPOINT_ENV
from studio.jobs.store import FINAL_STATUSES
from studio.ui.context import DEMO_MODEL
from tests.ui.conftest import start_studio, stop_studio

TIMEOUT_S = 600


def wait_until(client: Client, job_id: str, reached, what: str) -> dict:
    """Poll /job_status until `reached(state)`; fail naming `what` after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    state = None
    while time.monotonic() < deadline:
        state = client.predict(job_id, api_name="/job_status")
        if reached(state):
            return state
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not get {what}: {state}")


def test_a_job_running_across_an_app_restart_resumes_to_done(tmp_path, monkeypatch):
    home, log = tmp_path / "home", tmp_path / "app.log"
    # The failpoint holds the job at statistics layer 2, so it is certainly running when the app stops.
    monkeypatch.setenv(FAILPOINT_ENV, "statistics:2")
    process, url = start_studio(home, log)
    try:
        client = Client(url, verbose=False)
        client.predict(DEMO_MODEL, api_name="/load_model")
        client.predict("uniform-30", api_name="/load_preset")
        job_id, _message = client.predict(
            "restart-test", False, False, str(OFFLINE_CALIBRATION_TEXT), 8, 128, 0, api_name="/submit_job"
        )
        held = wait_until(client, job_id, lambda state: state.get("failpoint"), "to hold at statistics:2")
        assert (held["status"], held["stage"], held["attempts"]) == ("running", "statistics", 1)
    finally:
        stop_studio(process)
    job_log = home / "jobs" / job_id / "job.log"
    interrupted = json.loads((home / "jobs" / job_id / "state.json").read_text())
    assert (interrupted["status"], interrupted["attempts"]) == ("queued", 1)  # requeued by the stopping worker
    assert "worker stopped; the job resumes from its unfinished stage on the next worker" in job_log.read_text()

    monkeypatch.delenv(FAILPOINT_ENV)
    process, url = start_studio(home, log)
    try:
        client = Client(url, verbose=False)
        assert job_id in [s["id"] for s in client.predict(api_name="/list_jobs")]
        state = wait_until(client, job_id, lambda s: s["status"] in FINAL_STATUSES, "to finish")
        assert state["status"] == "done", state.get("error")
        assert state["attempts"] == 2  # one run before the restart, one after
        assert state["stages"]["calibrate"]["status"] == "reused"  # finished before the restart
        assert state["stages"]["statistics"]["status"] == "done"  # interrupted, then run again
        data = client.predict(job_id, api_name="/job_plot_data")
        assert data["widths"] == [384] * 8  # uniform-30 of 512: 358.4 -> nearest multiple of 128
    finally:
        stop_studio(process)
    text = job_log.read_text()
    assert text.index("runs the job (attempt 1)") < text.index("worker stopped;") < text.index("runs the job (attempt 2)")
    assert "stage calibrate: already finished" in text
