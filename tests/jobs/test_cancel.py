"""Cancel with a real worker process: a queued job never starts, a running one stops at a layer."""

from studio.jobs.client import cancel, submit
from studio.jobs.queue import open_queue
from studio.jobs.spec import parse_spec
from studio.jobs.stages import stage_dir
from studio.jobs.store import JobStore
from studio.jobs.worker import start_embedded_worker
from studio.paths import jobs_dir

from .conftest import read_state, small_spec, studio_cli, studio_env, wait_for, wait_for_status


def test_cancel_a_queued_and_a_running_job(tmp_path, studio_home, demo_model_dir):
    spec = parse_spec(small_spec(demo_model_dir))
    running = submit(spec, home=studio_home)
    queued = submit(spec, home=studio_home)
    # The failpoint holds the first job at statistics layer 2 until it is cancelled.
    worker = start_embedded_worker(studio_home, env=studio_env(studio_home, STUDIO_JOBS_FAILPOINT="statistics:2"))
    try:
        wait_for(lambda: read_state(studio_home, running).get("failpoint"), "the first job to reach its failpoint")
        assert read_state(studio_home, queued)["status"] == "queued"

        result = studio_cli(studio_home, "cancel", queued)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{queued}: cancelled"
        assert read_state(studio_home, queued)["status"] == "cancelled"

        assert cancel(running, home=studio_home)["cancel_requested"] is True
        state = wait_for_status(studio_home, running)
        # The queued job's message is consumed without running it.
        huey, _ = open_queue(studio_home)
        wait_for(lambda: huey.pending_count() == 0, "the queue to drain")
    finally:
        worker.stop()

    assert state["status"] == "cancelled" and state["stage"] == "statistics"
    job_dir = JobStore(jobs_dir(studio_home)).job_dir(running)
    assert stage_dir(job_dir, "calibrate").is_dir()  # the folder and finished stages are kept
    assert not stage_dir(job_dir, "statistics").exists()
    assert "cancelled during stage statistics" in (job_dir / "job.log").read_text()

    never_started = read_state(studio_home, queued)
    assert never_started["status"] == "cancelled"
    assert never_started["started_at"] is None and never_started["attempts"] == 0
    assert not (JobStore(jobs_dir(studio_home)).job_dir(queued) / "stages").exists()
