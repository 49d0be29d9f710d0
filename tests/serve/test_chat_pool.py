"""The library behind the chat tab: which models a page offers, which folder a choice names, what
runs a pane, and a session whose panes cannot be set up."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from studio.jobs.client import job_store
from studio.paths import exports_dir
from studio.serve.chat import ChatError
from studio.serve.chat_pool import (
    DEMO_MODEL,
    ENGINE_AUTO,
    ENGINE_CPU,
    ENGINE_URL,
    ENGINE_VLLM,
    BackendPool,
    ChatModels,
    PaneSource,
    UnavailableBackend,
    engine_choices,
    open_session,
)
from studio.serve.chat_session import ChatSession
from studio.serve.client import OpenAIBackend


def _job_with_export(home, job_id: str, output: str):
    export = exports_dir(home) / output
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    record = job_store(home).job_dir(job_id) / "stages" / "export" / "export.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"path": str(export)}))
    return export


def test_a_finished_job_offers_its_export_as_a_pane_choice(tmp_path):
    models = ChatModels(home=tmp_path, demo_dir=tmp_path / "demo")
    export = _job_with_export(tmp_path, "20261201-000000-abcd", "lite")
    assert models.finished_export("20261201-000000-abcd") == export
    # the value the tab sets is one of the dropdown's labelled choices
    assert (f"export: {export.name}", str(export)) in models.choices(None)


def test_jobs_without_an_export_offer_nothing(tmp_path):
    models = ChatModels(home=tmp_path, demo_dir=tmp_path / "demo")
    (job_store(tmp_path).job_dir("20261201-000000-dcba") / "stages").mkdir(parents=True)
    assert models.finished_export("20261201-000000-dcba") is None
    assert models.finished_export(None) is None
    assert models.finished_export("../escape") is None


def test_both_panes_default_to_labelled_choices(demo_model_dir, tmp_path):
    """With the demo model chosen in the Model tab, pane A shows the demo's label, not its folder."""
    models = ChatModels(home=tmp_path, demo_dir=demo_model_dir)
    checkpoint = str(demo_model_dir)
    default_a, default_b = models.defaults(checkpoint)
    values = [value for _label, value in models.choices(checkpoint)]
    assert default_a == default_b == DEMO_MODEL and default_a in values


def test_another_base_model_and_the_newest_export_are_the_defaults(demo_model_dir, tmp_path):
    base = shutil.copytree(demo_model_dir, tmp_path / "base")
    older = _job_with_export(tmp_path, "20261201-000000-aaaa", "older")
    newer = _job_with_export(tmp_path, "20261201-000001-bbbb", "newer")
    later = older.stat().st_mtime + 10
    os.utime(newer, (later, later))
    models = ChatModels(home=tmp_path, demo_dir=demo_model_dir)
    assert models.defaults(str(base)) == (str(base), str(newer))
    assert models.choices(str(base)) == [("demo model", DEMO_MODEL), ("base: base", str(base)),
                                          ("export: newer", str(newer)), ("export: older", str(older))]
    # a hub id (no local folder) is no pane choice: pane A stays on the demo model
    assert models.defaults("google/gemma-4-E4B-it")[0] == DEMO_MODEL


def test_a_choice_names_a_folder(demo_model_dir, tmp_path, monkeypatch):
    models = ChatModels(home=tmp_path, demo_dir=demo_model_dir)
    assert models.folder("", "model_a") == models.folder(DEMO_MODEL, "model_a") == demo_model_dir
    monkeypatch.chdir(demo_model_dir.parent)
    assert models.folder(demo_model_dir.name, "model_a") == demo_model_dir.resolve()
    # chat panes take no hub ids: 'owner/name' that is no folder is an error, not a download
    with pytest.raises(ValueError, match=r"^model_b: .*/google/gemma-4-E4B-it is not a checkpoint folder \(no config.json\)$"):
        models.folder("google/gemma-4-E4B-it", "model_b")


def test_typed_folders_outside_the_roots_are_refused(demo_model_dir, tmp_path):
    home = tmp_path / "home"
    inside = shutil.copytree(demo_model_dir, home / "exports" / "lite")
    models = ChatModels(home=home, demo_dir=demo_model_dir, roots=(home,))
    assert models.folder("exports/lite", "model_b") == inside  # relative to the first root
    with pytest.raises(ValueError, match=rf"^model_b: '{demo_model_dir}' is outside the studio's data folder"):
        models.folder(str(demo_model_dir), "model_b")


def test_engines_offered(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_VLLM_PYTHON", str(tmp_path / "no-vllm" / "python"))
    assert engine_choices() == [ENGINE_AUTO, ENGINE_CPU, ENGINE_URL]
    python = tmp_path / "vllm" / "python"
    python.parent.mkdir()
    python.touch()
    monkeypatch.setenv("STUDIO_VLLM_PYTHON", str(python))
    assert engine_choices() == [ENGINE_AUTO, ENGINE_CPU, ENGINE_VLLM, ENGINE_URL]


def test_plans_name_the_field_of_bad_input(demo_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_VLLM_PYTHON", str(tmp_path / "no-vllm" / "python"))
    pool = BackendPool(ChatModels(home=tmp_path, demo_dir=demo_model_dir))
    with pytest.raises(ValueError, match=r"^engine_a: must be one of auto, transformers \(CPU\), OpenAI-compatible URL, got 'gpu'$"):
        pool.plan("A", PaneSource.from_form("gpu", "demo", "", ""))
    with pytest.raises(ValueError, match=r"^url_b: give the server's URL"):
        pool.plan("B", PaneSource.from_form(ENGINE_URL, "", "  ", ""))
    with pytest.raises(ValueError, match=rf"^engine_b: no vLLM environment at {tmp_path}/no-vllm/python; run scripts/setup_vllm_env.sh$"):
        pool.plan("B", PaneSource.from_form(ENGINE_VLLM, "demo", "", ""))
    # auto on a machine without vLLM: the CPU fallback, on the demo model's folder
    assert pool.plan("A", PaneSource.from_form(None, None, None, None)) == (ENGINE_CPU, demo_model_dir)
    assert pool.plan("A", PaneSource.from_form(ENGINE_URL, "", " http://h:1/v1 ", "")) == (ENGINE_URL, None)
    backend = pool.backend("A", PaneSource.from_form(ENGINE_URL, "", "http://h:1/v1", "m"), ENGINE_URL, None)
    assert isinstance(backend, OpenAIBackend) and backend.name == "m at http://h:1/v1"


def test_a_pane_that_cannot_be_set_up_answers_with_why(demo_model_dir, tmp_path, openai_server):
    pool = BackendPool(ChatModels(home=tmp_path, demo_dir=demo_model_dir))
    sources = (PaneSource.from_form(ENGINE_URL, "", openai_server.url, "echo"),
               PaneSource.from_form(ENGINE_CPU, str(tmp_path / "gone"), "", ""))
    session = ChatSession(sources, blind=False)
    open_session(pool, session, tmp_path / "votes")
    assert session.setup_failed and not session.matches(sources, False)
    unavailable = session.chat.panes["B"].backend
    assert isinstance(unavailable, UnavailableBackend) and unavailable.name == "gone"
    (event,) = list(unavailable.stream_chat([], None))
    assert event == ChatError(f"model_b: {tmp_path / 'gone'} is not a checkpoint folder (no config.json)")
    list(session.chat.send("one two"))
    assert session.chat.panes["A"].replies[-1].text == "two one"
    assert session.chat.panes["B"].replies[-1].error == event.message
