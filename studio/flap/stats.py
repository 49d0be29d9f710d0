"""FLAP statistics: per-channel mean and variance of every FFN's down_proj input.

FLAP scores an FFN channel by how much its activation fluctuates around its mean over calibration
tokens. We collect, for every decoder layer, the exact mean and (population) variance of each
down_proj input channel over all calibration tokens, accumulated in float64 with Chan's parallel
merge, so the result does not depend on batch sizes. (The reference FLAP code updates its variance
against a mean it has already overwritten; the merge below has no such aliasing.)

Two ways to run the decoder over the calibration data:
- batched: whole-model forwards with a hook per layer, when the model fits on the device;
- layerwise: the decoder stack one layer at a time on cached layer inputs, as GPTQ does, so only
  one decoder layer need be on the accelerator at once.
Both give the same statistics. The layer-by-layer walk (`walk_layers`) takes a per-layer visit, so
the passes that prune while they calibrate (`studio.flap.layerwise`) reuse it, and a layer source,
so the layers may come from a model in memory (`ModelLayers`) or be read from the checkpoint's
shards one at a time (`studio.streaming.StreamedDecoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from studio.modeling import decoder_layers
from studio.progress import Cancelled, ProgressFn, check_stop

__all__ = [
    "Cancelled",
    "ChannelMoments",
    "FlapStatistics",
    "ModelLayers",
    "ProgressFn",
    "collect_statistics",
    "collect_statistics_layerwise",
    "walk_layers",
]


@dataclass
class ChannelMoments:
    """Running count, mean and sum of squared deviations (M2) per channel, in float64."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def empty(cls, channels: int) -> ChannelMoments:
        zeros = torch.zeros(channels, dtype=torch.float64)
        return cls(0, zeros, zeros.clone())

    @classmethod
    def of(cls, activations: torch.Tensor, rows_per_chunk: int = 512) -> ChannelMoments:
        """Moments of `activations` ([..., channels]) over all leading dimensions.

        Rows are converted to float64 a chunk at a time, so the extra memory stays small next to
        the activations themselves.
        """
        rows = activations.reshape(-1, activations.shape[-1])
        moments = cls.empty(rows.shape[-1])
        for chunk in rows.split(rows_per_chunk):
            variance, mean = torch.var_mean(chunk.to(torch.float64), dim=0, correction=0)
            count = chunk.shape[0]
            moments = moments.merge(cls(count, mean.cpu(), (variance * count).cpu()))
        return moments

    def merge(self, other: ChannelMoments) -> ChannelMoments:
        """Chan et al.'s exact combination of two sets of moments."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        return ChannelMoments(total, mean, m2)

    @property
    def variance(self) -> torch.Tensor:
        """Population variance (divides by the token count)."""
        if self.count == 0:
            raise ValueError("no activations were recorded")
        return self.m2 / self.count


@dataclass
class FlapStatistics:
    """Per-layer down_proj input moments of a whole model."""

    layers: list[ChannelMoments]

    @property
    def means(self) -> list[torch.Tensor]:
        return [m.mean for m in self.layers]

    @property
    def variances(self) -> list[torch.Tensor]:
        return [m.variance for m in self.layers]

    @property
    def tokens(self) -> int:
        return self.layers[0].count if self.layers else 0


def language_model_of(model) -> nn.Module:
    """The decoder stack (`Gemma4TextModel`) that calibration runs through; no LM head."""
    inner = model.model
    return getattr(inner, "language_model", inner)


def _down_proj_recorder(layer, moments: list[ChannelMoments], index: int):
    def hook(_module, inputs):
        moments[index] = moments[index].merge(ChannelMoments.of(inputs[0].detach()))

    return layer.mlp.down_proj.register_forward_pre_hook(hook)


def _batches(input_ids: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, input_ids.shape[0], batch_size):
        yield input_ids[start : start + batch_size]


def check_calibration_batch(input_ids: torch.Tensor, batch_size: int) -> None:
    if input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids: expected a non-empty [samples, seqlen] tensor, got {tuple(input_ids.shape)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size: must be positive, got {batch_size}")


@torch.no_grad()
def collect_statistics(
    model,
    input_ids: torch.Tensor,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    layerwise: bool = False,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FlapStatistics:
    """Mean and variance of every decoder layer's down_proj input over `input_ids` ([N, L]).

    `layerwise=True` keeps the model where it is (e.g. on the CPU) and moves one decoder layer at a
    time to `device`. Otherwise the model must already be on `device`.
    """
    if layerwise:
        return collect_statistics_layerwise(ModelLayers(model, device), input_ids, batch_size, progress, should_stop)
    check_calibration_batch(input_ids, batch_size)
    layers = decoder_layers(model)
    moments = [ChannelMoments.empty(layer.mlp.down_proj.in_features) for layer in layers]
    handles = [_down_proj_recorder(layer, moments, i) for i, layer in enumerate(layers)]
    try:
        _run_batched(model, input_ids, batch_size, progress, should_stop)
    finally:
        for handle in handles:
            handle.remove()
    return FlapStatistics(moments)


@torch.no_grad()
def collect_statistics_layerwise(
    source,
    input_ids: torch.Tensor,
    batch_size: int = 1,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FlapStatistics:
    """`collect_statistics` one decoder layer at a time, the layers coming from `source` (a
    `ModelLayers`, or a `StreamedDecoder` reading them from disk)."""
    check_calibration_batch(input_ids, batch_size)
    moments = [ChannelMoments.empty(width) for width in source.widths]

    def visit(index: int, layer: nn.Module, inputs: LayerInputs) -> list[torch.Tensor]:
        handle = _down_proj_recorder(layer, moments, index)
        try:
            return inputs.advance(layer)
        finally:
            handle.remove()

    walk_layers(source, input_ids, batch_size, None, visit, progress, should_stop)
    return FlapStatistics(moments)


def _run_batched(model, input_ids, batch_size, progress, should_stop) -> None:
    decoder = language_model_of(model)
    device = next(decoder.parameters()).device
    total = -(-input_ids.shape[0] // batch_size)
    for done, batch in enumerate(_batches(input_ids, batch_size), start=1):
        check_stop(should_stop)
        decoder(input_ids=batch.to(device), use_cache=False)
        if progress:
            progress(done, total, "batches")


class _LayerInputRecorder(nn.Module):
    """Stands in for a decoder layer: records the call's other arguments, passes hidden states on."""

    def __init__(self, calls: list):
        super().__init__()
        self.calls = calls

    def forward(self, hidden_states, *args, **kwargs):
        self.calls.append((hidden_states, args, kwargs))
        return hidden_states


