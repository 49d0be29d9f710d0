"""FLAP on a checkpoint: calibrate, collect statistics and scores, plan, prune, save.

The one implementation of the calibrate, statistics and prune stages, behind every front end: the
job stages (`studio.jobs.stages`) call `calibration_ids`, `checkpoint_statistics` and
`prune_checkpoint` one by one and persist each result; `python -m studio prune` and the API call
`prune_checkpoint` alone, which then tokenises and collects the statistics itself.

With `settings.layerwise` and a local safetensors checkpoint, both the statistics pass and the
prune stream the model from its shards, one decoder layer at a time (`studio.streaming`); else the
model is loaded whole (layerwise: on the CPU, one layer at a time visiting the device).

With `bias` or `none` compensation, one-shot, pruning needs only the statistics. A refit or a
sequential pass prunes inside a second, layer-by-layer pass over the calibration data
(`studio.flap.layerwise`); with a preset plan (widths known up front) that pass is the only one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from studio.atomic import atomic_directory
from studio.calibration import CalibrationSpec, build_calibration_ids
from studio.checkpoint import FLAP_STATS_FILE, PRUNE_SUMMARY_FILE
from studio.flap.layerwise import prune_while_calibrating
from studio.flap.prune import LayerPruneResult, prune_model
from studio.flap.scores import model_scores, standardize
from studio.flap.settings import GRAM_METRICS, FlapSettings
from studio.flap.stats import ChannelMoments, FlapStatistics, ProgressFn, collect_statistics
from studio.flap.suggest import suggest_widths
from studio.modeling import load_model, text_config_of
from studio.plans.plan import PruningPlan

STATS_FILE, SUMMARY_FILE = FLAP_STATS_FILE, PRUNE_SUMMARY_FILE


def load_tokenizer(model_dir: str | Path):
    """The checkpoint's processor if it has one (multimodal), else its tokenizer."""
    from transformers import AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError):
        return AutoTokenizer.from_pretrained(model_dir)


