"""Job commands: `submit`, `run`, `worker`, `jobs`, `job`, `cancel`, `retry` (see docs/jobs.md)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="validate a job spec and queue it for a worker",
        description="Validate SPEC (YAML or JSON) and queue it. A worker (`python -m studio worker`) "
        "runs it. Prints the job id.",
    )
    submit.add_argument("spec", type=Path, help="job spec file (.yaml, .yml or .json)")
    submit.set_defaults(func=run_submit)

    run = subparsers.add_parser(
        "run",
        help="run a job spec in this process, without the queue",
        description="Validate SPEC and run all its stages in this process. The job is recorded "
        "under STUDIO_HOME like a queued one. Exit status 0 when it finishes, 1 otherwise.",
    )
    run.add_argument("spec", type=Path, help="job spec file (.yaml, .yml or .json)")
    run.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    run.set_defaults(func=run_run)

    worker = subparsers.add_parser(
        "worker",
        help="run a worker that takes queued jobs, one at a time",
        description="Consume the job queue (SQLite under STUDIO_HOME, or Redis when STUDIO_REDIS_URL "
        "is set) and run one job at a time, each in a fresh process. Jobs interrupted by a "
        "crashed worker resume at their first unfinished stage. SIGINT lets the running job "
        "finish first; SIGTERM interrupts it (it resumes on the next start).",
    )
    worker.add_argument(
        "--gpu", default=None, help="GPU index for this worker's jobs (sets CUDA_VISIBLE_DEVICES)"
    )
    worker.set_defaults(func=run_worker)

    jobs = subparsers.add_parser("jobs", help="list jobs", description="List all jobs, oldest first.")
    jobs.add_argument("--json", action="store_true", help="print the states as JSON")
    jobs.set_defaults(func=run_jobs)

    job = subparsers.add_parser(
        "job", help="show a job's status and log tail", description="Show one job's state and the end of its log."
    )
    job.add_argument("job_id", help="job id (see `python -m studio jobs`)")
    job.add_argument("--lines", type=int, default=20, help="log lines to show (default: 20)")
    job.add_argument("--json", action="store_true", help="print the state as JSON")
    job.set_defaults(func=run_job)

    cancel = subparsers.add_parser(
        "cancel",
        help="cancel a job",
        description="Cancel a job: a queued one never starts, a running one stops at its next layer "
        "boundary. Its folder is kept.",
    )
    cancel.add_argument("job_id", help="job id")
    cancel.set_defaults(func=run_cancel)

    retry = subparsers.add_parser(
        "retry",
        help="queue a failed or cancelled job again",
        description="Queue a failed or cancelled job again for a worker. It keeps its id, folder "
        "and log; stages that finished are reused (their fingerprints still match), so it "
        "resumes at the stage that failed or was cancelled.",
    )
    retry.add_argument("job_id", help="job id")
    retry.set_defaults(func=run_retry)


def run_submit(args) -> int:
    from studio.jobs.client import submit

    print(submit(args.spec))
    return 0


def run_run(args) -> int:
    from studio.jobs.client import job_store, run_in_process

    job_id, status = run_in_process(args.spec, device=args.device)
    print(format_job(job_store().get(job_id)))
    return 0 if status == "done" else 1


def run_worker(args) -> int:
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)  # inherited by the spawned job processes
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from studio.jobs.worker import Worker

    Worker().serve()
    return 0


def run_jobs(args) -> int:
    from studio.jobs.client import job_store

    states = job_store().all_jobs()
    if args.json:
        print(json.dumps(states, indent=2))
        return 0
    if not states:
        print("no jobs")
    for state in states:
        print(format_job_line(state))
    return 0


def run_job(args) -> int:
    from studio.jobs.client import job_store

    store = job_store()
    state = store.get(args.job_id)
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(format_job(state))
    tail = store.log_tail(args.job_id, args.lines)
    if tail:
        print("--- log tail ---")
        print("\n".join(tail))
    return 0


def run_cancel(args) -> int:
    from studio.jobs.client import cancel

    state = cancel(args.job_id)
    if state["status"] == "running":
        print(f"{args.job_id}: cancel requested; the job stops at its next layer boundary")
    else:
        print(f"{args.job_id}: {state['status']}")
    return 0


def run_retry(args) -> int:
    from studio.jobs.client import retry

    state = retry(args.job_id)
    print(f"{args.job_id}: {state['status']} again; finished stages are reused")
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _progress(state: dict) -> str:
    progress = state.get("progress") or {}
    if state["status"] != "running" or not progress.get("total"):
        return ""
    return f" {progress['unit']} {progress['done']}/{progress['total']}"


def format_job_line(state: dict) -> str:
    from studio.jobs.store import describe

    times = describe(state)
    stage = state.get("stage") or "-"
    submitted = time.strftime("%Y-%m-%d %H:%M", time.localtime(state["submitted_at"]))
    return (
        f"{state['id']}  {state['status']:<9}  {stage:<10}{_progress(state)}  {state['output']}  "
        f"submitted {submitted}  elapsed {_duration(times['elapsed_s'])}"
    )


def format_job(state: dict) -> str:
    from studio.jobs.store import describe

    times = describe(state)
    lines = [
        f"job       {state['id']}",
        f"status    {state['status']}" + (" (cancel requested)" if state.get("cancel_requested") and state["status"] == "running" else ""),
        f"output    {state['output']}",
        f"model     {state['model']}",
        f"stage     {state.get('stage') or '-'}{_progress(state)}",
        f"elapsed   {_duration(times['elapsed_s'])}   eta (stage) {_duration(times['eta_s'])}",
    ]
    stages = state.get("stages") or {}
    if stages:
        lines.append("stages    " + ", ".join(f"{name}: {info.get('status')}" for name, info in stages.items()))
    if state.get("error"):
        lines.append(f"error     stage {state['error']['stage']}: {state['error']['message']}")
    return "\n".join(lines)
