"""A small trained Gemma 4 for quality benchmarks, trained on CPU and cached.

Random weights cannot show what pruning or quantization costs: every channel is noise. This module
trains, deterministically, a small model with the structure of Gemma 4 E4B (the demo model's
architecture: PLE, sliding and full attention, a KV-shared tail, FFN widths that are multiples of
128), with its own BPE tokenizer, on two texts mixed in every batch:
- the project's WikiText-2 validation text (`data/wikitext-2-valid.txt`);
- a generated corpus of facts (`studio.eval.facts`: invented entities, five relations, each fact
  stated in four training templates), so that the FFN stores knowledge that pruning can destroy.
Every training sequence starts with BOS, as Gemma's do.

Three texts, none seen by the others: the model trains on the validation text; benchmarks calibrate
on the first half of `data/wikitext-2-raw-test.txt` and evaluate perplexity on its second half
(`bench_texts`), and fact recall on the held-out templates (phrasings never in the training corpus),
written as JSONL into the model's folder (`HELD_OUT_QUERIES`). Calibrating on the training text
would let compensation restore what the FFN memorised of it (issue 13's probe).

The result is cached in a folder named after a hash of the recipe, the trainer version, the corpus,
the facts and the tokenizer, so benchmarks and CI reuse it.

It is saved as a `Gemma4ForConditionalGeneration` (the class of the real model, with the demo's tiny,
untrained vision tower) so that pruning, quantization, export and serving run on it unchanged; it is
trained and evaluated through the language model with `input_ids` only.

    python -m studio.bench_model            # train (or find) the default bench model, print its folder
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from studio.atomic import atomic_directory
from studio.calibration import OFFLINE_EVALUATION_TEXT, leading_bos, tokenize_stream
from studio.demo_model import DEFAULT_TOKENIZER_CORPUS, DemoModelShape, build_processor, build_tokenizer, demo_config
from studio.eval.facts import FactSet, write_queries
from studio.paths import studio_home

RECIPE_FILE = "bench_model.json"
# Recall sets written beside the weights: held-out templates (the benchmark's), training templates (memorisation).
HELD_OUT_QUERIES = "fact_queries_heldout.jsonl"
TRAINING_QUERIES = "fact_queries_train.jsonl"
# Bump when the training code changes in a way that changes the weights.
# 2: facts mixed into every batch, BOS-led training sequences.
TRAINER_VERSION = 2


@dataclass(frozen=True)
class BenchRecipe:
    """Everything that determines the bench model's weights (with the corpus)."""

    num_layers: int = 6
    # A multiple of 128, so that GPTQ's group size of 128 applies to gate/up_proj's input too.
    hidden_size: int = 256
    # 1280 = 10 blocks of 128: 20% and 50% pruning give exact multiples of 128 (1024 and 640).
    intermediate_size: int = 1280
    vocab_size: int = 2048
    seqlen: int = 128
    # Many small steps at a higher peak rate: at 300 steps of 16 the FFN stayed near its init and
    # pruning half of it cost nothing.
    batch_size: int = 8
    steps: int = 2000
    # Facts: entities of `studio.eval.facts.FactSet`, and the rows of each batch cut from the facts text.
    # 200 entities over 1000 steps left the FFN redundant (random 50% pruning cost 22% of the held-out
    # recall); 400 over 2000 steps stores more facts than half the FFN can hold (42%, docs/results.md).
    fact_entities: int = 400
    fact_rows: int = 4
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    # CPU kernels may sum in a thread-count-dependent order, so the thread count is part of the
    # recipe. One thread: bit-for-bit repeatable, and on a busy 2-core machine faster than two
    # (OpenMP threads spin while they wait for a core).
    threads: int = 1

    def shape(self) -> DemoModelShape:
        return DemoModelShape(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
        )

    def validate(self) -> None:
        for name in ("num_layers", "hidden_size", "vocab_size", "seqlen", "batch_size", "steps", "threads",
                     "fact_entities"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 128:
                raise ValueError(f"{name}: must be a multiple of 128 (GPTQ groups), got {getattr(self, name)}")
        if not 0 <= self.fact_rows <= self.batch_size:
            raise ValueError(f"fact_rows: must be between 0 and batch_size ({self.batch_size}), got {self.fact_rows}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps: must be between 0 and steps ({self.steps}), got {self.warmup_steps}")


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fact_set(recipe: BenchRecipe) -> FactSet:
    return FactSet(entities=recipe.fact_entities, seed=recipe.seed)


def tokenizer_sha256(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, merges, normaliser, BOS template)."""
    return _text_sha256(tokenizer.backend_tokenizer.to_str())


def recipe_hash(recipe: BenchRecipe, corpus: Path = DEFAULT_TOKENIZER_CORPUS, tokenizer=None) -> str:
    """A short hash of the recipe, the trainer version, the corpus bytes, the facts text and the tokenizer.

    The tokenizer is the one `train_bench_model` builds (built here when not given): a change of
    the BPE trainer or of its special tokens changes every token id, so it changes the key too.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(Path(corpus), recipe.vocab_size)
    key = json.dumps(
        {
            "recipe": asdict(recipe),
            "trainer": TRAINER_VERSION,
            "corpus": _file_sha256(corpus),
            "facts": _text_sha256(fact_set(recipe).training_text()),
            "tokenizer": tokenizer_sha256(tokenizer),
        },
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def bench_texts(text: Path = OFFLINE_EVALUATION_TEXT) -> tuple[str, str]:
    """(calibration text, evaluation text): `text` cut in two at the paragraph break nearest its middle.

    Neither half is in the bench model's training corpus; calibrating on one and evaluating on the
    other keeps the evaluation unseen by calibration too.
    """
    full = Path(text).read_text(encoding="utf-8")
    middle = len(full) // 2
    after, before = full.find("\n\n", middle), full.rfind("\n\n", 0, middle)
    candidates = [c for c in (after, before) if c > 0]
    if not candidates:
        raise ValueError(f"text: {text} has no paragraph break to split it at")
    cut = min(candidates, key=lambda c: abs(c - middle))
    return full[:cut], full[cut + 2 :]


def bench_model_dir(recipe: BenchRecipe = BenchRecipe(), corpus: Path = DEFAULT_TOKENIZER_CORPUS, tokenizer=None) -> Path:
    """The cached bench model's folder: `bench-model-<hash>` in the studio's home (`studio.paths`)."""
    return studio_home() / f"bench-model-{recipe_hash(recipe, corpus, tokenizer)}"


@contextlib.contextmanager
def deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seeded RNG, deterministic kernels and a fixed thread count, restored on exit."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous_deterministic)
            torch.set_num_threads(previous_threads)


def learning_rate(recipe: BenchRecipe, step: int) -> float:
    """Linear warm-up, then cosine decay to `min_lr_fraction` of the peak."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    floor = recipe.min_lr_fraction
    return recipe.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _next_token_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())


def train_bench_model(
    out_dir: str | Path,
    recipe: BenchRecipe = BenchRecipe(),
    corpus: Path = DEFAULT_TOKENIZER_CORPUS,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train the bench model per `recipe` and write it (weights, tokenizer, processor, recipe) to `out_dir`.

    The same recipe and corpus give identical weights on the same machine type.
    """
    from transformers import Gemma4ForConditionalGeneration

    recipe.validate()
    corpus = Path(corpus)
    shape = recipe.shape()
    tokenizer = build_tokenizer(corpus, recipe.vocab_size)
    bos = leading_bos(tokenizer)
    facts = fact_set(recipe)
    streams = [tokenize_stream(tokenizer, corpus.read_text(encoding="utf-8"))]
    rows = [recipe.batch_size - recipe.fact_rows]
    if recipe.fact_rows:
        streams.append(tokenize_stream(tokenizer, facts.training_text()))
        rows.append(recipe.fact_rows)
    text_len = recipe.seqlen - (bos is not None)  # each row: BOS + text, as Gemma trains
    for name, stream in zip(("corpus", "facts"), streams):
        if len(stream) <= text_len:
            raise ValueError(f"{name}: {len(stream)} tokens, fewer than one training sequence ({recipe.seqlen})")
    started, cpu_started = time.monotonic(), time.process_time()
    history = []
    with deterministic_torch(recipe.seed, recipe.threads):
        model = Gemma4ForConditionalGeneration(demo_config(shape)).train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr,
            betas=(0.9, 0.95),
        )
        batches = torch.Generator().manual_seed(recipe.seed + 1)
        prefix = [] if bos is None else [torch.tensor([bos], dtype=torch.long)]
        for step in range(recipe.steps):
            windows = []
            for stream, count in zip(streams, rows):
                offsets = torch.randint(0, len(stream) - text_len, (count,), generator=batches)
                windows += [torch.cat([*prefix, stream[o : o + text_len]]) for o in offsets.tolist()]
            batch = torch.stack(windows)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(recipe, step)
            loss = _next_token_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            history.append(loss.item())
            if log and (step % 50 == 0 or step == recipe.steps - 1):
                log(f"step {step + 1}/{recipe.steps}  loss {loss.item():.3f}  {time.monotonic() - started:.0f}s")
    model.eval()
    info = {
        "recipe": asdict(recipe),
        "recipe_hash": recipe_hash(recipe, corpus, tokenizer),
        "trainer_version": TRAINER_VERSION,
        "corpus": str(corpus),
        "corpus_sha256": _file_sha256(corpus),
        "corpus_tokens": len(streams[0]),
        "facts": len(facts.facts()),
        "fact_tokens": len(streams[1]) if recipe.fact_rows else 0,
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "final_train_loss": sum(history[-20:]) / len(history[-20:]),
        "train_seconds": round(time.monotonic() - started, 1),
        # CPU time is what the training costs on an idle core; wall time depends on the machine's load.
        "train_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "load_average_at_end": os.getloadavg()[0],
    }
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        build_processor(tokenizer, shape).save_pretrained(tmp)
        write_queries(tmp / HELD_OUT_QUERIES, facts.queries(held_out=True))
        write_queries(tmp / TRAINING_QUERIES, facts.queries(held_out=False))
        (tmp / RECIPE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return Path(out_dir)


def ensure_bench_model(
    recipe: BenchRecipe = BenchRecipe(),
    corpus: Path = DEFAULT_TOKENIZER_CORPUS,
    log: Callable[[str], None] | None = print,
) -> Path:
    """The cached bench model's folder, training it first if no cached copy exists."""
    out = bench_model_dir(recipe, corpus)
    if (out / RECIPE_FILE).is_file():
        return out
    if log:
        log(f"training the bench model into {out}")
    return train_bench_model(out, recipe, corpus, log=log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studio.bench_model",
        description="Train (or find in the cache) the small trained Gemma 4 used by the quality benchmark, "
        "and print its folder. Cached under $STUDIO_HOME (default ~/.local/share/gemma-lite-studio).",
    )
    parser.add_argument("--out", type=Path, help="write here instead of the cache (always trains)")
    parser.add_argument("--steps", type=int, default=BenchRecipe.steps, help="training steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=BenchRecipe.seed, help="seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=BenchRecipe.threads, help="CPU threads (default: %(default)s)")
    parser.add_argument("--fact-entities", type=int, default=BenchRecipe.fact_entities,
                        help="entities of the facts corpus (default: %(default)s)")
    parser.add_argument("--fact-rows", type=int, default=BenchRecipe.fact_rows,
                        help="rows of each batch cut from the facts text (default: %(default)s)")
    args = parser.parse_args(argv)
    recipe = replace(BenchRecipe(), steps=args.steps, seed=args.seed, threads=args.threads,
                     fact_entities=args.fact_entities, fact_rows=args.fact_rows)
    out = train_bench_model(args.out, recipe) if args.out else ensure_bench_model(recipe)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
