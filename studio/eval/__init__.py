"""Quality measurement: perplexity and lm-eval downstream tasks of base, pruned and quantized models.

Names load their module on first use, so `studio.eval.settings` (read by the job spec parser)
imports without torch.
"""

from __future__ import annotations

from studio.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "WIKITEXT2_TEST": "studio.eval.perplexity",
        "PerplexityResult": "studio.eval.perplexity",
        "evaluate_perplexity": "studio.eval.perplexity",
        "evaluate_perplexity_ids": "studio.eval.perplexity",
        "load_eval_text": "studio.eval.perplexity",
        "sliding_windows": "studio.eval.perplexity",
        "evaluate_model_tasks": "studio.eval.downstream",
        "evaluate_server_tasks": "studio.eval.downstream",
        "parse_tasks": "studio.eval.downstream",
        "task_results": "studio.eval.downstream",
    },
)
