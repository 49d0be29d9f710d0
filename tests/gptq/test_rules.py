"""The `dynamic` rules give the same keep/quantize decision under Hugging Face and vLLM names, and
GPTQModel reads them the way `studio.gptq.rules` says it does."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest
import torch

from studio.gptq.rules import (
    DEFAULT_DYNAMIC,
    QUANTIZED_MODULES,
    dynamic_override,
    is_quantized,
    is_selected,
    is_skipped_by_dynamic,
    ordered_rules,
    validate_dynamic,
    vllm_module_name,
)

REPO = Path(__file__).resolve().parents[2]
from tests.conftest import E4B_CONFIG  # noqa: E402
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_GEMMA4_MM = "vllm/model_executor/models/gemma4_mm.py"

# The rules printed in the card: they name only the Hugging Face q/k/v projections.
CARD_DYNAMIC = {
    "-:.*per_layer_projection": {},
    "-:.*per_layer_input_gate": {},
    "-:.*self_attn.q_proj$": {},
    "-:.*self_attn.k_proj$": {},
    "-:.*self_attn.v_proj$": {},
}


def linear_names(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


@pytest.fixture(scope="module")
def demo_names(demo_model_dir):
    from studio.modeling import load_model

    return linear_names(load_model(demo_model_dir))


@pytest.fixture(scope="module")
def e4b_models():
    """E4B's module names from its published text config (meta tensors: no weights), with the
    default vision and audio towers of transformers' Gemma 4 configs."""
    from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration
    from transformers.models.gemma4.configuration_gemma4 import (
        Gemma4AudioConfig,
        Gemma4TextConfig,
        Gemma4VisionConfig,
    )

    text_config = Gemma4TextConfig(**json.loads(E4B_CONFIG.read_text())["text_config"])
    config = Gemma4Config(
        text_config=text_config.to_dict(),
        vision_config=Gemma4VisionConfig().to_dict(),
        audio_config=Gemma4AudioConfig().to_dict(),
    )
    with torch.device("meta"):
        multimodal = Gemma4ForConditionalGeneration(config)
        text_only = Gemma4ForCausalLM(text_config)
    return {
        "layers": text_config.num_hidden_layers,
        "multimodal": linear_names(multimodal),
        "text": linear_names(text_only),
    }


def expected_quantized(prefix: str, layers: int) -> set[str]:
    return {f"{prefix}.{i}.{name}" for i in range(layers) for name in QUANTIZED_MODULES}


def model_cases(demo_names, e4b_models):
    return [
        ("demo", demo_names, True, "model.language_model.layers", 8),
        ("e4b", e4b_models["multimodal"], True, "model.language_model.layers", e4b_models["layers"]),
        ("e4b-text", e4b_models["text"], False, "model.layers", e4b_models["layers"]),
    ]


def test_exactly_four_modules_per_decoder_layer_are_quantized(demo_names, e4b_models):
    for label, names, _multimodal, prefix, layers in model_cases(demo_names, e4b_models):
        quantized = {name for name in names if is_quantized(name)}
        assert quantized == expected_quantized(prefix, layers), label
    # E4B: the card's 168 modules; everything else (425 linear modules with both towers) is kept.
    e4b_quantized = [name for name in e4b_models["multimodal"] if is_quantized(name)]
    assert len(e4b_quantized) == 168
    assert len(e4b_models["multimodal"]) - len(e4b_quantized) == 425


def test_hf_and_vllm_names_get_the_same_decision(demo_names, e4b_models):
    for label, names, multimodal, _prefix, layers in model_cases(demo_names, e4b_models):
        by_vllm_name: dict[str, set[bool]] = {}
        for name in names:
            vllm_name = vllm_module_name(name, multimodal)
            assert is_quantized(vllm_name) == is_quantized(name), (label, name, vllm_name)
            # vLLM consults only `dynamic` for a module it finds packed weights for; the rules alone
            # must already keep every unselected linear module unquantized.
            assert is_skipped_by_dynamic(vllm_name) == (not is_quantized(name)), (label, name, vllm_name)
            by_vllm_name.setdefault(vllm_name, set()).add(is_quantized(name))
        # vLLM refuses fused layers whose shards differ in precision.
        assert all(len(decisions) == 1 for decisions in by_vllm_name.values()), label
        fused = [n for n in by_vllm_name if n.endswith((".qkv_proj", ".gate_up_proj"))]
        assert len(fused) == 2 * layers, label


def test_vllm_names_look_like_vllm_names():
    assert vllm_module_name("model.language_model.layers.3.self_attn.k_proj", True) == (
        "language_model.model.layers.3.self_attn.qkv_proj"
    )
    assert vllm_module_name("model.language_model.layers.3.mlp.up_proj", True) == (
        "language_model.model.layers.3.mlp.gate_up_proj"
    )
    assert vllm_module_name("model.vision_tower.encoder.layers.0.mlp.up_proj.linear", True) == (
        "vision_tower.encoder.layers.0.mlp.up_proj.linear"
    )
    assert vllm_module_name("lm_head", True) == "language_model.lm_head"
    assert vllm_module_name("model.layers.5.mlp.gate_proj", False) == "model.layers.5.mlp.gate_up_proj"
    assert not is_selected("model.audio_tower.layers.0.self_attn.o_proj")


