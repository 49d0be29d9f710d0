import copy
import json

import pytest
import torch
from torch import nn

from studio.flap.prune import compensation_bias, keep_indices, prune_layer, prune_model
from studio.flap.scores import channel_scores, model_scores, standardize
from studio.flap.stats import collect_statistics
from studio.modeling import decoder_layers, load_model


@pytest.fixture(scope="module")
def demo_model(demo_model_dir):
    return load_model(demo_model_dir)


@pytest.fixture(scope="module")
def statistics(demo_model):
    ids = torch.randint(20, 2048, (4, 64), generator=torch.Generator().manual_seed(0))
    return collect_statistics(demo_model, ids, batch_size=2)


def test_wifv_wifn_ifv_formulas():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    variance = torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0, 2.0], [3.0, -1.0, 0.0]])
    torch.testing.assert_close(channel_scores("ifv", mean, variance, weight), variance)
    torch.testing.assert_close(
        channel_scores("wifv", mean, variance, weight), torch.tensor([40.0, 1.0, 36.0], dtype=torch.float64)
    )
    expected_wifn = torch.tensor([5**0.5 * 2.0, 5**0.5 * 0.5, 9.25**0.5 * 1.0], dtype=torch.float64)
    torch.testing.assert_close(channel_scores("WIFN", mean, variance, weight), expected_wifn)
    with pytest.raises(ValueError, match="metric: unknown metric 'xyz'"):
        channel_scores("xyz", mean, variance, weight)


def test_standardize_gives_zero_mean_unit_std():
    z = standardize([torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64), torch.full((4,), 7.0)])
    assert abs(float(z[0].mean())) < 1e-12
    assert abs(float(z[0].std(unbiased=False)) - 1) < 1e-12
    assert torch.equal(z[1], torch.zeros(4))


def test_keep_indices_takes_the_top_scores_in_order():
    scores = torch.tensor([0.1, 5.0, 0.3, 4.0, 0.2])
    assert keep_indices(scores, 2).tolist() == [1, 3]
    with pytest.raises(ValueError, match="width: must be between 1 and 5"):
        keep_indices(scores, 0)


def test_bias_compensation_is_exact_at_the_mean(demo_model, statistics):
    """With pruned channels' activations replaced by their means, outputs are equal."""
    layer = copy.deepcopy(decoder_layers(demo_model)[2])
    mlp = layer.mlp
    scores = channel_scores("wifv", statistics.layers[2].mean, statistics.layers[2].variance, mlp.down_proj.weight)
    mean = statistics.layers[2].mean
    x = torch.randn(3, 10, mlp.gate_proj.in_features, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hidden = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        keep, before, after = prune_layer(layer, scores, mean, width=256)
        pruned_mask = torch.ones(hidden.shape[-1], dtype=torch.bool)
        pruned_mask[keep] = False
        hidden[..., pruned_mask] = mean[pruned_mask].float()
        full_output = mlp.down_proj(hidden)
        pruned_output = layer.mlp(x)
    assert layer.mlp.down_proj.weight.shape == (128, 256)
    assert before - after == 256 * 128 * 3 - 128  # two rows and a column per channel, plus the bias
    torch.testing.assert_close(pruned_output, full_output, rtol=1e-5, atol=1e-5)


def test_compensation_bias_is_float64_product():
    weight = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mean = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    bias = compensation_bias(weight, mean, keep=torch.tensor([1]))
    assert bias.dtype == torch.float64
    assert bias.tolist() == [1 * 10 + 3 * 30, 4 * 10 + 6 * 30]


def _zeroed_reference(model, results, means):
    """The unpruned model with pruned channels' down_proj columns zeroed and the bias added."""
    reference = copy.deepcopy(model)
    for layer, result, mean in zip(decoder_layers(reference), results, means):
        down = layer.mlp.down_proj
        pruned = torch.ones(down.in_features, dtype=torch.bool)
        pruned[result.kept_channels] = False
        new_down = nn.Linear(down.in_features, down.out_features, bias=True)
        with torch.no_grad():
            bias = compensation_bias(down.weight, mean, result.kept_channels)
            new_down.weight.copy_(down.weight)
            new_down.weight[:, pruned] = 0
            new_down.bias.copy_(bias.float())
        layer.mlp.down_proj = new_down
    return reference


def test_pruned_model_equals_zeroed_full_model_plus_bias(demo_model, statistics):
    model = copy.deepcopy(demo_model)
    scores = model_scores(model, statistics)
    widths = [384, 256, 512, 128, 384, 256, 384, 512]
    results = prune_model(model, scores, statistics.means, widths)
    reference = _zeroed_reference(demo_model, results, statistics.means)
    ids = torch.randint(20, 2048, (2, 40), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert [layer.mlp.gate_proj.out_features for layer in decoder_layers(model)] == widths
    assert model.config.text_config.intermediate_sizes == widths
    assert type(model).__name__ == "Gemma4FlapForConditionalGeneration"


def test_save_reload_gives_identical_logits(demo_model, statistics, tmp_path):
    model = copy.deepcopy(demo_model)
    widths = [256] * 4 + [384] * 4
    prune_model(model, model_scores(model, statistics), statistics.means, widths)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Gemma4FlapForConditionalGeneration"]
    assert config["text_config"]["intermediate_sizes"] == widths
    assert config["text_config"]["flap_pruned"] is True
    assert config["text_config"]["intermediate_size"] == 512
    reloaded = load_model(tmp_path)
    ids = torch.randint(20, 2048, (2, 33), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    generated = reloaded.generate(input_ids=ids[:1], max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 38)


def test_stock_loader_refuses_a_pruned_checkpoint(demo_model, statistics, tmp_path, caplog):
    """Without the studio's loader, transformers stops on the FFN shapes instead of running wrong."""
    from transformers import AutoModelForImageTextToText

    model = copy.deepcopy(demo_model)
    prune_model(model, model_scores(model, statistics), statistics.means, [256] * 8)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert "mlp.gate_proj.weight" in caplog.text and "MISMATCH" in caplog.text