def text_tokenizer(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def calibration_ids(model_dir: str | Path, spec: CalibrationSpec) -> torch.Tensor:
    """Stage "calibrate": the [samples, seqlen] token ids for `spec`."""
    return build_calibration_ids(text_tokenizer(load_tokenizer(model_dir)), spec)


def save_statistics(path: str | Path, stats: FlapStatistics, scores: list[torch.Tensor], metric: str) -> None:
    tensors = {}
    for i, (moments, layer_scores) in enumerate(zip(stats.layers, scores)):
        tensors[f"layers.{i}.mean"] = moments.mean.contiguous()
        tensors[f"layers.{i}.variance"] = moments.variance.contiguous()
        tensors[f"layers.{i}.scores"] = layer_scores.contiguous()
    metadata = {"tokens": str(stats.tokens), "metric": metric, "layers": str(len(stats.layers))}
    save_file(tensors, str(path), metadata=metadata)


def load_statistics(path: str | Path) -> tuple[FlapStatistics, list[torch.Tensor], str]:
    """Statistics, scores and metric from a `flap_stats.safetensors` file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    count, n_layers = int(metadata["tokens"]), int(metadata["layers"])
    layers = [
        ChannelMoments(count, tensors[f"layers.{i}.mean"], tensors[f"layers.{i}.variance"] * count)
        for i in range(n_layers)
    ]
    return FlapStatistics(layers), [tensors[f"layers.{i}.scores"] for i in range(n_layers)], metadata["metric"]


def suggested_plan(
    scores: list[torch.Tensor], text_config, ratio: float, max_ratio: float = 0.5, base: PruningPlan | None = None
) -> PruningPlan:
    """A plan pruning `ratio` of all FFN channels, chosen from standardised scores.

    With `base`, its locked layers keep their widths.
    """
    from studio.modeling import original_widths

    original = original_widths(text_config)
    multiple = base.multiple if base else 128
    widths = suggest_widths(
        standardize(scores),
        original,
        ratio,
        locks=base.locks if base else None,
        locked_widths=base.widths if base else None,
        max_ratio=max_ratio,
        multiple=multiple,
    )
    return PruningPlan(
        widths=widths,
        original=original,
        locks=list(base.locks) if base else [],
        multiple=multiple,
        name=f"flap-suggested-{ratio:g}",
        description=f"FLAP adaptive widths for a global FFN pruning ratio of {ratio:g}",
    )


def prune_summary(results: list[LayerPruneResult], model_params_before: int, model_params_after: int, plan) -> dict:
    layers = [
        {
            "layer": r.layer,
            "original_width": r.original_width,
            "kept_width": r.kept_width,
            "params_before": r.params_before,
            "params_after": r.params_after,
        }
        for r in results
    ]
    ffn_before = sum(r.params_before for r in results)
    ffn_after = sum(r.params_after for r in results)
    return {
        "plan": plan.name,
        "layers": layers,
        "totals": {
            "ffn_params_before": ffn_before,
            "ffn_params_after": ffn_after,
            "ffn_params_removed_fraction": 1 - ffn_after / ffn_before,
            "model_params_before": model_params_before,
            "model_params_after": model_params_after,
            "channels_before": sum(r.original_width for r in results),
            "channels_after": sum(r.kept_width for r in results),
        },
    }


def _param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def apply_plan(
    model,
    widths: list[int],
    settings: FlapSettings,
    stats: FlapStatistics | None,
    scores: list[torch.Tensor] | None,
    input_ids: torch.Tensor | None = None,
    device: str | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[FlapStatistics, list[torch.Tensor], list[LayerPruneResult]]:
    """Prune `model` in place to `widths` with the settings' compensation.

    `stats`/`scores` are a one-shot statistics pass (None: not collected). A refit or sequential
    prune runs its own pass over `input_ids`. Returns the statistics and scores the channels were
    chosen from, and each layer's result.
    """
    if not settings.calibrates_while_pruning:
        if stats is None or scores is None:
            raise ValueError("statistics: pruning without a calibration pass needs FLAP statistics")
        return stats, scores, prune_model(model, scores, stats.means, widths, settings.compensation)
    if input_ids is None:
        raise ValueError(f"calibration: compensation={settings.compensation!r}, sequential={settings.sequential} "
                         "prunes during a calibration pass and needs the calibration ids")
    # OBS and sequential passes choose (and record) their own channel scores; the others reuse `scores`.
    fixed = None if settings.sequential or settings.metric in GRAM_METRICS else scores
    calibrated = prune_while_calibrating(model, input_ids, widths, settings, device, fixed, progress, should_stop)
    if fixed is None:
        return calibrated.statistics, calibrated.scores, calibrated.results
    return stats, scores, calibrated.results


def describe_settings(settings: FlapSettings) -> dict:
    """The summary fields that say how a checkpoint was pruned (read by the model card)."""
    described = {"metric": settings.metric, "compensation": settings.compensation, "sequential": settings.sequential}
    if settings.compensation == "refit":
        described["refit_damp"] = settings.refit_damp
    return described


Statistics = tuple[FlapStatistics, list[torch.Tensor]]


def streams(settings: FlapSettings, model_dir: str | Path) -> bool:
    """Whether the model is read layer by layer from its shards instead of loaded whole."""
    from studio.streaming import Checkpoint

    return settings.layerwise and Checkpoint.is_checkpoint(model_dir)


def needs_statistics(plan: PruningPlan | float, settings: FlapSettings) -> bool:
    """A ratio needs scores to choose widths; a refit or sequential prune with known widths
    measures during its own pass and needs no separate statistics pass."""
    return not isinstance(plan, PruningPlan) or not settings.calibrates_while_pruning


def checkpoint_statistics(
    model_dir: str | Path,
    calibration_ids: torch.Tensor,
    settings: FlapSettings = FlapSettings(),
    device: str | None = None,
    dtype: torch.dtype | str = "auto",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Statistics:
    """Stage "statistics": FLAP's per-channel moments of every FFN's down_proj input, and the scores."""
    if streams(settings, model_dir):
        from studio.streaming import StreamedDecoder

        return _streamed_statistics(StreamedDecoder(model_dir, dtype, device), calibration_ids, settings, progress, should_stop)
    model = load_model(model_dir, dtype=dtype, device=None if settings.layerwise else device)
    return _model_statistics(model, calibration_ids, settings, device, progress, should_stop)


def _model_statistics(model, ids, settings: FlapSettings, device, progress, should_stop) -> Statistics:
    stats = collect_statistics(
        model, ids, settings.batch_size, device, settings.layerwise, progress=progress, should_stop=should_stop
    )
    return stats, model_scores(model, stats, settings.metric)


def _streamed_statistics(source, ids, settings: FlapSettings, progress, should_stop) -> Statistics:
    """Layers read from the shards one at a time; scores need each layer's down_proj alone."""
    from studio.flap.scores import channel_scores
    from studio.flap.stats import collect_statistics_layerwise

    stats = collect_statistics_layerwise(source, ids, settings.batch_size, progress, should_stop)
    scores = [
        channel_scores(settings.metric, m.mean, m.variance, source.tensor(f"layers.{i}.mlp.down_proj.weight"))
        for i, m in enumerate(stats.layers)
    ]
    return stats, scores


@dataclass(frozen=True)
class _PruneRun:
    """What both prune paths share: the inputs of one `prune_checkpoint` call."""

    model_dir: str | Path
    calibration: CalibrationSpec
    ids: torch.Tensor
    processor: object
    settings: FlapSettings
    device: str | None
    dtype: torch.dtype | str
    progress: ProgressFn | None
    should_stop: Callable[[], bool] | None

    def given_statistics(self, plan, statistics: Statistics | None) -> tuple:
        """A finished statistics pass, used where the prune needs one: a refit or sequential prune
        with known widths measures in its own pass whoever calls it, so every front end gets the same result."""
        if statistics is None or not needs_statistics(plan, self.settings):
            return None, None
        return statistics

    def summary(self, results, params_before: int, params_after: int, plan: PruningPlan) -> dict:
        summary = prune_summary(results, params_before, params_after, plan)
        summary.update(describe_settings(self.settings))
        summary["calibration"] = self.calibration.to_dict()
        return summary

    def write_side_files(self, staging: Path, summary: dict, stats: FlapStatistics, scores) -> None:
        """Processor, statistics and summary beside the weights."""
        self.processor.save_pretrained(staging)
        save_statistics(staging / STATS_FILE, stats, scores, self.settings.metric)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def prune_checkpoint(
    model_dir: str | Path,
    plan: PruningPlan | float,
    calibration: CalibrationSpec,
    out_dir: str | Path,
    settings: FlapSettings = FlapSettings(),
    device: str | None = None,
    dtype: torch.dtype | str = "auto",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    calibration_ids: torch.Tensor | None = None,
    statistics: Statistics | None = None,
) -> dict:
    """Prune `model_dir` with FLAP and write the pruned checkpoint to `out_dir` (atomically).

    `plan` is a resolved `PruningPlan` or a global ratio, in which case the plan is suggested from
    the scores of a one-shot statistics pass. `calibration_ids` are the ids of `calibration`
    (tokenised here when not given); `statistics` a finished statistics pass over them, used when
    the plan or settings need one (`needs_statistics`; collected here when none is given). Returns the prune summary (also
    written as `prune_summary.json`).

    With `settings.layerwise` and a local safetensors folder, the model is never loaded whole: each
    layer is read from the shards, pruned and written before the next (`streams`).
    """
    processor = load_tokenizer(model_dir)
    if calibration_ids is None:
        calibration_ids = build_calibration_ids(text_tokenizer(processor), calibration)
    run = _PruneRun(model_dir, calibration, calibration_ids, processor, settings, device, dtype, progress, should_stop)
    prune = _prune_streamed if streams(settings, model_dir) else _prune_in_memory
    return prune(run, plan, out_dir, statistics)


def _prune_in_memory(run: _PruneRun, plan, out_dir, statistics: Statistics | None) -> dict:
    settings = run.settings
    model = load_model(run.model_dir, dtype=run.dtype, device=None if settings.layerwise else run.device)
    stats, scores = run.given_statistics(plan, statistics)
    if stats is None and needs_statistics(plan, settings):
        stats, scores = _model_statistics(model, run.ids, settings, run.device, run.progress, run.should_stop)
    if not isinstance(plan, PruningPlan):
        plan = suggested_plan(scores, text_config_of(model.config), float(plan), settings.max_ratio)
    plan.validate()
    params_before = _param_count(model)
    stats, scores, results = apply_plan(
        model, plan.widths, settings, stats, scores, run.ids, run.device, progress=run.progress, should_stop=run.should_stop
    )
    summary = run.summary(results, params_before, _param_count(model), plan)
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging)
        run.write_side_files(staging, summary, stats, scores)
    return summary


