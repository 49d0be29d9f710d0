"""Plotly figures of the studio's analysis views, built from summaries computed here on the server.

Nothing per channel is sent to the browser: a layer's scores become a handful of quantiles, so a
42-layer model with 10,240 channels per layer ships a few kilobytes per figure instead of megabytes.
Every builder takes plain data (lists, dicts, tensors) and returns a `plotly.graph_objects.Figure`;
none imports gradio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from studio.sizes.components import COMPONENT_LABELS

KEPT_COLOR = "#2a9d8f"
PRUNED_COLOR = "#e76f51"
THRESHOLD_COLOR = "#264653"
# Kept-width bars: the colour is the attention type, the fill pattern the KV role
# (`studio.model_summary.kv_roles`).
ATTENTION_COLORS = {"sliding": "#219ebc", "full": "#fb8500"}
KV_PATTERNS = {"own": "", "stores": ".", "shared": "/"}
KV_LEGEND = {"own": "own KV", "stores": "stores KV for the tail", "shared": "reuses KV"}
BAR_WIDTH = 0.8  # in layers: every bar is one layer wide, whatever the layers around it
JOB_COLORS = ("#219ebc", "#fb8500")  # the two jobs of a comparison
STAGE_LABELS = {"original": "original", "pruned": "pruned", "quantized": "pruned + GPTQ"}
# One colour per `studio.sizes.COMPONENTS` key.
COMPONENT_COLORS = {
    "embeddings": "#6d597a",
    "ple_embeddings": "#b56576",
    "attention": "#219ebc",
    "ffn": "#2a9d8f",
    "ple_projections": "#e5989b",
    "norms": "#adb5bd",
    "lm_head": "#355070",
    "vision_tower": "#e9c46a",
    "audio_tower": "#f4a261",
    "towers": "#f6bd60",
    "other": "#6c757d",
}
MEASURED_COLOR = "#212529"
AXIS_STYLE = dict(gridcolor="#e9ecef", zerolinecolor="#adb5bd", linecolor="#adb5bd", automargin=True)
# Below the plot: a legend of six layer kinds wraps into rows that would cover the title.
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0)


def _layout_settings(title: str, xaxis: dict | None = None, yaxis: dict | None = None, **layout) -> dict:
    """Title, margins, legend and light axes; an empty template.

    plotly.py deep-copies its default template into every new figure, which was most of a figure's
    build time (~10 ms) and ~6 KB of its JSON; plotly.js's own look with a light grid suffices.
    """
    settings = dict(
        template={},
        title=dict(text=title),  # the object form: a figure built without validation is sent as written
        plot_bgcolor="white",
        paper_bgcolor="white",
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
    )
    settings.update(layout)
    for name, axis in (("xaxis", xaxis), ("yaxis", yaxis)):
        if axis is not None:
            settings[name] = {**AXIS_STYLE, **axis}
            if isinstance(axis.get("title"), str):
                settings[name]["title"] = dict(text=axis["title"])
    return settings


def _figure(traces: list, title: str, xaxis: dict | None = None, yaxis: dict | None = None, validate: bool = True,
            **layout) -> go.Figure:
    """The figure built in one go (every later `add_trace` or `update_layout` costs milliseconds).

    `validate=False` skips plotly.py's property checks (8x faster) for the figures redrawn on every
    plan edit; their traces are plain dicts, and tests/ui/test_plots.py validates what they build.
    """
    return go.Figure(data=traces, layout=_layout_settings(title, xaxis, yaxis, **layout), _validate=validate)


# -- score distribution ------------------------------------------------------------------------


def _quantiles(values) -> dict | None:
    """Five-number summary of a 1-D tensor (None when empty)."""
    import torch

    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        return None
    q = torch.quantile(values, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    return dict(zip(("min", "q1", "median", "q3", "max"), (round(float(x), 4) for x in q)))


def score_summary(z_scores: Sequence, widths: Sequence[int]) -> list[dict]:
    """Per layer: quantiles of kept and pruned channels' z-scores and the pruning threshold.

    A layer keeps its `width` highest-scoring channels, so the threshold is the lowest kept score.
    """
    import torch

    summary = []
    for layer, (z, width) in enumerate(zip(z_scores, widths)):
        ordered = torch.sort(torch.as_tensor(z, dtype=torch.float64).flatten()).values
        n_pruned = ordered.numel() - int(width)
        if n_pruned < 0:
            raise ValueError(f"layer {layer}: width {width} is above its {ordered.numel()} channels")
        summary.append(
            {
                "layer": layer,
                "kept": _quantiles(ordered[n_pruned:]),
                "pruned": _quantiles(ordered[:n_pruned]),
                "threshold": round(float(ordered[n_pruned]), 4) if n_pruned > 0 else None,
                "channels": int(ordered.numel()),
                "pruned_channels": n_pruned,
            }
        )
    return summary


def _box_trace(summary: list[dict], part: str, color: str, offset: str) -> go.Box:
    rows = [s for s in summary if s[part] is not None]
    return go.Box(
        name=f"{part} channels",
        x=[s["layer"] for s in rows],
        q1=[s[part]["q1"] for s in rows],
        median=[s[part]["median"] for s in rows],
        q3=[s[part]["q3"] for s in rows],
        lowerfence=[s[part]["min"] for s in rows],
        upperfence=[s[part]["max"] for s in rows],
        marker_color=color,
        offsetgroup=offset,
        boxpoints=False,
        hoverinfo="x+y+name",
    )


def score_distribution_figure(summary: list[dict], title: str = "FLAP fluctuation scores per layer") -> go.Figure:
    """Box per layer of kept and pruned channels' standardised scores, with each layer's threshold."""
    cut = [s for s in summary if s["threshold"] is not None]
    threshold = go.Scatter(
        name="threshold (lowest kept)",
        x=[s["layer"] for s in cut],
        y=[s["threshold"] for s in cut],
        mode="markers",
        marker=dict(symbol="line-ew-open", size=18, color=THRESHOLD_COLOR, line=dict(width=2)),
        customdata=[[s["pruned_channels"], s["channels"]] for s in cut],
        hovertemplate="layer %{x}: threshold %{y:.3f}<br>%{customdata[0]} of %{customdata[1]} pruned<extra></extra>",
    )
    traces = [_box_trace(summary, "kept", KEPT_COLOR, "kept"), _box_trace(summary, "pruned", PRUNED_COLOR, "pruned"), threshold]
    return _figure(traces, title, xaxis=dict(title="layer"), yaxis=dict(title="score (per-layer z-score)"), boxmode="group")


# -- widths ------------------------------------------------------------------------------------


def _layer_groups(kinds: Sequence[str], roles: Sequence[str]) -> list[tuple[str, str, list[int]]]:
    """(attention kind, KV role, layers) for every combination present, in a fixed order."""
    groups = []
    for kind in ATTENTION_COLORS:
        for role in KV_PATTERNS:
            layers = [i for i, (k, r) in enumerate(zip(kinds, roles)) if k == kind and r == role]
            if layers:
                groups.append((kind, role, layers))
    return groups


def widths_figure(
    widths: Sequence[int],
    original: Sequence[int],
    kinds: Sequence[str],
    roles: Sequence[str],
    title: str = "Kept FFN width per layer",
) -> go.Figure:
    """Kept width per layer over the original width: colour = attention type, pattern = KV role.

    `roles` are `studio.model_summary.kv_roles` values ('own', 'stores', 'shared').
    """
    unknown = sorted({r for r in roles if r not in KV_PATTERNS} | {k for k in kinds if k not in ATTENTION_COLORS})
    if unknown:
        raise ValueError(f"widths figure: unknown attention kinds or KV roles {unknown}")
    layers = list(range(len(widths)))
    traces = [
        dict(
            type="bar",
            name="original width",
            x=layers,
            y=list(original),
            width=BAR_WIDTH,
            marker=dict(color="rgba(0,0,0,0)", line=dict(color="#6c757d", width=1)),
            hoverinfo="skip",
        )
    ]
    for kind, role, picked in _layer_groups(kinds, roles):
        traces.append(
            dict(
                type="bar",
                name=f"{kind} · {KV_LEGEND[role]}",
                x=picked,
                y=[widths[i] for i in picked],
                width=BAR_WIDTH,
                marker=dict(color=ATTENTION_COLORS[kind], pattern=dict(shape=KV_PATTERNS[role], solidity=0.4)),
                customdata=[[original[i], 1 - widths[i] / original[i]] for i in picked],
                hovertemplate=f"layer %{{x}} ({kind}, {KV_LEGEND[role]}): %{{y}} of %{{customdata[0]}} "
                "(%{customdata[1]:.1%} pruned)<extra></extra>",
            )
        )
    return _figure(
        traces,
        title,
        xaxis=dict(title="layer", **({"dtick": 1} if len(layers) <= 16 else {})),
        yaxis=dict(title="FFN width (channels)"),
        validate=False,
        barmode="overlay",
        legend=LEGEND_BELOW,
        margin=dict(l=60, r=20, t=50, b=130),
    )


def compare_widths_figure(
    a: Sequence[int], b: Sequence[int], original: Sequence[int], names: tuple[str, str]
) -> go.Figure:
    """Two plans' kept widths side by side per layer."""
    return _figure(_width_comparison(a, b, original, names), "Kept FFN width: comparison",
                   xaxis=dict(title="layer"), yaxis=dict(title="FFN width (channels)"), barmode="group")


