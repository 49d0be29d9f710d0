"""The studio's named API endpoints, driven with gradio_client against the launched app."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from gradio_client import Client, handle_file

from studio.calibration import OFFLINE_CALIBRATION_TEXT

from studio.ui.context import DEMO_MODEL, E4B_CONFIG_ONLY

JOB_TIMEOUT_S = 600
HIDDEN = 2560  # E4B hidden size


@pytest.fixture(scope="module")
def client(studio_app):
    url, _home = studio_app
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def api_page(client) -> dict:
    """The named endpoints as the app's API page documents them."""
    return client.view_api(print_info=False, return_format="dict")["named_endpoints"]


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

    estimate, _sizes, _widths = client.predict(True, "4", "128", api_name="/estimate")
    assert "| FFN parameters | 3.303 B | 2.949 B | 2.949 B |" in estimate
    assert "| checkpoint size | 14.926 GB | 14.218 GB | 9.475 GB |" in estimate
    assert "~9.9 GB" in estimate  # the card's figure is shown beside the estimate

    # Ratio edit: layer 4 (unpruned in the card) to 20% -> width 8192.
    rows = table["data"]
    rows[4][4] = 0.2
    table, message = client.predict({"headers": table["headers"], "data": rows}, api_name="/edit_plan")
    assert table["data"][4][5] == 8192
    assert "Applied: layer 4 ratio 0.2 -> width 8192" in message
    estimate, _sizes, _widths = client.predict(True, "4", "128", api_name="/estimate")
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


# -- the API page tells the truth ------------------------------------------------------------------


def conforms(value, schema: dict) -> bool:
    """Whether `value` has the JSON type the API page documents (the subset Gradio writes)."""
    if "enum" in schema:
        return value in schema["enum"]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return any(conforms(value, option) for option in schema[key])
    kind = schema.get("type")
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "array":
        return isinstance(value, list) and all(conforms(v, schema.get("items", {})) for v in value)
    if kind == "object":
        if not isinstance(value, dict) or "__type__" in value:  # an update dict is not the documented value
            return False
        properties = schema.get("properties", {})
        return all(k in value for k in schema.get("required", [])) and all(
            conforms(v, properties[k]) for k, v in value.items() if k in properties
        )
    return True  # "Any"


def call_as_documented(client, api_page: dict, endpoint: str, **arguments):
    """Call `endpoint` with keyword arguments named, typed and complete as its API page says;
    check every returned value against the documented return types (a Plot may be None)."""
    doc = api_page[endpoint]
    parameters = {p["parameter_name"]: p for p in doc["parameters"]}
    assert set(arguments) <= set(parameters), (endpoint, set(arguments) - set(parameters))
    for name, parameter in parameters.items():
        if name not in arguments:
            assert parameter["parameter_has_default"], f"{endpoint}: {name} is documented as required"
            continue
        if parameter["python_type"]["type"] == "filepath":
            assert isinstance(arguments[name], dict) and "path" in arguments[name]  # handle_file(...)
        else:
            assert conforms(arguments[name], parameter["type"]), (endpoint, name, arguments[name], parameter["type"])
    result = client.predict(**arguments, api_name=endpoint)
    returns = doc["returns"]
    values = list(result) if len(returns) > 1 else [result]
    assert len(values) == len(returns), endpoint
    for value, documented in zip(values, returns):
        if documented["component"] == "Plot" and value is None:
            continue
        if documented["python_type"]["type"] == "filepath":
            assert isinstance(value, str) and Path(value).is_file(), (endpoint, value)
            continue
        assert conforms(value, documented["type"]), (endpoint, documented["label"], str(value)[:200])
    return result


@pytest.fixture(scope="module")
def finished_job(client) -> str:
    """A demo job without GPTQ or evaluation, run to done (so GPTQ and perplexity are "not run")."""
    client.predict(DEMO_MODEL, api_name="/load_model")
    client.predict("uniform-20", api_name="/load_preset")
    job_id, message = client.predict("api-doc-test", False, False, str(OFFLINE_CALIBRATION_TEXT), 4, 64, 0,
                                     api_name="/submit_job")
    assert job_id, message
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while client.predict(job_id, api_name="/job_status")["status"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} did not finish in {JOB_TIMEOUT_S}s"
        time.sleep(2)
    assert client.predict(job_id, api_name="/job_status")["status"] == "done"
    return job_id


