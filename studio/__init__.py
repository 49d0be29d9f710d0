"""Gemma Lite Studio: FLAP pruning and GPTQ W4A16 of Gemma 4, exported for vLLM.

The flat API below is what scripts need; names load their module on first use, so importing
`studio` stays cheap (the CLI and the job queue import it without torch).

    from studio import CalibrationSpec, load_plan, load_text_config, prune_checkpoint
"""

from __future__ import annotations

from studio.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "build_demo_model": "studio.demo_model",
        "CalibrationSpec": "studio.calibration",
        "build_calibration_ids": "studio.calibration",
        "load_model": "studio.modeling",
        "load_text_config": "studio.modeling",
        "PruningPlan": "studio.plans.plan",
        "load_plan": "studio.plans.plan",
        "uniform_plan": "studio.plans.plan",
        "collect_statistics": "studio.flap.stats",
        "FlapSettings": "studio.flap.settings",
        "prune_checkpoint": "studio.flap.pipeline",
        "QuantizeSettings": "studio.gptq.settings",
        "quantize_checkpoint": "studio.gptq.quantize",
        "load_quantized": "studio.gptq.quantize",
        "export_checkpoint": "studio.export",
        "estimate": "studio.sizes",
        "measure_checkpoint": "studio.sizes",
        "evaluate_perplexity": "studio.eval",
        "Cancelled": "studio.progress",
    },
)
