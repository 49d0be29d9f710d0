"""Sliding-window perplexity: windowing arithmetic, exact NLL, batching, pruned models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from studio.eval import PerplexityResult, evaluate_perplexity, load_eval_text, sliding_windows
from studio.eval.perplexity import tokenize_text
from studio.modeling import decoder_layers, load_model
from tests.conftest import TEST_TEXT


@pytest.fixture(scope="module")
def demo(demo_model_dir):
    from transformers import AutoTokenizer

    return load_model(demo_model_dir), AutoTokenizer.from_pretrained(demo_model_dir)


@pytest.fixture(scope="module")
def text() -> str:
    return load_eval_text(TEST_TEXT)[:4000]


def _scored_positions(windows):
    return [p for w in windows for p in range(w.first_target, w.end)]


@pytest.mark.parametrize("num_tokens,seqlen,stride", [(300, 64, 32), (300, 64, 63), (257, 64, 1 + 63 // 2), (10, 64, 8)])
def test_overlapping_windows_score_every_token_after_the_first_once(num_tokens, seqlen, stride):
    windows = sliding_windows(num_tokens, seqlen, stride)
    scored = _scored_positions(windows)
    assert sorted(scored) == list(range(1, num_tokens))
    assert {w.end - w.start for w in windows} == {min(seqlen, num_tokens)}
    for w in windows:
        # Every scored token sees at least seqlen - stride tokens of context (or all tokens before it).
        assert w.first_target - w.start >= min(seqlen - stride, w.first_target)


@pytest.mark.parametrize("num_tokens,seqlen,stride", [(300, 64, 32), (300, 64, 64), (300, 64, 63), (257, 64, 1), (10, 64, 8)])
def test_bos_led_windows_score_every_token_once(num_tokens, seqlen, stride):
    windows = sliding_windows(num_tokens, seqlen, stride, bos=True)
    scored = _scored_positions(windows)
    assert sorted(scored) == list(range(num_tokens))  # the BOS predicts each window's first token
    assert {w.end - w.start for w in windows} == {min(seqlen - 1, num_tokens)}  # + the BOS: seqlen fed
    for w in windows:
        assert w.first_target - w.start >= min(seqlen - 1 - min(stride, seqlen - 1), w.first_target)


def test_bos_led_disjoint_windows():
    windows = sliding_windows(300, 64, 64, bos=True)  # stride seqlen: disjoint, 63 text tokens each
    assert [(w.start, w.end, w.first_target) for w in windows] == [
        (0, 63, 0), (63, 126, 63), (126, 189, 126), (189, 252, 189), (237, 300, 252)
    ]


def test_disjoint_windows_leave_each_window_start_unscored():
    windows = sliding_windows(300, 64, 64)
    assert [(w.start, w.first_target) for w in windows] == [(0, 1), (64, 65), (128, 129), (192, 193), (236, 256)]
    scored = _scored_positions(windows)
    assert len(scored) == len(set(scored)) == 63 * 4 + 44


@pytest.mark.parametrize(
    "args,message",
    [((1, 64, 64), "text: needs at least 2 tokens"), ((100, 1, 1), "seqlen: must be at least 2"),
     ((100, 64, 65), "stride: must be between 1 and seqlen"), ((100, 64, 0), "stride: must be between 1")],
)
def test_bad_windowing_is_rejected_naming_the_field(args, message):
    with pytest.raises(ValueError, match=message):
        sliding_windows(*args)


def test_single_window_perplexity_is_exp_of_mean_token_nll(demo, text):
    """The demo tokenizer adds BOS, as Gemma's does: the window is BOS + the text, and BOS predicts the first token."""
    model, tokenizer = demo
    ids = tokenize_text(tokenizer, text, max_tokens=200)
    assert tokenizer.bos_token_id not in ids.tolist()
    fed = torch.cat([torch.tensor([tokenizer.bos_token_id]), ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=fed[None]).logits[0].double(), dim=-1)
    by_hand = -logprobs[:-1].gather(1, fed[1:, None]).mean().item()

    result = evaluate_perplexity(model, tokenizer, text, seqlen=512, max_tokens=200)

    assert result.tokens == 200  # every text token, the BOS never
    assert result.seqlen == 201  # the text is shorter than one window: BOS + 200 tokens
    assert result.nll == pytest.approx(by_hand, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(by_hand), rel=1e-5)


def test_single_window_without_bos_scores_every_token_after_the_first(demo, text):
    from studio.eval import evaluate_perplexity_ids

    model, tokenizer = demo
    ids = tokenize_text(tokenizer, text, max_tokens=200)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
    by_hand = -logprobs[:-1].gather(1, ids[1:, None]).mean().item()

    result = evaluate_perplexity_ids(model, ids, seqlen=512)

    assert result.tokens == 199
    assert result.seqlen == 200  # the text is shorter than one window
    assert result.nll == pytest.approx(by_hand, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(by_hand), rel=1e-5)


