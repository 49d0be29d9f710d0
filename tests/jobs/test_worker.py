"""Real worker processes on the demo model: all stages, queue order, results (SQLite queue)."""

import json

import pytest

from studio.jobs.client import run_in_process, submit
from studio.jobs.spec import parse_spec
from studio.jobs.stages import STAGE_NAMES, stage_dir
from studio.jobs.store import JobStore
from studio.jobs.worker import start_embedded_worker
from studio.paths import exports_dir, jobs_dir
from tests.conftest import TEST_TEXT

from .conftest import (
    assert_same_tensors,
    read_state,
    small_spec,
    studio_cli,
    studio_env,
    wait_for_status,
    write_spec,
)


def full_spec(demo_model_dir) -> dict:
    """Every stage: FLAP, GPTQ (the card's settings), export, and a short perplexity run."""
    return small_spec(
        demo_model_dir,
        quantize={},
        export=True,
        evaluate={"source": str(TEST_TEXT), "seqlen": 64, "max_tokens": 128},
    )


@pytest.fixture(scope="module")
def reference_home(tmp_path_factory, demo_model_dir):
    """STUDIO_HOME of an uninterrupted in-process run (`run`) of the full spec."""
    home = tmp_path_factory.mktemp("reference-home")
    job_id, status = run_in_process(parse_spec(full_spec(demo_model_dir)), home=home, device="cpu")
    assert status == "done", JobStore(jobs_dir(home)).get(job_id)["error"]
    return home


def test_two_submitted_jobs_run_in_order_and_match_an_in_process_run(
    tmp_path, studio_home, demo_model_dir, reference_home
):
    # The same spec file format goes through the CLI and through the Python API (the UI's path).
    result = studio_cli(studio_home, "submit", str(write_spec(tmp_path, full_spec(demo_model_dir), "full.yaml")))
    assert result.returncode == 0, result.stderr
    submitted = [result.stdout.strip()]
    prune_only = write_spec(tmp_path, small_spec(demo_model_dir, output="prune-only"), "prune-only.json")
    submitted.append(submit(prune_only, home=studio_home))
    first, second = submitted
    assert read_state(studio_home, first)["status"] == "queued"

    worker = start_embedded_worker(studio_home, env=studio_env(studio_home))
    try:
        done_first = wait_for_status(studio_home, first)
        done_second = wait_for_status(studio_home, second)
    finally:
        worker.stop()
    assert done_first["status"] == "done", done_first["error"]
    assert done_second["status"] == "done", done_second["error"]
    # One job at a time, in submission order, each in a fresh process.
    assert done_first["finished_at"] <= done_second["started_at"]
    assert done_first["owner"]["job_pid"] != done_second["owner"]["job_pid"]
    assert [done_first["stages"][name]["status"] for name in STAGE_NAMES] == ["done"] * 6

    # The export (GPTQ v1 shards, plugin, card) is bit-identical to the in-process run's.
    export = exports_dir(studio_home) / "demo-lite"
    assert assert_same_tensors(export, exports_dir(reference_home) / "demo-lite") > 0
    config = json.loads((export / "config.json").read_text())
    assert config["quantization_config"]["bits"] == 4 and config["text_config"]["flap_pruned"] is True
    assert (export / "vllm_config.yaml").is_file()
    store, reference_store = JobStore(jobs_dir(studio_home)), JobStore(jobs_dir(reference_home))
    (reference_id,) = [s["id"] for s in reference_store.all_jobs()]
    perplexity = json.loads((stage_dir(store.job_dir(first), "evaluate") / "perplexity.json").read_text())
    reference_ppl = json.loads((stage_dir(reference_store.job_dir(reference_id), "evaluate") / "perplexity.json").read_text())
    assert perplexity == reference_ppl
    # 128 tokens of the test text in two disjoint windows (stride = seqlen); the demo tokenizer
    # adds BOS like Gemma's, so each window is BOS + 64 text tokens and every text token is scored:
    # 2 x 64, for each of the three models.
    assert {label: result["tokens"] for label, result in perplexity["models"].items()} == {
        "base": 128, "pruned": 128, "compressed": 128,
    }
    # The second job shares the first three stages' settings, hence their results.
    assert_same_tensors(
        stage_dir(store.job_dir(second), "prune") / "model", stage_dir(store.job_dir(first), "prune") / "model"
    )
    assert not (exports_dir(studio_home) / "prune-only").exists()  # export: false

    listing = studio_cli(studio_home, "jobs")
    assert listing.returncode == 0
    lines = listing.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == submitted
    assert all(line.split()[1] == "done" for line in lines)
    detail = studio_cli(studio_home, "job", second)
    assert "status    done" in detail.stdout
    assert "stages    calibrate: done, statistics: done, prune: done, quantize: skipped" in detail.stdout
    assert "stage prune: done" in detail.stdout  # from the log tail
