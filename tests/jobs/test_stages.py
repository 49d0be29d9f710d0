"""The stage runner in-process: fingerprints, reuse, failures and cancel."""

import errno
import json

import pytest

from studio.jobs.spec import parse_spec
from studio.jobs.stages import STAGE_NAMES, Stage, StageRunner, stage_dir
from studio.jobs.store import JobStore, this_worker

from .conftest import small_spec


@pytest.fixture()
def store(tmp_path):
    return JobStore(tmp_path / "jobs")


def new_job(store, demo_model_dir, **overrides):
    job_id = store.create(parse_spec(small_spec(demo_model_dir, **overrides)))
    assert store.claim(job_id, this_worker())
    return job_id


def counting_stage(name, calls, settings=lambda s: {"seed": s.calibration.seed}, steps=3):
    """A stage that records its runs and writes a file whose content depends on its settings."""

    def run(ctx, out):
        calls.append(name)
        for step in range(1, steps + 1):
            ctx.progress(step, steps)
        (out / "result.json").write_text(json.dumps({"stage": name, "upstream": sorted(ctx.outputs)}))

    return Stage(name, settings, (), run)


def test_finished_stages_are_reused_and_a_changed_setting_reruns_from_there(tmp_path, store, demo_model_dir):
    calls = []
    stages = (
        counting_stage("a", calls, settings=lambda s: {"samples": s.calibration.samples}),
        counting_stage("b", calls, settings=lambda s: {"metric": s.flap.metric}),
        counting_stage("c", calls, settings=lambda s: {"output": s.output}),
    )
    job_id = new_job(store, demo_model_dir)
    assert StageRunner(store, job_id, tmp_path, device="cpu", stages=stages).run() == "done"
    assert calls == ["a", "b", "c"]
    assert json.loads((stage_dir(store.job_dir(job_id), "c") / "result.json").read_text())["upstream"] == ["a", "b"]

    # Same job again: every stage is found finished.
    store.update(job_id, status="running")
    assert StageRunner(store, job_id, tmp_path, device="cpu", stages=stages).run() == "done"
    assert calls == ["a", "b", "c"]
    assert {name: info["status"] for name, info in store.get(job_id)["stages"].items()} == {
        "a": "reused",
        "b": "reused",
        "c": "reused",
    }

    # A change in b's settings reruns b and everything after it, not a.
    spec_path = store.job_dir(job_id) / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec["flap"]["metric"] = "ifv"
    spec_path.write_text(json.dumps(spec))
    store.update(job_id, status="running")
    assert StageRunner(store, job_id, tmp_path, device="cpu", stages=stages).run() == "done"
    assert calls == ["a", "b", "c", "b", "c"]


def test_a_stage_whose_module_is_missing_fails_the_job_readably(tmp_path, store, demo_model_dir):
    """No stage gates its own modules: a missing import fails the job like any other error, naming the module."""

    def needs_missing_module(ctx, out):
        import studio.no_such_module  # noqa: F401

    stages = (Stage("export", lambda s: {}, ("studio.no_such_module",), needs_missing_module),)
    job_id = new_job(store, demo_model_dir)
    assert StageRunner(store, job_id, tmp_path, device="cpu", stages=stages).run() == "failed"
    state = store.get(job_id)
    assert state["status"] == "failed"
    assert state["error"]["stage"] == "export"
    assert state["error"]["message"] == "ModuleNotFoundError: No module named 'studio.no_such_module'"
    assert not stage_dir(store.job_dir(job_id), "export").exists()


def test_a_cancel_wrapped_by_a_library_still_cancels_the_job(tmp_path, store, demo_model_dir):
    """GPTQModel's threads may re-raise our `studio.progress.Cancelled` inside their own error."""
    from studio.progress import Cancelled

    def wrapped_cancel(ctx, out):
        try:
            raise Cancelled("cancelled after layer 2 of 8")
        except Cancelled as err:
            raise RuntimeError("worker thread failed") from err

    job_id = new_job(store, demo_model_dir)
    stages = (Stage("quantize", lambda s: {}, (), wrapped_cancel),)
    assert StageRunner(store, job_id, tmp_path, device="cpu", stages=stages).run() == "cancelled"
    assert store.get(job_id)["status"] == "cancelled"
    assert not stage_dir(store.job_dir(job_id), "quantize").exists()


