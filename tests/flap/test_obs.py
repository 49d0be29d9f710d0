"""OBS channel selection (studio.flap.obs): its costs against least squares solved directly, and its choices on models.

Models run in float64 so that the least-squares properties hold to float64 rounding.
"""

import copy
import json

import numpy as np
import pytest
import torch

from studio.calibration import CalibrationSpec, build_calibration_ids
from studio.cli import main
from studio.eval.baselines import random_scores
from studio.flap.layerwise import prune_while_calibrating
from studio.flap.obs import obs_select
from studio.flap.pipeline import load_statistics
from studio.flap.prune import keep_indices
from studio.flap.refit import GramMatrix
from studio.flap.scores import channel_scores, model_scores
from studio.flap.settings import FlapSettings
from studio.flap.stats import collect_statistics
from studio.modeling import decoder_layers, load_model
from tests.flap.layer_inputs import mlp_inputs

SAMPLES, SEQLEN = 8, 64


def _calibration_ids(model_dir, calibration_text, seed=1):
    from transformers import AutoTokenizer

    spec = CalibrationSpec(source=str(calibration_text), samples=SAMPLES, seqlen=SEQLEN, seed=seed)
    return build_calibration_ids(AutoTokenizer.from_pretrained(model_dir), spec)


def _pruned(model, ids, widths, scores=None, **settings):
    pruned = copy.deepcopy(model)
    calibrated = prune_while_calibrating(pruned, ids, widths, FlapSettings(batch_size=4, **settings), scores=scores)
    return pruned, calibrated


def _output_errors(full_model, pruned_model, inputs) -> list[float]:
    with torch.no_grad():
        return [
            float((p.mlp(x) - f.mlp(x)).pow(2).sum())
            for f, p, x in zip(decoder_layers(full_model), decoder_layers(pruned_model), inputs)
        ]


class _BruteForce:
    """The damped refit objective of a kept set, by numpy's lstsq on the tokens themselves (no Gram matrix).

    min over (W', b') of sum_t ||W x_t + b - W' x_t[K] - b'||^2 + lam ||W' - W_K||^2, plus lam ||W_S||^2
    for the removed columns (the ridge on a column set to zero).
    """

    def __init__(self, x, weight, bias, damp):
        self.x, self.weight = x.numpy(), weight.numpy()
        self.target = self.x @ self.weight.T + bias.numpy()
        self.lam = damp * np.mean(np.sum((self.x - self.x.mean(axis=0)) ** 2, axis=0))

    def objective(self, keep) -> float:
        keep = sorted(keep)
        removed = [j for j in range(self.x.shape[1]) if j not in keep]
        tokens = self.x.shape[0]
        design = np.vstack([
            np.hstack([self.x[:, keep], np.ones((tokens, 1))]),
            np.hstack([np.sqrt(self.lam) * np.eye(len(keep)), np.zeros((len(keep), 1))]),
        ])
        rhs = np.vstack([self.target, np.sqrt(self.lam) * self.weight[:, keep].T])
        solution = np.linalg.lstsq(design, rhs, rcond=None)[0]
        return float(((design @ solution - rhs) ** 2).sum() + self.lam * (self.weight[:, removed] ** 2).sum())


