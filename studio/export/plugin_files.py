"""The vLLM side of an export folder: the FLAP plugin package and `vllm_config.yaml`.

Every export carries a copy of `studio/vllm_plugin/vllm_flap_plugin/` and a
`vllm_flap_plugin.egg-info/` folder whose `entry_points.txt` declares the plugin in vLLM's
`vllm.general_plugins` group. Python's `importlib.metadata` finds `*.egg-info` folders on
`sys.path`, so `export PYTHONPATH="$MODEL_DIR:$PYTHONPATH"` makes vLLM load the plugin with no
`pip install`:

    export PYTHONPATH="$MODEL_DIR:$PYTHONPATH"
    vllm serve "$MODEL_DIR" --config "$MODEL_DIR/vllm_config.yaml"
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Mapping
from pathlib import Path

import yaml

PLUGIN_PACKAGE = "vllm_flap_plugin"
PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "vllm_plugin" / PLUGIN_PACKAGE
DISTRIBUTION_NAME = "vllm-flap-plugin"
ENTRY_POINT_GROUP = "vllm.general_plugins"
ENTRY_POINT_NAME = "vllm_flap_plugin"
CONFIG_FILE = "vllm_config.yaml"


def plugin_module():
    """The plugin's top-level module, loaded from its source without importing vLLM."""
    spec = importlib.util.spec_from_file_location(f"_studio_{PLUGIN_PACKAGE}", PLUGIN_SOURCE / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plugin_version() -> str:
    return plugin_module().__version__


def flap_architectures() -> list[str]:
    """The architecture names the plugin registers in vLLM."""
    return list(plugin_module().FLAP_ARCHITECTURES)


def stock_architectures() -> list[str]:
    """The stock Gemma 4 names the plugin also serves when a config sets `flap_pruned: true`."""
    return list(plugin_module().STOCK_TO_FLAP)


def egg_info_files(version: str) -> dict[str, str]:
    """The metadata files that make the copied package an installed distribution on `sys.path`."""
    return {
        "PKG-INFO": (
            "Metadata-Version: 2.1\n"
            f"Name: {DISTRIBUTION_NAME}\n"
            f"Version: {version}\n"
            "Summary: vLLM support for FLAP-pruned Gemma 4 checkpoints (per-layer FFN widths, "
            "down_proj bias)\n"
        ),
        "entry_points.txt": f"[{ENTRY_POINT_GROUP}]\n{ENTRY_POINT_NAME} = {PLUGIN_PACKAGE}:register\n",
        "top_level.txt": f"{PLUGIN_PACKAGE}\n",
    }


def write_plugin(export_dir: str | Path) -> list[Path]:
    """Copy the plugin package and write its egg-info into `export_dir`; returns the paths written."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ValueError(f"export_dir: not a folder: {export_dir}")
    package_dir = export_dir / PLUGIN_PACKAGE
    if package_dir.exists():
        shutil.rmtree(package_dir)
    shutil.copytree(PLUGIN_SOURCE, package_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    egg_info = export_dir / f"{PLUGIN_PACKAGE}.egg-info"
    egg_info.mkdir(exist_ok=True)
    for name, text in egg_info_files(plugin_version()).items():
        (egg_info / name).write_text(text)
    return [package_dir, egg_info]


def vllm_config_yaml(
    *,
    served_model_name: str | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    extra: Mapping[str, object] | None = None,
) -> str:
    """The text of `vllm_config.yaml`: `vllm serve` options, one per key (`--config FILE`).

    Keys are vLLM's command-line option names without the dashes; options given on the command
    line override the file's. `extra` adds or replaces options (for example
    `{"gpu-memory-utilization": 0.9}` or `{"hf-overrides": {"architectures": [...]}}`).
    """
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len <= 0):
        raise ValueError(f"max_model_len: must be a positive integer, got {max_model_len!r}")
    options: dict[str, object] = {"dtype": dtype}
    if served_model_name:
        options["served-model-name"] = served_model_name
    if max_model_len is not None:
        options["max-model-len"] = max_model_len
    options.update(extra or {})
    header = (
        "# vLLM settings for this export. The model folder must be on PYTHONPATH so that vLLM\n"
        "# loads vllm_flap_plugin (needed for FLAP-pruned checkpoints):\n"
        '#   export PYTHONPATH="$MODEL_DIR:$PYTHONPATH"\n'
        '#   vllm serve "$MODEL_DIR" --config "$MODEL_DIR/vllm_config.yaml"\n'
    )
    return header + yaml.safe_dump(options, sort_keys=False)
