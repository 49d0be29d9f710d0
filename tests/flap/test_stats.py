import numpy as np
import pytest
import torch

from studio.flap.stats import Cancelled, ChannelMoments, collect_statistics
from studio.modeling import decoder_layers, load_model


@pytest.mark.parametrize("batch_sizes", [[7, 1, 30, 2], [1] * 5, [64]])
def test_streaming_moments_equal_numpy(batch_sizes):
    generator = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, 3, 16, generator=generator) * 5 + 100 for n in batch_sizes]
    moments = ChannelMoments.empty(16)
    for chunk in chunks:
        moments = moments.merge(ChannelMoments.of(chunk))
    full = torch.cat(chunks).reshape(-1, 16).double().numpy()
    assert moments.count == full.shape[0]
    np.testing.assert_allclose(moments.mean.numpy(), full.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(moments.variance.numpy(), full.var(axis=0), rtol=1e-6)


def test_merge_is_order_independent():
    generator = torch.Generator().manual_seed(1)
    a, b = ChannelMoments.of(torch.randn(5, 4, generator=generator)), ChannelMoments.of(torch.randn(9, 4, generator=generator))
    ab, ba = a.merge(b), b.merge(a)
    torch.testing.assert_close(ab.mean, ba.mean)
    torch.testing.assert_close(ab.m2, ba.m2)


@pytest.fixture(scope="module")
def demo_model(demo_model_dir):
    return load_model(demo_model_dir)


@pytest.fixture(scope="module")
def calibration_ids():
    return torch.randint(20, 2048, (5, 48), generator=torch.Generator().manual_seed(2))


def _activations_by_forward(model, ids):
    """Every layer's down_proj input, captured by hooks on one plain forward over all samples."""
    captured = {}
    hooks = [
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda _m, inputs, i=i: captured.__setitem__(i, inputs[0].reshape(-1, inputs[0].shape[-1]).double())
        )
        for i, layer in enumerate(decoder_layers(model))
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return [captured[i].numpy() for i in range(len(captured))]


@pytest.mark.parametrize(("layerwise", "batch_size"), [(False, 2), (True, 2), (True, 5)])
def test_statistics_match_full_activation_matrix(demo_model, calibration_ids, layerwise, batch_size):
    expected = _activations_by_forward(demo_model, calibration_ids)
    stats = collect_statistics(demo_model, calibration_ids, batch_size=batch_size, layerwise=layerwise)
    assert len(stats.layers) == len(expected) == 8
    assert stats.tokens == 5 * 48
    for moments, activations in zip(stats.layers, expected):
        np.testing.assert_allclose(moments.mean.numpy(), activations.mean(axis=0), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(moments.variance.numpy(), activations.var(axis=0), rtol=1e-5, atol=1e-9)


def test_progress_counts_layers_and_stop_cancels(demo_model, calibration_ids):
    seen = []
    collect_statistics(demo_model, calibration_ids, layerwise=True, progress=lambda d, t, u: seen.append((d, t, u)))
    assert seen == [(i, 8, "layers") for i in range(1, 9)]
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        collect_statistics(demo_model, calibration_ids, layerwise=True, should_stop=lambda: next(calls) >= 3)


def test_bad_input_is_named(demo_model):
    with pytest.raises(ValueError, match="input_ids: expected a non-empty"):
        collect_statistics(demo_model, torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size: must be positive"):
        collect_statistics(demo_model, torch.zeros(2, 4, dtype=torch.long), batch_size=0)