def _record_layer_calls(decoder, batch: torch.Tensor) -> list[list]:
    """Run the decoder's embedding stage on `batch` and return each layer's call arguments.

    Layers are swapped for recorders, so no decoder weights are touched: what is recorded is what
    transformers itself would pass each layer (position embeddings per attention type, masks,
    per-layer embeddings, the KV-sharing store that producer layers fill for the shared tail).
    """
    layers = decoder.layers
    originals = list(layers)
    calls: list[list] = [[] for _ in originals]
    try:
        for i in range(len(layers)):
            layers[i] = _LayerInputRecorder(calls[i])
        decoder(input_ids=batch, use_cache=False)
    finally:
        for i, original in enumerate(originals):
            layers[i] = original
    return [layer_calls[0] for layer_calls in calls]


@dataclass
class LayerInputs:
    """What one decoder layer is called with, per calibration batch: hidden states and the other arguments."""

    hidden: list[torch.Tensor]
    calls: list[tuple[tuple, dict]]
    device: torch.device

    def _call(self, layer: nn.Module, batch: int) -> torch.Tensor:
        args, kwargs = self.calls[batch]
        return layer(self.hidden[batch], *_to(args, self.device), **_to(kwargs, self.device))

    def run(self, layer: nn.Module) -> None:
        """Run `layer` (on `device`) on every batch for its side effects (hooks), dropping the outputs."""
        for batch in range(len(self.hidden)):
            self._call(layer, batch)

    def advance(self, layer: nn.Module) -> list[torch.Tensor]:
        """Replace each batch's hidden states by `layer`'s outputs, one batch at a time, and return them.

        In place, so that only one set of hidden states (plus one batch) is held at once.
        """
        for batch in range(len(self.hidden)):
            self.hidden[batch] = self._call(layer, batch)
        return self.hidden


