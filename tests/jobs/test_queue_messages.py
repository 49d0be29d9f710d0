"""Queue messages are JSON job ids: a pickle placed in the queue is dropped unrun and logged, and the
worker goes on with the next job (SQLite and a real Redis)."""

import json
import logging
import pickle

import pytest
import redis
from huey.serializer import Serializer

from studio.jobs.client import submit
from studio.jobs.queue import JobIdSerializer, RejectedMessage, enqueue, open_queue, queued_job_ids
from studio.jobs.spec import parse_spec
from studio.jobs.store import JobStore
from studio.jobs.worker import start_embedded_worker
from studio.paths import jobs_dir

from .conftest import small_spec, studio_env, wait_for, wait_for_status

JOB_ID = "20261201-080000-a1b2c3"
REDIS_PASSWORD = "hunter2-not-for-logs"


class _CreatesFile:
    """Unpickling this object calls open(path, "w"): the file appearing means the pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def file_creating_pickle(path) -> bytes:
    return pickle.dumps(_CreatesFile(path))


def test_the_payload_runs_under_huey_s_default_serializer(tmp_path):
    """The attack the studio's serializer closes: Huey's own one would create the file."""
    target = tmp_path / "created-by-pickle"
    Serializer().deserialize(file_creating_pickle(target))
    assert target.exists()


def test_messages_are_json_holding_only_the_job_id(studio_home, demo_model_dir):
    job_id = submit(parse_spec(small_spec(demo_model_dir)), home=studio_home)
    huey, task = open_queue(studio_home)
    assert [json.loads(data) for data in huey.storage.enqueued_items()] == [{"job_id": job_id}]
    assert [message.args for message in huey.pending()] == [(job_id,)]
    with pytest.raises(TypeError, match="only job messages"):
        task(job_id, "extra argument")
    with pytest.raises(TypeError, match="only job messages"):
        enqueue(task, "../not-a-job-id")


@pytest.mark.parametrize(
    "data",
    [
        json.dumps({"job_id": "../../etc"}).encode(),
        json.dumps({"job_id": JOB_ID, "args": ["x"]}).encode(),
        json.dumps([JOB_ID]).encode(),
        json.dumps({"job_id": 7}).encode(),
        b"\x1f\x8b not gzip either",
    ],
    ids=["path-id", "extra-field", "list", "number", "binary"],
)
def test_other_data_is_rejected(data, caplog):
    with caplog.at_level(logging.WARNING, logger="studio.jobs"), pytest.raises(RejectedMessage):
        JobIdSerializer().deserialize(data)
    assert "queue: dropped a message that is not a job id" in caplog.text


def test_a_pickle_read_from_the_queue_is_rejected_unrun_and_logged(tmp_path, caplog):
    target = tmp_path / "created-by-pickle"
    payload = file_creating_pickle(target)
    with caplog.at_level(logging.WARNING, logger="studio.jobs"), pytest.raises(RejectedMessage, match="not JSON"):
        JobIdSerializer().deserialize(payload)
    assert not target.exists()
    assert f"queue: dropped a message that is not a job id ({len(payload)} bytes, starting b'\\x80" in caplog.text


def check_pickle_dropped_and_next_job_run(tmp_path, studio_home, demo_model_dir, **worker_env):
    """Queue a file-creating pickle, then a real job; a worker drops the first and runs the second."""
    target = tmp_path / "created-by-pickle"
    payload = file_creating_pickle(target)
    huey, _ = open_queue(studio_home)
    huey.storage.enqueue(payload, None)  # what an attacker with write access to the queue can do
    job_id = submit(parse_spec(small_spec(demo_model_dir)), home=studio_home)
    assert huey.pending_count() == 2
    assert queued_job_ids(huey) == {job_id}  # listing the queue does not unpickle either

    worker = start_embedded_worker(studio_home, env=studio_env(studio_home, **worker_env))
    try:
        final = wait_for_status(studio_home, job_id)
        wait_for(lambda: huey.pending_count() == 0, "the queue to drain")
    finally:
        worker.stop()
    assert final["status"] == "done", final["error"]
    assert final["attempts"] == 1
    assert not target.exists()
    worker_log = worker.log_path.read_text()
    assert f"queue: dropped a message that is not a job id ({len(payload)} bytes, starting b'\\x80" in worker_log
    assert "Traceback" not in worker_log  # one warning line, no error from Huey's consumer
    assert [s["id"] for s in JobStore(jobs_dir(studio_home)).all_jobs()] == [job_id]
    return worker_log


def test_a_pickle_in_the_sqlite_queue_is_dropped_and_the_next_job_runs(tmp_path, studio_home, demo_model_dir):
    check_pickle_dropped_and_next_job_run(tmp_path, studio_home, demo_model_dir)


def test_a_pickle_in_the_redis_queue_is_dropped_and_the_next_job_runs(
    tmp_path, studio_home, demo_model_dir, redis_url, monkeypatch
):
    # A Redis user with a password, so the worker's log shows that the password is never printed.
    redis.Redis.from_url(redis_url).acl_setuser(
        "studio", enabled=True, passwords=[f"+{REDIS_PASSWORD}"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    url = redis_url.replace("redis://", f"redis://studio:{REDIS_PASSWORD}@")
    monkeypatch.setenv("STUDIO_REDIS_URL", url)
    worker_log = check_pickle_dropped_and_next_job_run(
        tmp_path, studio_home, demo_model_dir, STUDIO_REDIS_URL=url
    )
    assert f"from the Redis queue at STUDIO_REDIS_URL={redis_url.replace('redis://', 'redis://studio:***@')}" in worker_log
    assert REDIS_PASSWORD not in worker_log
    assert not (studio_home / "queue.sqlite3").exists()
