"""One grammar for hub texts, `hf:DATASET/CONFIG/SPLIT` (studio.hub_text), wherever a text is taken."""

from __future__ import annotations

import pytest

from studio.calibration import CalibrationSpec, load_calibration_text
from studio.eval.perplexity import load_eval_text
from studio.hub_text import HubText, is_hub_source, load_hub_text, parse_hub_source

ROWS = {"text": ["first document", "", "second document"], "title": ["a", "b", "c"]}


class FakeSplit:
    """What `datasets.load_dataset(..., split=...)` returns, as far as the loader reads it."""

    def __init__(self, rows: dict):
        self.rows = rows
        self.column_names = list(rows)

    def __getitem__(self, column: str):
        return self.rows[column]


@pytest.fixture
def hub(monkeypatch):
    """Stands in for the hub: records what was asked for."""
    import datasets

    asked = []

    def load_dataset(name, config, split):
        asked.append((name, config, split))
        return FakeSplit(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


def test_the_parts_of_a_hub_source():
    assert parse_hub_source("hf:wikitext/wikitext-2-raw-v1/test", "text") == HubText("wikitext", "wikitext-2-raw-v1", "test")
    # A dataset id may carry its owner: config and split are the last two parts.
    assert parse_hub_source("hf:Salesforce/wikitext/wikitext-2-raw-v1/train", "text") == HubText(
        "Salesforce/wikitext", "wikitext-2-raw-v1", "train"
    )
    assert is_hub_source("hf:x") and not is_hub_source("data/x.txt") and not is_hub_source(None)


@pytest.mark.parametrize(
    "source", ["hf:", "hf:wikitext", "hf:wikitext/test", "hf:wikitext//test", "hf:a/b/c/d/e", "data/wiki.txt"]
)
def test_other_spellings_are_refused_naming_the_field(source):
    with pytest.raises(ValueError, match=rf"^calibration\.source: hub sources are written hf:DATASET/CONFIG/SPLIT, got '{source}'$"):
        parse_hub_source(source, "calibration.source")


def test_a_hub_text_is_its_rows_joined_by_blank_lines(hub):
    assert load_hub_text("hf:wikitext/wikitext-2-raw-v1/test", "text") == "first document\n\n\n\nsecond document"
    assert load_hub_text("hf:owner/set/cfg/validation", "text", column="title") == "a\n\nb\n\nc"
    assert hub == [("wikitext", "wikitext-2-raw-v1", "test"), ("owner/set", "cfg", "validation")]


def test_a_missing_column_is_named_with_its_setting(hub):
    with pytest.raises(ValueError, match=r"^calibration\.text_field: dataset set has no column 'body' \(columns: text, title\)$"):
        load_hub_text("hf:set/cfg/train", "calibration.source", "body", "calibration.text_field")


def test_calibration_and_evaluation_read_the_same_grammar(hub):
    source = "hf:wikitext/wikitext-2-raw-v1/train"
    assert load_calibration_text(CalibrationSpec(source=source)) == load_eval_text(source)
    assert hub == [("wikitext", "wikitext-2-raw-v1", "train")] * 2
    with pytest.raises(ValueError, match=r"^calibration\.source: hub sources are written hf:DATASET/CONFIG/SPLIT"):
        load_calibration_text(CalibrationSpec(source="hf:wikitext/train"))
    with pytest.raises(ValueError, match=r"^text: hub sources are written hf:DATASET/CONFIG/SPLIT"):
        load_eval_text("hf:wikitext/train")
    assert len(hub) == 2  # refused before the hub is asked
