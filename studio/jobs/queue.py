"""The job queue: Huey with SQLite storage under STUDIO_HOME, or Redis when STUDIO_REDIS_URL is set.

The queue carries only job ids; everything else about a job is in its folder (store.py). Huey
delivers a message at most once (it is removed when a worker takes it), so a worker killed mid-job
loses its message: `recover_orphaned_jobs` puts such jobs back in the queue when a worker starts.
Messages are idempotent (a worker claims the job folder before running it), so a job enqueued twice
still runs once.

A message is the JSON object `{"job_id": "<id>"}`, never a pickle (Huey's default serializer
unpickles whatever it reads, so anyone able to write to the queue could run code in the worker).
Anything else found in the queue is dropped unread and logged, and the worker goes on.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from huey import PriorityRedisHuey, SqliteHuey
from huey.api import Huey
from huey.registry import Message
from huey.serializer import Serializer

try:  # redis is only needed with STUDIO_REDIS_URL
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - without redis, no Redis errors can occur
    RedisError = OSError

from studio.jobs.store import JOB_ID_PATTERN, JobStore, owner_is_alive
from studio.paths import queue_db_path
from studio.redaction import redact_url

REDIS_URL_ENV = "STUDIO_REDIS_URL"
QUEUE_NAME = "gemma-lite-studio"
TASK_NAME = "run_job"
# Huey names a task "<module of its function>.<name>"; the job task's function is defined here.
TASK_MESSAGE_NAME = f"{__name__}.{TASK_NAME}"
# Interrupted jobs go back in front of the queue: they were submitted before anything waiting.
RESUME_PRIORITY = 10
# How much of a rejected message the log shows (enough to recognise a pickle: it starts b"\x80").
SHOWN_BYTES = 16

log = logging.getLogger("studio.jobs")


class RejectedMessage(ValueError):
    """Queue data that is not a job id in JSON; it is dropped without being interpreted further."""


def message_job_id(data: bytes) -> str:
    """The job id in a queue message, or RejectedMessage for anything else (a pickle included)."""
    try:
        decoded = json.loads(data)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError (a pickle is not UTF-8)
        raise RejectedMessage(f"not JSON ({err})") from None
    job_id = decoded.get("job_id") if isinstance(decoded, dict) and set(decoded) == {"job_id"} else None
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise RejectedMessage(f"JSON that is not {{\"job_id\": <job id>}}: {str(decoded)[:80]!r}")
    return job_id


class JobIdSerializer(Serializer):
    """Huey's message format for the studio: `{"job_id": ...}` in JSON, nothing else either way."""

    def serialize(self, data) -> bytes:
        if not (
            isinstance(data, Message)
            and data.name == TASK_MESSAGE_NAME
            and len(data.args or ()) == 1
            and not data.kwargs
            and isinstance(data.args[0], str)
            and JOB_ID_PATTERN.fullmatch(data.args[0])
        ):
            raise TypeError(f"queue: only job messages ({TASK_NAME}(job id)) go in the studio's queue, got {data!r}")
        return json.dumps({"job_id": data.args[0]}).encode()

    def deserialize(self, data: bytes) -> Message:
        try:
            job_id = message_job_id(data)
        except RejectedMessage as err:
            log.warning(
                "queue: dropped a message that is not a job id (%d bytes, starting %r): %s; it was not run",
                len(data), bytes(data[:SHOWN_BYTES]), err,
            )
            raise
        return Message(name=TASK_MESSAGE_NAME, args=(job_id,), kwargs={})


class _DropsRejectedMessages:
    """A dequeued message the serializer rejected (and logged) counts as no message: the consumer
    goes on to the next one without logging a traceback for it."""

    def dequeue(self):
        try:
            return super().dequeue()
        except RejectedMessage:
            return None


class JobSqliteHuey(_DropsRejectedMessages, SqliteHuey):
    """The SQLite queue under STUDIO_HOME."""


class JobRedisHuey(_DropsRejectedMessages, PriorityRedisHuey):
    """The Redis queue at STUDIO_REDIS_URL (priorities: FIFO within one, resumed jobs first)."""


def open_queue(home: Path, run_job: Callable[[str], None] | None = None) -> tuple[Huey, Callable]:
    """The Huey instance for `home` and its job task.

    `run_job(job_id)` is what a worker executes; submitters leave it None (only the task's name
    travels in a message). Huey keeps no results: job state lives in the job store.
    """
    redis_url = os.environ.get(REDIS_URL_ENV, "").strip()
    if redis_url:
        # The priority variant keeps FIFO order within a priority and lets resumed jobs go first.
        try:
            huey = JobRedisHuey(QUEUE_NAME, url=redis_url, results=False, serializer=JobIdSerializer())
        except ValueError as err:  # a malformed URL; redis-py's message does not repeat the URL
            raise ValueError(f"queue: {REDIS_URL_ENV}={redact_url(redis_url)} is not a Redis URL: {err}") from err
    else:
        db_path = queue_db_path(home)
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            huey = JobSqliteHuey(QUEUE_NAME, filename=str(db_path), results=False, serializer=JobIdSerializer())
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
    return f"the Redis queue at {REDIS_URL_ENV}={redact_url(os.environ.get(REDIS_URL_ENV, '').strip())}"


def queued_job_ids(huey: Huey) -> set[str]:
    """Job ids with a message waiting in the queue (messages that are not job ids are left out)."""
    try:
        waiting = huey.storage.enqueued_items()
    except (OSError, sqlite3.Error, RedisError) as err:
        raise ValueError(f"queue: cannot read {queue_location(huey)}: {err}") from err
    ids = set()
    for data in waiting:
        try:
            ids.add(message_job_id(data))
        except RejectedMessage:
            continue  # the worker drops and logs it when it comes up
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

