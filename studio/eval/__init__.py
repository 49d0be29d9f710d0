"""Quality measurement: perplexity of base, pruned and quantized models."""

from studio.eval.perplexity import (
    WIKITEXT2_TEST,
    PerplexityResult,
    evaluate_perplexity,
    evaluate_perplexity_ids,
    load_eval_text,
    sliding_windows,
)

__all__ = ["WIKITEXT2_TEST", "PerplexityResult", "evaluate_perplexity", "evaluate_perplexity_ids", "load_eval_text", "sliding_windows"]
