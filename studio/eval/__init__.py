"""Quality measurement: perplexity and lm-eval downstream tasks of base, pruned and quantized models."""

from studio.eval.downstream import evaluate_model_tasks, evaluate_server_tasks, parse_tasks, task_results
from studio.eval.perplexity import (
    WIKITEXT2_TEST,
    PerplexityResult,
    evaluate_perplexity,
    evaluate_perplexity_ids,
    load_eval_text,
    sliding_windows,
)

__all__ = [
    "WIKITEXT2_TEST",
    "PerplexityResult",
    "evaluate_model_tasks",
    "evaluate_perplexity",
    "evaluate_perplexity_ids",
    "evaluate_server_tasks",
    "load_eval_text",
    "parse_tasks",
    "sliding_windows",
    "task_results",
]
