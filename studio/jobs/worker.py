"""The worker: a process that takes jobs from the queue and runs them one at a time.

The worker itself never initialises CUDA. Each job runs in a fresh process started with the `spawn`
method, so no CUDA state is ever inherited through fork, GPU memory is returned when the job ends,
and a crash inside a job (out of memory, a segfault in a kernel) cannot take the worker down. The
job process dies with its worker (Linux PR_SET_PDEATHSIG), so a worker killed with SIGKILL leaves no
job running behind it; the next worker resumes the job from its first unfinished stage.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from studio.jobs.queue import RESUME_PRIORITY, enqueue, open_queue, queue_location, recover_orphaned_jobs
from studio.jobs.store import JobStore, this_worker
from studio.paths import HOME_ENV, jobs_dir, logs_dir, studio_home

log = logging.getLogger("studio.jobs")

HEARTBEAT_S = 5.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class Worker:
    """Consumes the queue of one STUDIO_HOME; runs each job in a spawned child process."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else studio_home()
        self.store = JobStore(jobs_dir(self.home))
        self.owner = this_worker()
        self.huey, self.task = open_queue(self.home, run_job=self.run_job)
        self._stopping = threading.Event()
        self._current: tuple[str, multiprocessing.Process] | None = None

    def serve(self) -> None:
        """Recover interrupted jobs, then consume the queue until SIGTERM or SIGINT.

        SIGINT lets the running job finish; SIGTERM interrupts it (it resumes on the next start).
        """
        for job_id in recover_orphaned_jobs(self.huey, self.task, self.store):
            self._append_job_log(job_id, "queued again after its worker stopped; finished stages are kept")
        consumer = self.huey.create_consumer(
            workers=1, worker_type="thread", periodic=False, initial_delay=0.1, max_delay=1.0
        )
        log.info("worker %s:%d serving %s from %s", self.owner["host"], self.owner["pid"], self.home, queue_location(self.huey))
        consumer.run()
        self._interrupt_running_job()

    def run_job(self, job_id: str) -> None:
        """The queue task: claim the job, run it in a spawned process, watch it to the end."""
        if self._stopping.is_set() or not self.store.exists(job_id):
            return
        self.owner = {**self.owner, "heartbeat": time.time()}
        if not self.store.claim(job_id, self.owner):
            log.info("job %s: not claimable (cancelled, finished or run elsewhere); skipped", job_id)
            return
        try:
            exitcode = self._run_in_child(job_id)
        except Exception as err:  # noqa: BLE001 - the job must not stay "running" under a live worker
            log.exception("job %s: could not run the job process", job_id)
            reason = f"the worker could not run the job process: {type(err).__name__}: {err}"
        else:
            reason = f"the job process {_describe_exit(exitcode)}; see the job log"
        if not self._stopping.is_set() and self.store.get(job_id)["status"] == "running":
            # The job ended without recording an outcome: its process crashed or never started.
            self.store.finish(job_id, "failed", {"stage": self.store.get(job_id)["stage"], "message": reason})
            self._append_job_log(job_id, f"failed: {reason}")

    def _run_in_child(self, job_id: str) -> int | None:
        """Run the job in a spawned process, renewing the heartbeat; return its exit code."""
        attempt = self.store.get(job_id)["attempts"]
        self._append_job_log(job_id, f"worker {self.owner['host']}:{self.owner['pid']} runs the job (attempt {attempt})")
        child = multiprocessing.get_context("spawn").Process(
            target=job_process_main, args=(str(self.home), job_id, os.getpid()), name=f"job-{job_id}", daemon=True
        )
        child.start()
        self._current = (job_id, child)
        try:
            self.store.modify(job_id, lambda state: {**state, "owner": {**state["owner"], "job_pid": child.pid}})
            while child.exitcode is None:
                child.join(HEARTBEAT_S)
                self.store.heartbeat(job_id, self.owner)
        finally:
            self._current = None
        return child.exitcode

    def _interrupt_running_job(self) -> None:
        """On shutdown: stop the job process and put the job back in the queue to resume later."""
        self._stopping.set()
        current = self._current
        if current is None:
            return
        job_id, child = current
        child.terminate()
        child.join(30)
        if self.store.get(job_id)["status"] == "running":
            self.store.update(job_id, status="queued", owner=None, progress=None)
            enqueue(self.task, job_id, RESUME_PRIORITY)
            self._append_job_log(job_id, "worker stopped; the job resumes from its unfinished stage on the next worker")

    def _append_job_log(self, job_id: str, line: str) -> None:
        self.store.append_log(job_id, "worker", line)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the system may have run out of RAM)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {exitcode}"


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the worker that started it dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(1)


def job_process_main(home: str, job_id: str, parent_pid: int) -> None:
    """Entry point of a spawned job process: output goes to the job log, stages run in order."""
    _die_with_parent(parent_pid)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars belong in the job state, not the log
    store = JobStore(jobs_dir(Path(home)))
    # Everything the job prints (GPTQModel, transformers, tracebacks) lands in its log.
    log_fd = os.open(store.log_path(job_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr, force=True)
    from studio.jobs.stages import StageRunner

    StageRunner(store, job_id, Path(home)).run()


# -- the embedded worker -------------------------------------------------------------------------


class EmbeddedWorker:
    """Handle on a worker process started by the studio app; `stop()` ends it."""

    def __init__(self, process: subprocess.Popen, log_path: Path):
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 60.0, graceful: bool = False) -> int:
        """Stop the worker; a running job is interrupted (SIGTERM) and resumes on the next start.

        `graceful=True` sends SIGINT instead: the running job is let finish first.
        """
        if self.alive():
            self.process.send_signal(signal.SIGINT if graceful else signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_embedded_worker(home: Path | None = None, env: dict | None = None) -> EmbeddedWorker:
    """Start `python -m studio worker` for `home` as a child process of the app.

    Its output goes to STUDIO_HOME/logs/worker-<pid>.log.
    """
    home = Path(home) if home is not None else studio_home()
    project_root = str(Path(__file__).resolve().parents[2])
    child_env = {**os.environ, **(env or {}), HOME_ENV: str(home)}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, child_env.get("PYTHONPATH")]))
    logs = logs_dir(home)
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with open(log_path, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "studio", "worker"],
            env=child_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return EmbeddedWorker(process, log_path)