def _width_comparison(a, b, original, names) -> list:
    layers = list(range(len(original)))
    traces = [go.Scatter(name="original width", x=layers, y=list(original), mode="lines",
                         line=dict(color="#adb5bd"), legendgroup="original")]
    for name, widths, color in zip(names, (a, b), JOB_COLORS):
        traces.append(go.Bar(name=name, x=layers, y=list(widths), marker_color=color, legendgroup=name,
                             hovertemplate=f"{name}: layer %{{x}} keeps %{{y}}<extra></extra>"))
    return traces


# -- GPTQ --------------------------------------------------------------------------------------


def gptq_loss_figure(records: Sequence, title: str = "GPTQ loss per layer and module (log10)") -> go.Figure:
    """Heatmap of GPTQ's per-module loss; `records` have `layer`, `module` and `loss`."""
    modules = sorted({r.module for r in records})
    layers = sorted({r.layer for r in records})
    grid = {(r.layer, r.module): r.loss for r in records}
    z = [
        [math.log10(grid[(layer, m)]) if grid.get((layer, m), 0) > 0 else None for layer in layers] for m in modules
    ]
    raw = [[grid.get((layer, m)) for layer in layers] for m in modules]
    heatmap = go.Heatmap(
        x=layers,
        y=modules,
        z=z,
        customdata=raw,
        colorscale="Viridis",
        colorbar=dict(title="log10 loss"),
        hovertemplate="layer %{x} %{y}<br>loss %{customdata:.3e}<extra></extra>",
    )
    return _figure([heatmap], title, xaxis=dict(title="layer"), yaxis=dict(title="module"))