@pytest.mark.parametrize("bos", [True, False])
def test_sliding_perplexity_matches_a_window_by_window_computation(demo, text, bos):
    from studio.eval import evaluate_perplexity_ids

    model, tokenizer = demo
    ids = tokenize_text(tokenizer, text, max_tokens=300)
    prefix = [tokenizer.bos_token_id] if bos else []
    total, count = 0.0, 0
    with torch.no_grad():
        for w in sliding_windows(300, 64, 24, bos=bos):
            fed = torch.tensor(prefix + ids[w.start : w.end].tolist())
            assert len(fed) == 64
            logprobs = torch.log_softmax(model(input_ids=fed[None]).logits[0].double(), dim=-1)
            for p in range(w.first_target, w.end):
                position = p - w.start + len(prefix)  # where token p sits in the fed window
                total -= logprobs[position - 1, fed[position]].item()
                count += 1

    bos_id = tokenizer.bos_token_id if bos else None
    result = evaluate_perplexity_ids(model, ids, seqlen=64, stride=24, batch_size=3, bos_token_id=bos_id)

    assert result.tokens == count == (300 if bos else 299)
    assert result.nll == pytest.approx(total / count, rel=1e-5)
    if bos:
        assert evaluate_perplexity(model, tokenizer, text, seqlen=64, stride=24, max_tokens=300, batch_size=3) == result


def test_batched_equals_unbatched(demo, text):
    model, tokenizer = demo
    single = evaluate_perplexity(model, tokenizer, text, seqlen=64, stride=32, max_tokens=400, batch_size=1)
    batched = evaluate_perplexity(model, tokenizer, text, seqlen=64, stride=32, max_tokens=400, batch_size=5)
    assert batched.tokens == single.tokens == 400
    assert batched.nll == pytest.approx(single.nll, rel=1e-5)


def test_progress_reports_each_batch(demo, text):
    model, tokenizer = demo
    calls = []
    evaluate_perplexity(model, tokenizer, text, seqlen=64, max_tokens=300, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_result_round_trips_through_json():
    result = PerplexityResult(ppl=12.5, nll=math.log(12.5), tokens=99, seqlen=128, stride=64)
    assert PerplexityResult(**json.loads(result.to_json())) == result


def test_bad_arguments_name_the_field(demo, text):
    model, tokenizer = demo
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_perplexity(model, tokenizer, text, seqlen=64, batch_size=0)
    with pytest.raises(ValueError, match="max_tokens"):
        evaluate_perplexity(model, tokenizer, text, seqlen=64, max_tokens=1)
    with pytest.raises(FileNotFoundError, match="text: no such file"):
        load_eval_text("/nonexistent/text.txt")
    with pytest.raises(ValueError, match="hf:DATASET/CONFIG/SPLIT"):
        load_eval_text("hf:wikitext/test")


def test_pruned_checkpoint_is_evaluated_with_its_bias(demo_model_dir, demo, text, tmp_path):
    """Slice half the FFN channels of every layer by hand, with and without a down_proj bias: the
    loaded pruned model's perplexity must change with the bias (so the bias is used)."""
    from studio.modeling import mark_pruned

    _, tokenizer = demo
    ppl = {}
    for name, bias_value in [("zero-bias", 0.0), ("bias", 0.05)]:
        model = load_model(demo_model_dir)
        widths = []
        with torch.no_grad():
            for layer in decoder_layers(model):
                mlp = layer.mlp
                width = mlp.down_proj.in_features // 2
                mlp.gate_proj.weight = torch.nn.Parameter(mlp.gate_proj.weight[:width].clone())
                mlp.up_proj.weight = torch.nn.Parameter(mlp.up_proj.weight[:width].clone())
                down = torch.nn.Linear(width, mlp.down_proj.out_features, bias=True)
                down.weight.copy_(mlp.down_proj.weight[:, :width])
                down.bias.fill_(bias_value)
                mlp.down_proj = down
                widths.append(width)
        mark_pruned(model, widths)
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        loaded = load_model(tmp_path / name)
        assert [layer.mlp.down_proj.in_features for layer in decoder_layers(loaded)] == widths
        ppl[name] = evaluate_perplexity(loaded, tokenizer, text, seqlen=64, max_tokens=256, batch_size=4).ppl
    base = evaluate_perplexity(demo[0], tokenizer, text, seqlen=64, max_tokens=256, batch_size=4).ppl
    assert all(math.isfinite(v) for v in ppl.values())
    assert ppl["bias"] != pytest.approx(ppl["zero-bias"], rel=1e-4)
    assert ppl["zero-bias"] != pytest.approx(base, rel=1e-4)


def test_token_budget_gives_the_first_tokens_of_the_whole_text(demo):
    _, tokenizer = demo
    full_text = load_eval_text(TEST_TEXT)[:200_000]
    full = tokenize_text(tokenizer, full_text)
    for budget in (2, 1000, 20_000):
        assert tokenize_text(tokenizer, full_text, max_tokens=budget).equal(full[:budget])
    assert tokenize_text(tokenizer, full_text, max_tokens=10**7).equal(full)


def test_ids_entry_point_rejects_a_batch(demo):
    from studio.eval import evaluate_perplexity_ids

    with pytest.raises(ValueError, match="ids: expected a 1-D token stream"):
        evaluate_perplexity_ids(demo[0], torch.zeros(2, 10, dtype=torch.long), seqlen=8)
