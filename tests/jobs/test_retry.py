"""Retry: a failed or cancelled job goes back in the queue and resumes at the stage that did not finish."""

import json
import types

import pytest

from studio.jobs.client import cancel, retry, run_in_process, submit
from studio.jobs.queue import open_queue, queued_job_ids
from studio.jobs.spec import parse_spec
from studio.jobs.stages import stage_dir
from studio.jobs.store import JobStore
from studio.jobs.worker import start_embedded_worker
from studio.paths import exports_dir, jobs_dir

from .conftest import read_state, small_spec, studio_cli, studio_env, wait_for_status


@pytest.fixture()
def store(studio_home):
    return JobStore(jobs_dir(studio_home))


def fingerprint_file(job_dir, name) -> dict:
    return json.loads((stage_dir(job_dir, name) / "fingerprint.json").read_text())


def test_a_job_failed_at_export_is_retried_from_the_cli_and_reuses_its_finished_stages(
    studio_home, store, demo_model_dir
):
    # The export stage fails: where exports/ should be a folder, there is a file.
    studio_home.mkdir(parents=True)
    (studio_home / "exports").write_text("in the way\n")
    job_id, status = run_in_process(parse_spec(small_spec(demo_model_dir, export=True)), home=studio_home, device="cpu")
    assert status == "failed"
    failed = store.get(job_id)
    assert failed["error"]["stage"] == "export" and failed["attempts"] == 1
    job_dir = store.job_dir(job_id)
    finished = {name: fingerprint_file(job_dir, name) for name in ("calibrate", "statistics", "prune")}
    assert not stage_dir(job_dir, "export").exists()

    (studio_home / "exports").unlink()  # the cause is fixed
    result = studio_cli(studio_home, "retry", job_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{job_id}: queued again; finished stages are reused"
    queued = read_state(studio_home, job_id)
    assert (queued["status"], queued["error"], queued["attempts"]) == ("queued", None, 1)
    huey, _ = open_queue(studio_home)
    assert queued_job_ids(huey) == {job_id}

    worker = start_embedded_worker(studio_home, env=studio_env(studio_home))
    try:
        final = wait_for_status(studio_home, job_id)
    finally:
        worker.stop()
    assert final["status"] == "done", final["error"]
    assert final["attempts"] == 2
    for name, before in finished.items():  # not run again: same folder, same fingerprint file
        assert final["stages"][name]["status"] == "reused", name
        assert fingerprint_file(job_dir, name) == before
    assert final["stages"]["export"]["status"] == "done"
    assert (exports_dir(studio_home) / "demo-lite" / "config.json").is_file()
    log = store.log_path(job_id).read_text()
    assert log.index("retry queued again (it was failed)") < log.index("runs the job (attempt 2)")
    assert "stage prune: already finished" in log


def test_a_cancelled_job_is_queued_again_with_its_cancel_cleared(studio_home, store, demo_model_dir):
    job_id = submit(parse_spec(small_spec(demo_model_dir)), home=studio_home)
    assert cancel(job_id, home=studio_home)["status"] == "cancelled"
    state = retry(job_id, home=studio_home)
    assert (state["status"], state["cancel_requested"], state["finished_at"]) == ("queued", False, None)
    huey, _ = open_queue(studio_home)
    assert [message.args[0] for message in huey.pending()] == [job_id, job_id]  # the old message too
    assert store.claim(job_id, {"host": "here", "pid": 1, "heartbeat": 0.0}) is True  # a worker may run it


@pytest.mark.parametrize("status", ["done", "queued", "running"])
def test_only_failed_or_cancelled_jobs_can_be_retried(studio_home, store, demo_model_dir, status):
    job_id = store.create(parse_spec(small_spec(demo_model_dir)))
    store.update(job_id, status=status)
    before = store.get(job_id)
    with pytest.raises(ValueError, match=rf"^job: {job_id} is {status}; only failed or cancelled jobs can be retried$"):
        retry(job_id, home=studio_home)
    assert store.get(job_id) == before


def test_retry_errors_from_the_cli_and_the_page(studio_home, store, demo_model_dir):
    from gradio import Error

    from studio.ui.jobs_tab import retry_job

    unknown = studio_cli(studio_home, "retry", "20990101-000000-abcdef")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: job: no job '20990101-000000-abcdef'")
    assert studio_cli(studio_home, "cancel", "20990101-000000-abcdef").returncode == 2
    assert not store.job_dir("20990101-000000-abcdef").exists()  # no folder made for an unknown id
    job_id = store.create(parse_spec(small_spec(demo_model_dir)))
    store.finish(job_id, "done")
    done = studio_cli(studio_home, "retry", job_id)
    assert (done.returncode, done.stderr.strip()) == (2, f"error: job: {job_id} is done; only failed or cancelled jobs can be retried")

    page = types.SimpleNamespace(home=studio_home)  # what the handler reads from the studio context
    with pytest.raises(Error, match="only failed or cancelled jobs can be retried"):
        retry_job(job_id, page)
    store.finish(job_id, "failed", {"stage": "prune", "message": "test"})
    assert retry_job(job_id, page) == f"Queued `{job_id}` again; its finished stages are reused."
    assert store.get(job_id)["status"] == "queued"


def test_an_unreachable_queue_leaves_the_job_as_it_was(studio_home, store, demo_model_dir, monkeypatch):
    job_id = store.create(parse_spec(small_spec(demo_model_dir)))
    store.finish(job_id, "failed", {"stage": "calibrate", "message": "test"})
    before = store.get(job_id)
    monkeypatch.setenv("STUDIO_REDIS_URL", "redis://:pw@127.0.0.1:1/0")  # port 1: nothing listens
    with pytest.raises(ValueError, match=rf"^queue: cannot add job {job_id} to the Redis queue at STUDIO_REDIS_URL=redis://:\*\*\*@127.0.0.1:1/0: "):
        retry(job_id, home=studio_home)
    assert store.get(job_id) == before
    assert "retry could not queue the job, it stays failed" in store.log_path(job_id).read_text()

    # The page shows the same message: the password is not in it either.
    from gradio import Error

    from studio.ui.jobs_tab import retry_job

    monkeypatch.setenv("STUDIO_REDIS_URL", "redis://worker:page-secret@127.0.0.1:1/0")
    with pytest.raises(Error) as shown:
        retry_job(job_id, types.SimpleNamespace(home=studio_home))
    assert "STUDIO_REDIS_URL=redis://worker:***@127.0.0.1:1/0" in shown.value.message
    assert "page-secret" not in shown.value.message and "page-secret" not in store.log_path(job_id).read_text()
    assert store.get(job_id) == before