# -- sizes and quality -------------------------------------------------------------------------


def _size_unit(largest: float) -> tuple[str, float]:
    return ("GB", 1e9) if largest >= 1e9 else ("MB", 1e6)


def size_breakdown_figure(
    bytes_by_stage: dict[str, dict[str, int]],
    title: str = "Checkpoint size by component (estimated from the config)",
    measured: dict[str, int | None] | None = None,
) -> go.Figure:
    """Stacked bars of the estimate, original -> pruned -> quantized, one segment per component.

    `bytes_by_stage` maps a stage to bytes per component (`studio.sizes.COMPONENTS` keys).

    `measured` (stage -> bytes of the checkpoint's weight files) adds a marker per stage, so what
    was estimated and what was written are told apart.
    """
    stages = [s for s in STAGE_LABELS if s in bytes_by_stage]
    components = []
    for stage in stages:
        components += [c for c in bytes_by_stage[stage] if c not in components]
    measured = {s: v for s, v in (measured or {}).items() if v and s in STAGE_LABELS}
    largest = max([sum(bytes_by_stage[s].values()) for s in stages] + list(measured.values()), default=0)
    unit, scale = _size_unit(largest)
    traces = [
        dict(
            type="bar",
            name=COMPONENT_LABELS[component],
            x=[STAGE_LABELS[s] for s in stages],
            y=[round(bytes_by_stage[s].get(component, 0) / scale, 4) for s in stages],
            marker_color=COMPONENT_COLORS.get(component),
            hovertemplate="%{x}: " + COMPONENT_LABELS[component] + " %{y:.3f} " + unit + " (estimated)<extra></extra>",
        )
        for component in components
    ]
    totals = [sum(bytes_by_stage[s].values()) / scale for s in stages]
    traces.append(
        dict(
            type="scatter",
            x=[STAGE_LABELS[s] for s in stages],
            y=totals,
            mode="text",
            text=[f"{t:.4g} {unit} est." for t in totals],
            textposition="top center",
            showlegend=False,
            hoverinfo="skip",
        )
    )
    if measured:
        traces.append(
            dict(
                type="scatter",
                name="measured files",
                x=[STAGE_LABELS[s] for s in measured],
                y=[v / scale for v in measured.values()],
                mode="markers",
                marker=dict(symbol="diamond", size=12, color=MEASURED_COLOR),
                hovertemplate="%{x}: %{y:.3f} " + unit + " measured (weight files on disk)<extra></extra>",
            )
        )
    return _figure(
        traces,
        title,
        xaxis={},
        yaxis=dict(title=f"{unit} (10^{9 if unit == 'GB' else 6} bytes)"),
        validate=False,
        barmode="stack",
        legend=dict(orientation="v", y=1, yanchor="top", x=1.02, xanchor="left"),
    )


