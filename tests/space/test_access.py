"""Access rules on a Space (sign-in to submit, a per-user job limit) and locally (no sign-in).

These tests hand the rules a `gr.OAuthProfile` or None, as Gradio does; tests/space/test_space_app.py
checks the same rules in the launched app, signed in through its real login routes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gradio as gr
import gradio.oauth

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
    assert access.hub_token(None) is None  # studio.export.hub falls back to HF_TOKEN / hf auth login


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


def test_only_the_submitter_may_cancel_on_a_space(space):
    assert access.require_canceller(ALICE, job("a1", "alice", "running")) == "alice"
    with pytest.raises(gr.Error) as err:
        access.require_canceller(ALICE, job("b1", "bob", "queued"))
    assert err.value.title == "Not your job"
    assert err.value.message == "job b1: it was submitted by bob; only its submitter may cancel it"
    with pytest.raises(gr.Error, match=r"job old: it was submitted outside this page \(no submitter recorded\)"):
        access.require_canceller(ALICE, {"id": "old", "status": "queued"})
    with pytest.raises(gr.Error, match="to cancel jobs"):
        access.require_canceller(None, job("a1", "alice", "queued"))


def test_locally_anyone_cancels(local):
    assert access.require_canceller(None, job("b1", "bob", "queued")) == access.LOCAL_USER


def test_visitor_paths_are_confined_on_a_space_only(space, monkeypatch, tmp_path):
    from studio.calibration import BUNDLED_DATA, OFFLINE_CALIBRATION_TEXT

    home = tmp_path / "home"
    (home / "models" / "demo").mkdir(parents=True)
    assert access.visitor_path("models/demo", "model", home) == (home / "models" / "demo").resolve()
    assert access.visitor_path(OFFLINE_CALIBRATION_TEXT, "calibration.source", home) == OFFLINE_CALIBRATION_TEXT
    for typed in ("~", "../home2", str(tmp_path), str(BUNDLED_DATA.parent)):
        with pytest.raises(ValueError, match=f"^model: '{typed}' is outside the folders the studio may read"):
            access.visitor_path(typed, "model", home)
    assert access.text_source("hf:wikitext/wikitext-2-raw-v1/train", "evaluate.source", home) == "hf:wikitext/wikitext-2-raw-v1/train"
    with pytest.raises(ValueError, match="^evaluate.source: '/etc/hosts' is outside"):
        access.text_source("/etc/hosts", "evaluate.source", home)
    with pytest.raises(ValueError, match="^evaluate.source: a path is required"):
        access.text_source("  ", "evaluate.source", home)

    monkeypatch.delenv("SPACE_ID")  # the same paths locally: expanded and resolved, not confined
    monkeypatch.chdir(home)
    assert access.visitor_path("~", "model", home) == Path.home().resolve()
    assert access.visitor_path("models/../..", "model", home) == tmp_path.resolve()
    assert access.text_source("/etc/hosts", "evaluate.source", home) == "/etc/hosts"
