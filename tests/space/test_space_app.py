"""The studio as a Space runs it: `python app.py` with SPACE_ID and the OAuth settings a Space with
`hf_oauth: true` provides, signed in through Gradio's real login routes against a loopback OpenID
provider (tests/space/fake_oidc.py), driven with gradio_client and plain HTTP.

Checks the access rules where visitors meet them: who may submit, cancel and chat; which paths a
visitor may type; the upload limits of the real upload handlers; which files the app serves.
The app runs without a job worker, so submitted jobs stay queued until cancelled.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from studio.calibration import OFFLINE_CALIBRATION_TEXT
from studio.safety import IMAGE_UPLOAD_MAX_BYTES, MAX_UPLOAD_BYTES, SPEC_UPLOAD_MAX_BYTES
from studio.serve.chat_pool import ENGINE_CPU, ENGINE_VLLM
from tests.space.fake_oidc import FakeOIDCProvider, sign_in
from tests.ui.conftest import free_port, stop_studio, wait_until_up

REPO = Path(__file__).resolve().parents[2]
SIGN_IN = re.escape("Sign in with Hugging Face (the button at the top of the page) to ")
# chat_send's form, as the Chat tab sends it (greedy, 2 tokens: the plumbing, not the sampling).
CHAT_FORM = {"temperature": 0.0, "max_tokens": 2, "seed": 0}


def refused(pattern: str, call) -> None:
    """`call` is refused with a message matching `pattern`: raised as an error (AppError), or returned
    as the '⚠ ...' message a handler shows beside its control (the studio's way for bad input)."""
    try:
        result = call()
    except AppError as error:
        assert re.search(pattern, str(error)), f"{str(error)!r} does not match {pattern!r}"
        return
    values = result if isinstance(result, (list, tuple)) else [result]
    warnings = [value.removeprefix("⚠").strip() for value in values if isinstance(value, str) and value.startswith("⚠")]
    assert warnings, f"not refused: {result!r}"
    assert any(re.search(pattern, warning) for warning in warnings), f"{warnings!r} do not match {pattern!r}"



@pytest.fixture(scope="module")
def space_app(tmp_path_factory):
    """(base URL, STUDIO_HOME, outside folder) of the studio in Space mode, no job worker; a browser
    that signs in becomes 'browser-user'."""
    root = tmp_path_factory.mktemp("space")
    home, outside = root / "home", root / "outside"
    home.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("not for visitors\n")
    with FakeOIDCProvider() as provider:
        provider.state.default_user = "browser-user"
        env = {
            **os.environ,
            **provider.space_env(),
            "SPACE_ID": "someone/gemma-lite-studio",
            "STUDIO_HOME": str(home),
            "STUDIO_MAX_ACTIVE_JOBS": "2",
            # Offer the vLLM engine whatever this machine has: anonymous starts are refused before
            # anything is launched.
            "STUDIO_VLLM_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
        env.pop("SYSTEM", None)  # access.login_button sets it, as on a Docker Space
        log = root / "app.log"
        url = f"http://127.0.0.1:{free_port()}"
        with open(log, "ab") as output:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "app.py"), "--port", url.rsplit(":", 1)[1], "--no-worker"],
                cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
            )
        try:
            wait_until_up(url, process, log)
            yield url, home, outside
        finally:
            stop_studio(process)


def client_for(url: str, user: str | None) -> Client:
    """A gradio_client session: anonymous, or signed in as `user` through the login routes."""
    headers = {"Cookie": f"session={sign_in(url, user)}"} if user else None
    return Client(url, verbose=False, headers=headers)


def submit_form(client: Client, output: str, calibration: str | Path = OFFLINE_CALIBRATION_TEXT) -> tuple[str, str]:
    """Load the demo model and a preset in this session, then submit; returns (job id, message)."""
    client.predict("demo", api_name="/load_model")
    client.predict("uniform-20", api_name="/load_preset")
    return tuple(client.predict(output, True, False, str(calibration), 4, 64, 0, api_name="/submit_job"))


def submit(client: Client, output: str, calibration: str | Path = OFFLINE_CALIBRATION_TEXT) -> str:
    """`submit_form`'s job id."""
    return submit_form(client, output, calibration)[0]


def job_state(client: Client, job_id: str) -> dict:
    return client.predict(job_id, api_name="/job_status")