QUALITY_MODELS = ("base", "pruned", "compressed")


def _quality_bars(perplexities: dict[str, float | None], name: str | None = None, color: str = "#219ebc"):
    """A bar per compressed model: its perplexity minus the base's (absolute values in the hover).

    Without a base value the bars are absolute perplexities (the caller zooms the axis).
    """
    base = perplexities.get("base")
    models = [m for m in perplexities if m != "base"] if base is not None else list(perplexities)
    values = [perplexities[m] for m in models]
    if base is not None:
        y = [v - base if v is not None else 0 for v in values]
        text = [f"{v - base:+.4g} ({(v - base) / base:+.2%})" if v is not None else "not evaluated" for v in values]
        hover = [
            f"{m}: perplexity {v:.4f} (base {base:.4f}, {v - base:+.4f})" if v is not None else f"{m}: not evaluated"
            for m, v in zip(models, values)
        ]
    else:
        y = [v if v is not None else 0 for v in values]
        text = [f"{v:.4g}" if v is not None else "not evaluated" for v in values]
        hover = [f"{m}: perplexity {v:.4f}" if v is not None else f"{m}: not evaluated" for m, v in zip(models, values)]
    return go.Bar(
        name=name or ("perplexity − base" if base is not None else "perplexity"),
        x=models,
        y=y,
        text=text,
        textposition="outside",
        cliponaxis=False,
        hovertext=hover,
        hoverinfo="text",
        marker_color=[color if v is not None else "#dee2e6" for v in values],
        showlegend=name is not None,
    )


def _absolute_range(perplexities: list[dict[str, float | None]]) -> list[float] | None:
    """A y range around measured perplexities (not from 0, where 2088 and 2103 look the same)."""
    values = [v for p in perplexities for v in p.values() if v is not None]
    if not values:
        return None
    low, high = min(values), max(values)
    pad = max((high - low) * 0.25, abs(high) * 0.005, 1e-6)
    return [low - pad, high + pad]


def quality_figure(perplexities: dict[str, float | None], title: str = "Perplexity (lower is better)") -> go.Figure:
    """Perplexity of the pruned and compressed models as differences from the base model.

    The axis spans the differences, so a 0.7% change is visible; absolute values are in the hover
    and the title. Without a base perplexity the bars are absolute on an axis around the values.
    """
    bars = [_quality_bars(perplexities)]
    base = perplexities.get("base")
    if base is not None:
        title = f"{title}: change from the base model (base {base:.4g})"
        return _figure(bars, title, xaxis={}, yaxis=dict(title="perplexity − base perplexity", zeroline=True, zerolinewidth=2))
    return _figure(bars, title, xaxis={}, yaxis=dict(title="perplexity", range=_absolute_range([perplexities])))


# Metrics whose direction is known: perplexity falls as quality rises, the lm-eval scores here rise.
LOWER_IS_BETTER = ("perplexity",)
HIGHER_IS_BETTER = ("acc", "acc_norm", "loglikelihood", "exact_match", "f1")


def quality_metrics(perplexity: dict | None, tasks: dict | None) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Every quality metric of a job by model stage: {"perplexity": {stage: (ppl, None)}, "TASK METRIC":
    {stage: (value, stderr or None)}}, from `studio.jobs.results.quality_summary`'s two parts."""
    from studio.jobs.results import EVALUATED_STAGES

    metrics: dict[str, dict[str, tuple[float, float | None]]] = {}
    if perplexity:
        measured = {stage: (perplexity[stage], None) for stage in EVALUATED_STAGES if perplexity.get(stage) is not None}
        if measured:
            metrics["perplexity"] = measured
    for stage in EVALUATED_STAGES:
        for task, scores in ((tasks or {}).get(stage) or {}).items():
            for metric, value in scores.items():
                if metric == "samples" or metric.endswith("_stderr"):
                    continue
                metrics.setdefault(f"{task} {metric}", {})[stage] = (value, scores.get(f"{metric}_stderr"))
    return metrics