def test_disk_full_names_the_path_and_leaves_no_stage_folder(tmp_path, store, demo_model_dir):
    target = tmp_path / "full-disk" / "weights.safetensors"

    def write_fails(ctx, out):
        (out / "partial.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    job_id = new_job(store, demo_model_dir)
    stages = (Stage("prune", lambda s: {}, (), write_fails),)
    assert StageRunner(store, job_id, tmp_path, device="cpu", stages=stages).run() == "failed"
    error = store.get(job_id)["error"]
    # atomic_directory names the stage's output folder (where space must be freed) and says the
    # partial output is gone.
    stage_folder = (store.job_dir(job_id) / "stages" / "prune").resolve()
    assert error == {
        "stage": "prune",
        "message": f"OSError: {stage_folder}: No space left on device while writing it (the partial output was removed)",
    }
    stages_dir = store.job_dir(job_id) / "stages"
    assert not any(stages_dir.iterdir())  # the staging folder was removed


def test_out_of_memory_advises_fewer_samples_or_shorter_sequences(tmp_path, store, demo_model_dir):
    import torch

    def oom(ctx, out):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    job_id = new_job(store, demo_model_dir)
    stages = (Stage("statistics", lambda s: {}, (), oom),)
    StageRunner(store, job_id, tmp_path, device="cpu", stages=stages).run()
    message = store.get(job_id)["error"]["message"]
    assert "fewer calibration samples (calibration.samples)" in message
    assert "shorter sequence length (calibration.seqlen)" in message
    assert "Tried to allocate 20.00 GiB" in message


def test_cancel_stops_at_the_next_progress_boundary(tmp_path, store, demo_model_dir):
    seen = []

    def long_stage(ctx, out):
        for layer in range(1, 9):
            seen.append(layer)
            if layer == 3:
                store.request_cancel(ctx.job_dir.name)
            ctx.progress(layer, 8)

    job_id = new_job(store, demo_model_dir)
    stages = (counting_stage("a", []), Stage("b", lambda s: {}, (), long_stage))
    assert StageRunner(store, job_id, tmp_path, device="cpu", stages=stages).run() == "cancelled"
    assert seen == [1, 2, 3]
    state = store.get(job_id)
    assert state["status"] == "cancelled" and state["stage"] == "b"
    assert stage_dir(store.job_dir(job_id), "a").is_dir()
    assert not stage_dir(store.job_dir(job_id), "b").exists()


def test_progress_is_recorded_with_layer_counts(tmp_path, store, demo_model_dir):
    snapshots = []

    def observed(ctx, out):
        for layer in range(1, 5):
            ctx.progress(layer, 4)
            snapshots.append(store.get(ctx.job_dir.name)["progress"])

    job_id = new_job(store, demo_model_dir)
    StageRunner(store, job_id, tmp_path, device="cpu", stages=(Stage("statistics", lambda s: {}, (), observed),)).run()
    assert [(p["stage"], p["done"], p["total"], p["unit"]) for p in snapshots] == [
        ("statistics", k, 4, "layers") for k in range(1, 5)
    ]


def test_real_flap_stages_in_process(tmp_path, store, demo_model_dir):
    """calibrate -> statistics -> prune on the demo model; a second run reuses all three."""
    from safetensors.torch import load_file

    job_id = new_job(store, demo_model_dir)
    assert StageRunner(store, job_id, tmp_path, device="cpu").run() == "done", store.get(job_id)["error"]
    state = store.get(job_id)
    assert [state["stages"][name]["status"] for name in STAGE_NAMES] == [
        "done", "done", "done", "skipped", "skipped", "skipped",
    ]
    job_dir = store.job_dir(job_id)
    ids = load_file(str(stage_dir(job_dir, "calibrate") / "calibration.safetensors"))["input_ids"]
    assert tuple(ids.shape) == (8, 64)
    summary = json.loads((stage_dir(job_dir, "prune") / "model" / "prune_summary.json").read_text())
    # The demo has 8 layers of 512 channels (32 blocks of 128); ratio 0.25 removes 8 blocks.
    assert (summary["totals"]["channels_before"], summary["totals"]["channels_after"]) == (4096, 3072)
    config = json.loads((stage_dir(job_dir, "prune") / "model" / "config.json").read_text())
    widths = config["text_config"]["intermediate_sizes"]
    assert sum(widths) == 3072 and all(width % 128 == 0 and 0 < width <= 512 for width in widths)
    assert config["text_config"]["flap_pruned"] is True
    assert config["architectures"] == ["Gemma4FlapForConditionalGeneration"]

    store.update(job_id, status="running")
    assert StageRunner(store, job_id, tmp_path, device="cpu").run() == "done"
    assert [store.get(job_id)["stages"][n]["status"] for n in ("calibrate", "statistics", "prune")] == ["reused"] * 3


def test_a_blocked_export_path_fails_the_job_naming_it_and_a_rerun_resumes_at_export(tmp_path, store, demo_model_dir):
    """Real stages: the export folder cannot be created; after the path is fixed, only export runs."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "exports").write_text("a file where the exports folder should be")
    job_id = new_job(store, demo_model_dir, export=True)
    assert StageRunner(store, job_id, home, device="cpu").run() == "failed"
    error = store.get(job_id)["error"]
    assert error["stage"] == "export"
    assert str(home / "exports") in error["message"]
    assert not stage_dir(store.job_dir(job_id), "export").exists()

    (home / "exports").unlink()
    store.update(job_id, status="running")
    assert StageRunner(store, job_id, home, device="cpu").run() == "done", store.get(job_id)["error"]
    stages = store.get(job_id)["stages"]
    assert [stages[n]["status"] for n in ("calibrate", "statistics", "prune", "export")] == ["reused"] * 3 + ["done"]
    export = home / "exports" / "demo-lite"
    assert json.loads((stage_dir(store.job_dir(job_id), "export") / "export.json").read_text())["path"] == str(export)
    assert (export / "config.json").is_file() and (export / "vllm_config.yaml").is_file()


@pytest.mark.parametrize(
    ("plan", "cli_plan", "flap"),
    [(0.25, ["--ratio", "0.25"], {}), ("uniform-20", ["--plan", "uniform-20"], {"compensation": "refit"})],
    ids=["ratio-bias", "preset-refit"],
)
def test_a_layerwise_jobs_prune_stage_streams_and_equals_the_clis_streamed_prune(
    tmp_path, store, demo_model_dir, monkeypatch, plan, cli_plan, flap
):
    """One prune implementation: the job's statistics and prune stages read the checkpoint layer by
    layer (loading the whole model would fail here) and write the very tensors `prune --layerwise` writes."""
    import studio.flap.pipeline as pipeline
    from studio.cli import main
    from tests.conftest import CALIBRATION_TEXT

    from .conftest import assert_same_tensors

    def whole_model_load(*_args, **_kwargs):
        raise AssertionError("a layerwise prune of a local safetensors checkpoint loaded the whole model")

    monkeypatch.setattr(pipeline, "load_model", whole_model_load)
    job_id = new_job(store, demo_model_dir, plan=plan, flap={"layerwise": True, **flap})
    assert StageRunner(store, job_id, tmp_path, device="cpu").run() == "done", store.get(job_id)["error"]
    job_model = stage_dir(store.job_dir(job_id), "prune") / "model"

    cli_out = tmp_path / "cli"
    args = ["prune", "--model", str(demo_model_dir), *cli_plan, "--calib", str(CALIBRATION_TEXT), "--samples", "8",
            "--seqlen", "64", "--seed", "0", "--layerwise", *(["--compensation", "refit"] if flap else []),
            "--out", str(cli_out)]  # fmt: skip
    assert main(args) == 0
    # Every weight tensor and the FLAP statistics, bit for bit.
    assert assert_same_tensors(job_model, cli_out) > 8 * 3
    job_summary = json.loads((job_model / "prune_summary.json").read_text())
    cli_summary = json.loads((cli_out / "prune_summary.json").read_text())
    assert job_summary == cli_summary
    assert json.loads((job_model / "config.json").read_text()) == json.loads((cli_out / "config.json").read_text())
