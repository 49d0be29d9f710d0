"""The same flow on a Redis queue: a real redis-server on loopback (the `redis_url` fixture)."""

from huey import PriorityRedisHuey

from studio.jobs.client import cancel, run_in_process, submit
from studio.jobs.queue import open_queue
from studio.jobs.spec import parse_spec
from studio.jobs.stages import stage_dir
from studio.jobs.store import JobStore
from studio.jobs.worker import start_embedded_worker
from studio.paths import jobs_dir

from .conftest import assert_same_tensors, read_state, small_spec, studio_env, wait_for, wait_for_status


def test_submit_cancel_and_run_through_redis(tmp_path_factory, studio_home, monkeypatch, demo_model_dir, redis_url):
    spec = parse_spec(small_spec(demo_model_dir))
    reference_home = tmp_path_factory.mktemp("reference")
    reference_id, status = run_in_process(spec, home=reference_home, device="cpu")
    assert status == "done"
    reference = stage_dir(JobStore(jobs_dir(reference_home)).job_dir(reference_id), "prune") / "model"

    monkeypatch.setenv("STUDIO_REDIS_URL", redis_url)
    runs = submit(spec, home=studio_home)
    cancelled = submit(spec, home=studio_home)
    huey, _ = open_queue(studio_home)
    assert isinstance(huey, PriorityRedisHuey)
    assert huey.pending_count() == 2
    assert not (studio_home / "queue.sqlite3").exists()  # nothing went to the SQLite queue
    assert cancel(cancelled, home=studio_home)["status"] == "cancelled"

    worker = start_embedded_worker(studio_home, env=studio_env(studio_home, STUDIO_REDIS_URL=redis_url))
    try:
        final = wait_for_status(studio_home, runs)
        wait_for(lambda: huey.pending_count() == 0, "the Redis queue to drain")
    finally:
        worker.stop()
    assert final["status"] == "done", final["error"]
    job_dir = JobStore(jobs_dir(studio_home)).job_dir(runs)
    assert assert_same_tensors(stage_dir(job_dir, "prune") / "model", reference) > 0
    skipped = read_state(studio_home, cancelled)
    assert skipped["status"] == "cancelled" and skipped["attempts"] == 0 and skipped["started_at"] is None
