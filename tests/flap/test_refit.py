"""Compensation choices (none, bias, refit) and sequential calibration, checked against independent computations.

Models run in float64 so that the least-squares properties hold to float64 rounding, not bf16/fp32 noise.
"""

import copy

import numpy as np
import pytest
import torch

from studio.calibration import CalibrationSpec, build_calibration_ids
from studio.demo_model import DemoModelShape, build_demo_model
from studio.flap.layerwise import prune_while_calibrating
from studio.flap.refit import GramMatrix, refit_down_proj
from studio.flap.scores import model_scores
from studio.flap.settings import FlapSettings
from studio.flap.stats import collect_statistics
from studio.modeling import decoder_layers, load_model
from tests.flap.layer_inputs import mlp_inputs

SAMPLES, SEQLEN = 8, 64
# A second hidden size / FFN width combination, FFN wider relative to hidden than the demo's.
OTHER_SHAPE = DemoModelShape(num_layers=4, hidden_size=96, intermediate_size=640)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    return build_demo_model(tmp_path_factory.mktemp("models") / "other", shape=OTHER_SHAPE)


def _calibration_ids(model_dir, calibration_text):
    from transformers import AutoTokenizer

    spec = CalibrationSpec(source=str(calibration_text), samples=SAMPLES, seqlen=SEQLEN, seed=1)
    return build_calibration_ids(AutoTokenizer.from_pretrained(model_dir), spec)


def _pruned(model, ids, widths, scores, compensation, **settings):
    pruned = copy.deepcopy(model)
    prune_while_calibrating(pruned, ids, widths, FlapSettings(compensation=compensation, batch_size=4, **settings), scores=scores)
    return pruned


