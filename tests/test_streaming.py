"""The streamed paths: safetensors shards written a chunk at a time, the full-size demo writer, and
out-of-core pruning, each against the in-memory path it replaces."""

from __future__ import annotations

import filecmp
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from studio.calibration import CalibrationSpec
from studio.demo_model import (
    DemoModelShape,
    config_from_text_config,
    demo_config,
    write_streamed_model,
)
from studio.flap.pipeline import STATS_FILE, SUMMARY_FILE, FlapSettings, prune_checkpoint
from studio.flap.stats import ModelLayers, collect_statistics, collect_statistics_layerwise
from studio.modeling import load_model, load_text_config
from studio.plans.plan import find_preset, load_plan
from studio.streaming import Checkpoint, ShardedWriter, StreamedDecoder, TensorSpec
from tests.conftest import CALIBRATION_TEXT, E4B_CONFIG

SIDE_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "processor_config.json", "chat_template.jinja"]


def _all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    checkpoint = Checkpoint(folder)
    return {name: checkpoint.tensor(name) for name in checkpoint.names()}


def test_sharded_writer_is_read_back_by_safetensors(tmp_path):
    """Hand-planned headers and chunked writes give files safetensors itself loads."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(300, 7, generator=generator).to(torch.bfloat16),
        "b.bias": torch.randn(5, generator=generator),
        "c.index": torch.arange(11, dtype=torch.int64),
    }
    specs = [TensorSpec(name, value.dtype, tuple(value.shape)) for name, value in tensors.items()]
    writer = ShardedWriter(tmp_path, specs, max_shard_bytes=4000)  # a.weight alone is 4200 bytes
    for name, value in tensors.items():
        writer.write_tensor(name, value)
    writer.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.bias": "model-00002-of-00002.safetensors",
        "c.index": "model-00002-of-00002.safetensors",
    }
    loaded = {**load_file(tmp_path / "model-00001-of-00002.safetensors"), **load_file(tmp_path / "model-00002-of-00002.safetensors")}
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value) and loaded[name].dtype == value.dtype
    checkpoint = Checkpoint(tmp_path)
    assert torch.equal(checkpoint.rows("a.weight", [0, 17, 299]), tensors["a.weight"][[0, 17, 299]])
    converted = b"".join(checkpoint.chunks("a.weight", torch.float32))
    assert torch.equal(torch.frombuffer(bytearray(converted), dtype=torch.float32).view(300, 7), tensors["a.weight"].float())


def test_sharded_writer_rejects_out_of_order_and_short_writes(tmp_path):
    specs = [TensorSpec("x", torch.float32, (2,)), TensorSpec("y", torch.float32, (3,))]
    writer = ShardedWriter(tmp_path, specs)
    with pytest.raises(ValueError, match="expected tensor 'x' next, got 'y'"):
        writer.write_tensor("y", torch.zeros(3))
    (tmp_path / "second").mkdir()
    writer = ShardedWriter(tmp_path / "second", specs)
    with pytest.raises(ValueError, match="x: wrote 4 bytes, the header says 8"):
        writer.write_tensor("x", torch.zeros(1))


def test_layers_prefix_keeps_the_pattern_and_scales_the_shared_tail():
    published = json.loads(Path(E4B_CONFIG).read_text())["text_config"]
    config = config_from_text_config(E4B_CONFIG, layers=12).text_config
    assert config.num_hidden_layers == 12
    # E4B repeats 5 sliding + 1 full; the last layer is full either way.
    assert config.layer_types == published["layer_types"][:12]
    # 18/42 of 12 layers is 5.14: a tail of 5, and layers 0-6 before it include full layer 5.
    assert config.num_kv_shared_layers == 5
    assert (config.hidden_size, config.intermediate_size, config.vocab_size) == (2560, 10240, 262144)
    four = config_from_text_config(E4B_CONFIG, layers=4).text_config
    assert four.layer_types == ["sliding_attention"] * 3 + ["full_attention"]
    assert four.num_kv_shared_layers == 0  # round(1.7) = 2 would leave no full layer before the tail
    with pytest.raises(ValueError, match="layers: must be between 2 and 42, got 43"):
        config_from_text_config(E4B_CONFIG, layers=43)


@pytest.fixture(scope="module")
def streamed_demo(tmp_path_factory) -> Path:
    """The demo model's config written by the streamed writer, in small shards."""
    out = tmp_path_factory.mktemp("streamed") / "demo"
    return write_streamed_model(out, demo_config(DemoModelShape()), seed=3, dtype=torch.float32, max_shard_bytes=1 << 20)


