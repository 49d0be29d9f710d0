"""Pruning inside the calibration pass, one decoder layer at a time: refit and sequential calibration.

Three choices need the calibration data while a layer is pruned, not only its statistics:
- `compensation="refit"` needs the layer's Gram matrix (one width x width float64 matrix);
- `metric="obs"` chooses the layer's channels from that Gram matrix (`studio.flap.obs`, which
  holds its inverse beside it while it chooses);
- `sequential=True` measures each layer on the outputs of the already-pruned layers before it
  (the statistics, the scores that choose its channels, and the Gram matrix all come from the
  pruned prefix), instead of on the full model's activations (one-shot).

Both run over the decoder stack layer by layer (`studio.flap.stats.walk_layers`), so only the
layer being visited has a Gram matrix: memory stays at one per model, whether the model lives on
the CPU with one layer at a time on the accelerator (`layerwise`) or entirely on the accelerator.

Widths are fixed before this pass: FLAP's global search needs every layer's scores first, so a
global ratio is turned into widths from a one-shot statistics pass (see `studio.flap.pipeline`).
A one-shot pass may also take its channel scores from that earlier pass (`scores`), so that the
channels are the same as those `bias` or `none` would prune; obs, whose choice needs the Gram
matrix, always chooses in this pass (the earlier pass's scores only gave the widths).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from studio.flap.prune import LayerPruneResult, prune_layer
from studio.flap.refit import GramMatrix
from studio.flap.scores import calibrated_scores
from studio.flap.settings import GRAM_METRICS, FlapSettings
from studio.flap.stats import (
    ChannelMoments,
    FlapStatistics,
    LayerInputs,
    ProgressFn,
    check_calibration_batch,
    layer_source,
    walk_layers,
)
from studio.modeling import mark_pruned


@dataclass
class CalibratedPrune:
    """What the pass measured and did: per-layer statistics and scores, and each layer's pruning."""

    statistics: FlapStatistics
    scores: list[torch.Tensor]
    results: list[LayerPruneResult]


@dataclass
class LayerMeasurements:
    """One layer's down_proj input over the calibration tokens: moments, and the Gram matrix for a refit."""

    moments: ChannelMoments
    gram: GramMatrix | None


def measure_layer(layer, inputs: LayerInputs, with_gram: bool, advance: bool) -> LayerMeasurements:
    """Run `layer` on its inputs, recording its down_proj input.

    With `advance`, the inputs are replaced by the layer's outputs (`LayerInputs.advance`).
    """
    width = layer.mlp.down_proj.in_features
    measured = LayerMeasurements(ChannelMoments.empty(width), GramMatrix.empty(width, inputs.device) if with_gram else None)

    def record(_module, args):
        activations = args[0].detach()
        measured.moments = measured.moments.merge(ChannelMoments.of(activations))
        if measured.gram is not None:
            measured.gram.add(activations)

    handle = layer.mlp.down_proj.register_forward_pre_hook(record)
    try:
        inputs.advance(layer) if advance else inputs.run(layer)
    finally:
        handle.remove()
    return measured


@torch.no_grad()
def prune_while_calibrating(
    model,
    input_ids: torch.Tensor,
    widths: Sequence[int],
    settings: FlapSettings,
    device: str | torch.device | None = None,
    scores: Sequence[torch.Tensor] | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_pruned: Callable[[int, torch.nn.Module], None] | None = None,
) -> CalibratedPrune:
    """Prune every decoder layer of `model` in place to `widths`, measuring each layer as it goes.

    `settings` gives the metric, the compensation (and its damping) and whether the pass is
    sequential. `scores` fixes the channel scores (one-shot only: a sequential pass scores each
    layer on its pruned prefix; obs ignores them); by default each layer is scored on what this
    pass measured.
    Layers visit `device` one at a time, as `collect_statistics(layerwise=True)` does. `model` may
    also be a layer source (`studio.streaming.StreamedDecoder`): its layers are then read from disk
    and dropped after their visit, so `on_pruned(index, layer)` is where each pruned layer is kept
    (written out); the source's model is not marked pruned.
    """
    check_calibration_batch(input_ids, settings.batch_size)
    source = layer_source(model, device)
    layers = range(source.num_layers)
    if len(widths) != len(layers):
        raise ValueError(f"plan: {len(widths)} widths for a model of {len(layers)} layers")
    if scores is not None and settings.sequential:
        raise ValueError("scores: a sequential pass scores each layer on its pruned prefix; pass no scores")
    if scores is not None and len(scores) != len(layers):
        raise ValueError(f"scores: {len(scores)} score vectors for a model of {len(layers)} layers")
    moments: list[ChannelMoments] = []
    measured_scores: list[torch.Tensor] = []
    results: list[LayerPruneResult] = []

    def visit(index: int, layer, inputs: LayerInputs) -> list[torch.Tensor]:
        # One-shot: the next layer sees the full layer's outputs; sequential: the pruned layer's, computed below.
        measured = measure_layer(layer, inputs, settings.needs_gram, advance=not settings.sequential)
        stats = measured.moments
        layer_scores = calibrated_scores(
            settings.metric, stats, layer.mlp.down_proj.weight, measured.gram, widths[index], settings.refit_damp
        )
        # A Gram metric's channels are chosen here, whatever the earlier pass scored.
        chosen = scores[index] if scores is not None and settings.metric not in GRAM_METRICS else layer_scores
        original = layer.mlp.down_proj.in_features
        keep, before, after = prune_layer(
            layer, chosen, stats.mean, widths[index], settings.compensation, measured.gram, settings.refit_damp
        )
        moments.append(stats)
        measured_scores.append(layer_scores)
        results.append(LayerPruneResult(index, original, widths[index], before, after, keep))
        if on_pruned is not None:
            on_pruned(index, layer)
        return inputs.advance(layer) if settings.sequential else inputs.hidden

    walk_layers(source, input_ids, settings.batch_size, device, visit, progress, should_stop)
    if source is not model:
        mark_pruned(model, list(widths))
    return CalibratedPrune(FlapStatistics(moments), measured_scores, results)