def test_plan_endpoints_as_the_api_page_documents_them(client, api_page, tmp_path):
    summary = call_as_documented(client, api_page, "/load_model", source=E4B_CONFIG_ONLY)
    assert "| decoder layers | 42" in summary
    bits = api_page["/estimate"]["parameters"][1]
    assert bits["parameter_name"] == "bits" and bits["python_type"]["type"] == "Literal['2', '3', '4', '8']"

    table, message = call_as_documented(client, api_page, "/load_preset", name="gemma4-lite-round2")
    assert "10.7% pruned" in message
    estimate, sizes, widths = call_as_documented(client, api_page, "/estimate", quantize=True, bits="4", group_size="128")
    assert "| checkpoint size | 14.926 GB | 14.218 GB | 9.475 GB |" in estimate
    assert sizes["type"] == "plotly" and json.loads(widths["plot"])["data"]
    estimate, *_ = call_as_documented(client, api_page, "/estimate", quantize=True, bits="8", group_size="64")
    assert "9.475 GB" not in estimate  # other settings, another estimate

    rows = table["data"]
    rows[4][4] = 0.2
    table, message = call_as_documented(client, api_page, "/edit_plan", table={"headers": table["headers"], "data": rows})
    assert "Applied: layer 4 ratio 0.2 -> width 8192" in message

    saved = call_as_documented(client, api_page, "/save_preset", name="api-saved")
    assert "Saved preset api-saved" in saved
    downloaded = call_as_documented(client, api_page, "/download_preset")
    assert Path(downloaded).name == "api-saved.yaml"
    assert "10.7%" not in Path(downloaded).read_text()  # the description says what the edited plan is
    table, message = call_as_documented(client, api_page, "/load_preset", name="api-saved")  # saved after the page was built
    assert table["data"][4][5] == 8192 and "Loaded preset api-saved" in message

    upload = tmp_path / "uploaded.yaml"
    upload.write_text("name: uploaded\nmultiple: 128\ndefault: {ratio: 0.5}\n")
    table, message = call_as_documented(client, api_page, "/upload_preset", file=handle_file(str(upload)))
    assert {row[5] for row in table["data"]} == {5120} and "Loaded uploaded.yaml" in message


def test_refused_input_leaves_the_table_and_says_why(client, api_page):
    call_as_documented(client, api_page, "/load_model", source=E4B_CONFIG_ONLY)
    table, _ = call_as_documented(client, api_page, "/load_preset", name="gemma4-lite-round2")

    kept, message = call_as_documented(client, api_page, "/suggest_plan", stats_path="", target=0.2, max_ratio=0.5)
    assert kept == table and message.startswith("⚠ statistics: choose a job with statistics")
    kept, message = call_as_documented(client, api_page, "/load_preset", name="no such preset")
    assert kept == table and message.startswith("⚠ preset: no preset named 'no such preset'")
    message = call_as_documented(client, api_page, "/save_preset", name="my plan")
    assert message.startswith("⚠ preset name:") and "no spaces" in message and "nothing was saved" in message
    summary = call_as_documented(client, api_page, "/load_model", source="/no/such/folder")
    assert summary.startswith("⚠ model:") and "Still loaded:" in summary and "| decoder layers | 42" in summary
    job_id, message = call_as_documented(client, api_page, "/submit_job", output_name="e4b", quantize_after=True,
                                         evaluate_after=False, calibration_source=str(OFFLINE_CALIBRATION_TEXT),
                                         samples=4, seqlen=64, seed=0)
    assert job_id == "" and "has no weights here" in message and "nothing was submitted" in message
    assert call_as_documented(client, api_page, "/cancel_job", job_id="nope").startswith("⚠ job: no job 'nope'")


def test_job_endpoints_as_the_api_page_documents_them(client, api_page, finished_job, studio_app):
    _url, home = studio_app
    states = call_as_documented(client, api_page, "/list_jobs")
    assert finished_job in [s["id"] for s in states]
    state = call_as_documented(client, api_page, "/job_status", job_id=finished_job)
    assert state["status"] == "done" and state["stages"]["quantize"]["status"] == "skipped"
    message = call_as_documented(client, api_page, "/cancel_job", job_id=finished_job)
    assert message == f"⚠ `{finished_job}` is done: only a queued or running job can be cancelled."
    assert call_as_documented(client, api_page, "/job_status", job_id=finished_job)["status"] == "done"

    data = call_as_documented(client, api_page, "/job_plot_data", job_id=finished_job)
    assert data["widths"] == [384] * 8 and data["gptq"] is None and data["asked"] == {"gptq": False, "perplexity": False}
    status, scores, widths, gptq, sizes, quality, compare = call_as_documented(
        client, api_page, "/job_plots", job_a=finished_job, job_b=""
    )
    assert "not run (the job did not ask for it): gptq, perplexity" in status
    assert "not available yet" not in status
    assert scores and widths and sizes and gptq is None and quality is None and compare is None
    assert "measured weight files: pruned" in status and "estimated from the config: pruned" in status

    # Suggest from the finished job's folder: the Statistics field takes what the job dropdown fills in.
    client.predict(DEMO_MODEL, api_name="/load_model")
    client.predict("uniform-20", api_name="/load_preset")
    table, message = call_as_documented(client, api_page, "/suggest_plan", stats_path=str(home / "jobs" / finished_job),
                                        target=0.25, max_ratio=0.5)
    assert sum(row[5] for row in table["data"]) == 4096 - 1024 and "Suggested from wifv scores" in message


def test_every_named_endpoint_is_covered_here(api_page):
    covered = {"/load_model", "/load_preset", "/edit_plan", "/upload_preset", "/suggest_plan", "/save_preset",
               "/download_preset", "/estimate", "/submit_job", "/cancel_job", "/job_status", "/list_jobs",
               "/job_plots", "/job_plot_data"}
    others = {name for name in api_page if name.startswith(("/chat_", "/retry"))}  # tests/ui/test_chat_tab.py, tests/jobs
    assert set(api_page) - others == covered