def _prune_streamed(run: _PruneRun, plan, out_dir, statistics: Statistics | None) -> dict:
    """`_prune_in_memory` out of core: the same result, bit for bit, holding one decoder layer.

    Layers are read from the checkpoint's shards one at a time (the embeddings only at the
    calibration tokens) for the statistics pass. The pruned checkpoint is written as it is made:
    every tensor outside the decoder layers is copied through in chunks first, then each layer is
    read, pruned and written before the next (in the refit or sequential pass, as that pass prunes it).
    """
    from studio.flap.prune import prune_layer
    from studio.modeling import mark_config_pruned
    from studio.streaming import LayerByLayerWriter, StreamedDecoder, meta_model, set_loaded_dtype

    settings = run.settings
    source = StreamedDecoder(run.model_dir, run.dtype, run.device)
    stats, scores = run.given_statistics(plan, statistics)
    if stats is None and needs_statistics(plan, settings):
        stats, scores = _streamed_statistics(source, run.ids, settings, run.progress, run.should_stop)
    if not isinstance(plan, PruningPlan):
        plan = suggested_plan(scores, source.text_config, float(plan), settings.max_ratio)
    plan.validate()
    pruned_config = copy.deepcopy(source.config)
    mark_config_pruned(pruned_config, plan.widths)
    set_loaded_dtype(pruned_config, source.dtype)
    pruned_model = meta_model(pruned_config)
    with atomic_directory(out_dir) as staging:
        writer = LayerByLayerWriter(staging, source.checkpoint, pruned_model, source.dtype)
        if settings.calibrates_while_pruning:
            fixed = None if settings.sequential or settings.metric in GRAM_METRICS else scores
            calibrated = prune_while_calibrating(
                source, run.ids, plan.widths, settings, None, fixed, run.progress, run.should_stop,
                on_pruned=writer.write_layer,
            )  # fmt: skip
            results = calibrated.results
            if fixed is None:
                stats, scores = calibrated.statistics, calibrated.scores
        else:
            results = []
            for index, width in enumerate(plan.widths):
                layer = source.load(index, torch.device("cpu"))
                original = layer.mlp.down_proj.in_features
                keep, before, after = prune_layer(
                    layer, scores[index], stats.layers[index].mean, width, settings.compensation
                )
                results.append(LayerPruneResult(index, original, width, before, after, keep))
                writer.write_layer(index, layer)
        writer.close()
        summary = run.summary(results, _param_count(source.model), _param_count(pruned_model), plan)
        pruned_config.save_pretrained(staging)
        _copy_generation_config(run.model_dir, staging)
        run.write_side_files(staging, summary, stats, scores)
    return summary


def _copy_generation_config(model_dir: str | Path, staging: Path) -> None:
    """The source's generation config, as `save_pretrained` of the loaded model writes it."""
    from transformers import GenerationConfig

    try:
        GenerationConfig.from_pretrained(model_dir).save_pretrained(staging)
    except OSError:  # none saved: the loaded model would derive it from its config
        GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(staging)
