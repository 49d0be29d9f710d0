"""The checkpoint vocabulary (studio.checkpoint): predicates on folders the studio writes, the dtype
registry against torch and safetensors, and the side-file copy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save

from studio.checkpoint import (
    DTYPE_NAMES,
    DTYPES,
    FLAP_STATS_FILE,
    PRUNE_SUMMARY_FILE,
    QUANTIZE_CONFIG_FILE,
    SAFETENSORS_DTYPES,
    copy_side_files,
    dtype_of,
    find_dtype,
    gptq_compute_dtype,
    is_checkpoint_folder,
    is_flap_pruned,
    is_gptq_checkpoint,
    is_multimodal,
    read_config,
    safetensors_bytes,
    safetensors_code,
    text_config_of,
    torch_dtype,
    torch_dtype_of_code,
)

WIDTHS = [384, 256, 512, 384, 256, 384, 128, 256]


@pytest.fixture(scope="module")
def pruned_dir(demo_model_dir, calibration_text, tmp_path_factory):
    from studio.calibration import CalibrationSpec
    from studio.flap.pipeline import prune_checkpoint
    from studio.plans.plan import PruningPlan

    out = tmp_path_factory.mktemp("checkpoint") / "pruned"
    plan = PruningPlan(widths=WIDTHS, original=[512] * len(WIDTHS))
    prune_checkpoint(demo_model_dir, plan, CalibrationSpec(source=str(calibration_text), samples=4, seqlen=64), out)
    return out


@pytest.fixture(scope="module")
def gptq_dir(pruned_dir, tmp_path_factory):
    from studio.gptq.quantize import quantize_checkpoint

    ids = torch.randint(16, 2000, (8, 64), generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("checkpoint") / "int4"
    quantize_checkpoint(pruned_dir, out, ids, {"dtype": "bfloat16"}, device="cpu")
    return out


# -- predicates on real folders ------------------------------------------------------------------


def test_the_demo_model_is_a_multimodal_stock_checkpoint(demo_model_dir):
    from transformers import AutoConfig

    assert is_checkpoint_folder(demo_model_dir)
    config = read_config(demo_model_dir)
    assert is_multimodal(config) and is_multimodal(AutoConfig.from_pretrained(demo_model_dir))
    assert not is_flap_pruned(config) and not is_flap_pruned(AutoConfig.from_pretrained(demo_model_dir))
    assert not is_gptq_checkpoint(demo_model_dir)
    assert text_config_of(config) is config["text_config"]
    assert text_config_of(config)["num_hidden_layers"] == len(WIDTHS)


def test_a_pruned_checkpoint_is_flap_pruned_not_gptq(pruned_dir):
    from transformers import AutoConfig

    config = read_config(pruned_dir)
    assert is_flap_pruned(config) and is_multimodal(config)
    loaded = AutoConfig.from_pretrained(pruned_dir)
    assert is_flap_pruned(loaded) and text_config_of(loaded) is loaded.text_config
    assert list(text_config_of(loaded).intermediate_sizes) == WIDTHS
    assert not is_gptq_checkpoint(pruned_dir)


def test_a_gptq_checkpoint_of_a_pruned_model_is_both(gptq_dir):
    assert (gptq_dir / QUANTIZE_CONFIG_FILE).is_file()
    assert is_gptq_checkpoint(gptq_dir)
    config = read_config(gptq_dir)
    assert is_flap_pruned(config) and is_multimodal(config)
    assert config["quantization_config"]["quant_method"] == "gptq"


def test_a_gptq_quantization_config_alone_makes_a_gptq_checkpoint(demo_model_dir, tmp_path):
    config = read_config(demo_model_dir)
    config["quantization_config"] = {"quant_method": "GPTQ", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert is_gptq_checkpoint(tmp_path)
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert not is_gptq_checkpoint(tmp_path)


def test_an_empty_folder_is_no_checkpoint(tmp_path):
    assert not is_checkpoint_folder(tmp_path) and not is_gptq_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=rf"^model: {tmp_path} holds no config\.json$"):
        read_config(tmp_path, "model")


def test_a_text_only_config_is_its_own_text_config():
    text = {"num_hidden_layers": 2, "flap_pruned": True, "intermediate_sizes": [128, 256]}
    assert text_config_of(text) is text and not is_multimodal(text) and is_flap_pruned(text)
    assert not is_flap_pruned({"num_hidden_layers": 2})


# -- side files ------------------------------------------------------------------------------------


def test_side_files_are_every_plain_file_but_weights_and_the_excluded(pruned_dir, tmp_path):
    copied = copy_side_files(pruned_dir, tmp_path, exclude={"config.json"})
    plain = sorted(p.name for p in pruned_dir.iterdir() if p.is_file())
    expected = [n for n in plain if n != "config.json" and not n.endswith(".safetensors")]
    assert copied == expected == sorted(p.name for p in tmp_path.iterdir())
    assert {"tokenizer.json", "chat_template.jinja", PRUNE_SUMMARY_FILE} <= set(copied)
    assert FLAP_STATS_FILE in plain and FLAP_STATS_FILE not in copied  # statistics are not side files
    for name in copied:
        assert (tmp_path / name).read_bytes() == (pruned_dir / name).read_bytes()


# -- the dtype registry ------------------------------------------------------------------------------


def test_dtype_sizes_are_torchs_element_sizes():
    assert DTYPE_NAMES == ("bfloat16", "float16", "float32")
    for name, dtype in DTYPES.items():
        assert dtype.torch is getattr(torch, name)
        assert dtype.bytes == torch.empty(0, dtype=dtype.torch).element_size()
    for code, (name, size) in SAFETENSORS_DTYPES.items():
        assert torch_dtype_of_code(code) is getattr(torch, name)
        assert safetensors_bytes(code) == size == torch.empty(0, dtype=getattr(torch, name)).element_size()


def test_safetensors_codes_are_what_safetensors_writes():
    for code, (name, _) in SAFETENSORS_DTYPES.items():
        dtype = getattr(torch, name)
        data = save({"t": torch.zeros(2, dtype=dtype)})
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        assert header["t"]["dtype"] == code == safetensors_code(dtype)
    with pytest.raises(ValueError, match="dtype: torch.complex64 has no safetensors code"):
        safetensors_code(torch.complex64)
    with pytest.raises(ValueError, match="dtype: 'F4' is not a safetensors dtype code"):
        torch_dtype_of_code("F4")


def test_dtypes_are_found_by_name_alias_and_torch_dtype():
    assert find_dtype("bfloat16") is find_dtype(torch.bfloat16) is find_dtype("torch.bfloat16") is DTYPES["bfloat16"]
    assert find_dtype("half") is DTYPES["float16"] and find_dtype("float") is DTYPES["float32"]
    assert find_dtype("int8") is None and find_dtype(torch.float64) is None and find_dtype(None) is None
    assert torch_dtype("float16") is torch.float16


def test_a_dtype_outside_the_registry_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"^quantize\.dtype: must be one of bfloat16, float16, float32, got 'fp8'$"):
        dtype_of("fp8", "quantize.dtype")
    with pytest.raises(ValueError, match=r"^dtype: must be one of bfloat16, float16, float32, got torch\.float64$"):
        torch_dtype(torch.float64)


def test_gptq_computes_in_sixteen_bits():
    assert gptq_compute_dtype("float32") is DTYPES["bfloat16"]
    assert gptq_compute_dtype(torch.float32).torch is torch.bfloat16
    assert gptq_compute_dtype("float16") is DTYPES["float16"] and gptq_compute_dtype("bfloat16") is DTYPES["bfloat16"]


def test_the_vocabulary_imports_without_torch():
    code = (
        "import sys; from studio.checkpoint import DTYPES, dtype_of; "
        "assert dtype_of('float32').bytes == 4 and DTYPES['bfloat16'].safetensors == 'BF16'; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
