"""The studio's named API endpoints, driven with gradio_client against the launched app."""

from __future__ import annotations

import json
import time
import urllib.request
from urllib.parse import quote

import pytest
from gradio_client import Client

from studio.calibration import OFFLINE_CALIBRATION_TEXT

from studio.ui.context import DEMO_MODEL, E4B_CONFIG_ONLY

JOB_TIMEOUT_S = 600
HIDDEN = 2560  # E4B hidden size


@pytest.fixture(scope="module")
def client(studio_app):
    url, _home = studio_app
    return Client(url, verbose=False)


def test_named_endpoints_exist(client):
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for name in ("load_model", "load_preset", "edit_plan", "estimate", "suggest_plan", "save_preset",
                 "submit_job", "job_status", "list_jobs", "cancel_job", "job_plots", "job_plot_data"):
        assert f"/{name}" in endpoints


def test_card_preset_edit_and_estimate(client):
    summary = client.predict(E4B_CONFIG_ONLY, api_name="/load_model")
    assert "| decoder layers | 42" in summary
    assert "layers 24-41 (18)" in summary  # the KV-shared tail

    table, message = client.predict("gemma4-lite-round2", api_name="/load_preset")
    widths = [row[5] for row in table["data"]]
    assert widths.count(8192) == 22 and widths.count(9216) == 1 and widths.count(10240) == 19
    assert "384,000 of 430,080" in message and "10.7% pruned" in message

    estimate, _sizes, _widths = client.predict(True, 4, 128, api_name="/estimate")
    assert "| FFN parameters | 3.303 B | 2.949 B | 2.949 B |" in estimate
    assert "| checkpoint size | 14.926 GB | 14.218 GB | 9.475 GB |" in estimate
    assert "~9.9 GB" in estimate  # the card's figure is shown beside the estimate

    # Ratio edit: layer 4 (unpruned in the card) to 20% -> width 8192.
    rows = table["data"]
    rows[4][4] = 0.2
    table, message = client.predict({"headers": table["headers"], "data": rows}, api_name="/edit_plan")
    assert table["data"][4][5] == 8192
    assert "Applied: layer 4 ratio 0.2 -> width 8192" in message
    estimate, _sizes, _widths = client.predict(True, 4, 128, api_name="/estimate")
    ffn_after = 3 * HIDDEN * (384000 - 2048) + 42 * HIDDEN  # weights + a down_proj bias per layer
    assert f"| FFN parameters | 3.303 B | {ffn_after / 1e9:.3f} B |" in estimate

    # Width edit: layer 9 to 7168 -> ratio 0.3.
    rows = table["data"]
    rows[9][5] = 7168
    table, message = client.predict({"headers": table["headers"], "data": rows}, api_name="/edit_plan")
    assert table["data"][9][4] == pytest.approx(0.3)


@pytest.mark.parametrize(
    "column, value, rule",
    [
        (5, 1000, "a positive multiple of 128"),
        (5, 20480, "at most the layer's original width"),
        (4, 1.5, "a number in [0, 1)"),
        (5, "wide", "a positive multiple of 128"),
    ],
)
def test_invalid_edit_is_rejected_with_the_rule_and_reverted(client, column, value, rule):
    client.predict(E4B_CONFIG_ONLY, api_name="/load_model")
    table, _ = client.predict("gemma4-lite-round2", api_name="/load_preset")
    before = [row[:] for row in table["data"]]
    rows = table["data"]
    rows[3][column] = value
    reverted, message = client.predict({"headers": table["headers"], "data": rows}, api_name="/edit_plan")
    assert "Rejected layer 3" in message and rule in message and "reverted" in message
    assert reverted["data"] == before


def test_demo_job_runs_to_done_and_has_plot_data(client, studio_app):
    _url, home = studio_app
    summary = client.predict(DEMO_MODEL, api_name="/load_model")
    assert "| decoder layers | 8" in summary
    table, _ = client.predict("uniform-20", api_name="/load_preset")
    rows = table["data"]
    rows[0][5] = 256  # layer 0 keeps half its 512 channels
    table, message = client.predict({"headers": table["headers"], "data": rows}, api_name="/edit_plan")
    assert "Applied" in message
    calibration = str(OFFLINE_CALIBRATION_TEXT)
    job_id, message, *_ = client.predict(
        "api-test", True, False, calibration, 4, 64, 0, api_name="/submit_job"
    )
    assert job_id in message and (home / "jobs" / job_id / "spec.json").is_file()

    deadline = time.monotonic() + JOB_TIMEOUT_S
    state = client.predict(job_id, api_name="/job_status")
    seen_stages = set()
    while state["status"] not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
        if state.get("stage"):
            seen_stages.add(state["stage"])
        time.sleep(2)
        state = client.predict(job_id, api_name="/job_status")
    assert state["status"] == "done", state.get("error")
    assert job_id in [s["id"] for s in client.predict(api_name="/list_jobs")]

    data = client.predict(job_id, api_name="/job_plot_data")
    assert data["widths"] == [256] + [384] * 7
    assert len(data["scores"]["layers"]) == 8
    layer0 = data["scores"]["layers"][0]
    assert layer0["pruned_channels"] == 256 and layer0["channels"] == 512
    assert layer0["pruned"]["max"] <= layer0["threshold"] <= layer0["kept"]["min"]
    assert len(data["gptq"]) == 8 * 4  # o_proj, gate, up, down per layer
    assert data["sizes"]["quantized"]["ffn"] < data["sizes"]["pruned"]["ffn"] < data["sizes"]["original"]["ffn"]
    assert data["measured_bytes"]["quantized"] > 0

    # Result files are served by the app (the links of the Jobs tab).
    summary_path = data["links"]["prune summary"]
    with urllib.request.urlopen(f"{_url}/gradio_api/file={quote(summary_path)}", timeout=30) as response:
        served = json.loads(response.read())
    assert [layer["kept_width"] for layer in served["layers"]] == data["widths"]

    status, *figures = client.predict(job_id, "", api_name="/job_plots")
    assert "api-test" in status
    assert figures[0] is not None and figures[1] is not None and figures[2] is not None

    # Suggest from this job's scores: 25% of the 4096 channels, layer 0 locked at its 256.
    table, _ = client.predict("uniform-20", api_name="/load_preset")
    rows = table["data"]
    rows[0][5], rows[0][6] = 256, True
    table, message = client.predict({"headers": table["headers"], "data": rows}, api_name="/edit_plan")
    assert "layer 0 locked" in message
    table, message = client.predict(str(home / "jobs" / job_id), 0.25, 0.5, api_name="/suggest_plan")
    widths = [row[5] for row in table["data"]]
    assert widths[0] == 256 and table["data"][0][6] is True
    assert sum(widths) == 4096 - 1024 and all(256 <= w <= 512 and w % 128 == 0 for w in widths[1:])
    assert "Suggested from wifv scores" in message
