"""The facts corpus: deterministic, held-out templates absent from training, recall = greedy match."""

from __future__ import annotations

import json

import pytest
import torch

from studio.eval.facts import RELATIONS, FactSet, Query, continuation_ids, fact_recall, greedy_matches, read_queries, write_queries
from tests.conftest import CALIBRATION_TEXT


def test_same_seed_gives_the_same_facts_and_another_seed_does_not():
    first, again, other = FactSet(40, seed=0), FactSet(40, seed=0), FactSet(40, seed=1)
    assert first.training_text() == again.training_text()
    assert first.queries() == again.queries()
    assert first.facts() != other.facts()
    assert len(set(first.subjects())) == 40
    assert len(first.facts()) == 40 * len(RELATIONS)
    # Every fact in every training template, once.
    assert len(first.training_sentences()) == 40 * sum(len(train) for train, _, _ in RELATIONS.values())


def test_held_out_templates_never_appear_in_the_training_corpus():
    facts = FactSet(60)
    corpus = facts.training_text() + CALIBRATION_TEXT.read_text(encoding="utf-8")
    queries = facts.queries(held_out=True)
    assert len(queries) == 60 * sum(len(held) for _, held, _ in RELATIONS.values())
    for query in queries:
        assert query.prompt not in corpus, query.prompt
    # Nor the held-out templates' own words around the subject, in any fact's sentence.
    for _train, held_out, _values in RELATIONS.values():
        for template in held_out:
            opening = template.split("{subject}")[0].strip()
            assert opening and opening not in corpus, template
    # The training queries, by contrast, are in it verbatim (the search can find what is there).
    assert all(q.prompt + q.answer in corpus for q in facts.queries(held_out=False))


def test_every_query_asks_a_trained_fact_and_its_answer_starts_with_a_space():
    facts = FactSet(20)
    trained = {(f.subject, f.value) for f in facts.facts()}
    for query in facts.queries():
        assert query.answer.startswith(" ") and not query.prompt.endswith(" ")
        subject = next(s for s in facts.subjects() if s in query.prompt)
        assert (subject, query.answer[1:]) in trained


def test_queries_round_trip_as_jsonl_with_exactly_prompt_and_answer(tmp_path):
    queries = FactSet(5).queries()
    path = write_queries(tmp_path / "q.jsonl", queries)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(queries)
    assert all(set(json.loads(line)) == {"prompt", "answer"} for line in lines)
    assert read_queries(path) == queries
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="line 1 .* 'prompt' and 'answer'"):
        read_queries(tmp_path / "bad.jsonl")


@pytest.fixture(scope="module")
def tiny_model(demo_model_dir):
    from transformers import AutoTokenizer

    from studio.modeling import load_model

    return load_model(demo_model_dir), AutoTokenizer.from_pretrained(demo_model_dir)


def _greedy_by_hand(model, context: list[int], answer: list[int]) -> bool:
    """One token at a time, no batching or padding: is each answer token the argmax given the ones before?"""
    ids = list(context)
    for token in answer:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
        if int(logits.argmax()) != token:
            return False
        ids.append(token)
    return True


def test_recall_is_the_fraction_of_greedy_continuations(tiny_model):
    model, tokenizer = tiny_model
    prompts = [q.prompt for q in FactSet(6).queries()][:12]
    queries = []
    for prompt in prompts:
        # The model's own greedy continuation (two tokens) is one answer, a fixed word the other.
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=2, do_sample=False)
        greedy = tokenizer.decode(out[0, len(ids):])
        queries += [Query(prompt, greedy if greedy.startswith(" ") else " " + greedy), Query(prompt, " Paris")]
    expected = [_greedy_by_hand(model, *continuation_ids(tokenizer, q.prompt, q.answer)) for q in queries]
    assert any(expected) and not all(expected)  # both outcomes occur, so the check can fail
    assert greedy_matches(model, tokenizer, queries, batch_size=5) == expected
    assert fact_recall(model, tokenizer, queries, batch_size=3) == pytest.approx(sum(expected) / len(expected))


def test_continuation_is_what_follows_the_context_tokens(tiny_model):
    _model, tokenizer = tiny_model
    context, answer = continuation_ids(tokenizer, "Records show that Ana was born in", " Berlin")
    whole = tokenizer("Records show that Ana was born in Berlin")["input_ids"]
    assert context[0] == tokenizer.bos_token_id
    assert context + answer == whole and answer
    # A trailing space of the prompt moves to the answer, as lm-eval does.
    assert continuation_ids(tokenizer, "Records show that Ana was born in ", "Berlin") == (context, answer)


def test_recall_needs_queries(tiny_model):
    with pytest.raises(ValueError, match="queries"):
        fact_recall(*tiny_model, [])
