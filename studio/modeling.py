"""Loading Gemma 4 models, FLAP-pruned ones included, through transformers.

Transformers' `Gemma4TextMLP` reads one `intermediate_size` for every layer and has no down_proj
bias. A FLAP-pruned checkpoint has per-layer widths (`text_config.intermediate_sizes`) and a
compensating bias, so it is loaded through the two subclasses below, which rebuild each layer's MLP
at its own width before the weights are read. Their architecture names are written into pruned
checkpoints: a stock loader then fails on the shapes instead of running with the bias dropped.

Every model construction in the studio (these loaders, the INT4 loader, meta-device builds) runs
inside `model_construction()`, one process-wide lock, and every load ends with
`probe_loaded_model`: one short forward that must give finite logits with tied weights sharing
storage.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, Gemma4ForCausalLM, Gemma4ForConditionalGeneration
from transformers.activations import ACT2FN

from studio.checkpoint import CONFIG_FILE, is_flap_pruned, text_config_of

# transformers' loading switches (`no_init_weights`, `no_tie_weights`, the patched `torch.nn.init`
# functions) and GPTQModel's `suspend_hf_weight_init` patch process-wide names. A model built in one
# thread while another thread loads can skip initialisation or weight tying; two overlapping switches
# can even restore each other's no-op for good. So every model construction in the studio holds this
# lock (see `model_construction`). Reentrant: a loader may call another loader.
_CONSTRUCTION_LOCK = threading.RLock()
# How often a stoppable wait for the lock looks at its stop condition.
_STOP_POLL_S = 0.05
# Set by `stoppable_construction`: the condition that ends waits for the lock in this context.
_construction_stop: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "construction_stop", default=None
)


class ConstructionStopped(Exception):
    """A wait for the model-construction lock ended because its stop condition came true."""


class BrokenModelError(RuntimeError):
    """A loaded model failed its probe (non-finite logits or untied weights); names the checkpoint."""


@contextlib.contextmanager
def model_construction() -> Iterator[None]:
    """Hold the process-wide model-construction lock while a model is built or loaded.

    Hold it for construction only (building modules, reading weights), never across a forward pass
    or generation. Inside `stoppable_construction(should_stop)` the wait gives up with
    `ConstructionStopped` once `should_stop()` is true, so a stopped chat reply does not wait for
    another pane's whole load.
    """
    should_stop = _construction_stop.get()
    if should_stop is None:
        _CONSTRUCTION_LOCK.acquire()
    else:
        while not _CONSTRUCTION_LOCK.acquire(timeout=_STOP_POLL_S):
            if should_stop():
                raise ConstructionStopped("stopped while waiting for another model to finish loading")
    try:
        yield
    finally:
        _CONSTRUCTION_LOCK.release()


@contextlib.contextmanager
def stoppable_construction(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Within this block (this thread or task), waits in `model_construction` end when `should_stop()`."""
    token = _construction_stop.set(should_stop)
    try:
        yield
    finally:
        _construction_stop.reset(token)


FLAP_ARCHITECTURES = {
    "Gemma4FlapForConditionalGeneration": "Gemma4ForConditionalGeneration",
    "Gemma4FlapForCausalLM": "Gemma4ForCausalLM",
}


def original_widths(text_config) -> list[int]:
    """Each decoder layer's FFN width in the unpruned model.

    Gemma 4 doubles the width of KV-shared layers when `use_double_wide_mlp` is set.
    """
    modes = text_config.kv_sharing_modes
    double = bool(getattr(text_config, "use_double_wide_mlp", False))
    base = int(text_config.intermediate_size)
    return [base * (2 if double and mode == "reuse" else 1) for mode in modes]


def layer_widths(text_config) -> list[int]:
    """Each decoder layer's FFN width as the checkpoint stores it (pruned or not)."""
    if getattr(text_config, "flap_pruned", False):
        widths = list(text_config.intermediate_sizes)
        if len(widths) != text_config.num_hidden_layers:
            raise ValueError(
                f"text_config.intermediate_sizes: has {len(widths)} entries, "
                f"expected one per layer ({text_config.num_hidden_layers})"
            )
        return [int(w) for w in widths]
    return original_widths(text_config)


class FlapGemma4MLP(nn.Module):
    """Gemma 4's gated FFN at a given width, with the FLAP down_proj bias."""

    def __init__(self, hidden_size: int, width: int, activation: str):
        super().__init__()
        self.hidden_size = hidden_size
        self.intermediate_size = width
        self.gate_proj = nn.Linear(hidden_size, width, bias=False)
        self.up_proj = nn.Linear(hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, hidden_size, bias=True)
        self.act_fn = ACT2FN[activation]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def decoder_layers(model) -> nn.ModuleList:
    """The decoder layers of a Gemma 4 model, multimodal or text-only."""
    inner = model.model
    inner = getattr(inner, "language_model", inner)
    return inner.layers


