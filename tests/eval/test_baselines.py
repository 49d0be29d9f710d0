"""Baseline channel scores and round-to-nearest INT4."""

from __future__ import annotations

import copy

import pytest
import torch

from studio.eval.baselines import (
    magnitude_scores,
    random_scores,
    rtn_quantize_model_,
    rtn_quantize_weight,
)
from studio.modeling import decoder_layers, load_model


@pytest.fixture(scope="module")
def model(demo_model_dir):
    return load_model(demo_model_dir)


def test_rtn_uses_gptq_symmetric_grid_per_group():
    weight = torch.randn(4, 256, generator=torch.Generator().manual_seed(0))
    quantized = rtn_quantize_weight(weight, bits=4, group_size=128)
    for row in range(4):
        for group in range(2):
            w = weight[row, group * 128 : (group + 1) * 128]
            q = quantized[row, group * 128 : (group + 1) * 128]
            scale = 2 * w.abs().max() / 15
            levels = q / scale
            assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the grid
            assert levels.min() >= -8 - 1e-4 and levels.max() <= 7 + 1e-4  # 16 levels around zero
            assert (q - w).abs().max() <= scale / 2 + 1e-6  # nearest point (the clipped top level aside)
            assert len(q.unique()) <= 16


def test_rtn_rejects_groups_that_do_not_divide_the_columns():
    with pytest.raises(ValueError, match="group_size: 128 does not divide the 200 input columns"):
        rtn_quantize_weight(torch.ones(2, 200))


def test_rtn_model_quantizes_the_cards_four_modules_only(model):
    quantized = copy.deepcopy(model)
    count = rtn_quantize_model_(quantized)
    layers, qlayers = decoder_layers(model), decoder_layers(quantized)
    assert count == 4 * len(layers)
    assert qlayers[0].self_attn.q_proj.weight.equal(layers[0].self_attn.q_proj.weight)
    assert not qlayers[0].mlp.down_proj.weight.equal(layers[0].mlp.down_proj.weight)
    assert qlayers[0].mlp.down_proj.weight.equal(rtn_quantize_weight(layers[0].mlp.down_proj.weight))


def test_magnitude_scores_are_channel_weight_norms(model):
    scores = magnitude_scores(model)
    mlp = decoder_layers(model)[2].mlp
    j = 17
    by_hand = torch.cat([mlp.gate_proj.weight[j], mlp.up_proj.weight[j], mlp.down_proj.weight[:, j]]).double().norm()
    assert len(scores) == len(decoder_layers(model))
    assert scores[2][j].item() == pytest.approx(by_hand.item(), rel=1e-9)


def test_random_scores_follow_the_seed(model):
    first, again, other = random_scores(model, 0), random_scores(model, 0), random_scores(model, 1)
    assert all(a.equal(b) for a, b in zip(first, again))
    assert not first[0].equal(other[0])
