"""The README.md model card of an export folder, generated from what the folder holds.

Every number in the card comes from data: the per-layer widths from config.json, the sizes from the
safetensors headers (`studio.sizes`), the GPTQ settings from quantize_config.json, the per-module
error from quant_log.csv and, when given, evaluation results (perplexity, and lm-eval task scores). Nothing is copied from the reference
card's prose.

The card is what `push` publishes, so it names things instead of pointing at this machine: the
base model by its Hub id (`hub_model_id`; omitted for a local model), calibration texts by their
file name (`calibration_name`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

from studio.hub_text import is_hub_source
from studio.sizes import COMPONENT_LABELS, SizeReport

# Folder names of models in the Hugging Face cache: models--OWNER--NAME (ids cannot hold "--").
_HUB_CACHE_PREFIX = "models--"


def hub_model_id(base_model: str | Path | None) -> str | None:
    """The Hub id of the base model, or None when it did not come from the Hub.

    A Hub id is kept as given; a folder inside the Hugging Face cache
    (`.../models--google--gemma-4-E4B-it/snapshots/<sha>`) gives the id it was downloaded from;
    any other local folder gives None.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if base_model is None or not str(base_model).strip():
        return None
    path = Path(base_model).expanduser()
    if path.exists():
        for part in reversed(path.resolve().parts):
            if part.startswith(_HUB_CACHE_PREFIX) and "--" in part[len(_HUB_CACHE_PREFIX) :]:
                return part[len(_HUB_CACHE_PREFIX) :].replace("--", "/", 1)
        return None
    try:
        validate_repo_id(str(base_model))
    except HFValidationError:
        return None
    return str(base_model)


def calibration_name(source: str) -> str:
    """A calibration source as the card names it: a dataset spec as it is, a text file by its name."""
    return source if is_hub_source(source) else Path(source).name


def named_calibration(calibration: Mapping) -> dict:
    """A calibration record (`CalibrationSpec.to_dict()`) with its source named, not pathed."""
    return {**calibration, "source": calibration_name(str(calibration["source"]))} if "source" in calibration else dict(calibration)


@dataclass(frozen=True)
class CardData:
    """What the card is written from."""

    name: str
    base_model: str | None  # Hub id of the model compressed, when it came from the Hub
    quantized: bool
    dtype: str
    widths: list[int]
    original_widths: list[int]
    layer_types: list[str]
    multimodal: bool
    flap_pruned: bool
    sizes_before: SizeReport
    sizes_after: SizeReport
    before_source: str  # how the "before" sizes were obtained
    quantize_config: Mapping | None = None
    quant_log: list = field(default_factory=list)  # studio.gptq.quantize.ModuleQuantRecord rows
    prune_summary: Mapping | None = None
    evaluation: Mapping[str, Mapping] | None = None
    files: list[str] = field(default_factory=list)
    architecture: str | None = None  # config.json's architectures[0]


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.3f} MB"


def _change(before: int, after: int) -> str:
    return "0%" if before == 0 or before == after else f"{(after - before) / before:+.1%}"


def plan_table(data: CardData) -> list[str]:
    """Consecutive layers with the same width and ratio, one row per run."""
    rows = ["| Layers | Attention | Pruned | intermediate_size |", "|---|---|---|---|"]
    layers = list(enumerate(zip(data.widths, data.original_widths, data.layer_types)))
    for _key, run in groupby(layers, key=lambda item: (item[1][0], item[1][1])):
        run = list(run)
        first, last = run[0][0], run[-1][0]
        width, original = run[0][1][0], run[0][1][1]
        span = f"{first}" if first == last else f"{first}-{last}"
        kinds = ", ".join(sorted({t.replace("_attention", "") for _, (_, _, t) in run}))
        rows.append(f"| {span} | {kinds} | {1 - width / original:.1%} | {width} |")
    return rows


def width_distribution(data: CardData) -> list[str]:
    rows = ["| intermediate_size | Layers |", "|---|---|"]
    for width in sorted(set(data.widths), reverse=True):
        rows.append(f"| {width} | {data.widths.count(width)} |")
    return rows


