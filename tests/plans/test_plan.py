import pytest
import yaml

from studio.modeling import load_text_config
from studio.plans.plan import builtin_presets, find_preset, load_plan, read_preset, resolve_plan, save_plan, uniform_plan

from tests.conftest import E4B_CONFIG


@pytest.fixture(scope="module")
def e4b():
    return load_text_config(E4B_CONFIG)


def test_card_preset_is_the_card_table(e4b):
    plan = load_plan(find_preset("gemma4-lite-round2"), e4b)
    assert len(plan.widths) == 42
    assert plan.widths.count(8192) == 22 and plan.widths.count(9216) == 1 and plan.widths.count(10240) == 19
    assert plan.widths[9] == 9216
    assert [i for i, w in enumerate(plan.widths) if w == 10240] == [4, 7, 8, 10, 11, 14, 17, 22, 23, 28, 29, 32, *range(35, 42)]
    # The card's prose claims ~15% of FFN parameters; its own table removes 10.7%.
    assert plan.global_ratio == pytest.approx(46080 / 430080)


@pytest.mark.parametrize("name", ["uniform-10", "uniform-20", "uniform-30", "uniform-50"])
def test_uniform_presets_validate_on_e4b(e4b, name):
    plan = load_plan(builtin_presets()[name], e4b)
    ratio = int(name.split("-")[1]) / 100
    assert set(plan.widths) == {round(10240 * (1 - ratio) / 128) * 128}


def test_ratio_rounds_to_the_nearest_multiple_and_never_below_one(demo_model_dir):
    demo = load_text_config(demo_model_dir)
    assert uniform_plan(demo, 0.2).widths == [384] * 8  # 409.6 -> 384
    assert uniform_plan(demo, 0.95).widths == [128] * 8


def _preset(**layers):
    return {"multiple": 128, "default": {"ratio": 0.0}, **layers}


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        ({"num_layers": 40, "default": {"ratio": 0.1}}, "num_layers: the preset is for 40 layers, the model has 42"),
        (_preset(layers=[{"layer": 42, "intermediate_size": 8192}]), "layer 42: out of range"),
        (_preset(layers=[{"layer": 3, "intermediate_size": 0}]), "layer 3: intermediate_size must be positive"),
        (_preset(layers=[{"layer": 3, "intermediate_size": -128}]), "layer 3: intermediate_size must be positive"),
        (_preset(layers=[{"layer": 5, "intermediate_size": 10368}]), "layer 5: intermediate_size 10368 is above the original width 10240"),
        (_preset(layers=[{"layer": 7, "intermediate_size": 8000}]), "layer 7: intermediate_size 8000 is not a multiple of 128"),
        (_preset(layers=[{"layer": 1, "width": 8192}]), "layer 1: unknown key 'width'"),
        ({"default": {"ratio": 0.1}, "colour": "red"}, "preset: unknown key 'colour'"),
        (_preset(layers=[{"layer": 2, "ratio": 1.5}]), r"layer 2: ratio must be a number in \[0, 1\)"),
        (_preset(layers=[{"layer": 2, "ratio": 0.1, "intermediate_size": 8192}]), "layer 2: give intermediate_size or ratio, not both"),
        (_preset(layers=[{"layer": 2, "lock": "yes", "ratio": 0.1}]), "layer 2: lock must be true or false"),
        (_preset(layers=[{"layer": 2, "ratio": 0.1}, {"layer": 2, "ratio": 0.2}]), "layer 2: listed twice"),
        ({"layers": [{"layer": 0, "ratio": 0.1}]}, "layer 1: no entry and no default"),
        ({"multiple": 0, "default": {"ratio": 0.1}}, "multiple: must be a positive integer"),
        (_preset(layers=[{"intermediate_size": 8192}]), r"layers\[0\]: layer must be an integer index"),
        ({"default": {"ratio": 0.1, "layer": 3}}, "default: unknown key 'layer'"),
    ],
)
def test_every_rule_names_the_layer_and_the_rule(e4b, preset, message):
    with pytest.raises(ValueError, match=message):
        resolve_plan(preset, e4b)