def _metric_title(label: str) -> str:
    metric = label.rsplit(" ", 1)[-1]
    if metric in LOWER_IS_BETTER:
        return f"{label} (lower is better)"
    return f"{label} (higher is better)" if metric in HIGHER_IS_BETTER else label


def _metric_bars(values: dict[str, tuple[float, float | None]], name: str, color: str) -> dict:
    """One bar per evaluated stage, with lm-eval's standard error as the error bar where there is one."""
    stages = list(values)
    errors = [values[s][1] for s in stages]
    bar = dict(
        type="bar",
        name=name,
        x=stages,
        y=[values[s][0] for s in stages],
        marker=dict(color=color),
        legendgroup=name,
        hovertemplate=f"{name}: %{{x}} %{{y:.4g}}<extra></extra>",
    )
    if any(e is not None for e in errors):
        bar["error_y"] = dict(type="data", array=[e or 0 for e in errors], visible=True)
    return bar


def _metric_grid(metrics: list[str], title: str, height_per_row: int = 300):
    from plotly.subplots import make_subplots

    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_metric_title(m) for m in metrics],
                        vertical_spacing=min(0.3, 0.5 / rows), horizontal_spacing=0.08,
                        figure=go.Figure(layout={"template": {}}))
    fig.update_layout(_layout_settings(title, height=120 + height_per_row * rows, barmode="group",
                                       margin=dict(l=60, r=20, t=90, b=50)))
    return fig, cols


def _zoom_to_values(fig: go.Figure, values: list[float], row: int, col: int) -> None:
    """Perplexities and log-likelihoods sit far from 0: an axis around the values shows their gaps."""
    low, high = min(values), max(values)
    pad = max((high - low) * 0.25, abs(high) * 0.005, 1e-6)
    fig.update_yaxes(range=[low - pad, high + pad], row=row, col=col)


def quality_metrics_figure(jobs: Sequence[tuple[str, dict]], title: str) -> go.Figure:
    """One panel per quality metric (perplexity, then each lm-eval task metric), model stage on the
    x axis, one bar group per job. `jobs` is (name, `quality_metrics(...)`) pairs: one job shows its
    stages, two compare them stage by stage. Metrics no job has are left out."""
    labels = list(dict.fromkeys(label for _, metrics in jobs for label in metrics))
    if not labels:
        raise ValueError("quality figure: no perplexity or task scores to show")
    fig, cols = _metric_grid(labels, title)
    for index, label in enumerate(labels):
        row, col = index // cols + 1, index % cols + 1
        shown = []
        for (name, metrics), color in zip(jobs, JOB_COLORS if len(jobs) > 1 else (KEPT_COLOR,)):
            if label in metrics:
                bar = _metric_bars(metrics[label], name, color)
                bar["showlegend"] = index == 0 and len(jobs) > 1
                fig.add_trace(bar, row=row, col=col)
                shown += [v for v, _ in metrics[label].values()]
        if label.rsplit(" ", 1)[-1] not in ("acc", "acc_norm", "exact_match", "f1"):  # scores in [0, 1] keep 0
            _zoom_to_values(fig, shown, row, col)
    fig.update_xaxes(**AXIS_STYLE)
    fig.update_yaxes(**AXIS_STYLE)
    return fig


def _mean_log_loss(records: Sequence[dict]) -> tuple[list[int], list[float]]:
    """Per layer, the mean log10 GPTQ loss over its modules (positive losses only)."""
    by_layer: dict[int, list[float]] = {}
    for r in records:
        if r["loss"] and r["loss"] > 0:
            by_layer.setdefault(int(r["layer"]), []).append(math.log10(r["loss"]))
    layers = sorted(by_layer)
    return layers, [sum(by_layer[i]) / len(by_layer[i]) for i in layers]