def test_streamed_writer_writes_what_the_in_memory_builder_writes(demo_model_dir, streamed_demo):
    """Same config, tokenizer, processor and tensor layout as `build_demo_model`; own weights."""
    for name in SIDE_FILES:
        assert filecmp.cmp(demo_model_dir / name, streamed_demo / name, shallow=False), name
    built, streamed = Checkpoint(demo_model_dir), Checkpoint(streamed_demo)
    assert sorted(built.names()) == sorted(streamed.names())
    for name in built.names():
        assert (built.shape(name), built.dtype(name)) == (streamed.shape(name), streamed.dtype(name)), name
    assert len(list(streamed_demo.glob("model-*-of-*.safetensors"))) > 1
    # transformers' own loader finds every tensor (it reports none missing or unexpected).
    model, info = type(load_model(demo_model_dir)).from_pretrained(streamed_demo, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    logits = model(input_ids=torch.tensor([[2, 40, 41, 42, 43]])).logits
    assert torch.isfinite(logits).all()


def test_streamed_writer_draws_transformers_distributions(streamed_demo):
    tensors = _all_tensors(streamed_demo)
    down = tensors["model.language_model.layers.0.mlp.down_proj.weight"]
    # initializer_range 0.02; 65536 draws give a std within 1% (4 standard errors: 0.02 * 4 / sqrt(2 * 65536)).
    assert abs(float(down.std()) - 0.02) < 0.02 * 0.011
    norm = tensors["model.language_model.layers.0.input_layernorm.weight"]
    assert abs(float(norm.mean()) - 1.0) < 4 * 0.5 / 128**0.5  # 1 + 0.5 N(0, 1) over 128 channels
    assert torch.equal(tensors["model.language_model.layers.0.layer_scalar"], torch.ones(1))
    pad = 0  # <pad> is token 0: its embedding row is zero, as transformers initialises it
    assert torch.equal(tensors["model.language_model.embed_tokens.weight"][pad], torch.zeros(128))


def test_streamed_writer_is_deterministic_under_seed(tmp_path, streamed_demo):
    again = write_streamed_model(tmp_path / "again", demo_config(DemoModelShape()), seed=3, dtype=torch.float32, max_shard_bytes=1 << 20)
    for path in sorted(streamed_demo.glob("model-*.safetensors")):
        assert filecmp.cmp(path, again / path.name, shallow=False), path.name
    other = write_streamed_model(tmp_path / "other", demo_config(DemoModelShape()), seed=4, dtype=torch.bfloat16)
    first, second = _all_tensors(streamed_demo), _all_tensors(other)
    name = "model.language_model.layers.3.mlp.up_proj.weight"
    assert second[name].dtype == torch.bfloat16 and not torch.equal(first[name].bfloat16(), second[name])


def test_streamed_layer_source_gives_the_in_memory_statistics(demo_model_dir):
    ids = torch.randint(20, 2048, (3, 40), generator=torch.Generator().manual_seed(7))
    in_memory = collect_statistics_layerwise(ModelLayers(load_model(demo_model_dir)), ids, batch_size=2)
    streamed = collect_statistics_layerwise(StreamedDecoder(demo_model_dir, torch.float32), ids, batch_size=2)
    batched = collect_statistics(load_model(demo_model_dir), ids, batch_size=2)
    for a, b, c in zip(in_memory.layers, streamed.layers, batched.layers):
        assert a.count == b.count == c.count == 120
        assert torch.equal(a.mean, b.mean) and torch.equal(a.m2, b.m2)
        assert torch.equal(a.mean, c.mean) and torch.equal(a.m2, c.m2)


@pytest.mark.parametrize(
    ("plan", "dtype", "choices"),
    [
        ("uniform-20", "auto", {}),
        (0.25, "auto", {}),
        ("uniform-20", "bfloat16", {}),
        ("uniform-20", "auto", {"compensation": "refit"}),
        (0.25, "auto", {"sequential": True}),
    ],
    ids=["preset", "ratio", "cast-to-bf16", "refit", "sequential-ratio"],
)
def test_streamed_prune_equals_in_memory_prune_bit_for_bit(demo_model_dir, tmp_path, plan, dtype, choices):
    """The streamed path (layerwise on a local checkpoint) against the whole model in memory:
    batched statistics for one-shot choices, the in-memory layer walk for refit and sequential."""
    if isinstance(plan, str):
        plan = load_plan(find_preset(plan), load_text_config(demo_model_dir))
    spec = CalibrationSpec(source=str(CALIBRATION_TEXT), samples=3, seqlen=48)
    settings = FlapSettings(**choices)
    in_memory = prune_checkpoint(demo_model_dir, plan, spec, tmp_path / "mem", replace(settings, layerwise=False), dtype=dtype)
    streamed = prune_checkpoint(demo_model_dir, plan, spec, tmp_path / "str", replace(settings, layerwise=True), dtype=dtype)
    assert streamed == in_memory
    a, b = _all_tensors(tmp_path / "mem"), _all_tensors(tmp_path / "str")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    sa, sb = load_file(tmp_path / "mem" / STATS_FILE), load_file(tmp_path / "str" / STATS_FILE)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for name in [*SIDE_FILES, SUMMARY_FILE]:
        assert filecmp.cmp(tmp_path / "mem" / name, tmp_path / "str" / name, shallow=False), name


def test_demo_model_command_rejects_shape_flags_with_a_config(tmp_path, capsys):
    from studio.cli import main

    out = tmp_path / "e4b"
    assert main(["demo-model", "--config", str(E4B_CONFIG), "--hidden-size", "64", "--out", str(out)]) == 2
    assert "--hidden-size: not with --config" in capsys.readouterr().err
    assert main(["demo-model", "--config", str(E4B_CONFIG), "--layers", "1", "--out", str(out)]) == 2
    assert "layers: must be between 2 and 42, got 1" in capsys.readouterr().err
    assert not out.exists()
