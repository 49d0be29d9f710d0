import pytest
import torch

from studio.flap.suggest import suggest_widths


def _scores(seed, layers=6, width=1024):
    generator = torch.Generator().manual_seed(seed)
    # Layers differ in how spread out their channel scores are, so FLAP prunes them unevenly.
    return [torch.randn(width, generator=generator) * (1 + i) for i in range(layers)]


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.35])
def test_meets_ratio_within_one_multiple_and_keeps_multiples(ratio):
    original = [1024] * 6
    widths = suggest_widths(_scores(0), original, ratio, multiple=128)
    pruned = sum(original) - sum(widths)
    assert abs(pruned - ratio * sum(original)) <= 128
    assert all(w % 128 == 0 and 128 <= w <= 1024 for w in widths)


def test_low_scores_are_pruned_first():
    scores = [torch.zeros(512) + 5, torch.arange(512, dtype=torch.float64) - 1000, torch.zeros(512) + 5]
    # Unstandardised input: layer 1's channels are all far below the others.
    widths = suggest_widths(scores, [512] * 3, target_ratio=2 * 128 / 1536, multiple=128, max_ratio=0.9)
    assert widths == [512, 256, 512]


def test_respects_locks_and_counts_them():
    original = [1024] * 6
    locks = [True, False, False, False, False, True]
    locked_widths = [768, 1024, 1024, 1024, 1024, 1024]
    widths = suggest_widths(_scores(1), original, 0.2, locks=locks, locked_widths=locked_widths)
    assert widths[0] == 768 and widths[5] == 1024
    assert abs((sum(original) - sum(widths)) - 0.2 * sum(original)) <= 128


def test_respects_per_layer_max_ratio():
    widths = suggest_widths(_scores(2), [1024] * 6, 0.3, max_ratio=[0.0, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert widths[0] == 1024
    assert min(widths) >= 512


def test_unreachable_target_says_what_is_reachable():
    with pytest.raises(ValueError, match=r"target_ratio: 0\.600 cannot be met .* at most 0\.500"):
        suggest_widths(_scores(3), [1024] * 6, 0.6, max_ratio=0.5)
    with pytest.raises(ValueError, match=r"layer 2: max ratio must be in \[0, 1\)"):
        suggest_widths(_scores(3), [1024] * 6, 0.1, max_ratio=[0.5, 0.5, 1.0, 0.5, 0.5, 0.5])
