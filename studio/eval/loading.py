"""Loading a model folder for evaluation: stock, FLAP-pruned, or GPTQ INT4."""

from __future__ import annotations

from pathlib import Path

import torch

from studio.checkpoint import gptq_compute_dtype, is_gptq_checkpoint
from studio.model_source import HUB_ID
from studio.eval.perplexity import PerplexityResult, evaluate_perplexity, load_eval_text


def load_eval_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | None = None):
    """The model in `path` (a folder, or a hub id), in eval mode: GPTQ exports through `studio.gptq.quantize.load_quantized`
    (GPTQModel's kernels, bfloat16 unless float16 is asked for), the rest through
    `studio.modeling.load_model` (stock and FLAP-pruned checkpoints)."""
    if Path(path).is_dir() or not HUB_ID.match(str(path)):  # a hub id (a job's base model) loads from the hub
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model: no config.json in {path}")
    if is_gptq_checkpoint(path):
        from studio.gptq.quantize import load_quantized

        dtype = gptq_compute_dtype(dtype).torch  # a float32 request runs in bfloat16 (the card's dtype)
        return load_quantized(path, device=device or "cpu", dtype=dtype)
    from studio.modeling import load_model

    return load_model(path, dtype=dtype, device=device)


def load_eval_tokenizer(path: str | Path):
    """The text tokenizer saved with the model (for a multimodal model, its processor's tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def evaluate_checkpoint(
    path: str | Path,
    text: str | Path,
    seqlen: int = 2048,
    stride: int | None = None,
    batch_size: int = 1,
    max_tokens: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    progress=None,
) -> PerplexityResult:
    """Load the model folder `path` and return its perplexity on `text` (a file or hf:... source)."""
    model = load_eval_model(path, dtype=dtype, device=device)
    tokenizer = load_eval_tokenizer(path)
    return evaluate_perplexity(
        model,
        tokenizer,
        load_eval_text(text),
        seqlen=seqlen,
        stride=stride,
        batch_size=batch_size,
        max_tokens=max_tokens,
        progress=progress,
    )
