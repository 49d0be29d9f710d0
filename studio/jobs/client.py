"""What submitters (the CLI, the UI) call: submit, run in-process, retry, cancel, list."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from studio.jobs.queue import enqueue, open_queue
from studio.jobs.spec import JobSpec, load_spec
from studio.jobs.store import JobStore, this_worker
from studio.paths import jobs_dir, studio_home


def job_store(home: Path | None = None) -> JobStore:
    return JobStore(jobs_dir(home or studio_home()))


def _as_spec(spec: JobSpec | str | Path) -> JobSpec:
    return spec if isinstance(spec, JobSpec) else load_spec(spec)


def submit(spec: JobSpec | str | Path, home: Path | None = None) -> str:
    """Validate the spec, create the job folder and queue it; returns the job id.

    An invalid spec raises ValueError naming the field before anything is created. If the queue
    cannot be reached, the new job folder is removed again and the error is raised.
    """
    home = home or studio_home()
    job_spec = _as_spec(spec)
    store = job_store(home)
    job_id = store.create(job_spec)
    try:
        _, task = open_queue(home)
        enqueue(task, job_id)
    except Exception:
        shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
        raise
    return job_id


def run_in_process(
    spec: JobSpec | str | Path,
    home: Path | None = None,
    device: str | None = None,
    echo: bool = True,
    raise_failure: bool = False,
    **runner_options,
) -> tuple[str, str]:
    """Run a spec in this process, without the queue; returns (job id, final status).

    The job gets a folder like a queued one (state, log, stage outputs), so `jobs` and `job ID`
    show it. If this process dies mid-run, the next worker that starts resumes the job. `echo`
    copies the job's log to stderr; with `raise_failure` a failed job raises the exception that
    failed it (after it is recorded); `runner_options` go to `StageRunner` (exports, on_stage,
    on_progress).
    """
    from studio.jobs.stages import StageRunner

    home = home or studio_home()
    job_spec = _as_spec(spec)
    store = job_store(home)
    job_id = store.create(job_spec)
    store.claim(job_id, this_worker())
    handler = logging.FileHandler(store.log_path(job_id), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handlers = [handler]
    if echo:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(console)
    logger = logging.getLogger("studio.jobs")
    previous = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # libraries may have put handlers on the root logger
    for each in handlers:
        logger.addHandler(each)
    try:
        runner = StageRunner(store, job_id, home, device=device, **runner_options)
        status = runner.run()
    finally:
        for each in handlers:
            logger.removeHandler(each)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]
        handler.close()
    if raise_failure and runner.failure is not None:
        raise runner.failure
    return job_id, status


def retry(job_id: str, home: Path | None = None) -> dict:
    """Queue a failed or cancelled job again; returns its new state.

    The job keeps its id, folder, log and attempt count. Its finished stages are not run again:
    the stage runner reuses every stage folder whose fingerprint still matches the spec and code,
    so the job resumes at the stage that failed (or was cancelled). Other statuses are a
    ValueError; if the queue cannot be reached, the job is left as it was and the error raised.
    """
    home = home or studio_home()
    store = job_store(home)
    before = store.requeue(job_id)
    # Logged before the message goes out, so the log reads in order even if a worker is quick.
    store.append_log(job_id, "retry", f"queued again (it was {before['status']}); finished stages are reused")
    try:
        _, task = open_queue(home)
        enqueue(task, job_id)
    except Exception as err:
        store.restore(job_id, before)
        store.append_log(job_id, "retry", f"could not queue the job, it stays {before['status']}: {err}")
        raise
    return store.get(job_id)


def cancel(job_id: str, home: Path | None = None) -> dict:
    """Cancel a job: a queued one never starts, a running one stops at its next layer boundary."""
    return job_store(home).request_cancel(job_id)
