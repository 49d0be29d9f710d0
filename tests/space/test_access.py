"""Access rules on a Space (sign-in to submit, a per-user job limit) and locally (no sign-in).

The handler-level tests hand the rules a `gr.OAuthProfile` or None, as Gradio does; the app-level
test launches a small Blocks page with a LoginButton on loopback and calls it with gradio_client,
once anonymously and once with the session cookie of Gradio's own (mocked, offline) login route.
"""

from __future__ import annotations

import os

import httpx
import pytest

import gradio as gr
import gradio.oauth
from gradio_client import Client
from gradio_client.exceptions import AppError

from studio.ui import access

ALICE = gr.OAuthProfile(
    {"name": "Alice A.", "preferred_username": "alice", "profile": "https://huggingface.co/alice", "picture": ""}
)


@pytest.fixture
def space(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/gemma-lite-studio")
    monkeypatch.delenv("SYSTEM", raising=False)
    monkeypatch.delenv(access.MAX_ACTIVE_JOBS_ENV, raising=False)


@pytest.fixture
def local(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)


def job(job_id, user, status):
    return {"id": job_id, "status": status, access.SUBMITTER_FIELD: user}


# --- handler level ----------------------------------------------------------------------------


def test_on_a_space_anonymous_visitors_must_sign_in(space):
    assert access.on_space()
    assert access.current_user(None) is None
    with pytest.raises(gr.Error) as err:
        access.require_user(None)
    assert err.value.title == "Sign-in required"
    assert err.value.message.startswith("Sign in with Hugging Face (the button at the top of the page) to submit jobs")
    assert "browsed without signing in" in err.value.message
    assert access.require_user(ALICE) == "alice"


def test_locally_nobody_signs_in(local):
    assert not access.on_space()
    assert access.require_user(None) == access.LOCAL_USER
    assert access.login_button() is None
    many = [job(f"j{i}", access.LOCAL_USER, "queued") for i in range(10)]
    assert access.require_submitter(None, many) == access.LOCAL_USER  # no limit locally
    assert access.hub_token(None) is None  # studio.hub falls back to HF_TOKEN / hf auth login


def test_per_user_limit_counts_only_that_users_active_jobs(space, monkeypatch):
    jobs = [
        job("a1", "alice", "queued"),
        job("a2", "alice", "running"),
        job("a3", "alice", "done"),
        job("b1", "bob", "queued"),
        {"id": "old", "status": "queued"},  # made before submitters were recorded
    ]
    assert access.active_jobs_of("alice", jobs) == ["a1", "a2"]
    with pytest.raises(gr.Error) as err:
        access.require_submitter(ALICE, jobs)
    assert err.value.title == "Job limit reached"
    assert err.value.message.startswith("alice already has 2 jobs queued or running (a1, a2); the limit is 2.")
    monkeypatch.setenv(access.MAX_ACTIVE_JOBS_ENV, "3")
    assert access.require_submitter(ALICE, jobs) == "alice"
    monkeypatch.setenv(access.MAX_ACTIVE_JOBS_ENV, "zero")
    with pytest.raises(ValueError, match="STUDIO_MAX_ACTIVE_JOBS: must be a positive integer, got 'zero'"):
        access.require_submitter(ALICE, jobs)
    with pytest.raises(gr.Error, match="to submit jobs"):
        access.require_submitter(None, [])


def test_submitters_are_counted_from_the_job_store(space, tmp_path):
    from studio.jobs.spec import JobSpec
    from studio.jobs.store import JobStore

    store = JobStore(tmp_path / "jobs")
    spec = JobSpec(model="google/gemma-4-E4B-it", output="lite", plan={"ratio": 0.2})
    first, second, other = store.create(spec), store.create(spec), store.create(spec)
    for job_id, user in [(first, "alice"), (second, "alice"), (other, "bob")]:
        access.record_submitter(store, job_id, user)
    store.update(second, status="running")  # the worker's later changes keep the field
    assert sorted(access.active_jobs_of("alice", store.all_jobs())) == sorted([first, second])
    with pytest.raises(gr.Error, match="alice already has 2 jobs queued or running"):
        access.require_submitter(ALICE, store.all_jobs())
    store.finish(first, "done")
    assert access.require_submitter(ALICE, store.all_jobs()) == "alice"
    assert store.get(first)[access.SUBMITTER_FIELD] == "alice"


def test_hub_token_on_a_space_is_the_visitors_oauth_token(space):
    token = gr.OAuthToken(token="hf_oauth_alice", scope="openid profile write-repos manage-repos", expires_at=0)
    assert access.hub_token(token) == "hf_oauth_alice"
    with pytest.raises(gr.Error, match="to publish to the Hub"):
        access.hub_token(None)


def test_login_button_needs_the_spaces_oauth_settings(space, monkeypatch):
    monkeypatch.delenv("OAUTH_CLIENT_ID", raising=False)
    with pytest.raises(RuntimeError, match="add `hf_oauth: true` to the Space's README front matter"):
        access.login_button()
    # What a Space with `hf_oauth: true` provides (Gradio reads them when it is imported).
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client-id")
    for name, value in [("OAUTH_CLIENT_ID", "client-id"), ("OAUTH_CLIENT_SECRET", "secret"),
                        ("OAUTH_SCOPES", "openid profile write-repos manage-repos"),
                        ("OPENID_PROVIDER_URL", "https://huggingface.co")]:
        monkeypatch.setattr(gradio.oauth, name, value)
    with gr.Blocks() as page:
        button = access.login_button()
    assert isinstance(button, gr.LoginButton)
    assert page.expects_oauth
    # Docker Spaces do not set SYSTEM=spaces; without it Gradio would install its local login mock.
    assert os.environ["SYSTEM"] == "spaces"
    # so the page gets the real Hugging Face OAuth routes (authlib), not the mock
    login = next(route for route in page.app.routes if getattr(route, "path", None) == "/login/huggingface")
    assert login.endpoint.__qualname__.startswith("_add_oauth_routes.")


# --- a launched page ----------------------------------------------------------------------------


@pytest.fixture
def mini_studio(space, monkeypatch):
    """A page with a LoginButton, a gated submit and an open browse; Gradio's offline login mock."""
    monkeypatch.setattr(
        gradio.oauth,
        "_get_mocked_oauth_info",
        lambda: {
            "access_token": "hf_oauth_alice",
            "token_type": "bearer",
            "scope": "openid profile",
            "expires_at": 9_999_999_999,
            "userinfo": {"name": "Alice A.", "preferred_username": "alice", "profile": "", "picture": ""},
        },
    )
    jobs = [job("a1", "alice", "queued")]

    def submit(spec: str, profile: gr.OAuthProfile | None) -> str:
        user = access.require_submitter(profile, jobs)
        jobs.append(job(f"a{len(jobs) + 1}", user, "queued"))
        return f"{user} submitted {spec}"

    def browse(profile: gr.OAuthProfile | None) -> str:
        return f"presets for {access.current_user(profile) or 'anonymous'}"

    with gr.Blocks() as page:
        gr.LoginButton()  # as access.login_button() makes on a Space, with Gradio's local routes
        spec = gr.Textbox()
        out = gr.Textbox()
        gr.Button("submit").click(submit, spec, out, api_name="submit")
        gr.Button("browse").click(browse, None, out, api_name="browse")
    page.queue()
    _, url, _ = page.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        yield url.rstrip("/")
    finally:
        page.close()


def _session_cookie(url: str) -> str:
    """Sign in through Gradio's login route; the cookie is `Secure`, so copy it by hand over http."""
    with httpx.Client(base_url=url) as http:
        login = http.get("/login/huggingface")
        assert login.status_code in (302, 307)
        callback = http.get(login.headers["location"])
        assert callback.status_code in (302, 307)
        cookie = callback.cookies.get("session") or httpx.Cookies(callback.cookies).get("session")
    assert cookie
    return cookie


def test_launched_page_gates_submit_on_the_session(mini_studio):
    anonymous = Client(mini_studio, verbose=False)
    assert anonymous.predict(api_name="/browse") == "presets for anonymous"
    with pytest.raises(AppError, match="Sign in with Hugging Face"):
        anonymous.predict("spec-1", api_name="/submit")

    signed_in = Client(mini_studio, verbose=False, headers={"Cookie": f"session={_session_cookie(mini_studio)}"})
    assert signed_in.predict(api_name="/browse") == "presets for alice"
    assert signed_in.predict("spec-2", api_name="/submit") == "alice submitted spec-2"
    with pytest.raises(AppError, match=r"alice already has 2 jobs queued or running \(a1, a2\)"):
        signed_in.predict("spec-3", api_name="/submit")
