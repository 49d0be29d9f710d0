"""Restarting the app loses nothing: a job interrupted by the restart is listed and runs to done."""

from __future__ import annotations

import time

from gradio_client import Client

from studio.calibration import OFFLINE_CALIBRATION_TEXT
from studio.ui.context import DEMO_MODEL
from tests.ui.conftest import start_studio, stop_studio

TIMEOUT_S = 600


def wait_for(client: Client, job_id: str, statuses: tuple[str, ...]) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        state = client.predict(job_id, api_name="/job_status")
        if state["status"] in statuses:
            return state
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not reach {statuses}: {state}")


def test_job_survives_an_app_restart(tmp_path):
    home, log = tmp_path / "home", tmp_path / "app.log"
    process, url = start_studio(home, log)
    try:
        client = Client(url, verbose=False)
        client.predict(DEMO_MODEL, api_name="/load_model")
        client.predict("uniform-30", api_name="/load_preset")
        job_id, _message = client.predict(
            "restart-test", False, False, str(OFFLINE_CALIBRATION_TEXT), 8, 128, 0, api_name="/submit_job"
        )
        wait_for(client, job_id, ("running", "done"))
    finally:
        stop_studio(process)

    process, url = start_studio(home, log)
    try:
        client = Client(url, verbose=False)
        assert job_id in [s["id"] for s in client.predict(api_name="/list_jobs")]
        state = wait_for(client, job_id, ("done", "failed", "cancelled"))
        assert state["status"] == "done", state.get("error")
        data = client.predict(job_id, api_name="/job_plot_data")
        assert data["widths"] == [384] * 8  # uniform-30 of 512: 358.4 -> nearest multiple of 128
    finally:
        stop_studio(process)
