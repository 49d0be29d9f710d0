"""Job folders and their state, readable from any process.

Each job lives in `STUDIO_HOME/jobs/<id>/`:
    spec.json     the normalised spec (never changes after submit)
    state.json    status, stage, progress, error, owner; replaced atomically on every change
    job.log       everything the job printed or logged
    stages/<name>/  each finished stage's output and its fingerprint.json, one folder per stage
                    (calibrate, statistics, prune, quantize, export, evaluate; see stages.py)

Readers (UI, CLI) just read state.json: a rename replaces it, so a reader sees the old or the new
version, never half of one. Writers (the worker, `cancel`) change it read-modify-write under a
file lock, so a cancel cannot be lost between a worker's two updates.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from studio.atomic import atomic_directory, atomic_write_text
from studio.jobs.spec import JobSpec
from studio.paths import jobs_dir

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATUSES = ("done", "failed", "cancelled")
RETRYABLE_STATUSES = ("failed", "cancelled")
# A running job whose owner has not written a heartbeat for this long is presumed orphaned.
STALE_HEARTBEAT_S = 120.0


class UnknownJob(ValueError):
    pass


# What `new_job_id` makes; the queue accepts nothing else as a message.
JOB_ID_PATTERN = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def new_job_id() -> str:
    """Sortable by submission time, unique across processes: 20261129-012345-a1b2c3."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def this_worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}