def sizes_table(before: SizeReport, after: SizeReport) -> list[str]:
    rows = ["| Component | Parameters before | Parameters after | Bytes before | Bytes after | Bytes change |",
            "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in dict.fromkeys([*before.components, *after.components]):
        b, a = before.component(name), after.component(name)
        rows.append(
            f"| {COMPONENT_LABELS[name]} | {b.params:,} | {a.params:,} | {b.bytes:,} | {a.bytes:,} | {_change(b.bytes, a.bytes)} |"
        )
    rows.append(
        f"| **total** | **{before.params:,}** | **{after.params:,}** | **{before.tensor_bytes:,}** | "
        f"**{after.tensor_bytes:,}** | **{_change(before.tensor_bytes, after.tensor_bytes)}** |"
    )
    return rows


def quant_error_table(records: list) -> list[str]:
    """GPTQ loss per decoder layer, one column per quantized module."""
    modules = list(dict.fromkeys(r.module for r in records))
    rows = ["| Layer | " + " | ".join(modules) + " | max |", "|---" * (len(modules) + 2) + "|"]
    for layer, run in groupby(records, key=lambda r: r.layer):
        by_module = {r.module: r.loss for r in run}
        cells = [f"{by_module[m]:.3g}" if m in by_module else "-" for m in modules]
        rows.append(f"| {layer} | " + " | ".join(cells) + f" | {max(by_module.values()):.3g} |")
    return rows


_COMPENSATION_SHORT = {
    "bias": "with bias compensation",
    "refit": "with a least-squares refit of the kept down_proj columns and bias",
    "none": "without compensation",
}


def _compensation(summary: Mapping) -> str:
    # Summaries written before `compensation` existed carry `bias_compensation`.
    default = "bias" if summary.get("bias_compensation", True) else "none"
    return str(summary.get("compensation", default))


def _compensation_short(summary: Mapping) -> str:
    compensation = _compensation(summary)
    return _COMPENSATION_SHORT.get(compensation, f"with {compensation} compensation")


def _compensation_line(summary: Mapping) -> str:
    """How the removed channels were compensated, and how the layers were calibrated."""
    compensation = _compensation(summary)
    text = {
        "bias": "bias (each pruned layer's down_proj gains a bias holding the mean contribution of the removed channels)",
        "refit": "refit (each pruned layer's kept down_proj columns and its bias are a least-squares fit, ridge "
        f"{summary.get('refit_damp', 'unknown')}, of the full layer's output on the calibration tokens)",
        "none": "none (the removed channels are dropped)",
    }.get(compensation, compensation)
    calibration = "sequential (each layer calibrated on the already-pruned layers' outputs)" if summary.get(
        "sequential"
    ) else "one-shot (every layer calibrated on the full model's activations)"
    return f"{text}; calibration {calibration}."


def _compression_section(data: CardData) -> list[str]:
    lines = ["## Compression", ""]
    summary = data.prune_summary or {}
    if data.flap_pruned:
        removed = sum(data.original_widths) - sum(data.widths)
        ffn_before = data.sizes_before.component("ffn").params
        ffn_after = data.sizes_after.component("ffn").params
        lines += [
            "### FLAP structured pruning of the FFNs",
            "",
            f"- Channels removed: {removed:,} of {sum(data.original_widths):,} "
            f"({removed / sum(data.original_widths):.1%}); FFN parameters {ffn_before:,} -> {ffn_after:,} "
            f"({_change(ffn_before, ffn_after)}, the FLAP down_proj biases included).",
            f"- Channel score: {summary.get('metric', 'unknown')}.",
            f"- Compensation: {_compensation_line(summary)}",
        ]
        calibration = summary.get("calibration")
        if calibration:
            lines.append(
                f"- Calibration: {calibration['samples']} x {calibration['seqlen']} tokens from "
                f"`{calibration_name(str(calibration['source']))}` "
                f"(seed {calibration['seed']})."
            )
        lines += ["", *plan_table(data), "", *width_distribution(data), ""]
    else:
        lines += ["The FFNs are not pruned (no `flap_pruned` in config.json).", ""]
    if data.quantized and data.quantize_config:
        q = data.quantize_config
        meta = q.get("meta") or {}
        lines += [
            f"### GPTQ weight-only quantization (W{q.get('bits')}A16)",
            "",
            "| Setting | Value |",
            "|---|---|",
            f"| bits | {q.get('bits')} |",
            f"| group_size | {q.get('group_size')} |",
            f"| sym | {q.get('sym')} |",
            f"| desc_act | {q.get('desc_act')} |",
            f"| damp_percent | {meta.get('damp_percent', q.get('damp_percent'))} |",
            f"| checkpoint format | {q.get('checkpoint_format', q.get('format'))} |",
            f"| quantizer | {', '.join(meta.get('quantizer', [])) or 'unknown'} |",
            "",
            f"Quantized: `self_attn.o_proj`, `mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj` of every decoder "
            f"layer ({len(data.quant_log)} modules). Kept in {data.dtype} by these `dynamic` rules (first match "
            "wins, in GPTQModel and in vLLM) and by module selection: everything else, including norms and all "
            "biases (the FLAP down_proj bias too).",
            "",
            *[f"- `{pattern}`" for pattern in (q.get("dynamic") or {})],
            "",
        ]
    return lines


def _sizes_section(data: CardData) -> list[str]:
    before, after = data.sizes_before, data.sizes_after
    lines = [
        "## Sizes",
        "",
        f"Exact counts. After: the safetensors headers of this folder. Before: {data.before_source}.",
        "Parameters count the weights the model computes with (a quantized module counts its full "
        "in x out weights); bytes count what is stored (packed int32 weights, float16 scales, packed "
        "zeros and int32 g_idx for quantized modules).",
        "",
        *sizes_table(before, after),
        "",
        f"- Total tensor bytes: {_gb(before.tensor_bytes)} -> {_gb(after.tensor_bytes)} "
        f"({_change(before.tensor_bytes, after.tensor_bytes)}); files on disk (with safetensors headers): "
        f"{_gb(after.file_bytes or after.tensor_bytes)}.",
        f"- Parameters: {before.params:,} -> {after.params:,} ({_change(before.params, after.params)}).",
    ]
    if after.quantized_params:
        lines.append(
            f"- Quantized modules: {after.quantized_params:,} weights in {_gb(after.quantized_bytes)} "
            f"({after.quantized_bytes / (after.quantized_params * 2):.1%} of the same weights in 16-bit); "
            + ", ".join(f"{part} {_gb(n)}" for part, n in after.gptq_parts.items())
            + "."
        )
    lines += [f"- Assumption: {a}" for a in (*before.assumptions, *after.assumptions)]
    return [*lines, ""]


def _quant_error_section(records: list) -> list[str]:
    if not records:
        return []
    worst = max(records, key=lambda r: r.loss)
    mean = sum(r.loss for r in records) / len(records)
    return [
        "## GPTQ error per layer",
        "",
        f"GPTQModel's loss (mean squared error of each module's output on the calibration activations), from "
        f"`quant_log.csv`. Mean {mean:.3g}; worst {worst.loss:.3g} at layer {worst.layer} `{worst.module}`.",
        "",
        *quant_error_table(records),
        "",
    ]


def _evaluation_section(evaluation: Mapping[str, Mapping] | None) -> list[str]:
    if not evaluation:
        return []
    lines = ["## Evaluation", "", "| Model | Perplexity | NLL (nats/token) | Tokens | seqlen | stride |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, result in evaluation.items():
        lines.append(
            f"| {name} | {result['ppl']:.4f} | {result['nll']:.4f} | {result['tokens']:,} | "
            f"{result.get('seqlen', '-')} | {result.get('stride', '-')} |"
        )
    return [*lines, "", *_tasks_section(evaluation)]


def _tasks_section(evaluation: Mapping[str, Mapping]) -> list[str]:
    """lm-eval task scores (each model's `tasks`, as `studio.eval.downstream` reports them): one row per
    task and metric, one column per model, each value with its standard error."""
    models = [name for name, result in evaluation.items() if result.get("tasks")]
    if not models:
        return []
    rows: dict[tuple[str, str], dict[str, str]] = {}
    samples: dict[str, int] = {}
    for model in models:
        for task, metrics in evaluation[model]["tasks"].items():
            if "samples" in metrics:
                samples[task] = int(metrics["samples"])
            for metric, value in metrics.items():
                if metric == "samples" or metric.endswith("_stderr"):
                    continue
                stderr = metrics.get(f"{metric}_stderr")
                rows.setdefault((task, metric), {})[model] = f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")
    lines = [
        "### Downstream tasks (lm-evaluation-harness)",
        "",
        "Scores from lm-eval (± its standard error over the task's examples). `fact_recall`: acc is the share of "
        "facts whose answer is the model's greedy continuation of the prompt, loglikelihood the answer's mean "
        "summed log-probability (nats).",
        "",
        "| Task | Metric | " + " | ".join(models) + " |",
        "|---|---|" + "---:|" * len(models),
    ]
    for (task, metric), values in rows.items():
        name = f"{task} ({samples[task]} examples)" if task in samples else task
        lines.append(f"| {name} | {metric} | " + " | ".join(values.get(m, "-") for m in models) + " |")
    return [*lines, ""]


def _usage_section(data: CardData) -> list[str]:
    lines = [
        "## Deployment with vLLM",
        "",
        "The folder carries `vllm_flap_plugin/` and its `vllm_flap_plugin.egg-info/`: with the folder on "
        "`PYTHONPATH`, vLLM finds the plugin through its `vllm.general_plugins` entry point, no install needed.",
        "",
        "```bash",
        "MODEL_DIR=/path/to/this/folder",
        'export PYTHONPATH="$MODEL_DIR:$PYTHONPATH"',
        "vllm serve $MODEL_DIR --config $MODEL_DIR/vllm_config.yaml",
        "```",
        "",
    ]
    stock_name = bool(data.architecture) and not data.architecture.startswith("Gemma4Flap")
    if data.flap_pruned and stock_name:
        lines += [
            f"config.json keeps the stock architecture name `{data.architecture}`; the plugin builds the pruned "
            "layers because `text_config.flap_pruned` is set. Without the plugin vLLM stops at load on the FFN "
            "weight shapes.",
            "",
        ]
    elif data.flap_pruned:
        lines += [
            "Without the plugin vLLM refuses to load the model (config.json names an architecture only the "
            "plugin registers), rather than serving it with the down_proj biases dropped.",
            "",
        ]
    if data.quantized:
        lines += ["The INT4 GPTQ kernels need a GPU (vLLM's CPU backend cannot run them on AVX2-only CPUs).", ""]
    elif data.multimodal:
        lines += [
            "On a CPU build of vLLM without torchvision, serve it as a text model (same files):",
            "",
            "```bash",
            "vllm serve $MODEL_DIR --config $MODEL_DIR/vllm_config.yaml \\",
            "  --hf-overrides '{\"architectures\": [\"Gemma4FlapForCausalLM\"]}'" if data.flap_pruned and not stock_name
            else "  --hf-overrides '{\"architectures\": [\"Gemma4ForCausalLM\"]}'",
            "```",
            "",
        ]
    loader = (
        "from studio.gptq.quantize import load_quantized\nmodel = load_quantized(\"/path/to/this/folder\", device=\"cpu\")"
        if data.quantized
        else "from studio.modeling import load_model\nmodel = load_model(\"/path/to/this/folder\", dtype=\"bfloat16\")"
    )
    lines += ["## Loading with Gemma Lite Studio", "", "```python", loader, "```", ""]
    return lines


def render_model_card(data: CardData) -> str:
    steps = ([f"FLAP structured pruning of the FFN layers ({_compensation_short(data.prune_summary or {})})"]
             if data.flap_pruned else []) + (
        [f"GPTQ INT{data.quantize_config.get('bits')} weight-only quantization through GPTQModel"]
        if data.quantized and data.quantize_config
        else []
    )
    after, before = data.sizes_after, data.sizes_before
    lines = [
        "---",
        "library_name: transformers",
        *([f"base_model: {data.base_model}"] if data.base_model else []),
        "tags: [gemma4, flap, pruning" + (", gptq, int4" if data.quantized else "") + ", vllm]",
        "---",
        "",
        f"# {data.name}",
        "",
        (f"A compressed version of `{data.base_model}`: " if data.base_model else "A compressed Gemma 4 model: ")
        + (" followed by ".join(steps) or "exported unchanged")
        + ".",
        f"{after.params:,} parameters in {_gb(after.tensor_bytes)} of tensors "
        f"(base: {before.params:,} parameters, {_gb(before.tensor_bytes)} in {data.dtype}). "
        f"Unquantized tensors are stored in {data.dtype}. Made with Gemma Lite Studio.",
        "",
        *_compression_section(data),
        *_sizes_section(data),
        *_quant_error_section(data.quant_log),
        *_evaluation_section(data.evaluation),
        *_usage_section(data),
        "## Files",
        "",
        *[f"- `{name}`" for name in data.files],
        "",
    ]
    return "\n".join(lines)