def compare_jobs_figure(a: dict, b: dict) -> go.Figure:
    """Two jobs side by side: kept widths, checkpoint sizes, quality and GPTQ loss.

    `a` and `b` are job summaries as `studio.jobs.results.analysis_summary` returns them (keys
    output, original, widths, sizes, measured_bytes, perplexity, gptq; any may be None).
    Panels whose data neither job has say so instead of staying blank.
    """
    from plotly.subplots import make_subplots

    names = (a["output"], b["output"]) if a["output"] != b["output"] else (f"{a['output']} (A)", f"{b['output']} (B)")
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=(
            "kept FFN width per layer",
            "checkpoint size (bars estimated, ◆ measured)",
            "perplexity − base (lower is better)",
            "GPTQ loss per layer (mean log10 over modules)",
        ),
        vertical_spacing=0.16,
        horizontal_spacing=0.1,
        figure=go.Figure(layout={"template": {}}),
    )
    jobs = list(zip(names, (a, b), JOB_COLORS))

    if a["widths"] and b["widths"] and len(a["widths"]) == len(b["widths"]):
        for trace in _width_comparison(a["widths"], b["widths"], a["original"], names):
            fig.add_trace(trace, row=1, col=1)
    else:
        _note(fig, "widths: both jobs need a finished prune stage of the same model", 1, 1)

    sizes_shown = False
    for name, job, color in jobs:
        if job["sizes"]:
            stages = [s for s in STAGE_LABELS if s in job["sizes"]]
            fig.add_trace(go.Bar(name=name, x=[STAGE_LABELS[s] for s in stages], legendgroup=name, showlegend=False,
                                 y=[sum(job["sizes"][s].values()) / 1e6 for s in stages], marker_color=color,
                                 hovertemplate=f"{name}: %{{x}} %{{y:.2f}} MB estimated<extra></extra>"), row=1, col=2)
            measured = {s: v for s, v in (job.get("measured_bytes") or {}).items() if v}
            if measured:
                fig.add_trace(go.Scatter(name=f"{name} measured", x=[STAGE_LABELS[s] for s in measured],
                                         y=[v / 1e6 for v in measured.values()], mode="markers", legendgroup=name,
                                         showlegend=False, marker=dict(symbol="diamond", size=11, color=color,
                                                                       line=dict(color=MEASURED_COLOR, width=1)),
                                         hovertemplate=f"{name}: %{{x}} %{{y:.2f}} MB measured<extra></extra>"),
                              row=1, col=2)
            sizes_shown = True
    if sizes_shown:
        fig.update_yaxes(title_text="MB", row=1, col=2)
    else:
        _note(fig, "sizes: neither job has a pruned model yet", 1, 2)

    quality = [(name, job["perplexity"], color) for name, job, color in jobs if job["perplexity"]]
    for name, ppl, color in quality:
        bar = _quality_bars(ppl, name=name, color=color)
        bar.showlegend, bar.legendgroup = False, name
        fig.add_trace(bar, row=2, col=1)
    if not quality:
        _note(fig, "quality: neither job evaluated perplexity", 2, 1)
    elif any(ppl.get("base") is None for _, ppl, _ in quality):
        fig.update_yaxes(range=_absolute_range([ppl for _, ppl, _ in quality]), row=2, col=1)

    losses = [(name, _mean_log_loss(job["gptq"]), color) for name, job, color in jobs if job["gptq"]]
    for name, (layers, mean), color in losses:
        fig.add_trace(go.Scatter(name=f"{name} GPTQ", x=layers, y=mean, mode="lines+markers", legendgroup=name,
                                 showlegend=False, line=dict(color=color),
                                 hovertemplate=f"{name}: layer %{{x}} mean log10 loss %{{y:.3f}}<extra></extra>"),
                      row=2, col=2)
    if not losses:
        _note(fig, "GPTQ: neither job quantized", 2, 2)

    fig.update_xaxes(**AXIS_STYLE)
    fig.update_yaxes(**AXIS_STYLE)
    return fig.update_layout(
        _layout_settings(f"{names[0]} vs {names[1]}", barmode="group", height=760, margin=dict(l=60, r=20, t=90, b=90),
                         legend=dict(orientation="h", yanchor="top", y=-0.08, xanchor="left", x=0))
    )


def _note(fig: go.Figure, text: str, row: int, col: int) -> None:
    """A panel with nothing to draw says why, instead of showing empty axes."""
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="text", text=[text], showlegend=False, hoverinfo="skip"), row=row, col=col)
    fig.update_xaxes(visible=False, row=row, col=col)
    fig.update_yaxes(visible=False, row=row, col=col)


def figure_payload_bytes(fig: go.Figure) -> int:
    """Bytes of the figure's JSON, which is what Gradio sends to the browser."""
    return len(fig.to_json().encode())
