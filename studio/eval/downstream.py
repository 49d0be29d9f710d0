"""Downstream tasks through lm-evaluation-harness (`lm-eval`), the tool compressed models are reported with.

A task list names lm-eval tasks (`arc_easy`, `hellaswag`: their data sets come from the Hugging Face
hub) and the studio's own fact-recall task over a local JSONL file, written `fact_recall=PATH`
(one record per line, `{"prompt": "...", "answer": " ..."}`, the answer starting with its space).
The fact task is a loglikelihood task: per record, `acc` is 1 when the answer is the model's greedy
continuation of the prompt (every answer token is the argmax at its position) and `loglikelihood` is
the answer's summed log-probability given the prompt; the task reports their means over records.

Two ways to reach a model, one task list:
- `evaluate_model_tasks`: a model the studio loaded (`studio.eval.loading.load_eval_model`: stock,
  FLAP-pruned with its down_proj biases, GPTQ) wrapped in lm-eval's HF backend (`HFLM`);
- `evaluate_server_tasks`: an OpenAI-compatible server (the studio's vLLM) through lm-eval's
  `local-completions` model, which scores a continuation from the prompt log-probabilities the
  server returns with `echo` (the tokenizer comes from the model folder).
Both return `{task: {metric: value}}` (metric names without lm-eval's ",none" filter suffix).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

FACT_RECALL = "fact_recall"
# lm-eval task names: letters, digits and _ . - (glob patterns and group lists are not taken here).
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
# Analytic standard errors of mean metrics need bootstrap_iters > 0; a mean's stderr is closed-form.
BOOTSTRAP_ITERS = 100


# -- the task list -----------------------------------------------------------------------------


def parse_task(entry: Any, base: str | Path | None = None, field: str = "tasks") -> str:
    """One task entry, checked and normalised: an lm-eval task name, or `fact_recall=PATH` with PATH
    made absolute (relative to `base`, default the cwd) and checked to be a readable recall file."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"{field}: each task must be an lm-eval task name or fact_recall=PATH, got {entry!r}")
    entry = entry.strip()
    name, sep, value = entry.partition("=")
    if sep:
        if name != FACT_RECALL:
            raise ValueError(f"{field}: only {FACT_RECALL}=PATH takes a file, got {entry!r}")
        path = (Path(base) if base is not None else Path.cwd()) / Path(value).expanduser()
        read_recall_set(path, field)
        return f"{FACT_RECALL}={path.resolve()}"
    if name == FACT_RECALL:
        raise ValueError(f"{field}: {FACT_RECALL} needs its recall file: write {FACT_RECALL}=PATH.jsonl")
    if not TASK_NAME.match(name):
        raise ValueError(f"{field}: {entry!r} is not an lm-eval task name (letters, digits, _ . -)")
    return name


def parse_tasks(values: Any, base: str | Path | None = None, field: str = "tasks") -> tuple[str, ...]:
    """A list of task entries (see `parse_task`), without duplicates, in order."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{field}: must be a list of task names, got {values!r}")
    tasks = [parse_task(value, base, field) for value in values]
    names = [task_name(t) for t in tasks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{field}: {', '.join(duplicated)} given more than once")
    return tuple(tasks)


def task_name(entry: str) -> str:
    """The name a task's results are reported under (`fact_recall` for `fact_recall=PATH`)."""
    return entry.partition("=")[0]


def read_recall_set(path: str | Path, field: str = "tasks") -> list[dict]:
    """The records of a fact-recall JSONL file, each checked (`prompt` and `answer` strings, the
    answer starting with a space, since lm-eval joins prompt and answer without a delimiter here)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{field}: no such recall file: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{field}: {path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err})") from err
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("prompt", "answer")):
            raise ValueError(f'{where}: needs string fields "prompt" and "answer"')
        if not record["prompt"] or not record["answer"].startswith(" ") or not record["answer"].strip():
            raise ValueError(f"{where}: needs a non-empty prompt and an answer that starts with a space")
        records.append(record)
    if not records:
        raise ValueError(f"{field}: {path} holds no records")
    return records


def _fact_recall_results(doc: dict, results: list) -> dict:
    """lm-eval's per-record metrics of the fact task: greedy match and answer log-likelihood."""
    loglikelihood, is_greedy = results[0]
    return {"acc": int(is_greedy), "loglikelihood": float(loglikelihood)}


