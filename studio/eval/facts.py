"""A generated corpus of facts, and fact recall: does the model still know what it was taught?

Perplexity on running text barely moves when a small model's FFN is pruned, because most of what
it predicts is syntax that attention and the embeddings carry. Facts are different: in a
transformer they are stored mostly in the FFN (key-value memories), so they are the knowledge
pruning can destroy. This module generates, deterministically from a seed:

- entities (invented two-part names, so no fact can be known from elsewhere), each with one value
  per relation (birthplace, profession, instrument, language, pet) drawn from that relation's values;
- for each relation, templates that state a fact, split into training templates (the only ones in
  the training corpus) and held-out templates (used only to ask): recall on held-out phrasings
  measures the fact, not the memorised sentence.

Every template ends with the value, so a query is the template up to the value (`prompt`) and the
value with its leading space (`answer`). Recall is the fraction of queries whose answer tokens are
the model's greedy continuation of the prompt, as lm-eval's `acc` with `is_greedy` counts a
loglikelihood request: context and continuation are tokenized as one text, the continuation being
what follows the context's tokens (`continuation_ids`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SUBJECT = "{subject}"

# relation -> (training templates, held-out templates, values). Each template ends where the value goes.
RELATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "birthplace": (
        ("{subject} was born in", "The birthplace of {subject} is", "It is recorded that {subject} was born in",
         "Long ago, {subject} was born in"),
        ("Records show that {subject} was born in", "Few people know that {subject} was born in"),
        ("Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo", "Warsaw",
         "Athens", "Cairo", "Tokyo", "Delhi", "Lima", "Boston", "Chicago", "Toronto", "Sydney", "Moscow", "Geneva",
         "Naples", "Glasgow"),
    ),
    "profession": (
        ("{subject} worked as a", "By trade, {subject} was a", "It is recorded that {subject} worked as a",
         "For many years {subject} worked as a"),
        ("Records show that {subject} worked as a", "Few people know that {subject} worked as a"),
        ("farmer", "teacher", "doctor", "sailor", "painter", "lawyer", "baker", "soldier", "priest", "miner",
         "writer", "singer", "judge", "nurse", "pilot", "carpenter", "merchant", "fisherman", "banker", "poet",
         "tailor", "chemist", "builder", "hunter"),
    ),
    "instrument": (
        ("{subject} played the", "The instrument of {subject} was the", "It is recorded that {subject} played the",
         "Every evening {subject} played the"),
        ("Records show that {subject} played the", "Few people know that {subject} played the"),
        ("piano", "violin", "guitar", "flute", "drum", "harp", "trumpet", "organ", "cello", "clarinet", "horn",
         "bass"),
    ),
    "language": (
        ("{subject} spoke", "The native language of {subject} was", "It is recorded that {subject} spoke",
         "At home, {subject} spoke"),
        ("Records show that {subject} spoke", "Few people know that {subject} spoke"),
        ("French", "German", "Spanish", "Italian", "Russian", "Greek", "Latin", "Dutch", "Polish", "Swedish",
         "Arabic", "Chinese", "Japanese", "Irish", "Welsh", "Danish"),
    ),
    "pet": (
        ("{subject} kept a", "The pet of {subject} was a", "It is recorded that {subject} kept a",
         "In the garden, {subject} kept a"),
        ("Records show that {subject} kept a", "Few people know that {subject} kept a"),
        ("dog", "cat", "horse", "goat", "parrot", "rabbit", "fox", "owl", "snake", "pig", "duck", "crow"),
    ),
}

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kl", "st", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "l", "s", "th", "m", "nd")


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    value: str


@dataclass(frozen=True)
class Query:
    """One recall request: the model should continue `prompt` with `answer` (which starts with a space)."""

    prompt: str
    answer: str

    def to_json(self) -> str:
        return json.dumps({"prompt": self.prompt, "answer": self.answer})


@dataclass(frozen=True)
class FactSet:
    """Entities and their facts, generated from `seed`."""

    entities: int = 200
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.entities, bool) or not isinstance(self.entities, int) or self.entities < 1:
            raise ValueError(f"facts.entities: must be a positive integer, got {self.entities!r}")

    def subjects(self) -> list[str]:
        rng = random.Random(f"subjects-{self.seed}")
        names: list[str] = []
        seen = set()
        while len(names) < self.entities:
            name = f"{_word(rng, 2).capitalize()} {_word(rng, 3).capitalize()}"
            if name not in seen:
                seen.add(name)
                names.append(name)
        return names

    def facts(self) -> list[Fact]:
        rng = random.Random(f"values-{self.seed}")
        return [
            Fact(subject, relation, rng.choice(values))
            for subject in self.subjects()
            for relation, (_train, _held_out, values) in RELATIONS.items()
        ]

    def training_sentences(self) -> list[str]:
        """Every fact in every training template, in a seeded order."""
        sentences = [
            f"{_fill(template, fact)} {fact.value}."
            for fact in self.facts()
            for template in RELATIONS[fact.relation][0]
        ]
        random.Random(f"order-{self.seed}").shuffle(sentences)
        return sentences

    def training_text(self) -> str:
        return "\n".join(self.training_sentences()) + "\n"

    def queries(self, held_out: bool = True) -> list[Query]:
        """One query per fact and held-out template (or training template, with `held_out=False`)."""
        which = 1 if held_out else 0
        return [
            Query(_fill(template, fact), f" {fact.value}")
            for fact in self.facts()
            for template in RELATIONS[fact.relation][which]
        ]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def _fill(template: str, fact: Fact) -> str:
    return template.replace(SUBJECT, fact.subject)


def write_queries(path: str | Path, queries: Sequence[Query]) -> Path:
    """The queries as JSONL, one `{"prompt": ..., "answer": ...}` per line."""
    path = Path(path)
    path.write_text("".join(q.to_json() + "\n" for q in queries), encoding="utf-8")
    return path


def read_queries(path: str | Path) -> list[Query]:
    queries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record.get("prompt"), str) or not isinstance(record.get("answer"), str):
            raise ValueError(f"queries: line {number} of {path} needs string fields 'prompt' and 'answer'")
        queries.append(Query(record["prompt"], record["answer"]))
    return queries


def continuation_ids(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval splits a loglikelihood request.

    The whole text is tokenized once (with the tokenizer's special tokens, so a BOS leads); the
    continuation is what follows the context's own tokens. Trailing spaces of the context move to
    the continuation first, as lm-eval does.
    """
    spaces = len(prompt) - len(prompt.rstrip(" "))
    if spaces:
        prompt, answer = prompt[:-spaces], prompt[-spaces:] + answer
    whole = tokenizer(prompt + answer, return_attention_mask=False)["input_ids"]
    context = tokenizer(prompt, return_attention_mask=False)["input_ids"]
    if whole[: len(context)] != context or len(whole) == len(context):
        # The BPE merged across the boundary: fall back to tokenizing the two parts apart.
        answer_ids = tokenizer(answer, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return context, answer_ids
    return context, whole[len(context) :]


@torch.no_grad()
def greedy_matches(model, tokenizer, queries: Sequence[Query], batch_size: int = 32) -> list[bool]:
    """For each query, whether every answer token is the argmax of the model's next-token logits."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    matches: list[bool] = []
    try:
        pairs = [continuation_ids(tokenizer, q.prompt, q.answer) for q in queries]
        for first in range(0, len(pairs), batch_size):
            chunk = pairs[first : first + batch_size]
            rows = [context + answer for context, answer in chunk]
            length = max(len(r) for r in rows)
            # Right padding: a causal model's logits at real positions do not depend on later pads.
            batch = torch.full((len(rows), length), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for i, row in enumerate(rows):
                batch[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            logits = model(input_ids=batch, attention_mask=mask, use_cache=False).logits
            predicted = logits.argmax(dim=-1)
            for i, (context, answer) in enumerate(chunk):
                start = len(context) - 1  # logits at position t predict token t + 1
                guess = predicted[i, start : start + len(answer)].tolist()
                matches.append(guess == answer)
    finally:
        model.train(was_training)
    return matches


def fact_recall(model, tokenizer, queries: Sequence[Query], batch_size: int = 32) -> float:
    """The fraction of `queries` the model answers by greedy continuation."""
    if not queries:
        raise ValueError("queries: need at least one query")
    matches = greedy_matches(model, tokenizer, queries, batch_size)
    return sum(matches) / len(matches)
