"""Sliding-window perplexity of a causal language model on a text.

The text is tokenized once into a single stream (no special tokens) and cut into windows that start
every `stride` tokens. Every token is scored exactly once, in the first window that predicts it: a
window scores only the tokens that the previous windows did not reach, and the tokens before them
serve as context. The last window is moved back to end at the last token, so all windows have the
same length and batch without padding.

When the tokenizer puts a BOS before text (Gemma's does, and Gemma degrades without it), every
window is fed as BOS followed by `seqlen - 1` text tokens, the way the model is trained and served;
the BOS is context only, never scored, and it predicts the window's first text token, so every text
token is scored: `tokens` is the text's token count. Without a BOS, a window is `seqlen` text
tokens and its first token, which nothing predicts, is context only: `tokens` is one less than the
text's count when windows overlap. With `stride < seqlen` windows overlap, so every scored token has
at least `seqlen - stride` tokens of context; with `stride` equal to a window's text length the
windows are disjoint, the protocol of the pruning papers (SparseGPT, Wanda, FLAP). A `stride` above
the text length of a BOS-led window (`seqlen - 1`) is taken as that length: disjoint windows.

The model is passed in already loaded (base, FLAP-pruned, or INT4), so the caller chooses the
loader. Only `input_ids` are given to the forward pass: a multimodal Gemma 4 then runs as a plain
language model.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from studio.calibration import leading_bos
from studio.eval.settings import DEFAULT_SOURCE
from studio.hub_text import is_hub_source, load_hub_text

# The standard evaluation text: WikiText-2 (raw) test split on the Hugging Face hub (the evaluate stage's default).
WIKITEXT2_TEST = DEFAULT_SOURCE


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity `ppl = exp(nll)`, where `nll` is the mean negative log-likelihood (nats) per
    scored token, over `tokens` scored tokens, with windows of `seqlen` tokens every `stride`."""

    ppl: float
    nll: float
    tokens: int
    seqlen: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(frozen=True)
class EvalWindow:
    """Token positions [start, end) fed to the model; positions [first_target, end) are scored."""

    start: int
    end: int
    first_target: int

    @property
    def num_targets(self) -> int:
        return self.end - self.first_target


def sliding_windows(num_tokens: int, seqlen: int, stride: int, bos: bool = False) -> list[EvalWindow]:
    """The windows that score a stream of `num_tokens` text tokens, each token at most once.

    Positions are the text stream's. Without `bos`, all windows have length `min(seqlen,
    num_tokens)` and the stream's first token is never scored (`num_tokens - 1` scored when
    `stride < seqlen`; with `stride == seqlen` the first token of each window but the last is
    context only). With `bos`, each window holds `min(seqlen - 1, num_tokens)` text tokens after a
    BOS that predicts the first of them, so every token is scored once, whatever the stride
    (`stride` is capped at `seqlen - 1`).
    """
    if num_tokens < 2:
        raise ValueError(f"text: needs at least 2 tokens to score, got {num_tokens}")
    if seqlen < 2:
        raise ValueError(f"seqlen: must be at least 2, got {seqlen}")
    if not 1 <= stride <= seqlen:
        raise ValueError(f"stride: must be between 1 and seqlen ({seqlen}), got {stride}")
    length = seqlen - 1 if bos else seqlen
    stride = min(stride, length)
    unpredicted = 0 if bos else 1  # without a BOS, a window's first token has no context
    windows = []
    scored_until = unpredicted
    start = 0
    while True:
        end = start + length
        if end >= num_tokens:
            # Last window: end at the last token, keep the full length (more context, same shape).
            end = num_tokens
            start = max(0, end - length)
            windows.append(EvalWindow(start, end, max(scored_until, start + unpredicted)))
            return windows
        windows.append(EvalWindow(start, end, max(scored_until, start + unpredicted)))
        scored_until = end
        start += stride


def load_eval_text(source: str | Path) -> str:
    """The evaluation text: a UTF-8 file, or `hf:DATASET/CONFIG/SPLIT` from the hub (`studio.hub_text`).

    Hub splits are joined with blank lines, as the usual Hugging Face perplexity recipe does (the
    bundled offline copy, data/wikitext-2-raw-test.txt, is made that way).
    """
    source = str(source)
    if is_hub_source(source):
        return load_hub_text(source, "text")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"text: no such file {path}")
    return path.read_text(encoding="utf-8")