def chat(client: Client, engine: str, model: str = "demo", files=()):
    return client.predict(
        message={"text": "Hello", "files": list(files)}, engine_a=engine, model_a=model, engine_b=engine,
        model_b=model, api_name="/chat_send", **CHAT_FORM,
    )


def reply_of(chatbot: list[dict]) -> str:
    content = [m for m in chatbot if m["role"] == "assistant"][-1]["content"]
    return "".join(p["text"] if isinstance(p, dict) else str(p) for p in (content if isinstance(content, list) else [content]))


# --- who may do what ------------------------------------------------------------------------------


def test_anonymous_visitors_browse_but_do_not_submit_cancel_or_chat(space_app):
    url, _home, _outside = space_app
    anonymous = client_for(url, None)
    assert "| decoder layers | 8" in anonymous.predict("demo", api_name="/load_model")
    _table, message = anonymous.predict("uniform-20", api_name="/load_preset")
    assert message.startswith("Loaded preset uniform-20.")
    refused(SIGN_IN + "submit jobs", lambda: anonymous.predict("anon", True, False, str(OFFLINE_CALIBRATION_TEXT), 4, 64, 0, api_name="/submit_job"))
    alices_job = submit(client_for(url, "alice"), "alice-browsed")
    refused(SIGN_IN + "cancel jobs", lambda: anonymous.predict(alices_job, api_name="/cancel_job"))
    for engine in (ENGINE_CPU, ENGINE_VLLM):  # the CPU chat and starting a vLLM server alike
        refused(SIGN_IN + "chat with the models or start servers", lambda: chat(anonymous, engine))
    assert job_state(anonymous, alices_job)["status"] == "queued"  # and anyone may watch it
    assert alices_job in [job["id"] for job in anonymous.predict(api_name="/list_jobs")]


def test_only_the_submitter_cancels_a_job(space_app):
    url, _home, _outside = space_app
    alice, bob = client_for(url, "alice"), client_for(url, "bob")
    job_id = submit(alice, "alice-cancel")
    assert job_state(alice, job_id)["submitted_by"] == "alice"
    refused(f"job {job_id}: it was submitted by alice; only its submitter may cancel it", lambda: bob.predict(job_id, api_name="/cancel_job"))
    assert job_state(bob, job_id)["status"] == "queued"
    assert alice.predict(job_id, api_name="/cancel_job") == f"Cancel requested for `{job_id}`: now cancelled."
    assert job_state(alice, job_id)["status"] == "cancelled"


def test_each_user_has_two_active_jobs_at_most(space_app):
    url, _home, _outside = space_app
    carol = client_for(url, "carol")
    first, second = submit(carol, "carol-1"), submit(carol, "carol-2")
    refused(rf"carol already has 2 jobs queued or running \({first}, {second}\); the limit is 2", lambda: submit(carol, "carol-3"))
    carol.predict(first, api_name="/cancel_job")
    third = submit(carol, "carol-3")  # a cancelled job no longer counts
    assert job_state(carol, third)["submitted_by"] == "carol"


def test_signed_in_visitors_chat_on_the_cpu_fallback(space_app):
    url, _home, _outside = space_app
    chatbot_a, chatbot_b, _stats_a, _stats_b, _message = chat(client_for(url, "dave"), ENGINE_CPU)
    for chatbot in (chatbot_a, chatbot_b):
        reply = reply_of(chatbot)
        assert reply and "Error" not in reply


# --- paths a visitor can type ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def links(space_app):
    """Inside STUDIO_HOME: a model folder whose link leads out, and a statistics file that does."""
    _url, home, outside = space_app
    shutil.copytree(home / "models" / "demo", outside / "model")
    (home / "models" / "elsewhere").symlink_to(outside / "model")
    (outside / "flap_stats.safetensors").write_bytes(b"\0" * 16)
    (home / "stats").mkdir()
    (home / "stats" / "flap_stats.safetensors").symlink_to(outside / "flap_stats.safetensors")
    return home, outside


@pytest.mark.parametrize("typed", ["~", "~/.cache", "..", "../outside/model", "models/../../outside/model",
                                   "models/elsewhere", "OUTSIDE/model", "/etc"])