def test_multiple_is_configurable(e4b):
    plan = resolve_plan({"multiple": 64, "layers": [{"layer": i, "intermediate_size": 10240 - 64} for i in range(42)]}, e4b)
    assert plan.widths == [10176] * 42
    with pytest.raises(ValueError, match="not a multiple of 256"):
        resolve_plan({"multiple": 256, "default": {"intermediate_size": 10240 - 128}}, e4b)


def test_presets_are_read_safely(tmp_path, e4b):
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_plan(evil, e4b)
    with pytest.raises(FileNotFoundError, match="no such preset file"):
        load_plan(tmp_path / "missing.yaml", e4b)
    with pytest.raises(ValueError, match="no preset named 'nope'"):
        find_preset("nope")


def test_save_and_load_round_trip(tmp_path, e4b):
    plan = load_plan(find_preset("gemma4-lite-round2"), e4b)
    plan.locks[4] = True
    save_plan(plan, tmp_path / "mine.yaml")
    again = load_plan(tmp_path / "mine.yaml", e4b)
    assert again.widths == plan.widths and again.locks == plan.locks
    assert yaml.safe_load((tmp_path / "mine.yaml").read_text())["num_layers"] == 42


# --- tensor parallelism: widths split over the GPUs in multiples of 128 ---------------------------


def test_tensor_parallel_size_makes_widths_multiples_of_128_per_gpu(e4b):
    with pytest.raises(ValueError) as caught:
        resolve_plan({"tensor_parallel_size": 2, "layers": [], "default": {"intermediate_size": 10240 - 128}}, e4b)
    assert str(caught.value) == (
        "layer 0: intermediate_size 10112 is not a multiple of 256 (128 x tensor_parallel_size 2): vLLM's "
        "GPTQ-Marlin needs each GPU's share of down_proj's input (5056 here) to be a multiple of 128"
    )
    # The card's widths (8192, 9216, 10240) split into multiples of 128 over up to 8 GPUs: 9216 / 8 = 9 x 128.
    card = read_preset(find_preset("gemma4-lite-round2"))
    assert resolve_plan({**card, "tensor_parallel_size": 8}, e4b).tensor_parallel_size == 8
    with pytest.raises(ValueError, match=r"^layer 9: intermediate_size 9216 is not a multiple of 2048"):
        resolve_plan({**card, "tensor_parallel_size": 16}, e4b)
    with pytest.raises(ValueError, match=r"^tensor_parallel_size: must be a positive integer, got 0"):
        resolve_plan({**card, "tensor_parallel_size": 0}, e4b)


def test_tensor_parallel_size_survives_a_save(tmp_path, e4b):
    plan = resolve_plan({"tensor_parallel_size": 4, "default": {"intermediate_size": 8192}}, e4b)
    save_plan(plan, tmp_path / "tp4.yaml")
    assert yaml.safe_load((tmp_path / "tp4.yaml").read_text())["tensor_parallel_size"] == 4
    assert load_plan(tmp_path / "tp4.yaml", e4b).tensor_parallel_size == 4
    assert "tensor_parallel_size" not in uniform_plan(e4b, 0.2).to_preset()


def test_estimate_checks_the_widths_for_tensor_parallelism(tmp_path, capsys):
    from studio.cli import main

    preset = tmp_path / "odd.yaml"
    preset.write_text(yaml.safe_dump({"default": {"intermediate_size": 10240 - 384}}))
    assert main(["estimate", "--config", str(E4B_CONFIG), "--plan", str(preset), "--tensor-parallel-size", "2", "--json"]) == 2
    assert capsys.readouterr().err.startswith("error: layer 0: intermediate_size 9856 is not a multiple of 256")
    assert main(["estimate", "--config", str(E4B_CONFIG), "--plan", "gemma4-lite-round2", "--tensor-parallel-size", "2", "--json"]) == 0
