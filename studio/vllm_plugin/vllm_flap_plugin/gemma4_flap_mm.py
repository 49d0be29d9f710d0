"""The multimodal FLAP architecture, kept apart because vLLM's Gemma 4 multimodal module needs the
image processor stack (torchvision), which a text-only CPU install of vLLM does not have."""

from __future__ import annotations

from vllm.model_executor.models import gemma4_mm as vllm_gemma4_mm

from vllm_flap_plugin.gemma4_flap import check_flap_mlps, flap_mlps, flap_widths, unsupported_vllm

if not hasattr(vllm_gemma4_mm, "Gemma4ForConditionalGeneration"):
    raise unsupported_vllm("vllm.model_executor.models.gemma4_mm has no class Gemma4ForConditionalGeneration")


class Gemma4FlapForConditionalGeneration(vllm_gemma4_mm.Gemma4ForConditionalGeneration):
    """vLLM's Gemma4ForConditionalGeneration with per-layer FFN widths and a down_proj bias.

    The wrapper builds its language model as a stock `Gemma4ForCausalLM` through vLLM's registry;
    the FLAP MLPs are swapped in while that happens, and the towers are left as they are.
    """

    def __init__(self, *, vllm_config, prefix: str = ""):
        widths = flap_widths(vllm_config.model_config.hf_config)
        if widths is None:
            super().__init__(vllm_config=vllm_config, prefix=prefix)
            return
        with flap_mlps(widths):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        language_model = getattr(self, "language_model", None)
        if language_model is None or not hasattr(getattr(language_model, "model", None), "layers"):
            raise unsupported_vllm("Gemma4ForConditionalGeneration has no language_model.model.layers")
        check_flap_mlps(language_model.model.layers, widths)
