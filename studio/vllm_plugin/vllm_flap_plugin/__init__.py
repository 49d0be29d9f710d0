"""vLLM plugin for FLAP-pruned Gemma 4 checkpoints made by Gemma Lite Studio.

A FLAP-pruned checkpoint gives every decoder layer its own FFN width
(`text_config.intermediate_sizes`) and a down_proj bias that compensates for the removed channels.
Stock vLLM builds one width for all layers and its weight loader drops unexpected `.bias` tensors,
so the studio's checkpoints name architectures that only this plugin registers:

    Gemma4FlapForConditionalGeneration   (multimodal checkpoints)
    Gemma4FlapForCausalLM                (text-only, or a multimodal checkpoint served as text)

Checkpoints that keep the stock names (`Gemma4ForConditionalGeneration`, `Gemma4ForCausalLM`) and
set `text_config.flap_pruned: true`, as the reference model card's checkpoints do, are served too:
for such a config the plugin resolves the stock name to its FLAP class. Unpruned configs resolve
exactly as without the plugin.

vLLM finds the plugin through the `vllm.general_plugins` entry point declared in the
`vllm_flap_plugin.egg-info` folder beside this package, so putting the checkpoint folder on
`PYTHONPATH` is enough. `register` runs in every vLLM process; it adds names to vLLM's model
registry (lazily, so nothing heavy is imported until a FLAP model is actually loaded) and leaves
every other model untouched.
"""

from __future__ import annotations

__version__ = "1.1.0"

# Architecture name written into pruned checkpoints -> "module:class" implementing it in vLLM.
FLAP_ARCHITECTURES = {
    "Gemma4FlapForConditionalGeneration": "vllm_flap_plugin.gemma4_flap_mm:Gemma4FlapForConditionalGeneration",
    "Gemma4FlapForCausalLM": "vllm_flap_plugin.gemma4_flap:Gemma4FlapForCausalLM",
}
# Stock architecture name -> the FLAP architecture that serves it when the config is FLAP-pruned.
STOCK_TO_FLAP = {
    "Gemma4ForConditionalGeneration": "Gemma4FlapForConditionalGeneration",
    "Gemma4ForCausalLM": "Gemma4FlapForCausalLM",
}


def is_flap_pruned(hf_config) -> bool:
    """Whether a (multimodal or text) config says its FFNs are FLAP-pruned."""
    text_config = getattr(hf_config, "text_config", None) or hf_config
    return bool(getattr(text_config, "flap_pruned", False))


def route_pruned_stock_architectures(registry, on_route=None) -> bool:
    """Make `registry` resolve stock Gemma 4 names of FLAP-pruned configs to the FLAP classes.

    vLLM maps each architecture name of a config to a registered model through
    `_normalize_arch(architecture, model_config)`, in the API server, the engine and every worker;
    wrapping it there leaves the registry's entries and the logged architecture name as they are.
    `on_route(stock, flap)` is called the first time each stock name is routed. Returns False when
    this vLLM has no such method (the stock names then load unpruned classes, which fail on the
    weight shapes instead of serving a wrong model).
    """
    normalize = getattr(registry, "_normalize_arch", None)
    if normalize is None:
        return False
    if getattr(normalize, "flap_routing", False):
        return True

    routed: set[str] = set()

    def normalize_arch(architecture, *args, **kwargs):
        # Arguments are passed on as they came, so a vLLM that adds some keeps working.
        model_config = args[0] if args else kwargs.get("model_config")
        if architecture in STOCK_TO_FLAP and is_flap_pruned(getattr(model_config, "hf_config", None)):
            if on_route is not None and architecture not in routed:
                routed.add(architecture)
                on_route(architecture, STOCK_TO_FLAP[architecture])
            return STOCK_TO_FLAP[architecture]
        return normalize(architecture, *args, **kwargs)

    normalize_arch.flap_routing = True
    registry._normalize_arch = normalize_arch
    return True


def share_stock_config_hooks() -> None:
    """Give the FLAP names the per-architecture config hooks of their stock names.

    vLLM looks up hooks such as Gemma 4's attention-backend choice (needed for its mixed head
    sizes on GPUs) by architecture name, so a FLAP name would otherwise go without them.
    """
    try:
        from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    except ImportError:
        return
    for stock, flap in STOCK_TO_FLAP.items():
        if stock in MODELS_CONFIG_MAP:
            MODELS_CONFIG_MAP.setdefault(flap, MODELS_CONFIG_MAP[stock])


def register() -> None:
    """Entry point of the `vllm.general_plugins` group: teach vLLM the FLAP checkpoints."""
    from vllm import ModelRegistry
    from vllm.logger import init_logger

    # A child of vLLM's logger, so the lines appear in the server log like vLLM's own.
    logger = init_logger("vllm.flap_plugin")
    supported = ModelRegistry.get_supported_archs()
    added = [name for name in FLAP_ARCHITECTURES if name not in supported]
    for architecture in added:
        ModelRegistry.register_model(architecture, FLAP_ARCHITECTURES[architecture])
    share_stock_config_hooks()
    def log_route(stock: str, flap: str) -> None:
        logger.info("vllm_flap_plugin %s: serving flap_pruned %s with %s", __version__, stock, flap)

    if not route_pruned_stock_architectures(ModelRegistry, log_route):
        logger.warning(
            "vllm_flap_plugin %s: this vLLM has no ModelRegistry._normalize_arch; checkpoints with stock "
            "Gemma 4 architecture names and flap_pruned=true cannot be served (rename them to %s)",
            __version__,
            ", ".join(FLAP_ARCHITECTURES),
        )
    if added:
        logger.info("vllm_flap_plugin %s: registered %s", __version__, ", ".join(added))
