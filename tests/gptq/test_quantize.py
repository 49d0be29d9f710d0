"""GPTQ W4A16 through GPTQModel on the demo model, pruned by hand to per-layer widths with a
nonzero down_proj bias: the checkpoint layout, the quant log, the kept modules, reloading and
generating on CPU, and how close the quantized logits stay to the unquantized ones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from studio.gptq.quantize import (
    QUANT_LOG_COLUMNS,
    Cancelled,
    QuantizeSettings,
    load_quantized,
    quantize_checkpoint,
    read_quant_log,
)
from tests.conftest import TEST_TEXT
from tests.gptq.conftest import SAMPLES, SEQLEN, WIDTHS, prune_by_hand
from studio.gptq.rules import DEFAULT_DYNAMIC, QUANTIZED_MODULES, is_quantized, ordered_rules

PACKED_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
# The card's GPTQ targets, written out here rather than taken from studio.gptq.rules.
CARD_QUANTIZED = ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def quantized(pruned_dir, calibration_ids, tmp_path_factory):
    events = []
    out = tmp_path_factory.mktemp("quantized") / "model"
    result = quantize_checkpoint(
        pruned_dir, out, calibration_ids, QuantizeSettings(), progress=lambda *event: events.append(event)
    )
    return result, events, out


def tensors_of(folder: Path) -> dict[str, tuple[str, list[int]]]:
    found = {}
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                found[key] = (tensor_slice.get_dtype(), list(tensor_slice.get_shape()))
    return found


def test_defaults_are_the_cards():
    settings = QuantizeSettings()
    assert (settings.bits, settings.group_size, settings.sym, settings.desc_act) == (4, 128, True, True)
    assert settings.damp_percent == 0.01 and settings.checkpoint_format == "gptq" and settings.dtype == "bfloat16"
    assert (settings.calibration.samples, settings.calibration.seqlen) == (256, 2048)
    assert settings.calibration.source == "hf:wikitext/wikitext-2-raw-v1/train"
    assert dict(settings.dynamic) == DEFAULT_DYNAMIC


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match=r"quantize\.bits: must be one of 2, 3, 4, 8, got 5"):
        QuantizeSettings(bits=5)
    with pytest.raises(ValueError, match=r"quantize\.group_size"):
        QuantizeSettings(group_size=0)
    with pytest.raises(ValueError, match=r"quantize\.damp_percent: must be a number in \(0, 1\), got 1\.5"):
        QuantizeSettings(damp_percent=1.5)
    with pytest.raises(ValueError, match=r"quantize\.checkpoint_format: only gptq"):
        QuantizeSettings(checkpoint_format="gptq_v2")
    with pytest.raises(ValueError, match=r"quantize: unknown setting\(s\) bitz"):
        QuantizeSettings.from_dict({"bitz": 4})
    # A job spec's `quantize` section as a dict is accepted.
    assert QuantizeSettings.from_dict({"bits": 8, "group_size": 64, "sym": True, "desc_act": False, "damp_percent": 0.02}).bits == 8


def test_group_size_must_divide_every_quantized_input(demo_model_dir, calibration_ids, tmp_path):
    # A width that is not a whole number of 128-input groups (vLLM's kernels need whole groups).
    odd = prune_by_hand(demo_model_dir, tmp_path / "odd", [384, 256, 320, 128, 384, 256, 512, 384])
    with pytest.raises(ValueError, match=r"quantize\.group_size: layer 2 mlp\.down_proj has 320 input features"):
        quantize_checkpoint(odd, tmp_path / "out", calibration_ids)
    assert not (tmp_path / "out").exists()


def test_quant_log_has_one_row_per_quantized_module(quantized):
    result, _events, out = quantized
    with open(out / "quant_log.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == QUANT_LOG_COLUMNS == ("layer", "module", "loss", "samples", "damp", "time")
    assert len(rows) == 1 + 4 * len(WIDTHS)
    assert all(len(row) == len(QUANT_LOG_COLUMNS) for row in rows)
    records = read_quant_log(out / "quant_log.csv")
    assert records == list(result.modules)
    assert {(r.layer, r.module) for r in records} == {(i, m) for i in range(len(WIDTHS)) for m in QUANTIZED_MODULES}
    for record in records:
        assert record.samples == SAMPLES * SEQLEN  # GPTQModel counts calibration tokens
        assert record.damp >= 0.01  # GPTQModel only ever raises the damping
        assert 0 <= record.loss < 1 and record.time >= 0
    assert any(record.loss > 0 for record in records)


def test_progress_reports_every_module(quantized):
    _result, events, _out = quantized
    total = 4 * len(WIDTHS)
    assert events == [(done, total, "modules") for done in range(1, total + 1)]


def test_quantized_and_kept_modules_in_the_safetensors(quantized, pruned_dir):
    from studio.modeling import load_model

    _result, _events, out = quantized
    tensors = tensors_of(out)
    source = load_model(pruned_dir)
    checked = 0
    for name, module in source.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name == "lm_head":
            # Tied to the token embedding: stored once, as embed_tokens (checked below).
            assert source.config.tie_word_embeddings and "lm_head.weight" not in tensors
            continue
        if is_quantized(name):
            assert f"{name}.weight" not in tensors, name
            dtypes = {suffix: tensors[f"{name}.{suffix}"][0] for suffix in PACKED_SUFFIXES}
            assert dtypes == {"qweight": "I32", "qzeros": "I32", "scales": "F16", "g_idx": "I32"}, name
            # 8 four-bit values per int32 along the input dimension; one group of 128 inputs.
            assert tensors[f"{name}.qweight"][1] == [module.in_features // 8, module.out_features], name
            assert tensors[f"{name}.scales"][1] == [module.in_features // 128, module.out_features], name
            assert tensors[f"{name}.g_idx"][1] == [module.in_features], name
        else:
            assert tensors[f"{name}.weight"] == ("BF16", [module.out_features, module.in_features]), name
            assert not any(f"{name}.{suffix}" in tensors for suffix in PACKED_SUFFIXES), name
        checked += 1
    assert checked > 4 * len(WIDTHS)
    packed = {key.removesuffix(".qweight") for key in tensors if key.endswith(".qweight")}
    assert packed == {f"model.language_model.layers.{i}.{m}" for i in range(len(WIDTHS)) for m in CARD_QUANTIZED}
    floating = {"BF16"}
    kept = [key for key in tensors if not key.endswith(PACKED_SUFFIXES)]
    assert kept and all(tensors[key][0] in floating for key in kept)
    assert tensors["model.language_model.embed_tokens.weight"][0] == "BF16"
    assert any(key.startswith("model.vision_tower.") and tensors[key][0] == "BF16" for key in tensors)


def test_down_proj_bias_survives_unchanged(quantized, pruned_dir):
    _result, _events, out = quantized
    with safe_open(str(pruned_dir / "model.safetensors"), framework="pt") as before, safe_open(
        str(out / "model.safetensors"), framework="pt"
    ) as after:
        for index in range(len(WIDTHS)):
            key = f"model.language_model.layers.{index}.mlp.down_proj.bias"
            original = before.get_tensor(key)
            written = after.get_tensor(key)
            assert original.abs().min() > 0
            # Saved in the model dtype, bit for bit the bias the quantized model was loaded with.
            assert written.dtype == torch.bfloat16
            assert torch.equal(written, original.to(torch.bfloat16)), key


def test_config_keeps_the_pruned_format_and_the_rules(quantized, pruned_dir):
    _result, _events, out = quantized
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Gemma4FlapForConditionalGeneration"]
    assert config["text_config"]["intermediate_sizes"] == WIDTHS
    assert config["text_config"]["flap_pruned"] is True
    assert config["text_config"]["intermediate_size"] == 512
    quantization = config["quantization_config"]
    assert quantization["quant_method"] == "gptq" and quantization["checkpoint_format"] == "gptq"
    assert (quantization["bits"], quantization["group_size"], quantization["sym"], quantization["desc_act"]) == (4, 128, True, True)
    assert quantization["lm_head"] is False
    assert list(quantization["dynamic"].items()) == ordered_rules(DEFAULT_DYNAMIC)
    quantize_config = json.loads((out / "quantize_config.json").read_text())
    assert quantize_config["dynamic"] == quantization["dynamic"]
    assert quantize_config["meta"]["damp_percent"] == 0.01
    # Side files come over unchanged (GPTQModel's own copy of generation_config turns on sampling).
    for name in ("processor_config.json", "chat_template.jinja", "generation_config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (pruned_dir / name).read_bytes(), name


def unpack_gptq_v1(qweight, qzeros, scales, g_idx, bits: int = 4) -> torch.Tensor:
    """[in, out] weights from a GPTQ v1 module's tensors, by the format's definition.

    Each int32 holds 32 / bits values, lowest bits first: qweight packs along the input dimension,
    qzeros along the output one. v1 stores each zero point minus one, so input k of output n is
    scales[g, n] * (q[k, n] - (z[g, n] + 1)) with g = g_idx[k].
    """
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    mask = (1 << bits) - 1
    levels = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask).reshape(-1, qweight.shape[1])
    zeros = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask).reshape(qzeros.shape[0], -1) + 1
    groups = g_idx.long()
    return scales[groups] * (levels - zeros[groups]).to(scales.dtype)


def test_a_real_gptqmodel_module_dequantizes_to_the_stored_grid(quantized, pruned_dir):
    """GPTQModel's own dequantize_weight() on every quantized module of the reloaded checkpoint
    equals the stored tensors unpacked by hand, bit for bit; `load_gptq_weights_` copies exactly
    those weights into the float model (what the RTN comparison of docs/results.md relies on)."""
    from studio.eval.baselines import load_gptq_weights_
    from studio.modeling import load_model

    _result, _events, out = quantized
    model = load_quantized(out)
    float_model = load_model(pruned_dir, dtype=torch.float32)
    assert load_gptq_weights_(float_model, model) == 4 * len(WIDTHS)
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        for index in range(len(WIDTHS)):
            for module_name in CARD_QUANTIZED:
                name = f"model.language_model.layers.{index}.{module_name}"
                module = model.get_submodule(name)
                assert type(module).__module__.startswith("gptqmodel.nn_modules.qlinear"), type(module)
                stored = {suffix: handle.get_tensor(f"{name}.{suffix}") for suffix in PACKED_SUFFIXES}
                # load_quantized keeps the float16 scales as bfloat16, the model dtype; a scale
                # times an integer level in [-8, 7] then rounds once, so the results are exact.
                stored["scales"] = stored["scales"].to(torch.bfloat16)
                expected = unpack_gptq_v1(**stored)
                dequantized = module.dequantize_weight()
                assert dequantized.dtype == torch.bfloat16 and torch.equal(dequantized, expected), name
                assert torch.equal(float_model.get_submodule(name).weight, expected.float().t()), name


def test_reload_generate_and_stay_close_to_the_unquantized_model(quantized, pruned_dir, demo_model_dir):
    from transformers import AutoTokenizer

    from studio.modeling import load_model

    _result, _events, out = quantized
    model = load_quantized(out)
    assert type(model).__name__ == "Gemma4FlapForConditionalGeneration"
    layer3 = model.model.language_model.layers[3].mlp
    assert layer3.down_proj.bias is not None and layer3.down_proj.in_features == 128

    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("The history of the city", return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, prompt.shape[1] + 6)

    text = TEST_TEXT.read_text()[:4000]
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :128]
    reference = load_model(pruned_dir, dtype=torch.bfloat16)
    reference_fp32 = load_model(pruned_dir, dtype=torch.float32)
    unpruned = load_model(demo_model_dir, dtype=torch.bfloat16)
    with torch.no_grad():
        quantized_logits = model(ids).logits.float()
        reference_logits = reference(ids).logits.float()
        fp32_logits = reference_fp32(ids).logits.float()
        unpruned_logits = unpruned(ids).logits.float()

    def relative_error(logits):
        return ((logits - reference_logits).norm() / reference_logits.norm()).item()

    relative = relative_error(quantized_logits)
    log_p = torch.log_softmax(reference_logits, -1)
    log_q = torch.log_softmax(quantized_logits, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
    # Measured on this random-weight demo (8 x 64 calibration tokens, torch 2.14 CPU): relative
    # error 0.279, KL 0.00213 nats/token; bf16 rounding alone 0.081; the unpruned demo model is at
    # 1.306 from the pruned one. Bounds: the measured values plus 25% for other CPUs' summation order.
    assert relative < 0.35, relative
    assert kl < 0.0027, kl
    assert relative > relative_error(fp32_logits)  # more than rounding: the weights were quantized
    assert relative < relative_error(unpruned_logits) / 3


def test_cancel_at_a_layer_boundary_writes_nothing(pruned_dir, calibration_ids, tmp_path):
    calls = []

    def should_stop():
        calls.append(1)
        return True

    with pytest.raises(Cancelled, match="after layer 1 of 8"):
        quantize_checkpoint(pruned_dir, tmp_path / "out", calibration_ids, should_stop=should_stop)
    assert calls == [1]
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_quantizes_a_stock_checkpoint(demo_model_dir, calibration_text, tmp_path, capsys):
    """`python -m studio quantize` on the unpruned demo model: no FLAP fields appear, the stock
    architecture stays, and the summary line counts 4 modules per layer."""
    from studio.cli import main

    out = tmp_path / "q"
    code = main(
        ["quantize", "--model", str(demo_model_dir), "--calib", str(calibration_text),
         "--samples", "4", "--seqlen", "32", "--out", str(out)]
    )
    assert code == 0
    assert "32 modules in 8 layers, W4 g128" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Gemma4ForConditionalGeneration"]
    assert "intermediate_sizes" not in config["text_config"] and "flap_pruned" not in config["text_config"]
    records = read_quant_log(out / "quant_log.csv")
    assert len(records) == 32 and all(record.samples == 4 * 32 for record in records)


def test_cli_input_errors_are_one_line(tmp_path, capsys):
    from studio.cli import main

    assert main(["quantize", "--model", str(tmp_path), "--calib", "x.txt", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --model: no config.json in {tmp_path}"