def test_model_folders_outside_the_data_folder_are_refused(space_app, links, typed):
    url, home, outside = space_app
    typed = typed.replace("OUTSIDE", str(outside))
    alice = client_for(url, "alice")
    refused(rf"^model: '{re.escape(typed)}' is outside the folders the studio may read \({re.escape(str(home))}, ", lambda: alice.predict(typed, api_name="/load_model"))


def test_model_folders_inside_are_opened_and_hub_ids_stay_hub_ids(space_app):
    url, home, _outside = space_app
    alice = client_for(url, "alice")
    for typed in ("models/demo", str(home / "models" / "demo"), "models/./x/../demo"):
        summary = alice.predict(typed, api_name="/load_model")
        assert f"**{home / 'models' / 'demo'}**" in summary and "| decoder layers | 8" in summary
    # 'owner/name' not found under STUDIO_HOME is a hub id (offline here: its config cannot be fetched).
    refused(r"model: cannot get config.json of 'google/gemma-4-E4B-it' from the hub", lambda: alice.predict("google/gemma-4-E4B-it", api_name="/load_model"))


@pytest.mark.parametrize("typed", ["/etc/passwd", "~/.bashrc", "../outside/secret.txt", "OUTSIDE/secret.txt"])
def test_calibration_text_outside_is_refused(space_app, typed):
    url, home, outside = space_app
    typed = typed.replace("OUTSIDE", str(outside))
    erin = client_for(url, "erin")
    refused(rf"^calibration\.source: '{re.escape(typed)}' is outside the folders the studio may read \({re.escape(str(home))}, ", lambda: submit_form(erin, "erin-bad-text", calibration=typed))
    assert [j for j in erin.predict(api_name="/list_jobs") if j["output"] == "erin-bad-text"] == []


def test_calibration_text_in_the_bundled_data_and_hub_datasets_are_accepted(space_app):
    url, _home, _outside = space_app
    frank = client_for(url, "frank")
    bundled = submit(frank, "frank-bundled")
    hub = submit(frank, "frank-hub", calibration="hf:wikitext/wikitext-2-raw-v1/train")
    assert job_state(frank, bundled)["status"] == job_state(frank, hub)["status"] == "queued"
    for job_id in (bundled, hub):
        frank.predict(job_id, api_name="/cancel_job")


@pytest.mark.parametrize("typed", ["OUTSIDE", "stats", "~/stats", "../outside/flap_stats.safetensors"])
def test_statistics_paths_outside_are_refused(space_app, links, typed):
    url, home, outside = space_app
    typed = typed.replace("OUTSIDE", str(outside))
    alice = client_for(url, "alice")
    alice.predict("demo", api_name="/load_model")
    alice.predict("uniform-20", api_name="/load_preset")
    # "stats" itself is inside; the file found in it is a link that leads out.
    shown = str(home / "stats" / "flap_stats.safetensors") if typed == "stats" else typed
    refused(rf"^statistics: '{re.escape(shown)}' is outside the folders the studio may read \({re.escape(str(home))}, ", lambda: alice.predict(typed, 0.2, 0.5, api_name="/suggest_plan"))


def test_chat_model_folders_outside_are_refused_in_their_pane(space_app, links):
    url, home, _outside = space_app
    chatbot_a, _b, _sa, _sb, _message = client_for(url, "alice").predict(
        message={"text": "Hello", "files": []}, engine_a=ENGINE_CPU, model_a="~/../..", engine_b=ENGINE_CPU,
        model_b="demo", api_name="/chat_send", **CHAT_FORM,
    )
    assert f"model_a: '~/../..' is outside the folders the studio may read ({home}, " in reply_of(chatbot_a)


# --- uploads and downloads ------------------------------------------------------------------------


def test_preset_uploads_over_the_spec_limit_are_refused(space_app, tmp_path):
    url, _home, _outside = space_app
    alice = client_for(url, "alice")
    alice.predict("demo", api_name="/load_model")
    small = tmp_path / "half.yaml"
    small.write_text("name: half\nmultiple: 128\ndefault: {ratio: 0.5}\n")
    _table, message = alice.predict(handle_file(str(small)), api_name="/upload_preset")
    assert message.startswith("Loaded half.yaml.") and "(**50.0% pruned**)" in message
    big = tmp_path / "big.yaml"
    big.write_bytes(b"name: big\n" + b"#" * (SPEC_UPLOAD_MAX_BYTES - 9))
    assert big.stat().st_size == SPEC_UPLOAD_MAX_BYTES + 1
    refused(r"preset file: the upload 'big\.yaml' is 1,048,577 bytes \(1\.0 MiB\), over the 1 MiB limit", lambda: alice.predict(handle_file(str(big)), api_name="/upload_preset"))


