"""GPTQ W4A16 through GPTQModel: settings, the quantize stage, per-layer rules, the runtime import."""