def owner_is_alive(owner: dict | None, now: float | None = None) -> bool:
    """Whether the process that claimed a job still runs (pid check on this host, else heartbeat)."""
    if not owner:
        return False
    now = time.time() if now is None else now
    if now - owner.get("heartbeat", 0) > STALE_HEARTBEAT_S:
        return False
    if owner.get("host") == socket.gethostname():
        return _pid_alive(owner.get("pid", -1))
    return True


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class JobStore:
    """The job folders under `STUDIO_HOME/jobs`."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else jobs_dir()

    # -- locations -------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise UnknownJob(f"job: not a job id: {job_id!r}")
        return self.root / job_id

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "job.log"

    def _state_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "state.json"

    # -- create and read -------------------------------------------------------------------

    def create(self, spec: JobSpec) -> str:
        """Make the job folder (spec, initial state, empty log) in one rename; return the job id."""
        job_id = new_job_id()
        now = time.time()
        state = {
            "id": job_id,
            "output": spec.output,
            "model": spec.model,
            "status": "queued",
            "stage": None,
            "progress": None,
            "stages": {},
            "submitted_at": now,
            "started_at": None,
            "finished_at": None,
            "error": None,
            "cancel_requested": False,
            "owner": None,
            "attempts": 0,
        }
        with atomic_directory(self.job_dir(job_id), overwrite=False) as staging:
            (staging / "spec.json").write_text(spec.to_json())
            (staging / "state.json").write_text(json.dumps(state, indent=2))
            (staging / "job.log").touch()
        return job_id

    def spec(self, job_id: str) -> JobSpec:
        return JobSpec.from_dict(json.loads((self.job_dir(job_id) / "spec.json").read_text()))

    def get(self, job_id: str) -> dict:
        path = self._state_path(job_id)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise self._unknown(job_id) from None

    def _unknown(self, job_id: str) -> UnknownJob:
        return UnknownJob(f"job: no job {job_id!r} in {self.root}")

    def exists(self, job_id: str) -> bool:
        return self._state_path(job_id).is_file()

    def all_jobs(self) -> list[dict]:
        """Every job's state, oldest submission first."""
        if not self.root.is_dir():
            return []
        states = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not (entry / "state.json").is_file():
                continue  # staging folders of jobs being created
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                states.append(json.loads((entry / "state.json").read_text()))
        return sorted(states, key=lambda s: (s["submitted_at"], s["id"]))

    def append_log(self, job_id: str, source: str, line: str) -> None:
        """Add one timestamped line to the job's log, saying who wrote it (worker, retry, ...)."""
        with open(self.log_path(job_id), "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {source} {line}\n")

    def log_tail(self, job_id: str, lines: int = 20) -> list[str]:
        path = self.log_path(job_id)
        if not path.is_file():
            return []
        with path.open(encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]

    # -- change ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, job_id: str) -> Iterator[None]:
        if not self.exists(job_id):  # FileLock would create the folder of an unknown id
            raise self._unknown(job_id)
        with FileLock(str(self.job_dir(job_id) / ".state.lock")):
            yield

    def modify(self, job_id: str, change: Callable[[dict], dict | None]) -> dict | None:
        """Apply `change` to the state under the job's lock.

        `change` gets the current state and returns the new one, or None to leave it unchanged;
        `modify` returns what `change` returned.
        """
        with self._locked(job_id):
            new_state = change(self.get(job_id))
            if new_state is not None:
                atomic_write_text(self._state_path(job_id), json.dumps(new_state, indent=2))
            return new_state

    def update(self, job_id: str, **fields) -> dict:
        return self.modify(job_id, lambda state: {**state, **fields})

    def claim(self, job_id: str, owner: dict) -> bool:
        """Take a job for running: queued ones, and running ones whose owner died.

        Returns False for jobs that are cancelled, finished, or run by a live worker (a duplicate
        queue message is then harmless).
        """

        def take(state: dict) -> dict | None:
            if state["status"] == "running" and owner_is_alive(state.get("owner")):
                return None
            if state["status"] not in ("queued", "running"):
                return None
            if state["cancel_requested"]:
                return {**state, "status": "cancelled", "finished_at": time.time()}
            return {
                **state,
                "status": "running",
                "owner": owner,
                "started_at": state["started_at"] or time.time(),
                "attempts": state["attempts"] + 1,
                "error": None,
            }

        new_state = self.modify(job_id, take)
        return new_state is not None and new_state["status"] == "running"

    def heartbeat(self, job_id: str, owner: dict) -> None:
        def beat(state: dict) -> dict | None:
            current = state.get("owner") or {}
            if state["status"] != "running" or current.get("pid") != owner["pid"]:
                return None
            return {**state, "owner": {**current, "heartbeat": time.time()}}

        self.modify(job_id, beat)

    def request_cancel(self, job_id: str) -> dict:
        """Cancel a job: a queued one at once, a running one at its next layer boundary."""

        def cancel(state: dict) -> dict | None:
            if state["status"] in FINAL_STATUSES:
                return None
            if state["status"] == "queued":
                return {**state, "status": "cancelled", "cancel_requested": True, "finished_at": time.time()}
            return {**state, "cancel_requested": True}

        self.modify(job_id, cancel)
        return self.get(job_id)

    def requeue(self, job_id: str) -> dict:
        """Make a failed or cancelled job queued again, keeping its folder, finished stages and attempts.

        Returns the state before the change. Any other status is a ValueError naming it: a done
        job has nothing to redo, a queued or running one is still under way.
        """
        before: dict = {}

        def retry(state: dict) -> dict:
            if state["status"] not in RETRYABLE_STATUSES:
                raise ValueError(
                    f"job: {job_id} is {state['status']}; only {' or '.join(RETRYABLE_STATUSES)} jobs can be retried"
                )
            before.update(state)
            return {
                **state,
                "status": "queued",
                "error": None,
                "cancel_requested": False,
                "progress": None,
                "owner": None,
                "started_at": None,
                "finished_at": None,
            }

        self.modify(job_id, retry)
        return before

    def restore(self, job_id: str, state: dict) -> None:
        """Undo `requeue` (the job could not be queued): put back `state` while the job still waits.

        A job a worker has taken meanwhile (through an older message still in the queue) is left
        as it is.
        """
        self.modify(job_id, lambda current: state if current["status"] == "queued" else None)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.get(job_id).get("cancel_requested"))

    def finish(self, job_id: str, status: str, error: dict | None = None) -> dict:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status: must be one of {', '.join(FINAL_STATUSES)}, got {status!r}")
        return self.update(job_id, status=status, error=error, finished_at=time.time(), progress=None)


def describe(state: dict, now: float | None = None) -> dict:
    """Elapsed seconds and estimated seconds left of a job (estimates cover the current stage)."""
    now = time.time() if now is None else now
    started, finished = state.get("started_at"), state.get("finished_at")
    elapsed = None if started is None else (finished or now) - started
    eta = None
    progress = state.get("progress")
    if state["status"] == "running" and progress and progress.get("done"):
        stage_elapsed = now - progress["stage_started_at"]
        eta = stage_elapsed / progress["done"] * (progress["total"] - progress["done"])
    return {"elapsed_s": elapsed, "eta_s": eta}
