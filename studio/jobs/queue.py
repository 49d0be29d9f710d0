"""The job queue: Huey with SQLite storage under STUDIO_HOME, or Redis when STUDIO_REDIS_URL is set.

The queue carries only job ids; everything else about a job is in its folder (store.py). Huey
delivers a message at most once (it is removed when a worker takes it), so a worker killed mid-job
loses its message: `recover_orphaned_jobs` puts such jobs back in the queue when a worker starts.
Messages are idempotent (a worker claims the job folder before running it), so a job enqueued twice
still runs once.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from huey import PriorityRedisHuey, SqliteHuey
from huey.api import Huey

try:  # redis is only needed with STUDIO_REDIS_URL
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - without redis, no Redis errors can occur
    RedisError = OSError

from studio.jobs.store import JobStore, owner_is_alive
from studio.paths import queue_db_path

REDIS_URL_ENV = "STUDIO_REDIS_URL"
QUEUE_NAME = "gemma-lite-studio"
TASK_NAME = "run_job"
# Interrupted jobs go back in front of the queue: they were submitted before anything waiting.
RESUME_PRIORITY = 10

log = logging.getLogger("studio.jobs")


def open_queue(home: Path, run_job: Callable[[str], None] | None = None) -> tuple[Huey, Callable]:
    """The Huey instance for `home` and its job task.

    `run_job(job_id)` is what a worker executes; submitters leave it None (only the task's name
    travels in a message). Huey keeps no results: job state lives in the job store.
    """
    redis_url = os.environ.get(REDIS_URL_ENV, "").strip()
    if redis_url:
        # The priority variant keeps FIFO order within a priority and lets resumed jobs go first.
        huey = PriorityRedisHuey(QUEUE_NAME, url=redis_url, results=False)
    else:
        db_path = queue_db_path(home)
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            huey = SqliteHuey(QUEUE_NAME, filename=str(db_path), results=False)
        except (OSError, sqlite3.Error) as err:
            raise ValueError(f"queue: cannot open the SQLite queue {db_path}: {err}") from err

    def run_job_task(job_id: str) -> None:
        if run_job is None:
            raise RuntimeError("this queue handle submits jobs only")
        run_job(job_id)

    task = huey.task(name=TASK_NAME)(run_job_task)
    return huey, task


def enqueue(task, job_id: str, priority: int = 0) -> None:
    """Put a job id in the queue; higher priorities are taken first, equal ones in FIFO order.

    An unreachable or unwritable queue raises ValueError naming it (STUDIO_REDIS_URL or the
    SQLite file), since the fix is in the configuration.
    """
    try:
        task(job_id, priority=priority or None)
    except (OSError, sqlite3.Error, RedisError) as err:
        raise ValueError(f"queue: cannot add job {job_id} to {queue_location(task.huey)}: {err}") from err


def queue_location(huey: Huey) -> str:
    if isinstance(huey, SqliteHuey):
        return f"the SQLite queue {huey.storage.filename}"
    return f"the Redis queue at {REDIS_URL_ENV}={os.environ.get(REDIS_URL_ENV, '')}"


def queued_job_ids(huey: Huey) -> set[str]:
    """Job ids with a message waiting in the queue."""
    ids = set()
    for message in huey.pending():
        if message.args:
            ids.add(message.args[0])
    return ids


def recover_orphaned_jobs(huey: Huey, task, store: JobStore) -> list[str]:
    """Re-enqueue jobs whose message was lost: running ones with a dead owner, queued ones not queued.

    Returns the job ids put back, in submission order.
    """
    waiting = queued_job_ids(huey)
    recovered = []
    for state in store.all_jobs():
        job_id = state["id"]
        if state["status"] == "running" and not owner_is_alive(state.get("owner")):
            log.info("job %s: its worker stopped mid-run; queueing it to resume", job_id)
            store.update(job_id, status="queued", owner=None, progress=None)
            enqueue(task, job_id, RESUME_PRIORITY)
            recovered.append(job_id)
        elif state["status"] == "queued" and job_id not in waiting:
            log.info("job %s: queued but missing from the queue; queueing it again", job_id)
            enqueue(task, job_id)
            recovered.append(job_id)
    return recovered

