"""Text from a Hugging Face dataset, named `hf:DATASET/CONFIG/SPLIT` wherever the studio takes a text
(calibration and evaluation sources, job specs, the CLI, the UI).

DATASET is a hub dataset id, with or without its owner (`wikitext`, `Salesforce/wikitext`); CONFIG
and SPLIT are the last two parts: `hf:wikitext/wikitext-2-raw-v1/test`. A text of the split is its
rows' text column joined by blank lines, as the usual Hugging Face perplexity recipe does.
"""

from __future__ import annotations

from dataclasses import dataclass

HUB_PREFIX = "hf:"
HUB_GRAMMAR = "hf:DATASET/CONFIG/SPLIT"


@dataclass(frozen=True)
class HubText:
    dataset: str
    config: str
    split: str


def is_hub_source(source) -> bool:
    """Whether a text source names a hub dataset rather than a file."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_source(source: str, field: str) -> HubText:
    """The dataset, config and split of `hf:DATASET/CONFIG/SPLIT`; ValueError naming `field` otherwise."""
    parts = source.removeprefix(HUB_PREFIX).split("/") if is_hub_source(source) else []
    if len(parts) not in (3, 4) or not all(parts):
        raise ValueError(f"{field}: hub sources are written {HUB_GRAMMAR}, got {source!r}")
    return HubText("/".join(parts[:-2]), parts[-2], parts[-1])


def load_hub_text(source: str, field: str, column: str = "text", column_field: str | None = None) -> str:
    """The text of the hub split `source` names: its `column` joined by blank lines. Errors name
    `field` (the source) or `column_field` (the setting that chose the column; default `field`)."""
    hub = parse_hub_source(source, field)
    from datasets import load_dataset  # heavy; only when a hub text is read

    dataset = load_dataset(hub.dataset, hub.config, split=hub.split)
    if column not in dataset.column_names:
        raise ValueError(
            f"{column_field or field}: dataset {hub.dataset} has no column {column!r} (columns: {', '.join(dataset.column_names)})"
        )
    return "\n\n".join(dataset[column])