def tokenize_text(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """The text as one 1-D stream of token ids, without special tokens (a BOS is added per window),
    cut to the first `max_tokens` tokens."""
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens: must be at least 2, got {max_tokens}")
    # With a budget, tokenize a growing prefix rather than the whole text (quick looks stay quick).
    # The prefix is cut at a line break, so the budget's tokens are those of the whole text.
    chars = len(text) if max_tokens is None else 8 * max_tokens
    while True:
        prefix = text if chars >= len(text) else text[: text.rfind("\n", 0, chars) + 1 or chars]
        ids = tokenizer(prefix, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        if max_tokens is None or len(ids) > max_tokens or len(prefix) == len(text):
            break
        chars *= 2
    ids = torch.tensor(ids, dtype=torch.long)
    return ids[:max_tokens] if max_tokens is not None else ids


def _accepts_logits_to_keep(model) -> bool:
    params = inspect.signature(model.forward).parameters.values()
    return any(p.name == "logits_to_keep" or p.kind is p.VAR_KEYWORD for p in params)


def _model_device(model) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def _window_nll_sums(
    model, ids: torch.Tensor, windows: list[EvalWindow], pass_keep: bool, bos_token_id: int | None = None
) -> torch.Tensor:
    """Summed NLL (float64) of each window's scored tokens, from one forward pass over the batch."""
    prefix = [] if bos_token_id is None else [torch.tensor([bos_token_id], dtype=ids.dtype)]
    batch = torch.stack([torch.cat([*prefix, ids[w.start : w.end]]) for w in windows])
    length = batch.shape[1]
    # Positions length-keep .. length-2 predict the scored tokens; the last logit predicts beyond the window.
    keep = min(length, max(w.num_targets for w in windows) + 1)
    kwargs = {"logits_to_keep": keep} if pass_keep else {}
    output = model(input_ids=batch.to(_model_device(model)), use_cache=False, **kwargs)
    logits = output.logits if hasattr(output, "logits") else output[0]
    logits = logits[:, -keep:-1].float()
    labels = batch[:, length - keep + 1 :].to(logits.device)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none").double()
    # Window-relative label positions; a row scores only its last num_targets of them.
    positions = torch.arange(length - keep + 1, length, device=nll.device)
    first = torch.tensor([w.first_target - w.start + len(prefix) for w in windows], device=nll.device)
    scored = positions.unsqueeze(0) >= first.unsqueeze(1)
    return (nll * scored).sum(dim=1).cpu()


def evaluate_perplexity(
    model,
    tokenizer,
    text: str,
    seqlen: int = 2048,
    stride: int | None = None,
    batch_size: int = 1,
    max_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of `model` on `text` (see the module docstring for the windowing).

    `stride` defaults to `seqlen` (disjoint windows, the pruning papers' protocol); `max_tokens`
    evaluates only the first tokens of the text, for quick looks. Windows start with BOS when the
    tokenizer adds one. `progress(done, total)` is called after each batch of windows.
    """
    ids = tokenize_text(tokenizer, text, max_tokens)
    return evaluate_perplexity_ids(model, ids, seqlen, stride, batch_size, progress, leading_bos(tokenizer))


@torch.no_grad()
def evaluate_perplexity_ids(
    model,
    ids: torch.Tensor,
    seqlen: int = 2048,
    stride: int | None = None,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    bos_token_id: int | None = None,
) -> PerplexityResult:
    """Perplexity of `model` on a 1-D stream of text token ids (to tokenize once and evaluate many models).

    With `bos_token_id` (`studio.calibration.leading_bos(tokenizer)`), every window starts with it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    if ids.ndim != 1:
        raise ValueError(f"ids: expected a 1-D token stream, got shape {tuple(ids.shape)}")
    bos = bos_token_id is not None
    stride = seqlen if stride is None else stride
    windows = sliding_windows(len(ids), seqlen, stride, bos)
    pass_keep = _accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    total_nll = 0.0
    try:
        for first in range(0, len(windows), batch_size):
            chunk = windows[first : first + batch_size]
            total_nll += float(_window_nll_sums(model, ids, chunk, pass_keep, bos_token_id).sum())
            if progress is not None:
                progress(min(first + batch_size, len(windows)), len(windows))
    finally:
        model.train(was_training)
    tokens = sum(w.num_targets for w in windows)
    nll = total_nll / tokens
    length = windows[0].end - windows[0].start + bos  # tokens fed per window, the BOS included
    if bos:
        stride = min(stride, seqlen - 1)  # as sliding_windows took it
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=tokens, seqlen=length, stride=stride)
