"""The bench-model trainer: deterministic weights, a cache keyed by recipe, corpus, facts and tokenizer."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from safetensors.torch import load_file

from studio import bench_model
from studio.bench_model import (
    HELD_OUT_QUERIES,
    TRAINING_QUERIES,
    BenchRecipe,
    bench_texts,
    build_tokenizer,
    ensure_bench_model,
    fact_set,
    recipe_hash,
    train_bench_model,
)
from studio.eval.facts import read_queries
from tests.conftest import CALIBRATION_TEXT, TEST_TEXT

TINY = BenchRecipe(num_layers=2, hidden_size=128, intermediate_size=128, vocab_size=512, seqlen=32,
                   batch_size=2, steps=10, warmup_steps=2, threads=1, fact_entities=10, fact_rows=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 40 kB of the validation text: enough for a 512-token BPE, quick to train on."""
    path = tmp_path_factory.mktemp("corpus") / "valid-head.txt"
    path.write_text(CALIBRATION_TEXT.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return path


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_same_recipe_gives_identical_weights_and_another_seed_does_not(corpus, tmp_path):
    first = _weights(train_bench_model(tmp_path / "a", TINY, corpus, log=None))
    second = _weights(train_bench_model(tmp_path / "b", TINY, corpus, log=None))
    reseeded = _weights(train_bench_model(tmp_path / "c", replace(TINY, seed=1), corpus, log=None))

    assert first.keys() == second.keys()
    assert all(first[name].equal(second[name]) for name in first)
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    assert not first[name].equal(reseeded[name])


def test_saved_folder_records_the_recipe_and_loads(corpus, tmp_path):
    from transformers import AutoTokenizer

    from studio.modeling import load_model

    out = train_bench_model(tmp_path / "m", TINY, corpus, log=None)
    info = json.loads((out / "bench_model.json").read_text())
    assert info["recipe"]["steps"] == 10
    assert info["recipe_hash"] == recipe_hash(TINY, corpus)
    model = load_model(out)
    assert model.config.text_config.intermediate_size == 128
    assert len(AutoTokenizer.from_pretrained(out)) == 512
    # The recall sets the benchmark and the lm-eval task read: held-out and training templates of the trained facts.
    facts = fact_set(TINY)
    assert read_queries(out / HELD_OUT_QUERIES) == facts.queries(held_out=True)
    assert read_queries(out / TRAINING_QUERIES) == facts.queries(held_out=False)
    assert info["facts"] == 10 * 5 and info["fact_tokens"] > 0


def test_recipe_hash_changes_with_recipe_corpus_facts_and_tokenizer(corpus, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text(encoding="utf-8") + " more", encoding="utf-8")
    # Another tokenizer for the same recipe and corpus (say a changed BPE trainer): a vocabulary of 600.
    other_tokenizer = build_tokenizer(corpus, 600)
    hashes = {
        recipe_hash(TINY, corpus),
        recipe_hash(replace(TINY, steps=11), corpus),
        recipe_hash(TINY, other),
        recipe_hash(replace(TINY, fact_entities=11), corpus),
        recipe_hash(TINY, corpus, other_tokenizer),
    }
    assert len(hashes) == 5
    # The key of the tokenizer the trainer builds is the default one.
    assert recipe_hash(TINY, corpus, build_tokenizer(corpus, TINY.vocab_size)) == recipe_hash(TINY, corpus)


def test_bench_texts_are_two_disjoint_halves_of_the_test_text():
    calibration, evaluation = bench_texts(TEST_TEXT)
    full = TEST_TEXT.read_text(encoding="utf-8")
    assert full == calibration + "\n\n" + evaluation
    assert abs(len(calibration) - len(evaluation)) < 0.01 * len(full)
    # Neither half is in the training corpus: no paragraph of either appears in it.
    training = CALIBRATION_TEXT.read_text(encoding="utf-8")
    paragraphs = [p for p in evaluation.split("\n\n")[:50] + calibration.split("\n\n")[:50] if len(p) > 200]
    assert paragraphs and not any(p in training for p in paragraphs)


def test_cached_model_is_reused(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    first = ensure_bench_model(TINY, corpus, log=None)
    assert first == tmp_path / "home" / f"bench-model-{recipe_hash(TINY, corpus)}"

    def fail(*args, **kwargs):
        raise AssertionError("the cached bench model was trained again")

    monkeypatch.setattr(bench_model, "train_bench_model", fail)
    assert ensure_bench_model(TINY, corpus, log=None) == first


def test_bad_recipe_is_rejected_naming_the_field(corpus, tmp_path):
    with pytest.raises(ValueError, match="intermediate_size: must be a multiple of 128"):
        train_bench_model(tmp_path / "x", replace(TINY, intermediate_size=100), corpus, log=None)
    with pytest.raises(ValueError, match="hidden_size: must be a multiple of 128"):
        train_bench_model(tmp_path / "x", replace(TINY, hidden_size=192), corpus, log=None)
    with pytest.raises(ValueError, match="warmup_steps"):
        train_bench_model(tmp_path / "x", replace(TINY, warmup_steps=11), corpus, log=None)
    with pytest.raises(ValueError, match="fact_rows: must be between 0 and batch_size"):
        train_bench_model(tmp_path / "x", replace(TINY, fact_rows=3), corpus, log=None)


def test_default_recipe_is_valid_and_prunes_to_whole_gptq_groups():
    recipe = BenchRecipe()
    recipe.validate()
    assert recipe.warmup_steps < recipe.steps
    # The benchmark's 20% and 50% FFN ratios must land on multiples of 128 (GPTQ groups, plan multiple).
    for ratio in (0.2, 0.5):
        kept = recipe.intermediate_size * (1 - ratio)
        assert kept == int(kept) and int(kept) % 128 == 0, (ratio, kept)