def install_flap_mlps(model, text_config) -> None:
    """Replace every decoder layer's MLP by a `FlapGemma4MLP` at the configured width."""
    widths = layer_widths(text_config)
    for layer, width in zip(decoder_layers(model), widths):
        layer.mlp = FlapGemma4MLP(text_config.hidden_size, width, text_config.hidden_activation)


class Gemma4FlapForConditionalGeneration(Gemma4ForConditionalGeneration):
    """Gemma4ForConditionalGeneration with per-layer FFN widths and a down_proj bias."""

    def __init__(self, config):
        super().__init__(config)
        install_flap_mlps(self, config.text_config)


class Gemma4FlapForCausalLM(Gemma4ForCausalLM):
    """Gemma4ForCausalLM with per-layer FFN widths and a down_proj bias."""

    def __init__(self, config):
        super().__init__(config)
        install_flap_mlps(self, config)


_FLAP_CLASSES = {
    "Gemma4FlapForConditionalGeneration": Gemma4FlapForConditionalGeneration,
    "Gemma4FlapForCausalLM": Gemma4FlapForCausalLM,
}
_STOCK_CLASSES = {
    "Gemma4ForConditionalGeneration": Gemma4ForConditionalGeneration,
    "Gemma4ForCausalLM": Gemma4ForCausalLM,
}


def model_class_for(config):
    """The class that loads `config`: the FLAP subclass when the checkpoint is pruned."""
    architecture = (getattr(config, "architectures", None) or ["Gemma4ForConditionalGeneration"])[0]
    stock_name = FLAP_ARCHITECTURES.get(architecture, architecture)
    if stock_name not in _STOCK_CLASSES:
        raise ValueError(f"architectures: {architecture!r} is not a Gemma 4 model this studio can load")
    if is_flap_pruned(config):
        return _FLAP_CLASSES[f"Gemma4Flap{stock_name.removeprefix('Gemma4')}"]
    return _STOCK_CLASSES[stock_name]


def load_model(path: str | Path, dtype: torch.dtype | str = torch.float32, device: str | None = None):
    """Load a Gemma 4 checkpoint (stock or FLAP-pruned) in eval mode, checked by `probe_loaded_model`."""
    config = AutoConfig.from_pretrained(path)
    cls = model_class_for(config)
    with model_construction():
        model = cls.from_pretrained(path, config=config, dtype=dtype)
    if device:
        model.to(device)
    model.eval()
    probe_loaded_model(model, path)
    return model


# A short prompt for the load probe: ids past the special tokens of Gemma tokenizers and the demo's.
_PROBE_IDS = (2, 100, 101, 102, 103, 104, 105, 106)


def probe_loaded_model(model, checkpoint: str | Path) -> None:
    """Check a freshly loaded model with one short forward: tied weights share storage, logits are
    finite. Raises `BrokenModelError` naming `checkpoint` otherwise.

    Catches what a load disturbed by another thread leaves behind (an untied, uninitialised lm_head)
    and checkpoints holding NaN or inf, before any reply is generated from them.
    """
    for target, source in model.get_expanded_tied_weights_keys(all_submodels=True).items():
        try:
            tied, origin = model.get_parameter(target), model.get_parameter(source)
        except AttributeError:  # e.g. a quantized head holds packed buffers, not the tied weight
            continue
        if tied.data_ptr() != origin.data_ptr():
            raise BrokenModelError(
                f"{checkpoint}: {target} should share its storage with {source} (tied weights) but does not"
            )
    vocab_size = int(model.config.get_text_config().vocab_size)
    ids = torch.tensor([[i % vocab_size for i in _PROBE_IDS]], device=model.get_input_embeddings().weight.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).sum())
        raise BrokenModelError(f"{checkpoint}: the loaded model gives {bad} non-finite logits on a probe prompt")


def mark_pruned(model, widths: list[int]) -> None:
    """Record per-layer widths in `model.config` the way pruned checkpoints store them.

    The model's class becomes the matching FLAP subclass (which differs only in how it is built),
    so that `save_pretrained` writes the FLAP architecture name into config.json.
    """
    flap_class = mark_config_pruned(model.config, widths)
    if not isinstance(model, flap_class):
        model.__class__ = flap_class


def mark_config_pruned(config, widths: list[int]):
    """Record per-layer widths and the FLAP architecture in `config`; return the FLAP class."""
    text_config = text_config_of(config)
    text_config.intermediate_sizes = [int(w) for w in widths]
    text_config.flap_pruned = True
    flap_class = model_class_for(config)
    config.architectures = [flap_class.__name__]
    return flap_class


def load_text_config(path: str | Path):
    """The decoder config from a checkpoint folder, a config.json, or a bare text-config JSON.

    Works without weights, so presets and size estimates can be checked against published configs.
    """
    from transformers import Gemma4TextConfig

    from studio.model_source import check_gemma4_config

    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file {path}")
    data = check_gemma4_config(path, field="config")  # another architecture's config: refused, named
    text = data.get("text_config", data)
    text = {k: v for k, v in text.items() if not k.startswith("_")}
    text.pop("model_type", None)
    return Gemma4TextConfig(**text)
