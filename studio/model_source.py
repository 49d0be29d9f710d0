"""What a model argument names: a local Gemma 4 checkpoint folder or a Hugging Face model id.

Checked before anything is loaded, so that a wrong argument is one line naming the field and the
file (a missing folder, a folder without config.json, another architecture's config, a shard that
is truncated or whose header does not match its bytes, a hub id that cannot be reached offline)
instead of an error from deep inside transformers or safetensors.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from studio.safety import confine, expand_path

# config.json `model_type` of the models the studio works on (the checkpoint, and its text config).
GEMMA4_MODEL_TYPES = ("gemma4", "gemma4_text")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The model choice naming the demo model (a small random-weight Gemma 4, `python -m studio demo-model`).
DEMO_MODEL = "demo"


# How a typed folder path starts (anything else may be a hub id or a name relative to the base).
PATH_PREFIXES = ("/", "./", "../", "~")


def resolve_model(
    value,
    field: str = "model",
    *,
    named: Mapping[str, object] | None = None,
    base: str | Path | None = None,
    roots: Sequence[str | Path] | None = None,
    hub_ids: bool = True,
):
    """What a model choice names, as the UI tabs and job specs take it (the one place that decides):

    - a key of `named` (a menu's choices, e.g. the demo model): its value, as given;
    - a folder holding config.json: its resolved `Path`. Relative paths start at `base` (default:
      the working folder); with `roots` (a Space: `studio.safety.readable_roots`) they start at the
      first root and must stay inside one (`studio.safety.confine`);
    - 'owner/name' where no file or folder is (with `hub_ids`): the hub id, as typed.

    ValueError (or the confinement's) naming `field` otherwise. The folder is not checked further
    here; `check_checkpoint_folder` reads its config and shard headers.
    """
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise ValueError(f"{field}: must be a checkpoint folder or a hub id like 'google/gemma-4-E4B-it', got {value!r}")
    if named and text in named:
        return named[text]
    start = Path(roots[0]) if roots else Path(base or Path.cwd())
    hub_shaped = hub_ids and bool(HUB_ID.match(text)) and ".." not in text.split("/")
    # 'owner/name' that is nothing on disk names a hub model; a link there that leads out of the
    # roots is refused like any path.
    if hub_shaped and not os.path.lexists(start.expanduser() / text):
        return text
    folder = confine(text, field, roots) if roots else expand_path(text, field, base)
    if (folder / "config.json").is_file():
        return folder
    if hub_ids and not folder.exists() and not text.startswith(PATH_PREFIXES):
        raise ValueError(f"{field}: {text!r} is neither an existing folder nor a hub id like 'owner/name'")
    raise ValueError(f"{field}: {folder} is not a checkpoint folder (no config.json)")


def check_model_source(value: str, field: str = "model") -> str:
    """`value` as loaders take it: a checkpoint folder (resolved) or a hub id (as given)."""
    text = str(value).strip()
    if not text:
        raise ValueError(f"{field}: a checkpoint folder or a hub id like 'google/gemma-4-E4B-it' is required")
    path = Path(text).expanduser()
    if path.exists() or not HUB_ID.match(text) or ".." in text.split("/"):
        return str(check_checkpoint_folder(path, field))
    check_hub_model(text, field)
    return text


def check_checkpoint_folder(folder: Path, field: str = "model") -> Path:
    """A folder holding a Gemma 4 config.json and readable safetensors shards."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{field}: no config.json in {folder}: no such folder")
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"{field}: no config.json in {folder}")
    data = check_gemma4_config(config, field)
    shapes = {}
    for shard in sorted(folder.glob("*.safetensors")):
        shapes.update({name: (shard, shape) for name, shape in check_safetensors(shard, field).items()})
    check_pruned_widths(data, shapes, config, field)
    return folder.resolve()


def check_gemma4_config(config: Path, field: str = "model") -> dict:
    """config.json's data, if it describes a Gemma 4 model."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{field}: {config} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{field}: {config} must hold a JSON object")
    model_type = data.get("model_type")
    if model_type is not None and model_type not in GEMMA4_MODEL_TYPES:
        architectures = ", ".join(data.get("architectures") or []) or "no architectures listed"
        raise ValueError(
            f"{field}: {config} describes a {model_type!r} model ({architectures}); the studio works on "
            f"Gemma 4 (model_type {' or '.join(map(repr, GEMMA4_MODEL_TYPES))})"
        )
    return data


def check_safetensors(shard: Path, field: str = "model") -> dict[str, list[int]]:
    """The shard's tensor shapes, once its header parses and its tensors exactly cover the file
    (safetensors checks both when it opens a file; no tensor data is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(shard), framework="pt") as opened:
            return {name: list(opened.get_slice(name).get_shape()) for name in opened.keys()}
    except (SafetensorError, OSError) as err:
        problem = str(err).removeprefix("Error while deserializing header: ")
        raise ValueError(f"{field}: {shard} is not a readable safetensors file ({problem})") from None


# A decoder layer's unquantized FFN weight, and the axis that holds its width.
FFN_WEIGHT = re.compile(r"layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight$")
WIDTH_AXIS = {"gate_proj": 0, "up_proj": 0, "down_proj": 1}


def check_pruned_widths(data: dict, shapes: dict[str, tuple[Path, list[int]]], config: Path, field: str = "model") -> None:
    """A pruned checkpoint's `intermediate_sizes` match the FFN weights its shards hold."""
    text = data.get("text_config", data)
    widths = text.get("intermediate_sizes")
    if not text.get("flap_pruned") or not isinstance(widths, list):
        return
    for name, (shard, shape) in sorted(shapes.items()):
        match = FFN_WEIGHT.search(name)
        if not match or len(shape) != 2:
            continue
        layer, projection = int(match.group(1)), match.group(2)
        stored = shape[WIDTH_AXIS[projection]]
        if layer >= len(widths) or widths[layer] != stored:
            said = widths[layer] if layer < len(widths) else "nothing"
            raise ValueError(
                f"{field}: {config.name} text_config.intermediate_sizes gives layer {layer} width {said}, "
                f"but {shard.name} holds {name} of shape {shape} (width {stored})"
            )


def check_hub_model(repo_id: str, field: str = "model") -> None:
    """Offline (HF_HUB_OFFLINE), a hub model must already be in the local hub cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        raise ValueError(
            f"{field}: {repo_id!r} is not in the local hub cache and HF_HUB_OFFLINE is set "
            "(download it once online, or give a checkpoint folder)"
        )
