"""Who may do what in the studio's UI: sign-in on a Hugging Face Space, nothing locally.

On a Space (the `SPACE_ID` environment variable is set) anyone can open the studio. Anonymous
visitors browse presets and finished results; submitting and cancelling jobs (one's own), chatting,
starting servers and pushing to the Hub need a Hugging Face sign-in, each user has a limit on jobs
waiting or running, and typed paths are confined (`visitor_path`). Run locally, the studio is one
person's tool: no sign-in, no limit, any path.

Event handlers get the visitor from Gradio by declaring a parameter annotated
`gr.OAuthProfile | None` (or `gr.OAuthToken | None`): Gradio fills it from the session cookie
that `gr.LoginButton` sets, or passes None. Typical use:

    def on_submit(spec, profile: gr.OAuthProfile | None):
        store = job_store(ctx.home)                      # studio.jobs.client
        user = access.require_submitter(profile, store.all_jobs())
        job_id = submit(spec, ctx.home)                  # studio.jobs.client.submit
        access.record_submitter(store, job_id, user)

    def on_push(name, repo_id, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
        access.require_user(profile, action="publish to the Hub")
        folder = studio_path(f"exports/{name}", "export", home=ctx.home)   # studio.safety
        push_export(folder, repo_id, token=access.hub_token(oauth_token))  # studio.export.hub
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import gradio as gr

from studio.safety import HUB_TEXT_PREFIX, confine, expand_path, readable_roots

SPACE_ENV = "SPACE_ID"
# The state.json field naming who submitted a job (the signed-in user's Hub name, or LOCAL_USER).
SUBMITTER_FIELD = "submitted_by"
LOCAL_USER = "local"
# Jobs a signed-in user may have queued or running at once on a Space; `STUDIO_MAX_ACTIVE_JOBS`
# overrides it.
MAX_ACTIVE_JOBS_ENV = "STUDIO_MAX_ACTIVE_JOBS"
DEFAULT_MAX_ACTIVE_JOBS = 2
ACTIVE_STATUSES = ("queued", "running")
SIGN_IN_MESSAGE = (
    "Sign in with Hugging Face (the button at the top of the page) to {action}. "
    "Presets and finished results can be browsed without signing in."
)


def on_space() -> bool:
    """Whether the studio runs on a Hugging Face Space (which sets `SPACE_ID`)."""
    return bool(os.environ.get(SPACE_ENV, "").strip())


def login_button() -> gr.LoginButton | None:
    """The "Sign in with Hugging Face" button, on a Space; None locally (nothing to sign in to).

    Call it inside the page's `gr.Blocks`. A page holding a LoginButton makes Gradio add its OAuth
    routes, which need `hf_oauth: true` in the Space's README front matter (the Space then sets
    OAUTH_CLIENT_ID and friends).
    """
    if not on_space():
        return None
    if not os.environ.get("OAUTH_CLIENT_ID"):
        raise RuntimeError(
            "SPACE_ID is set but OAUTH_CLIENT_ID is not: add `hf_oauth: true` to the Space's README front matter"
        )
    # Gradio uses the real Hugging Face OAuth routes only where SYSTEM=spaces, which Docker Spaces
    # do not set; without it Gradio would install its local mock, which needs a local HF login.
    os.environ.setdefault("SYSTEM", "spaces")
    return gr.LoginButton()


def current_user(profile: gr.OAuthProfile | None) -> str | None:
    """The signed-in user's Hub name on a Space (None if anonymous); LOCAL_USER locally."""
    if not on_space():
        return LOCAL_USER
    return profile.username if profile is not None else None


def require_user(profile: gr.OAuthProfile | None, action: str = "submit jobs or start servers") -> str:
    """The user's name, or a `gr.Error` asking an anonymous Space visitor to sign in."""
    user = current_user(profile)
    if user is None:
        raise gr.Error(SIGN_IN_MESSAGE.format(action=action), title="Sign-in required")
    return user


def visitor_path(user_path: str | Path, field: str, home: str | Path) -> Path:
    """A path typed into a form: `~` expanded, `..` and symlinks resolved; on a Space it must lie
    inside `studio.safety.readable_roots(home)` (relative paths start at `home`). Locally the
    studio is its user's own tool: any path, relative to the working folder. ValueError naming
    `field` otherwise."""
    if on_space():
        return confine(user_path, field, readable_roots(home))
    return expand_path(user_path, field)


def text_source(source: str, field: str, home: str | Path) -> str:
    """A calibration or evaluation text as a job spec takes it: a hub dataset (`hf:...`) as typed,
    a file path through `visitor_path`."""
    source = (source or "").strip()
    if source.startswith(HUB_TEXT_PREFIX):
        return source
    return str(visitor_path(source, field, home))


def require_canceller(profile: gr.OAuthProfile | None, state: Mapping) -> str:
    """The user who may cancel the job `state`: on a Space, its submitter (signed in); locally anyone."""
    user = require_user(profile, action="cancel jobs")
    if not on_space():
        return user
    submitter = state.get(SUBMITTER_FIELD)
    if submitter != user:
        owner = f"by {submitter}" if submitter else "outside this page (no submitter recorded)"
        raise gr.Error(
            f"job {state.get('id')}: it was submitted {owner}; only its submitter may cancel it",
            title="Not your job",
        )
    return user


def max_active_jobs() -> int:
    raw = os.environ.get(MAX_ACTIVE_JOBS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ACTIVE_JOBS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_ACTIVE_JOBS_ENV}: must be a positive integer, got {raw!r}")
    return int(raw)


def active_jobs_of(user: str, jobs: Iterable[Mapping]) -> list[str]:
    """Ids of the user's jobs that are queued or running (`jobs`: job states, as `JobStore.all_jobs()`)."""
    return [job["id"] for job in jobs if job.get(SUBMITTER_FIELD) == user and job.get("status") in ACTIVE_STATUSES]


def require_submitter(profile: gr.OAuthProfile | None, jobs: Iterable[Mapping]) -> str:
    """The user who may submit one more job now: signed in (on a Space) and under the job limit.

    Returns the name to record as the job's submitter. Locally there is no limit.
    """
    user = require_user(profile, action="submit jobs")
    if not on_space():
        return user
    limit = max_active_jobs()
    active = active_jobs_of(user, jobs)
    if len(active) >= limit:
        raise gr.Error(
            f"{user} already has {len(active)} jobs queued or running ({', '.join(active)}); the limit is "
            f"{limit}. Wait for one to finish or cancel one, then submit again.",
            title="Job limit reached",
        )
    return user


def record_submitter(store, job_id: str, user: str) -> None:
    """Write who submitted a job into its state (`store`: a `studio.jobs.store.JobStore`).

    Every later state change copies the state forward, so the field stays for the job's life.
    """
    store.update(job_id, **{SUBMITTER_FIELD: user})


def hub_token(oauth_token: gr.OAuthToken | None) -> str | None:
    """The token to push with: the visitor's OAuth token on a Space (sign-in required); None locally,
    so that `studio.export.hub` uses the local login (HF_TOKEN or `hf auth login`)."""
    if not on_space():
        return None
    if oauth_token is None:
        raise gr.Error(SIGN_IN_MESSAGE.format(action="publish to the Hub"), title="Sign-in required")
    return oauth_token.token
