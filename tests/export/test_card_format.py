"""The reference card's checkpoint format (stock Gemma 4 architecture name, `text_config.flap_pruned`
and `intermediate_sizes`) is read like the studio's own: the loader, `eval`, `chat` and re-export
give what the studio-format checkpoint gives. What vLLM does with it is in tests/test_vllm_plugin.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from studio.cli import main
from tests.conftest import TEST_TEXT

WIDTHS = [384, 256, 512, 384, 256, 384, 128, 256]


@pytest.fixture(scope="module")
def studio_format(demo_model_dir, calibration_text, tmp_path_factory) -> Path:
    from studio.calibration import CalibrationSpec
    from studio.flap.pipeline import prune_checkpoint
    from studio.plans.plan import PruningPlan

    out = tmp_path_factory.mktemp("formats") / "studio-format"
    plan = PruningPlan(widths=WIDTHS, original=[512] * len(WIDTHS))
    prune_checkpoint(demo_model_dir, plan, CalibrationSpec(str(calibration_text), 4, 64), out)
    return out


@pytest.fixture(scope="module")
def card_format(studio_format) -> Path:
    out = shutil.copytree(studio_format, studio_format.parent / "card-format")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Gemma4FlapForConditionalGeneration"]
    config["architectures"] = ["Gemma4ForConditionalGeneration"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from studio.modeling import load_model

    with torch.no_grad():
        return load_model(folder, dtype=torch.float32)(ids).logits


PROMPT_IDS = torch.tensor([[2, 818, 3433, 563, 1534, 1076, 236764, 1003]]) % 2048


def test_the_loader_reads_the_cards_format_like_the_studios(studio_format, card_format):
    from studio.modeling import decoder_layers, load_model

    model = load_model(card_format)
    assert type(model).__name__ == "Gemma4FlapForConditionalGeneration"
    assert [layer.mlp.down_proj.weight.shape[1] for layer in decoder_layers(model)] == WIDTHS
    assert all(layer.mlp.down_proj.bias is not None for layer in decoder_layers(model))
    assert torch.equal(logits(card_format, PROMPT_IDS), logits(studio_format, PROMPT_IDS))


def test_eval_gives_the_same_perplexity(studio_format, card_format, capsys):
    results = []
    for folder in (studio_format, card_format):
        assert main(["eval", "--model", str(folder), "--text", str(TEST_TEXT), "--seqlen", "64", "--max-tokens", "512"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["tokens"] == results[1]["tokens"] > 0
    assert results[0]["ppl"] == results[1]["ppl"] and results[0]["nll"] == results[1]["nll"]


def test_chat_answers_alike_on_the_cpu(studio_format, card_format, capsys):
    argv = ["chat", str(studio_format), str(card_format), "--prompt", "Tell me about the tower", "--max-tokens", "8",
            "--engine", "transformers"]  # fmt: skip
    assert main(argv) == 0
    panes = json.loads(capsys.readouterr().out)["panes"]
    assert panes["A"]["stats"]["output_tokens"] == panes["B"]["stats"]["output_tokens"] == 8
    assert panes["A"]["text"] == panes["B"]["text"] != ""


def test_re_export_keeps_the_format_and_the_model(card_format, tmp_path):
    from studio.export import export_checkpoint

    out = export_checkpoint(card_format, tmp_path / "exported", dtype="float32").out_dir
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Gemma4ForConditionalGeneration"]
    assert config["text_config"]["flap_pruned"] is True and config["text_config"]["intermediate_sizes"] == WIDTHS
    assert (out / "vllm_flap_plugin" / "__init__.py").is_file()
    assert torch.equal(logits(out, PROMPT_IDS), logits(card_format, PROMPT_IDS))
    card = (out / "README.md").read_text()
    assert "config.json keeps the stock architecture name `Gemma4ForConditionalGeneration`" in card
    assert "\"architectures\": [\"Gemma4ForCausalLM\"]" in card  # the CPU text-only line names the stock class
    removed = 512 * len(WIDTHS) - sum(WIDTHS)
    assert f"Channels removed: {removed:,} of {512 * len(WIDTHS):,} ({removed / (512 * len(WIDTHS)):.1%})" in card


def test_the_card_names_compensation_and_calibration_and_lists_lm_eval_scores(studio_format, tmp_path):
    from studio.export import export_checkpoint, update_evaluation

    out = export_checkpoint(studio_format, tmp_path / "exported", dtype="float32").out_dir
    card = (out / "README.md").read_text()
    assert "- Compensation: bias (each pruned layer's down_proj gains a bias" in card
    assert "calibration one-shot (every layer calibrated on the full model's activations)." in card
    assert "Downstream tasks" not in card  # no task scores given
    perplexity = {"ppl": 120.5, "nll": 4.7916, "tokens": 512, "seqlen": 64, "stride": 64}
    tasks = {
        "base": {"fact_recall": {"acc": 0.75, "acc_stderr": 0.25, "loglikelihood": -3.5, "loglikelihood_stderr": 0.5,
                                 "samples": 4}},
        "pruned": {"fact_recall": {"acc": 0.5, "acc_stderr": 0.2887, "loglikelihood": -4.25,
                                   "loglikelihood_stderr": 0.75, "samples": 4},
                   "arc_easy": {"acc": 0.6, "acc_norm": 0.55, "samples": 2376}},
    }  # fmt: skip
    update_evaluation(out, {model: {**perplexity, "tasks": scores} for model, scores in tasks.items()})
    card = (out / "README.md").read_text()
    assert "### Downstream tasks (lm-evaluation-harness)" in card
    assert "| Task | Metric | base | pruned |" in card
    assert "| fact_recall (4 examples) | acc | 0.7500 ± 0.2500 | 0.5000 ± 0.2887 |" in card
    assert "| fact_recall (4 examples) | loglikelihood | -3.5000 ± 0.5000 | -4.2500 ± 0.7500 |" in card
    assert "| arc_easy (2376 examples) | acc_norm | - | 0.5500 |" in card  # the base model did not run it