# visit(index, layer, inputs) -> the hidden states the next layer receives.
LayerVisit = Callable[[int, nn.Module, LayerInputs], list[torch.Tensor]]


def forward_layer(_index: int, layer: nn.Module, inputs: LayerInputs) -> list[torch.Tensor]:
    """The plain visit: run the layer, pass its outputs on."""
    return inputs.advance(layer)


class DecoderLayerSource:
    """What every layer source derives from its decoder stack (`self.decoder`)."""

    decoder: nn.Module

    @property
    def num_layers(self) -> int:
        return len(self.decoder.layers)

    @property
    def widths(self) -> list[int]:
        return [layer.mlp.down_proj.in_features for layer in self.decoder.layers]


class ModelLayers(DecoderLayerSource):
    """The layer source of a model in memory: each decoder layer moved to `device` for its visit.

    A layer source gives the layer walk a batch's per-layer call arguments (`layer_calls`), a
    layer ready to run on `device` (`load`), and takes it back, pruned or not (`release`);
    `studio.streaming.StreamedDecoder` is the one that reads layers from disk instead.
    """

    def __init__(self, model, device: str | torch.device | None = None):
        self.decoder = language_model_of(model)
        self.home = next(self.decoder.layers[0].parameters()).device
        self.device = torch.device(device) if device is not None else self.home

    def layer_calls(self, batch: torch.Tensor) -> list:
        return _record_layer_calls(self.decoder, batch.to(next(self.decoder.embed_tokens.parameters()).device))

    def load(self, index: int) -> nn.Module:
        return self.decoder.layers[index].to(self.device)

    def release(self, index: int, layer: nn.Module) -> None:
        layer.to(self.home)


def layer_source(model_or_source, device=None):
    """`model_or_source` if it is a layer source already, else the model's `ModelLayers`."""
    if hasattr(model_or_source, "layer_calls"):
        return model_or_source
    return ModelLayers(model_or_source, device)


def walk_layers(
    model,
    input_ids: torch.Tensor,
    batch_size: int,
    device,
    visit: LayerVisit = forward_layer,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run the decoder stack one layer at a time over cached layer inputs, calling `visit` per layer.

    `model` is a model (its layers visit `device`, where they already are when the whole model is
    on the device) or a layer source (which knows its device; `device` is then ignored). Each
    layer is on the device for its visit only. What `visit` returns becomes the next layer's
    input, so a visit that prunes its layer and returns the pruned layer's outputs calibrates the
    rest of the stack on the pruned prefix.
    """
    source = layer_source(model, device)
    # One recorded call per batch and layer; layer 0's hidden states are the embeddings.
    per_batch = [source.layer_calls(b) for b in _batches(input_ids, batch_size)]
    device = source.device
    hidden = [_to(calls[0][0], device) for calls in per_batch]
    for index in range(source.num_layers):
        check_stop(should_stop)
        layer_calls = [(recorded[index][1], recorded[index][2]) for recorded in per_batch]
        layer = source.load(index)
        try:
            hidden = visit(index, layer, LayerInputs(hidden, layer_calls, device))
        finally:
            source.release(index, layer)
        if progress:
            progress(index + 1, source.num_layers, "layers")


def _to(value, device):
    """Move tensors nested in tuples, lists and dicts to `device`, leaving other objects (caches) as is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict) and type(value) is dict:
        return {k: _to(v, device) for k, v in value.items()}
    return value
