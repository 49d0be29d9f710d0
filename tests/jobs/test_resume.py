"""kill -9 a worker mid-stage, start another: the job resumes and ends as an uninterrupted run.

`check_kill_and_resume` is shared with test_resume_quantize.py (the same flow during GPTQ).
"""

import json

import psutil

from studio.jobs.client import run_in_process, submit
from studio.jobs.spec import parse_spec
from studio.jobs.stages import STAGE_NAMES, stage_dir
from studio.jobs.store import JobStore
from studio.jobs.worker import start_embedded_worker
from studio.paths import jobs_dir

from .conftest import assert_same_tensors, read_state, small_spec, studio_env, wait_for, wait_for_status

CASES = {
    # stage to kill in, failpoint (stage:progress step), spec overrides, final checkpoint stage
    "statistics": ("statistics:3", {}, "prune"),
    # after the 8th of 32 GPTQ modules (end of decoder layer 2), with the card's GPTQ settings
    "quantize": ("quantize:8", {"quantize": {}}, "quantize"),
}


def test_kill_9_during_statistics_then_resume(tmp_path_factory, studio_home, demo_model_dir):
    check_kill_and_resume(tmp_path_factory, studio_home, demo_model_dir, "statistics")


def check_kill_and_resume(tmp_path_factory, studio_home, demo_model_dir, killed_in):
    failpoint, overrides, final_stage = CASES[killed_in]
    spec = parse_spec(small_spec(demo_model_dir, **overrides))

    reference_home = tmp_path_factory.mktemp("reference")
    reference_id, status = run_in_process(spec, home=reference_home, device="cpu")
    assert status == "done"
    reference = stage_dir(JobStore(jobs_dir(reference_home)).job_dir(reference_id), final_stage) / "model"

    job_id = submit(spec, home=studio_home)
    job_dir = JobStore(jobs_dir(studio_home)).job_dir(job_id)
    worker = start_embedded_worker(studio_home, env=studio_env(studio_home, STUDIO_JOBS_FAILPOINT=failpoint))
    held = wait_for(
        lambda: read_state(studio_home, job_id).get("failpoint") and read_state(studio_home, job_id),
        f"the job to hold at {failpoint}",
    )
    assert held["stage"] == killed_in and held["status"] == "running"
    earlier = STAGE_NAMES[: STAGE_NAMES.index(killed_in)]
    finished_before = {name: _fingerprint(job_dir, name) for name in earlier if stage_dir(job_dir, name).exists()}
    assert set(finished_before) == {"calibrate", "statistics", "prune"} & set(earlier)

    worker.process.kill()  # SIGKILL: no cleanup in the worker at all
    worker.process.wait()
    job_pid = held["owner"]["job_pid"]
    wait_for(lambda: not _alive(job_pid), "the job process to die with its worker")
    orphaned = read_state(studio_home, job_id)
    assert orphaned["status"] == "running"  # nobody recorded anything: the worker died
    assert not stage_dir(job_dir, killed_in).exists()  # no half-written stage output

    restarted = start_embedded_worker(studio_home, env=studio_env(studio_home))
    try:
        final = wait_for_status(studio_home, job_id)
    finally:
        restarted.stop()
    assert final["status"] == "done", final["error"]
    assert final["attempts"] == 2
    for name in finished_before:  # finished stages were not run again
        assert final["stages"][name]["status"] == "reused"
        assert _fingerprint(job_dir, name) == finished_before[name]
    assert final["stages"][killed_in]["status"] == "done"
    assert assert_same_tensors(stage_dir(job_dir, final_stage) / "model", reference) > 0
    log = (job_dir / "job.log").read_text()
    assert "queued again after its worker stopped" in log
    assert f"stage {earlier[0]}: already finished" in log


def _fingerprint(job_dir, name) -> dict:
    return json.loads((stage_dir(job_dir, name) / "fingerprint.json").read_text())


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
