"""Loads running at once in one process (the chat's two panes do this) give exactly a serial load's
model, and every load is probed before anything is generated from it.

transformers' and GPTQModel's loading switches are process-wide; without the studio's construction
lock, 3 threads x 8 rounds of `load_model` on the demo model gave 24 of 24 models with an untied,
uninitialised lm_head. Here the same loads must give logits bit-identical to a serial load.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from studio.modeling import BrokenModelError, load_model, model_construction, probe_loaded_model

THREADS = 3
ROUNDS = 8
PROMPT = torch.tensor([[2, 40, 41, 42, 43, 44, 45, 46, 47, 48]])


def logits_of(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=PROMPT).logits


def lm_head_is_tied(model) -> bool:
    return model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def concurrent_loads(loaders: list[Callable[[], torch.nn.Module]], rounds: int) -> list[tuple[int, torch.Tensor, bool]]:
    """Per round, start every loader in its own thread at once (a barrier releases them together);
    return (loader index, logits, lm_head tied) for every load, errors re-raised."""
    results: list[tuple[int, torch.Tensor, bool]] = []
    for _ in range(rounds):
        barrier = threading.Barrier(len(loaders))
        models: dict[int, object] = {}

        def load(index: int, loader=None) -> None:
            barrier.wait()
            try:
                models[index] = loader()
            except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
                models[index] = err

        threads = [threading.Thread(target=load, args=(i, loader)) for i, loader in enumerate(loaders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for index in range(len(loaders)):  # forwards after the round: only the loads overlap
            model = models[index]
            if isinstance(model, BaseException):
                raise model
            results.append((index, logits_of(model), lm_head_is_tied(model)))
    return results


def test_concurrent_loads_of_the_demo_model_equal_a_serial_load(demo_model_dir):
    serial = load_model(demo_model_dir)
    reference = logits_of(serial)
    assert lm_head_is_tied(serial)
    assert torch.equal(logits_of(load_model(demo_model_dir)), reference)  # serial loads agree

    results = concurrent_loads([lambda: load_model(demo_model_dir)] * THREADS, ROUNDS)
    assert len(results) == THREADS * ROUNDS
    assert [tied for _i, _logits, tied in results] == [True] * (THREADS * ROUNDS)
    mismatched = [n for n, (_i, logits, _tied) in enumerate(results) if not torch.equal(logits, reference)]
    assert mismatched == []


@pytest.fixture(scope="module")
def int4_export(demo_model_dir, tmp_path_factory):
    from studio.gptq.quantize import quantize_checkpoint

    ids = torch.randint(16, 2000, (8, 64), generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("int4") / "demo-int4"
    quantize_checkpoint(demo_model_dir, out, ids, {"dtype": "bfloat16"}, device="cpu")
    return out


def test_concurrent_int4_loads_equal_a_serial_load(int4_export, demo_model_dir):
    """Three INT4 loads at once, with a float load of the base model beside them (the chat's usual
    pair: base model in one pane, its INT4 export in the other)."""
    from studio.gptq.quantize import load_quantized

    serial = load_quantized(int4_export)
    reference = logits_of(serial)
    assert lm_head_is_tied(serial)
    assert torch.equal(logits_of(load_quantized(int4_export)), reference)
    float_reference = logits_of(load_model(demo_model_dir))

    loaders = [lambda: load_quantized(int4_export)] * THREADS + [lambda: load_model(demo_model_dir)]
    results = concurrent_loads(loaders, ROUNDS)
    int4 = [(logits, tied) for index, logits, tied in results if index < THREADS]
    floats = [(logits, tied) for index, logits, tied in results if index == THREADS]
    assert len(int4) == THREADS * ROUNDS and len(floats) == ROUNDS
    assert all(tied for _logits, tied in int4 + floats)
    assert [n for n, (logits, _t) in enumerate(int4) if not torch.equal(logits, reference)] == []
    assert [n for n, (logits, _t) in enumerate(floats) if not torch.equal(logits, float_reference)] == []


def test_a_checkpoint_with_nan_weights_fails_its_probe_naming_it(demo_model_dir, tmp_path):
    broken = tmp_path / "nan-weights"
    shutil.copytree(demo_model_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    name = next(k for k in tensors if k.endswith("layers.0.mlp.down_proj.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BrokenModelError, match=f"^{broken}: the loaded model gives \\d+ non-finite logits"):
        load_model(broken)


def test_an_untied_head_fails_the_probe_naming_the_checkpoint(demo_model_dir):
    model = load_model(demo_model_dir)
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())  # equal values, own storage
    with pytest.raises(BrokenModelError, match=r"^ckpt-x: lm_head\.weight should share its storage with .*embed_tokens\.weight"):
        probe_loaded_model(model, "ckpt-x")


def test_a_meta_build_waits_for_a_load_in_progress(demo_model_dir):
    """While a load holds the lock with transformers' tying switched off (as `from_pretrained` does),
    a meta-device build in another thread waits, and then ties its head."""
    from transformers.initialization import no_tie_weights

    from studio.sizes import config_from_file, model_shapes

    shapes = {}
    worker = threading.Thread(target=lambda: shapes.update((t.name, t.shape) for t in model_shapes(config_from_file(demo_model_dir)).tensors))
    with model_construction(), no_tie_weights():
        worker.start()
        worker.join(1.0)  # time for the build to run now, were it not waiting
        assert shapes == {}
    worker.join()
    assert "lm_head.weight" not in shapes  # tied: counted once, as the embedding
    assert any(name.endswith("embed_tokens.weight") for name in shapes)
