"""Job folders and state transitions; STUDIO_HOME resolution."""

import json
import time
from pathlib import Path

import pytest

from studio.jobs.spec import parse_spec
from studio.jobs.store import STALE_HEARTBEAT_S, JobStore, UnknownJob, describe, owner_is_alive, this_worker
from studio.paths import default_studio_home, exports_dir, jobs_dir, queue_db_path, studio_home

from .conftest import dead_pid, small_spec


@pytest.fixture()
def store(tmp_path):
    return JobStore(tmp_path / "jobs")


@pytest.fixture()
def spec(demo_model_dir):
    return parse_spec(small_spec(demo_model_dir))


def test_create_writes_a_complete_job_folder(store, spec):
    job_id = store.create(spec)
    folder = store.job_dir(job_id)
    assert sorted(p.name for p in folder.iterdir()) == ["job.log", "spec.json", "state.json"]
    assert store.spec(job_id) == spec
    state = store.get(job_id)
    assert (state["status"], state["attempts"], state["output"]) == ("queued", 0, "demo-lite")
    assert [s["id"] for s in store.all_jobs()] == [job_id]


def test_jobs_are_listed_in_submission_order(store, spec):
    ids = [store.create(spec) for _ in range(3)]
    assert [s["id"] for s in store.all_jobs()] == ids


def test_unknown_job_ids_are_rejected(store):
    with pytest.raises(UnknownJob, match="job: no job 'nope'"):
        store.get("nope")
    with pytest.raises(UnknownJob, match="not a job id"):
        store.job_dir("../escape")


def test_claim_cancel_and_finish(store, spec):
    me = this_worker()
    queued = store.create(spec)
    assert store.request_cancel(queued)["status"] == "cancelled"
    assert store.claim(queued, me) is False  # a cancelled job never starts
    assert store.get(queued)["attempts"] == 0

    job_id = store.create(spec)
    assert store.claim(job_id, me) is True
    assert store.claim(job_id, me) is False  # held by a live owner: a duplicate message is skipped
    state = store.request_cancel(job_id)
    assert (state["status"], state["cancel_requested"]) == ("running", True)
    assert store.finish(job_id, "cancelled")["status"] == "cancelled"
    assert store.request_cancel(job_id)["status"] == "cancelled"  # finished jobs stay as they are


def test_a_running_job_of_a_dead_worker_can_be_claimed_again(store, spec):
    job_id = store.create(spec)
    dead = {"host": this_worker()["host"], "pid": dead_pid(), "heartbeat": time.time()}
    assert store.claim(job_id, dead)
    assert not owner_is_alive(dead)
    assert store.claim(job_id, this_worker())
    assert store.get(job_id)["attempts"] == 2


def test_owner_liveness_uses_the_heartbeat_across_hosts():
    now = time.time()
    remote = {"host": "some-other-host", "pid": 1, "heartbeat": now}
    assert owner_is_alive(remote, now)
    assert not owner_is_alive(remote, now + STALE_HEARTBEAT_S + 1)
    assert owner_is_alive(this_worker())
    assert not owner_is_alive(None)


def test_describe_estimates_the_stage_time_left():
    state = {
        "status": "running",
        "started_at": 1000.0,
        "finished_at": None,
        "progress": {"stage": "statistics", "done": 2, "total": 8, "unit": "layers", "stage_started_at": 1010.0},
    }
    assert describe(state, now=1030.0) == {"elapsed_s": 30.0, "eta_s": 60.0}
    assert describe({**state, "status": "done", "finished_at": 1050.0}, now=2000.0) == {"elapsed_s": 50.0, "eta_s": None}


def test_state_is_replaced_atomically(store, spec):
    job_id = store.create(spec)
    store.update(job_id, stage="calibrate")
    folder = store.job_dir(job_id)
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".state.json")]
    assert leftovers == []
    assert json.loads((folder / "state.json").read_text())["stage"] == "calibrate"


def test_studio_home_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "elsewhere"))
    assert studio_home() == (tmp_path / "elsewhere").resolve()
    assert jobs_dir() == studio_home() / "jobs"
    assert exports_dir() == studio_home() / "exports"
    assert queue_db_path() == studio_home() / "queue.sqlite3"


def test_default_studio_home_is_in_the_users_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("STUDIO_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert studio_home() == (tmp_path / "data" / "gemma-lite-studio").resolve()
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_studio_home() == Path.home() / ".local" / "share" / "gemma-lite-studio"