def test_chat_images_over_the_image_limit_are_refused(space_app, tmp_path):
    url, _home, _outside = space_app
    picture = tmp_path / "huge.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (IMAGE_UPLOAD_MAX_BYTES - 7))
    refused(r"message: the upload 'huge\.png' is 16,777,217 bytes \(16\.0 MiB\), over the 16 MiB limit", lambda: chat(client_for(url, "alice"), ENGINE_CPU, files=[handle_file(str(picture))]))


def test_uploads_over_the_app_cap_are_refused_and_names_cannot_climb_out(space_app):
    url, _home, outside = space_app
    too_big = httpx.post(f"{url}/gradio_api/upload", files={"files": ("calib.txt", b"a" * (MAX_UPLOAD_BYTES + 1))}, timeout=300)
    assert too_big.status_code == 413 and "maximum allowed size" in too_big.text
    target = outside / "climbed.yaml"
    name = "../" * 12 + str(target).lstrip("/")
    climbing = httpx.post(f"{url}/gradio_api/upload", files={"files": (name, b"name: x\n")}, timeout=60)
    assert climbing.status_code == 200
    (stored,) = climbing.json()
    assert Path(stored).name == "climbed.yaml" and ".." not in Path(stored).parts
    assert not target.exists()


def test_only_job_results_and_exports_are_served(space_app):
    url, home, outside = space_app
    (home / "exports" / "lite").mkdir(parents=True)
    (home / "exports" / "lite" / "config.json").write_text('{"model_type": "gemma4"}')
    (home / "exports" / "leak.txt").symlink_to(outside / "secret.txt")
    (home / "exports" / "home-leak.txt").symlink_to(home / "ui_secret")

    def get(path: str) -> httpx.Response:
        return httpx.get(f"{url}/gradio_api/file={quote(path)}", timeout=30)

    served = get(str(home / "exports" / "lite" / "config.json"))
    assert served.status_code == 200 and served.json() == {"model_type": "gemma4"}
    for path in (home / "ui_secret", home / "queue.sqlite3", outside / "secret.txt",
                 f"{home}/exports/../ui_secret", home / "exports" / "leak.txt", home / "exports" / "home-leak.txt",
                 "~/.bashrc", "/etc/passwd"):
        response = get(str(path))
        assert response.status_code == 403, (path, response.status_code)
        assert "not for visitors" not in response.text


# --- in a browser -------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "space"


def test_a_browser_signs_in_with_the_button_and_then_submits(space_app):
    """Anonymous: the sign-in button and, on Submit, the sign-in message; after signing in through
    the button (the real OAuth routes, the session cookie kept by the browser): the user's name on
    the button, and the job submitted under it."""
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), f"chromium is needed at {CHROMIUM} (scripts/install_system_deps.sh installs it)"
    url, _home, _outside = space_app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_text("decoder layers").wait_for(timeout=120_000)
            sign_in_button = page.get_by_role("button", name="Sign in with Hugging Face")
            expect(sign_in_button).to_be_visible()
            page.get_by_role("tab", name="Jobs").click()
            page.locator("#submit-job").click()
            expect(page.get_by_text("Sign in with Hugging Face (the button at the top of the page) to submit jobs")
                   .first).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "1-anonymous-submit.png"), full_page=True)

            sign_in_button.click()
            expect(page.get_by_role("button", name="Logout (browser-user)")).to_be_visible(timeout=60_000)
            page.get_by_text("decoder layers").wait_for(timeout=120_000)
            page.get_by_role("tab", name="Jobs").click()
            page.locator("#submit-job").click()
            expect(page.locator("#submit-message")).to_contain_text("Submitted job", timeout=60_000)
            job_id = re.search(r"Submitted job (\S+)", page.locator("#submit-message").inner_text()).group(1)
            page.screenshot(path=str(ARTIFACTS / "2-signed-in-submit.png"), full_page=True)
        finally:
            browser.close()
    watcher = client_for(url, "browser-user")
    assert job_state(watcher, job_id)["submitted_by"] == "browser-user"
    watcher.predict(job_id, api_name="/cancel_job")