@pytest.mark.parametrize("which", ["demo", "other"])
def test_output_error_refit_le_bias_le_none_in_every_layer(which, demo_model_dir, other_model_dir, calibration_text):
    model_dir = demo_model_dir if which == "demo" else other_model_dir
    model = load_model(model_dir, dtype=torch.float64)
    ids = _calibration_ids(model_dir, calibration_text)
    widths = [layer.mlp.down_proj.in_features // 2 for layer in decoder_layers(model)]
    scores = model_scores(model, collect_statistics(model, ids, batch_size=4))
    inputs = mlp_inputs(model, ids)
    errors = {}
    with torch.no_grad():
        full = [layer.mlp(x) for layer, x in zip(decoder_layers(model), inputs)]
        for compensation in ("none", "bias", "refit"):
            pruned = decoder_layers(_pruned(model, ids, widths, scores, compensation))
            errors[compensation] = [float((layer.mlp(x) - y).pow(2).sum()) for layer, x, y in zip(pruned, inputs, full)]
    for layer, (none, bias, refit) in enumerate(zip(errors["none"], errors["bias"], errors["refit"])):
        # Exact properties (mean-centring minimises squares; the bias solution is feasible for the refit),
        # so the only slack is float64 rounding of sums over ~10^5 terms.
        assert refit <= bias * (1 + 1e-9), (layer, refit, bias)
        assert bias <= none * (1 + 1e-9), (layer, bias, none)
    # And not vacuously: the refit is a real improvement somewhere.
    assert sum(errors["refit"]) < 0.9 * sum(errors["bias"])


def test_refit_reproduces_a_layer_whose_pruned_channels_are_scaled_copies_of_kept_ones(demo_model_dir, calibration_text):
    """Channel p of the second half copies channel p - w/2's gate row and scales its up row, so x_p = a_p x_{p-w/2}:
    the full output W x = (W_K + W_P diag(a)) x_K is exactly reachable from the kept half."""
    model = load_model(demo_model_dir, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    for layer in decoder_layers(model):
        half = layer.mlp.down_proj.in_features // 2
        with torch.no_grad():
            layer.mlp.gate_proj.weight[half:] = layer.mlp.gate_proj.weight[:half]
            scale = torch.rand(half, 1, generator=generator, dtype=torch.float64) * 2 - 1
            layer.mlp.up_proj.weight[half:] = scale * layer.mlp.up_proj.weight[:half]
    ids = _calibration_ids(demo_model_dir, calibration_text)
    width = decoder_layers(model)[0].mlp.down_proj.in_features
    keep_first_half = [torch.cat([torch.ones(width // 2), torch.zeros(width // 2)]).double()] * len(decoder_layers(model))
    inputs = mlp_inputs(model, ids)
    pruned = _pruned(model, ids, [width // 2] * len(inputs), keep_first_half, "refit", refit_damp=0.0)
    biased = _pruned(model, ids, [width // 2] * len(inputs), keep_first_half, "bias")
    with torch.no_grad():
        for index, (full_layer, layer, bias_layer, x) in enumerate(
            zip(decoder_layers(model), decoder_layers(pruned), decoder_layers(biased), inputs)
        ):
            expected = full_layer.mlp(x)
            scale = float(expected.abs().max())
            torch.testing.assert_close(layer.mlp(x), expected, rtol=0, atol=1e-9 * scale)
            # The bias alone cannot do it: the test's construction really needs the refit.
            assert float((bias_layer.mlp(x) - expected).abs().max()) > 1e-3 * scale, index


def test_refit_solution_equals_numpy_least_squares_with_the_ridge_toward_the_bias_solution():
    generator = torch.Generator().manual_seed(0)
    tokens, width, hidden = 300, 24, 10
    x = torch.randn(tokens, width, generator=generator, dtype=torch.float64) * 2 + 0.5
    weight = torch.randn(hidden, width, generator=generator, dtype=torch.float64)
    bias = torch.randn(hidden, generator=generator, dtype=torch.float64)
    keep = torch.tensor([0, 3, 4, 7, 8, 11, 15, 16, 20, 23])
    gram = GramMatrix.empty(width)
    for piece in x.split([7, 150, 143]):  # accumulation order and chunking do not matter
        gram.add(piece, rows_per_chunk=50)
    np.testing.assert_allclose(gram.xx.numpy(), (x.T @ x).numpy(), rtol=1e-12)
    target = (x @ weight.T + bias).numpy()
    design = np.hstack([x[:, keep].numpy(), np.ones((tokens, 1))])
    for damp in (0.0, 0.05):
        new_weight, new_bias = refit_down_proj(gram, weight, bias, keep, damp)
        # Independent: numpy's lstsq on the augmented system [X_K 1; sqrt(lam) I 0] -> [Y; sqrt(lam) W_K^T].
        centred = x[:, keep].numpy() - x[:, keep].numpy().mean(axis=0)
        lam = damp * np.mean(np.sum(centred**2, axis=0))
        ridge = np.hstack([np.sqrt(lam) * np.eye(len(keep)), np.zeros((len(keep), 1))])
        augmented = np.vstack([design, ridge])
        rhs = np.vstack([target, np.sqrt(lam) * weight[:, keep].numpy().T])
        solution = np.linalg.lstsq(augmented, rhs, rcond=None)[0]
        np.testing.assert_allclose(new_weight.numpy(), solution[:-1].T, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(new_bias.numpy(), solution[-1], rtol=1e-9, atol=1e-10)


def test_refit_on_a_singular_gram_asks_for_damping():
    x = torch.randn(50, 6, dtype=torch.float64)
    x[:, 2] = 0.0  # a dead channel
    gram = GramMatrix.empty(6)
    gram.add(x)
    with pytest.raises(ValueError, match="flap.refit_damp"):
        refit_down_proj(gram, torch.randn(4, 6, dtype=torch.float64), None, torch.tensor([0, 2, 4]), damp=0.0)
    weight, _bias = refit_down_proj(gram, torch.randn(4, 6, dtype=torch.float64), None, torch.tensor([0, 2, 4]), damp=0.01)
    assert torch.isfinite(weight).all()


def test_sequential_statistics_equal_a_recomputation_on_the_pruned_prefix(demo_model_dir, calibration_text):
    compensation = "refit"  # the measuring does not depend on the compensation; refit also exercises the Gram path
    model = load_model(demo_model_dir, dtype=torch.float64)
    ids = _calibration_ids(demo_model_dir, calibration_text)
    widths = [256] * len(decoder_layers(model))
    settings = FlapSettings(compensation=compensation, sequential=True, batch_size=4)
    sequential = copy.deepcopy(model)
    measured = prune_while_calibrating(sequential, ids, widths, settings)
    one_shot = collect_statistics(model, ids, batch_size=4)
    for index in range(len(widths)):
        # Independent: the full model with the sequential pass's pruned layers before `index`, whole forwards.
        prefix = copy.deepcopy(model)
        for earlier in range(index):
            decoder_layers(prefix)[earlier].mlp = decoder_layers(sequential)[earlier].mlp
        expected = collect_statistics(prefix, ids, batch_size=8).layers[index]
        got = measured.statistics.layers[index]
        assert got.count == expected.count == SAMPLES * SEQLEN
        torch.testing.assert_close(got.mean, expected.mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got.variance, expected.variance, rtol=1e-9, atol=1e-12)
        # Sequential differs from one-shot after the first layer, by far more than rounding.
        gap = float((got.mean - one_shot.layers[index].mean).abs().max())
        scale = float(one_shot.layers[index].mean.abs().max())
        assert (gap == 0) if index == 0 else (gap > 1e-4 * scale), (index, gap, scale)
    # The channels chosen from those scores differ from the one-shot ones in some layer.
    one_shot_model = copy.deepcopy(model)
    chosen = prune_while_calibrating(one_shot_model, ids, widths, FlapSettings(compensation=compensation, batch_size=4))
    assert any(not torch.equal(a.kept_channels, b.kept_channels) for a, b in zip(measured.results, chosen.results))
    with torch.no_grad():
        assert not torch.allclose(sequential(input_ids=ids).logits, one_shot_model(input_ids=ids).logits)


def test_sequential_refuses_fixed_scores(demo_model_dir):
    model = load_model(demo_model_dir)
    ids = torch.randint(20, 2048, (2, 16), generator=torch.Generator().manual_seed(0))
    scores = [torch.zeros(512, dtype=torch.float64)] * 8
    with pytest.raises(ValueError, match="scores: a sequential pass"):
        prune_while_calibrating(model, ids, [256] * 8, FlapSettings(sequential=True), scores=scores)
    with pytest.raises(ValueError, match="plan: 3 widths for a model of 8 layers"):
        prune_while_calibrating(model, ids, [256] * 3, FlapSettings(compensation="refit"))
