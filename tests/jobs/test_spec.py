import json

import pytest
import yaml

from studio.jobs.spec import JobSpec, load_spec, parse_spec
from studio.plans.plan import builtin_presets, read_preset

from .conftest import small_spec, write_spec


def test_defaults_are_the_cards_gptq_and_calibration(demo_model_dir):
    spec = parse_spec({"model": str(demo_model_dir), "output": "out", "plan": 0.2})
    assert (spec.quantize.bits, spec.quantize.group_size, spec.quantize.sym, spec.quantize.desc_act) == (4, 128, True, True)
    assert spec.quantize.damp_percent == 0.01
    assert spec.calibration.source == "hf:wikitext/wikitext-2-raw-v1/train"
    assert (spec.calibration.samples, spec.calibration.seqlen, spec.calibration.seed) == (256, 2048, 0)
    assert spec.dtype == "bfloat16"
    assert spec.export is True and spec.evaluate is None
    assert spec.plan == {"ratio": 0.2}


def test_yaml_and_json_specs_give_the_same_normalised_spec(tmp_path, demo_model_dir):
    data = small_spec(demo_model_dir)
    from_yaml = load_spec(write_spec(tmp_path, data, "spec.yaml"))
    from_json = load_spec(write_spec(tmp_path, data, "spec.json"))
    assert from_yaml == from_json
    assert JobSpec.from_dict(json.loads(from_yaml.to_json())) == from_yaml


def test_relative_paths_resolve_against_the_spec_folder(tmp_path, demo_model_dir):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "calib.txt").write_text("some text\n")
    (tmp_path / "model").symlink_to(demo_model_dir)
    data = small_spec("./model", calibration={"source": "texts/calib.txt"})
    spec = load_spec(write_spec(tmp_path / "", data))
    assert spec.model == str((tmp_path / "model").resolve())
    assert spec.calibration.source == str(tmp_path / "texts" / "calib.txt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"calibration": {"samples": -1}}, "calibration.samples: must be a positive integer, got -1"),
        ({"calibration": {"seqlen": "long"}}, "calibration.seqlen: must be a positive integer, got 'long'"),
        ({"calibration": {"sampels": 8}}, "calibration.sampels: unknown field"),
        ({"calibration": {"source": "/no/such/file.txt"}}, "calibration.source: no such text file: /no/such/file.txt"),
        ({"quantize": {"bits": 5}}, "quantize.bits: must be one of 2, 3, 4, 8, got 5"),
        ({"quantize": {"damp_percent": 0}}, "quantize.damp_percent: must be a number in (0, 1), got 0"),
        ({"quantize": {"sym": "yes"}}, "quantize.sym: must be true or false, got 'yes'"),
        ({"quantize": "w4a16"}, "quantize: must be a mapping (or false to skip the stage), got 'w4a16'"),
        ({"plan": 1.5}, "plan: must be a number in (0, 1), got 1.5"),
        ({"plan": "no-such-preset"}, "plan: no preset named 'no-such-preset'"),
        ({"plan": {"default": {"ratio": 0.2}, "layers": [{"layer": 99, "ratio": 0.1}]}}, "plan: layer 99: out of range"),
        ({"plan": "gemma4-lite-round2"}, "plan: num_layers: the preset is for 42 layers, the model has 8"),
        ({"output": "../escape"}, "output: must be a folder name"),
        ({"dtype": "int8"}, "dtype: must be one of bfloat16, float16, float32, got 'int8'"),
        ({"flap": {"metric": "magnitude"}}, "flap.metric: must be one of wifv, wifn, ifv, obs, got 'magnitude'"),
        ({"evaluate": {"seqlen": 1}}, "evaluate.seqlen: must be an integer of at least 2, got 1"),
        ({"model": "not a model"}, "model: 'not a model' is neither an existing folder nor a hub id"),
        ({"modle": "x"}, "modle: unknown field"),
    ],
)
def test_bad_fields_are_named(demo_model_dir, change, message):
    with pytest.raises(ValueError) as err:
        parse_spec(small_spec(demo_model_dir, **change))
    assert str(err.value).startswith(message)


def test_missing_required_field_is_named(demo_model_dir):
    data = small_spec(demo_model_dir)
    del data["output"]
    with pytest.raises(ValueError, match=r"^output: is required$"):
        parse_spec(data)


def test_a_model_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"^model: .* is not a checkpoint folder \(no config.json\)"):
        parse_spec({"model": str(tmp_path), "output": "x", "plan": 0.2})


def test_hub_ids_are_accepted_without_network(demo_model_dir):
    spec = parse_spec({"model": "google/gemma-4-E4B-it", "output": "x", "plan": "gemma4-lite-round2"})
    assert spec.model == "google/gemma-4-E4B-it"
    assert spec.plan["preset"]["num_layers"] == 42


def test_preset_plans_are_embedded_so_later_edits_do_not_change_the_job(tmp_path, monkeypatch, demo_model_dir):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "empty-home"))
    preset_file = tmp_path / "mine.yaml"
    preset_file.write_text(yaml.safe_dump({"default": {"ratio": 0.25}, "layers": [{"layer": 0, "intermediate_size": 512}]}))
    spec = parse_spec(small_spec(demo_model_dir, plan=str(preset_file)))
    preset_file.write_text("default: {ratio: 0.5}\n")
    assert spec.plan["source"] == str(preset_file)
    assert spec.plan["preset"]["default"] == {"ratio": 0.25}

    by_name = parse_spec(small_spec(demo_model_dir, plan="uniform-20"))
    assert by_name.plan["preset"] == read_preset(builtin_presets()["uniform-20"])


def test_stages_can_be_turned_off(demo_model_dir):
    spec = parse_spec(small_spec(demo_model_dir, quantize=False, export=False, evaluate=False))
    assert spec.quantize is None and spec.export is False and spec.evaluate is None
    with pytest.raises(ValueError, match=r"^export: must be true or false, got 'no'"):
        parse_spec(small_spec(demo_model_dir, export="no"))


def test_presets_saved_under_studio_home_are_found_by_name(tmp_path, monkeypatch, demo_model_dir):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    saved = tmp_path / "home" / "presets" / "uniform-20.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text("default: {ratio: 0.5}\n")
    spec = parse_spec(small_spec(demo_model_dir, plan="uniform-20"))
    assert spec.plan["source"] == str(saved)
    assert spec.plan["preset"]["default"] == {"ratio": 0.5}
