"""vLLM plugin for FLAP-pruned Gemma 4 checkpoints made by Gemma Lite Studio.

A FLAP-pruned checkpoint gives every decoder layer its own FFN width
(`text_config.intermediate_sizes`) and a down_proj bias that compensates for the removed channels.
Stock vLLM builds one width for all layers and its weight loader drops unexpected `.bias` tensors,
so such checkpoints name architectures that only this plugin registers:

    Gemma4FlapForConditionalGeneration   (multimodal checkpoints)
    Gemma4FlapForCausalLM                (text-only, or a multimodal checkpoint served as text)

vLLM finds the plugin through the `vllm.general_plugins` entry point declared in the
`vllm_flap_plugin.egg-info` folder beside this package, so putting the checkpoint folder on
`PYTHONPATH` is enough. `register` runs in every vLLM process; it only adds names to vLLM's model
registry (lazily, so nothing heavy is imported until a FLAP architecture is actually loaded) and
leaves every other model untouched.
"""

from __future__ import annotations

__version__ = "1.0.0"

# Architecture name written into pruned checkpoints -> "module:class" implementing it in vLLM.
FLAP_ARCHITECTURES = {
    "Gemma4FlapForConditionalGeneration": "vllm_flap_plugin.gemma4_flap_mm:Gemma4FlapForConditionalGeneration",
    "Gemma4FlapForCausalLM": "vllm_flap_plugin.gemma4_flap:Gemma4FlapForCausalLM",
}


def register() -> None:
    """Entry point of the `vllm.general_plugins` group: add the FLAP architectures to vLLM."""
    from vllm import ModelRegistry
    from vllm.logger import init_logger

    supported = ModelRegistry.get_supported_archs()
    added = [name for name in FLAP_ARCHITECTURES if name not in supported]
    for architecture in added:
        ModelRegistry.register_model(architecture, FLAP_ARCHITECTURES[architecture])
    if added:
        # A child of vLLM's logger, so the line appears in the server log like vLLM's own.
        init_logger("vllm.flap_plugin").info("vllm_flap_plugin %s: registered %s", __version__, ", ".join(added))
