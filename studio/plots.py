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

KEPT_COLOR = "#2a9d8f"
PRUNED_COLOR = "#e76f51"
THRESHOLD_COLOR = "#264653"
# Bar colours of kept widths: attention type x KV sharing.
LAYER_COLORS = {
    ("sliding", False): "#8ecae6",
    ("full", False): "#219ebc",
    ("sliding", True): "#ffb703",
    ("full", True): "#fb8500",
}
STAGE_LABELS = {"original": "original", "pruned": "pruned", "quantized": "pruned + GPTQ"}
COMPONENT_COLORS = {
    "embeddings": "#6d597a",
    "per-layer embeddings (PLE)": "#b56576",
    "attention": "#219ebc",
    "ffn": "#2a9d8f",
    "norms": "#adb5bd",
    "vision tower": "#e9c46a",
    "audio tower": "#f4a261",
    "other": "#6c757d",
}


def _layout(fig: go.Figure, title: str, **axes) -> go.Figure:
    fig.update_layout(
        title=title,
        template="plotly_white",
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
        **axes,
    )
    return fig


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
    fig = go.Figure()
    fig.add_trace(_box_trace(summary, "kept", KEPT_COLOR, "kept"))
    fig.add_trace(_box_trace(summary, "pruned", PRUNED_COLOR, "pruned"))
    cut = [s for s in summary if s["threshold"] is not None]
    fig.add_trace(
        go.Scatter(
            name="threshold (lowest kept)",
            x=[s["layer"] for s in cut],
            y=[s["threshold"] for s in cut],
            mode="markers",
            marker=dict(symbol="line-ew-open", size=18, color=THRESHOLD_COLOR, line=dict(width=2)),
            customdata=[[s["pruned_channels"], s["channels"]] for s in cut],
            hovertemplate="layer %{x}: threshold %{y:.3f}<br>%{customdata[0]} of %{customdata[1]} pruned<extra></extra>",
        )
    )
    fig.update_layout(boxmode="group")
    return _layout(fig, title, xaxis_title="layer", yaxis_title="score (per-layer z-score)")


# -- widths ------------------------------------------------------------------------------------


def widths_figure(
    widths: Sequence[int],
    original: Sequence[int],
    kinds: Sequence[str],
    kv_shared: Sequence[bool],
    title: str = "Kept FFN width per layer",
) -> go.Figure:
    """Kept width per layer over the original width, coloured by attention type and KV sharing."""
    fig = go.Figure()
    layers = list(range(len(widths)))
    fig.add_trace(
        go.Bar(
            name="original",
            x=layers,
            y=list(original),
            marker=dict(color="rgba(0,0,0,0)", line=dict(color="#6c757d", width=1)),
            hoverinfo="skip",
        )
    )
    for (kind, shared), color in LAYER_COLORS.items():
        picked = [i for i in layers if kinds[i] == kind and bool(kv_shared[i]) == shared]
        if not picked:
            continue
        fig.add_trace(
            go.Bar(
                name=f"{kind}{' · KV-shared' if shared else ''}",
                x=picked,
                y=[widths[i] for i in picked],
                marker_color=color,
                customdata=[[original[i], 1 - widths[i] / original[i]] for i in picked],
                hovertemplate="layer %{x}: %{y} of %{customdata[0]} (%{customdata[1]:.0%} pruned)<extra></extra>",
            )
        )
    fig.update_layout(barmode="overlay")
    return _layout(fig, title, xaxis_title="layer", yaxis_title="FFN width (channels)")


def compare_widths_figure(
    a: Sequence[int], b: Sequence[int], original: Sequence[int], names: tuple[str, str]
) -> go.Figure:
    """Two plans' kept widths side by side per layer."""
    fig = go.Figure()
    layers = list(range(len(original)))
    fig.add_trace(go.Scatter(name="original", x=layers, y=list(original), mode="lines", line=dict(color="#adb5bd")))
    fig.add_trace(go.Bar(name=names[0], x=layers, y=list(a), marker_color="#219ebc"))
    fig.add_trace(go.Bar(name=names[1], x=layers, y=list(b), marker_color="#fb8500"))
    fig.update_layout(barmode="group")
    return _layout(fig, "Kept FFN width: comparison", xaxis_title="layer", yaxis_title="FFN width (channels)")


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
    fig = go.Figure(
        go.Heatmap(
            x=layers,
            y=modules,
            z=z,
            customdata=raw,
            colorscale="Viridis",
            colorbar=dict(title="log10 loss"),
            hovertemplate="layer %{x} %{y}<br>loss %{customdata:.3e}<extra></extra>",
        )
    )
    return _layout(fig, title, xaxis_title="layer", yaxis_title="module")


# -- sizes and quality -------------------------------------------------------------------------


def size_breakdown_figure(bytes_by_stage: dict[str, dict[str, int]], title: str = "Checkpoint size by component") -> go.Figure:
    """Stacked bars: original -> pruned -> quantized, one segment per component (GB, or MB when small)."""
    stages = [s for s in STAGE_LABELS if s in bytes_by_stage]
    components = []
    for stage in stages:
        components += [c for c in bytes_by_stage[stage] if c not in components]
    largest = max((sum(bytes_by_stage[s].values()) for s in stages), default=0)
    unit, scale = ("GB", 1e9) if largest >= 1e9 else ("MB", 1e6)
    fig = go.Figure()
    for component in components:
        fig.add_trace(
            go.Bar(
                name=component,
                x=[STAGE_LABELS[s] for s in stages],
                y=[round(bytes_by_stage[s].get(component, 0) / scale, 4) for s in stages],
                marker_color=COMPONENT_COLORS.get(component),
                hovertemplate="%{x}: " + component + " %{y:.3f} " + unit + "<extra></extra>",
            )
        )
    totals = [sum(bytes_by_stage[s].values()) / scale for s in stages]
    fig.add_trace(
        go.Scatter(
            x=[STAGE_LABELS[s] for s in stages],
            y=totals,
            mode="text",
            text=[f"{t:.4g} {unit}" for t in totals],
            textposition="top center",
            showlegend=False,
            hoverinfo="skip",
        )
    )
    fig.update_layout(barmode="stack")
    _layout(fig, title, yaxis_title=f"{unit} (10^{9 if unit == 'GB' else 6} bytes)")
    fig.update_layout(legend=dict(orientation="v", y=1, yanchor="top", x=1.02, xanchor="left"))
    return fig


def quality_figure(perplexities: dict[str, float | None], title: str = "Perplexity (lower is better)") -> go.Figure:
    """Bars of the perplexities measured so far (base / pruned / compressed); missing ones are noted."""
    names = list(perplexities)
    values = [perplexities[n] for n in names]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[v if v is not None else 0 for v in values],
            text=[f"{v:.3f}" if v is not None else "not evaluated" for v in values],
            textposition="outside",
            marker_color=["#219ebc" if v is not None else "#dee2e6" for v in values],
        )
    )
    return _layout(fig, title, yaxis_title="perplexity")


def figure_payload_bytes(fig: go.Figure) -> int:
    """Bytes of the figure's JSON, which is what Gradio sends to the browser."""
    return len(fig.to_json().encode())
