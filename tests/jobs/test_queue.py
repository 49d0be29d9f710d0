"""The Huey queue without a worker: order, priorities, recovery of lost messages, errors."""

import re
import socket
import time

import pytest

from studio.jobs.client import submit
from studio.jobs.queue import RESUME_PRIORITY, enqueue, open_queue, queued_job_ids, recover_orphaned_jobs
from studio.jobs.spec import parse_spec
from studio.jobs.store import JobStore
from studio.paths import jobs_dir

from .conftest import dead_pid, small_spec, studio_cli


@pytest.fixture()
def spec(demo_model_dir):
    return parse_spec(small_spec(demo_model_dir))


def pending_ids(huey) -> list[str]:
    return [message.args[0] for message in huey.pending()]


def test_jobs_wait_in_submission_order_and_resumed_ones_go_first(studio_home, spec):
    first = submit(spec, home=studio_home)
    second = submit(spec, home=studio_home)
    huey, task = open_queue(studio_home)
    assert pending_ids(huey) == [first, second]
    resumed = "20261201-000000-00beef"
    enqueue(task, resumed, RESUME_PRIORITY)
    assert pending_ids(huey) == [resumed, first, second]
    assert (studio_home / "queue.sqlite3").is_file()


def test_recovery_requeues_jobs_whose_messages_were_lost(studio_home, spec):
    store = JobStore(jobs_dir(studio_home))
    huey, task = open_queue(studio_home)
    orphaned = store.create(spec)
    store.claim(orphaned, {"host": socket.gethostname(), "pid": dead_pid(), "heartbeat": time.time()})
    lost = store.create(spec)  # queued in the store, but its message is gone
    waiting = submit(spec, home=studio_home)
    finished = store.create(spec)
    store.finish(finished, "done")

    assert recover_orphaned_jobs(huey, task, store) == [orphaned, lost]
    assert pending_ids(huey) == [orphaned, waiting, lost]
    assert store.get(orphaned)["status"] == "queued" and store.get(orphaned)["owner"] is None
    assert queued_job_ids(huey) == {orphaned, lost, waiting}
    assert recover_orphaned_jobs(huey, task, store) == []  # nothing is queued twice


def test_an_unreachable_redis_fails_submit_naming_it_without_its_password(studio_home, monkeypatch, spec):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    monkeypatch.setenv("STUDIO_REDIS_URL", f"redis://worker:s3cret-pw@127.0.0.1:{port}/0")
    with pytest.raises(ValueError) as caught:
        submit(spec, home=studio_home)
    assert re.match(rf"queue: cannot add job \S+ to the Redis queue at STUDIO_REDIS_URL=redis://worker:\*\*\*@127.0.0.1:{port}/0: ", str(caught.value))
    assert "s3cret-pw" not in str(caught.value)
    assert JobStore(jobs_dir(studio_home)).all_jobs() == []


def test_a_worker_that_cannot_reach_redis_says_so_in_one_line_without_the_password(studio_home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = studio_cli(studio_home, "worker", STUDIO_REDIS_URL=f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: queue: cannot read the Redis queue at STUDIO_REDIS_URL=redis://:***@127.0.0.1:{port}/0: "
    )
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_a_malformed_redis_url_is_named_without_its_password(studio_home, monkeypatch, spec):
    monkeypatch.setenv("STUDIO_REDIS_URL", "http://:s3cret-pw@queue.example:6379/0")
    with pytest.raises(ValueError) as caught:
        submit(spec, home=studio_home)
    assert str(caught.value).startswith("queue: STUDIO_REDIS_URL=http://:***@queue.example:6379/0 is not a Redis URL: ")
    assert "s3cret-pw" not in str(caught.value)
    assert JobStore(jobs_dir(studio_home)).all_jobs() == []


def test_an_unwritable_queue_file_is_named(studio_home, spec):
    studio_home.mkdir(parents=True)
    (studio_home / "queue.sqlite3").mkdir()  # a folder where the database file should be
    with pytest.raises(ValueError, match=rf"^queue: cannot open the SQLite queue {studio_home / 'queue.sqlite3'}"):
        submit(spec, home=studio_home)
    assert JobStore(jobs_dir(studio_home)).all_jobs() == []