def test_gptqmodel_reads_the_rules_as_we_do(demo_names, e4b_models):
    from gptqmodel import QuantizeConfig
    from gptqmodel.quantization.config import dynamic_get

    config = QuantizeConfig(bits=4, group_size=128, dynamic={k: dict(v) for k, v in DEFAULT_DYNAMIC.items()})
    for names in (demo_names, e4b_models["multimodal"], e4b_models["text"]):
        for name in names:
            skipped = dynamic_get(config.dynamic, name) is False
            assert skipped == is_skipped_by_dynamic(name), name
    # GPTQModel moves negative rules first and saves that order; so does `ordered_rules`.
    mixed = {r"+:.*\.mlp\.down_proj$": {"bits": 8}, r"-:.*\.layers\.0\..*": {}}
    config = QuantizeConfig(bits=4, group_size=128, dynamic=dict(mixed))
    assert list(config.dynamic) == [pattern for pattern, _ in ordered_rules(mixed)]
    for name in ("model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.1.mlp.up_proj"):
        assert dynamic_get(config.dynamic, name) == dynamic_override(mixed, name), name
    assert dynamic_override(mixed, "model.layers.0.mlp.down_proj") is False
    assert dynamic_override(mixed, "model.layers.1.mlp.down_proj") == {"bits": 8}
    assert dynamic_override(mixed, "model.layers.1.mlp.up_proj") is None


def test_the_cards_rules_miss_vllms_fused_qkv():
    """Why the rules name `qkv_proj`: the card's rules skip q/k/v only under Hugging Face names. vLLM
    asks about the fused layer, and when it cannot read which tensors are packed (its
    `is_layer_gptq_quantized` then answers True) only `dynamic` keeps q/k/v unquantized."""
    hf_name = "model.language_model.layers.0.self_attn.q_proj"
    vllm_name = vllm_module_name(hf_name, True)
    assert is_skipped_by_dynamic(hf_name, CARD_DYNAMIC)
    assert not is_skipped_by_dynamic(vllm_name, CARD_DYNAMIC)
    assert is_skipped_by_dynamic(vllm_name)
    # The card's rules also leave the multimodal embedder and per_layer_model_projection to chance.
    assert not is_skipped_by_dynamic("embed_vision.embedding_projection", CARD_DYNAMIC)
    assert is_skipped_by_dynamic("embed_vision.embedding_projection")


def test_rules_that_vllm_would_read_differently_are_rejected():
    with pytest.raises(ValueError, match=r"quantize\.dynamic: rule '\+:\.\*down_proj' sets damp_percent"):
        validate_dynamic({"+:.*down_proj": {"bits": 8, "damp_percent": 0.1}})
    with pytest.raises(ValueError, match="not a valid regex"):
        validate_dynamic({"-:.*(": {}})
    with pytest.raises(ValueError, match="must map to a dict"):
        validate_dynamic({"-:.*lm_head$": None})
    validate_dynamic(DEFAULT_DYNAMIC)


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm")
def test_prefix_table_is_vllms_gemma4_mapper():
    """Our multimodal renaming table is the `orig_to_new_prefix` of the installed vLLM's Gemma 4."""
    from studio.gptq.rules import _VLLM_MULTIMODAL_PREFIXES

    # A vLLM that moved or renamed its Gemma 4 model file fails here: the table must be checked again.
    found = sorted((REPO / ".venv-vllm" / "lib").glob(f"python3*/site-packages/{VLLM_GEMMA4_MM}"))
    assert found, f"{VLLM_GEMMA4_MM} is not in .venv-vllm: vLLM moved Gemma 4's model; find its orig_to_new_prefix"
    tree = ast.parse(found[0].read_text())
    tables = [
        ast.literal_eval(keyword.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg == "orig_to_new_prefix"
    ]
    assert tables, f"{found[0]} has no orig_to_new_prefix table any more"
    assert list(tables[0].items()) == list(_VLLM_MULTIMODAL_PREFIXES)


_VLLM_PROBE = """
import json, sys, types
from vllm.model_executor.layers.quantization.utils.gptq_utils import get_dynamic_override
request = json.load(sys.stdin)
config = types.SimpleNamespace(dynamic=request["dynamic"])
print(json.dumps([get_dynamic_override(config, name) is False for name in request["names"]]))
"""


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm")
def test_vllms_own_matcher_agrees(demo_names, e4b_models):
    """vLLM's `get_dynamic_override` (run in its own environment) on the vLLM names of every linear
    module skips exactly the modules the studio keeps unquantized."""
    cases = [(vllm_module_name(n, True), is_quantized(n)) for n in demo_names + e4b_models["multimodal"]]
    cases += [(vllm_module_name(n, False), is_quantized(n)) for n in e4b_models["text"]]
    names = sorted({name for name, _ in cases})
    request = json.dumps({"dynamic": dict(ordered_rules(DEFAULT_DYNAMIC)), "names": names})
    completed = subprocess.run(
        [str(VLLM_PYTHON), "-c", _VLLM_PROBE], input=request, capture_output=True, text=True, timeout=600
    )
    # A vLLM whose get_dynamic_override moved fails here (ModuleNotFoundError): the rules need checking.
    assert completed.returncode == 0, completed.stderr[-2000:]
    skipped = dict(zip(names, json.loads(completed.stdout.strip().splitlines()[-1])))
    for name, quantized in cases:
        assert skipped[name] == (not quantized), name
