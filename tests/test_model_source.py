"""Model arguments are checked before anything loads: one error naming the field and the file."""

from __future__ import annotations

import json
import re
import shutil
import struct

import pytest
from huggingface_hub import constants

from studio.model_source import check_model_source, resolve_model


@pytest.fixture
def model_copy(demo_model_dir, tmp_path):
    return shutil.copytree(demo_model_dir, tmp_path / "model")


def test_a_good_folder_is_returned_resolved_and_a_hub_id_as_given(demo_model_dir, monkeypatch):
    assert check_model_source(str(demo_model_dir)) == str(demo_model_dir.resolve())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert check_model_source("google/gemma-4-E4B-it") == "google/gemma-4-E4B-it"


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^model: no config.json in {tmp_path}/gone: no such folder$"):
        check_model_source(str(tmp_path / "gone"))
    with pytest.raises(ValueError, match=f"^--model: no config.json in {tmp_path}$"):
        check_model_source(str(tmp_path), field="--model")
    with pytest.raises(ValueError, match="^model: a checkpoint folder or a hub id"):
        check_model_source("  ")


def test_another_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"describes a 'llama' model \(LlamaForCausalLM\); the studio works on Gemma 4"):
        check_model_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        check_model_source(str(tmp_path))


def test_a_shard_whose_header_lies_is_named(model_copy):
    shard = model_copy / "model.safetensors"
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = next(key for key in header if key != "__metadata__")
    header[name]["data_offsets"][1] += 4  # one tensor claims 4 bytes more than its shape holds
    encoded = json.dumps(header).encode()
    shard.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])
    with pytest.raises(ValueError, match=rf"^model: {shard} is not a readable safetensors file \("):
        check_model_source(str(model_copy))


def test_pruned_widths_must_match_the_tensors(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    layers = config["text_config"]["num_hidden_layers"]
    # The demo's tensors are 512 wide everywhere; the config claims layer 3 was pruned to 384.
    config["text_config"].update(flap_pruned=True, intermediate_sizes=[512] * 3 + [384] + [512] * (layers - 4))
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"^model: config.json text_config.intermediate_sizes gives layer 3 width 384, "
                                         r"but model.safetensors holds .*layers\.3\.mlp\.(down|gate|up)_proj\.weight "
                                         r"of shape \[\d+, \d+\] \(width 512\)$"):
        check_model_source(str(model_copy))


def test_a_hub_id_offline_must_be_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match=r"^model: 'google/gemma-4-E4B-it' is not in the local hub cache and HF_HUB_OFFLINE is set"):
        check_model_source("google/gemma-4-E4B-it")


# --- resolve_model: what a model choice names (the UI tabs and job specs) ----------------------


def test_named_choices_come_back_as_given(demo_model_dir):
    named = {"demo": demo_model_dir, "E4B (config only)": "E4B (config only)"}
    assert resolve_model(" demo ", named=named) == demo_model_dir
    assert resolve_model("E4B (config only)", named=named) == "E4B (config only)"


def test_folders_resolve_from_the_base_and_must_hold_a_config(demo_model_dir, tmp_path):
    model = shutil.copytree(demo_model_dir, tmp_path / "models" / "m")
    assert resolve_model("models/m", base=tmp_path) == model  # 'owner/name'-shaped, but a folder there
    assert resolve_model("./models/./m", base=tmp_path) == model
    assert resolve_model(str(model)) == model
    with pytest.raises(ValueError, match=rf"^model: {tmp_path / 'models'} is not a checkpoint folder \(no config.json\)$"):
        resolve_model("./models", base=tmp_path)
    with pytest.raises(ValueError, match=rf"^model_b: {tmp_path}/gone is not a checkpoint folder \(no config.json\)$"):
        resolve_model("./gone", "model_b", base=tmp_path)


def test_hub_ids_are_what_is_not_on_disk(tmp_path):
    assert resolve_model("google/gemma-4-E4B-it", base=tmp_path) == "google/gemma-4-E4B-it"
    with pytest.raises(ValueError, match=r"^model: 'not a model' is neither an existing folder nor a hub id like 'owner/name'$"):
        resolve_model("not a model", base=tmp_path)
    # where hub ids are not taken (a chat pane), the same text is a missing folder
    with pytest.raises(ValueError, match=rf"^model_a: {tmp_path}/google/gemma-4-E4B-it is not a checkpoint folder"):
        resolve_model("google/gemma-4-E4B-it", "model_a", base=tmp_path, hub_ids=False)
    for empty in ("", "  ", None, 3):
        with pytest.raises(ValueError, match=r"^model: must be a checkpoint folder or a hub id like 'google/gemma-4-E4B-it', got "):
            resolve_model(empty)


def test_with_roots_folders_start_at_the_first_and_stay_inside(demo_model_dir, tmp_path):
    home, outside = tmp_path / "home", tmp_path / "outside"
    model = shutil.copytree(demo_model_dir, home / "models" / "demo")
    shutil.copytree(demo_model_dir, outside / "model")
    (home / "models" / "elsewhere").symlink_to(outside / "model")
    assert resolve_model("models/demo", roots=[home]) == model
    assert resolve_model("google/gemma-4-E4B-it", roots=[home]) == "google/gemma-4-E4B-it"
    # a link inside that leads out is refused like a '..' path, though it is 'owner/name'-shaped
    for typed in ("models/elsewhere", "../outside/model", str(outside / "model")):
        with pytest.raises(ValueError, match=rf"^model: '{re.escape(typed)}' is outside the studio's data folder {home}$"):
            resolve_model(typed, roots=[home])