@pytest.mark.parametrize("damp", [0.0, 0.05])
@pytest.mark.parametrize("block", [1, 4])
def test_every_greedy_step_is_the_brute_force_cheapest_and_costs_what_least_squares_says(damp, block):
    generator = torch.Generator().manual_seed(0)
    tokens, width, hidden, kept_width = 200, 24, 10, 9
    mixing = torch.randn(width, width, generator=generator, dtype=torch.float64)
    x = torch.randn(tokens, width, generator=generator, dtype=torch.float64) @ mixing * 0.3 + 0.5  # correlated, off-centre
    weight = torch.randn(hidden, width, generator=generator, dtype=torch.float64)
    bias = torch.randn(hidden, generator=generator, dtype=torch.float64)
    gram = GramMatrix.empty(width)
    gram.add(x)
    original = (gram.xx.clone(), weight.clone())
    selection = obs_select(gram, weight, kept_width, damp, block)
    # Its updates work on copies: the Gram and the layer's weight are as they were.
    assert torch.equal(gram.xx, original[0]) and torch.equal(weight, original[1])
    brute = _BruteForce(x, weight, bias, damp)
    assert [step.channels.numel() for step in selection.steps] == (
        [1] * 15 if block == 1 else [4, 4, 4, 3]
    )
    kept = set(range(width))
    for step in selection.steps:
        before = brute.objective(kept)
        # Every candidate channel's cost, by removing it and solving the least squares again.
        single = {j: brute.objective(kept - {j}) - before for j in kept}
        cheapest = sorted(single, key=single.get)[: step.channels.numel()]
        assert step.channels.tolist() == cheapest
        removed = set(step.channels.tolist())
        np.testing.assert_allclose(step.cost, brute.objective(kept - removed) - before, rtol=1e-8, atol=1e-8)
        kept -= removed
    assert selection.keep.tolist() == sorted(kept)
    # The steps add up to the objective of the final kept set (the full layer's objective is zero).
    np.testing.assert_allclose(selection.total_cost, brute.objective(kept), rtol=1e-9)
    # The scores give the same channels back through the pruning's own selection.
    assert keep_indices(selection.scores(), kept_width).tolist() == sorted(kept)