def fact_recall_config(path: str | Path) -> dict:
    """The lm-eval task config of the fact-recall set at `path` (a JSON data set over the local file)."""
    return {
        "task": FACT_RECALL,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "output_type": "loglikelihood",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",  # the answer carries its own leading space
        "process_results": _fact_recall_results,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "loglikelihood", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def _task_specs(tasks: tuple[str, ...] | list[str]) -> list:
    return [fact_recall_config(t.partition("=")[2]) if task_name(t) == FACT_RECALL else t for t in tasks]


def _load_tasks(tasks, field: str = "tasks") -> tuple[Any, dict]:
    """lm-eval's task manager and Task objects for the entries; a name lm-eval does not know, or one
    whose data set cannot be loaded (no hub access), is a ValueError naming the field and the task."""
    from lm_eval.tasks import TaskManager

    names = [t for t in tasks if task_name(t) != FACT_RECALL]
    # Scanning lm-eval's own task folders takes seconds: only when a standard task is asked for.
    manager = TaskManager(include_defaults=bool(names))
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ValueError(f"{field}: lm-eval has no task {', '.join(map(repr, unknown))}")
    loaded: dict = {}
    for task, spec in zip(tasks, _task_specs(tasks)):
        try:
            loaded.update(manager.load([spec])["tasks"])
        except Exception as err:  # noqa: BLE001 - datasets raises many kinds for an unreachable hub
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"{field}: {task_name(task)}: its data set could not be loaded "
                f"(standard tasks download it from the Hugging Face hub; offline, use {FACT_RECALL}=PATH): {reason}"
            ) from err
    return manager, loaded


# -- running -----------------------------------------------------------------------------------


def run_tasks(lm, tasks, limit: int | None = None, field: str = "tasks") -> dict[str, dict[str, float]]:
    """Evaluate an lm-eval `LM` on the task entries: {task: {metric: value, ..., "samples": n}}."""
    from lm_eval import simple_evaluate

    tasks = tuple(tasks)
    if not tasks:
        raise ValueError(f"{field}: no tasks given")
    manager, loaded = _load_tasks(tasks, field)
    output = simple_evaluate(
        lm,
        tasks=list(loaded.values()),
        task_manager=manager,
        limit=limit,
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples=False,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    return {name: _metrics(output["results"][name], output.get("n-samples", {}).get(name)) for name in loaded}


def _metrics(raw: dict, n_samples: dict | None) -> dict[str, float]:
    """lm-eval's `acc,none` keys as `acc`, other filters kept as `metric,filter`; numbers only."""
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, _, filter_name = key.partition(",")
        metrics[metric if filter_name == "none" else key] = float(value)
    if n_samples:
        metrics["samples"] = int(n_samples.get("effective", n_samples.get("original", 0)))
    return metrics


def hf_lm(model, tokenizer, batch_size: int = 1):
    """lm-eval's HF backend over a model the studio loaded (its device, dtype and FLAP biases as loaded).

    A BOS is put before every request exactly when the tokenizer adds one (Gemma's does).
    """
    from lm_eval.models.huggingface import HFLM

    from studio.calibration import leading_bos

    # A loaded model stays where it is: HFLM feeds its batches to `model.device`.
    bos = leading_bos(tokenizer) is not None
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=bos)


def evaluate_model_tasks(model, tokenizer, tasks, batch_size: int = 1, limit: int | None = None,
                         field: str = "tasks") -> dict[str, dict[str, float]]:
    """The task entries on a loaded model (see `hf_lm`)."""
    return run_tasks(hf_lm(model, tokenizer, batch_size), tasks, limit, field)


def server_lm(url: str, tokenizer: str | Path, model: str = "model", max_length: int = 2048):
    """lm-eval's `local-completions` model for the OpenAI-compatible server at `url` (`http://host:port`,
    with or without `/v1`), serving `model`; `tokenizer` is the model folder (or hub id) whose
    tokenizer splits prompt and answer, with a BOS exactly when that tokenizer adds one."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from transformers import AutoTokenizer

    from studio.calibration import leading_bos

    base = url.rstrip("/")
    base = base if base.endswith("/v1") else f"{base}/v1"
    return LocalCompletionsAPI(
        base_url=f"{base}/completions",
        model=model,
        tokenizer=str(tokenizer),
        tokenizer_backend="huggingface",
        add_bos_token=leading_bos(AutoTokenizer.from_pretrained(tokenizer)) is not None,
        max_length=max_length,
        num_concurrent=1,
        max_retries=1,
    )


def evaluate_server_tasks(url: str, tokenizer: str | Path, tasks, model: str = "model", limit: int | None = None,
                          max_length: int = 2048, field: str = "tasks") -> dict[str, dict[str, float]]:
    """The task entries on a served model (see `server_lm`)."""
    return run_tasks(server_lm(url, tokenizer, model, max_length), tasks, limit, field)


def task_results(model, checkpoint: str | Path, tasks, batch_size: int = 1) -> dict:
    """`{"tasks": {task: metrics}}` for a job's evaluated model (its tokenizer read from `checkpoint`),
    or `{}` when the job asks for no tasks: what the evaluate stage adds to each model's record."""
    if not tasks:
        return {}
    from studio.eval.loading import load_eval_tokenizer

    tokenizer = load_eval_tokenizer(checkpoint)
    return {"tasks": evaluate_model_tasks(model, tokenizer, tasks, batch_size, field="evaluate.tasks")}