def test_obs_choice_and_refit_are_exact_when_the_pruned_channels_are_scaled_copies(demo_model_dir, calibration_text):
    """Channel p of the second half copies channel p - w/2's gate row and scales its up row by a in [0.1, 0.5]:
    x_p = a x_{p-w/2}. Either channel of a pair reproduces the other, so the full output is reachable from one
    channel per pair; with a small ridge, dropping the copy costs ~lam a^2-times less than dropping the original,
    so OBS must keep exactly the first half and the refit then reproduces the full layer."""
    model = load_model(demo_model_dir, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    for layer in decoder_layers(model):
        half = layer.mlp.down_proj.in_features // 2
        with torch.no_grad():
            layer.mlp.gate_proj.weight[half:] = layer.mlp.gate_proj.weight[:half]
            magnitude = torch.rand(half, 1, generator=generator, dtype=torch.float64) * 0.4 + 0.1
            sign = torch.randint(0, 2, (half, 1), generator=generator).to(torch.float64) * 2 - 1
            layer.mlp.up_proj.weight[half:] = magnitude * sign * layer.mlp.up_proj.weight[:half]
    ids = _calibration_ids(demo_model_dir, calibration_text)
    width = decoder_layers(model)[0].mlp.down_proj.in_features
    inputs = mlp_inputs(model, ids)
    pruned, calibrated = _pruned(model, ids, [width // 2] * len(inputs), metric="obs", compensation="refit", refit_damp=1e-10)
    for result in calibrated.results:
        assert result.kept_channels.tolist() == list(range(width // 2)), result.layer
    with torch.no_grad():
        for full_layer, layer, x in zip(decoder_layers(model), decoder_layers(pruned), inputs):
            expected = full_layer.mlp(x)
            # Measured: ~1e-11 of the output's scale (the ridge and Hinv's conditioning ~1e10).
            torch.testing.assert_close(layer.mlp(x), expected, rtol=0, atol=1e-8 * float(expected.abs().max()))


def test_obs_refit_fits_every_demo_layer_better_than_wifv_refit_and_random_refit(demo_model_dir, calibration_text):
    model = load_model(demo_model_dir, dtype=torch.float64)
    ids = _calibration_ids(demo_model_dir, calibration_text)
    widths = [layer.mlp.down_proj.in_features // 2 for layer in decoder_layers(model)]
    inputs = mlp_inputs(model, ids)
    wifv = model_scores(model, collect_statistics(model, ids, batch_size=4))
    errors = {
        "obs": _output_errors(model, _pruned(model, ids, widths, metric="obs", compensation="refit")[0], inputs),
        "wifv": _output_errors(model, _pruned(model, ids, widths, wifv, compensation="refit")[0], inputs),
        "random": _output_errors(model, _pruned(model, ids, widths, random_scores(model, 0), compensation="refit")[0], inputs),
    }
    for layer, (obs, wifv_error, random_error) in enumerate(zip(errors["obs"], errors["wifv"], errors["random"])):
        assert obs <= wifv_error, (layer, obs, wifv_error)
        assert obs <= random_error, (layer, obs, random_error)
    # Not a tie: measured on this model, OBS's sum is 0.95 of WIFV's and 0.68 of random's.
    assert sum(errors["obs"]) < 0.97 * sum(errors["wifv"])


def test_obs_statistics_only_score_is_wifv_its_diagonal_approximation():
    generator = torch.Generator().manual_seed(1)
    mean, variance = torch.randn(16, dtype=torch.float64), torch.rand(16, dtype=torch.float64)
    weight = torch.randn(8, 16, generator=generator)
    torch.testing.assert_close(channel_scores("obs", mean, variance, weight), channel_scores("wifv", mean, variance, weight))
    # And OBS's own single-channel cost reduces to it when the Gram matrix is diagonal.
    x = torch.randn(500, 16, generator=generator, dtype=torch.float64)
    gram = GramMatrix.empty(16)
    gram.add(x)
    centred = gram.centered(torch.arange(16))
    gram.xx -= centred - torch.diag_embed(centred.diagonal())  # the centred Gram keeps only its diagonal
    first = obs_select(gram, weight, 15, damp=0.0, block=1).steps[0]
    diagonal = torch.diagonal(gram.centered(torch.arange(16))) * weight.double().pow(2).sum(dim=0)
    assert int(first.channels[0]) == int(diagonal.argmin())
    np.testing.assert_allclose(first.cost, float(diagonal.min()), rtol=1e-9)


def test_obs_settings_calibrate_while_pruning_and_bad_input_names_its_field():
    assert FlapSettings(metric="obs").needs_gram and FlapSettings(metric="obs").calibrates_while_pruning
    assert not FlapSettings(metric="wifv").needs_gram
    gram = GramMatrix.empty(6)
    x = torch.randn(50, 6, dtype=torch.float64)
    x[:, 2] = 0.0  # a dead channel: singular without damping
    gram.add(x)
    with pytest.raises(ValueError, match="flap.refit_damp"):
        obs_select(gram, torch.randn(4, 6, dtype=torch.float64), 3, damp=0.0)
    with pytest.raises(ValueError, match="width: must be between 1 and 6"):
        obs_select(gram, torch.randn(4, 6, dtype=torch.float64), 7)
    assert obs_select(gram, torch.randn(4, 6, dtype=torch.float64), 3, damp=0.01).keep.numel() == 3


def _prune_args(model, out, calibration_text, *extra):
    return ["prune", "--model", str(model), *extra, "--calib", str(calibration_text),
            "--samples", "4", "--seqlen", "64", "--out", str(out)]


def test_cli_prunes_with_obs_by_a_plan_and_by_a_ratio(demo_model_dir, calibration_text, tmp_path):
    out = tmp_path / "obs-plan"
    assert main(_prune_args(demo_model_dir, out, calibration_text, "--plan", "uniform-50", "--metric", "obs",
                            "--compensation", "refit")) == 0
    summary = json.loads((out / "prune_summary.json").read_text())
    assert summary["metric"] == "obs" and [layer["kept_width"] for layer in summary["layers"]] == [256] * 8
    _stats, scores, metric = load_statistics(out / "flap_stats.safetensors")
    assert metric == "obs"
    # The stored scores are OBS's: exactly 256 channels per layer share the top score.
    assert all(int((s == s.max()).sum()) == 256 for s in scores)
    assert load_model(out).config.text_config.intermediate_sizes == [256] * 8
    # With a ratio, the widths come from the statistics-only score (WIFV), the same as wifv suggests.
    widths = {}
    for metric in ("obs", "wifv"):
        target = tmp_path / f"{metric}-ratio"
        assert main(_prune_args(demo_model_dir, target, calibration_text, "--ratio", "0.25", "--metric", metric)) == 0
        widths[metric] = [layer["kept_width"] for layer in json.loads((target / "prune_summary.json").read_text())["layers"]]
    assert widths["obs"] == widths["wifv"] and sum(widths["obs"]) == 8 * 512 - 1024
    # ... and the stored scores are OBS's own (top score shared by each layer's kept width), not WIFV's.
    _stats, scores, metric = load_statistics(tmp_path / "obs-ratio" / "flap_stats.safetensors")
    assert metric == "obs"
    assert [int((s == s.max()).sum()) for s in scores] == widths["obs"]
