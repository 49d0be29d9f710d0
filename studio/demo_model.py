"""A small, offline, deterministic Gemma 4 that keeps E4B's structure.

The demo model is what the out-of-the-box studio and every test run on: no hub access is needed.
It keeps the parts of google/gemma-4-E4B-it that the compression recipe touches or must leave alone:
a vision tower, per-layer embeddings (PLE), sliding and full attention layers with different head
dims, a KV-shared (YOCO) tail, tied embeddings, and FFN widths that are multiples of 128 so that
GPTQ's group size of 128 applies. Weights are random (seeded); the tokenizer is a BPE trained on the
project's own WikiText-2 copy, so calibration text tokenizes into realistic ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.atomic import atomic_directory
from studio.calibration import OFFLINE_CALIBRATION_TEXT
from studio.checkpoint import text_config_of

DEFAULT_TOKENIZER_CORPUS = OFFLINE_CALIBRATION_TEXT

# Token strings the Gemma 4 processor and chat template look for. Ids follow the order listed.
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "eos_token": "<eos>",
    "bos_token": "<bos>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]
MULTIMODAL_TOKENS = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
}

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "<start_of_turn>{{ role + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}{{ '<|image|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "<end_of_turn>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>{{ 'model\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class DemoModelShape:
    """Sizes of the demo model. The defaults forward a 256-token batch in well under a second."""

    num_layers: int = 8
    hidden_size: int = 128
    intermediate_size: int = 512
    num_attention_heads: int = 4
    num_key_value_heads: int = 1
    head_dim: int = 32
    global_head_dim: int = 64
    hidden_size_per_layer_input: int = 16
    vocab_size: int = 2048
    sliding_window: int = 64
    full_attention_every: int = 4
    # E4B shares KV in 18 of 42 layers; the demo keeps the same share, rounded.
    kv_shared_fraction: float = 18 / 42
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_intermediate_size: int = 128
    image_soft_tokens: int = 70  # the smallest budget Gemma 4's image processor accepts

    def layer_types(self) -> list[str]:
        # Short stacks use a denser pattern so a full-attention layer precedes the KV-shared tail.
        every = min(self.full_attention_every, max(2, self.num_layers // 2))
        types = [
            "full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(self.num_layers)
        ]
        types[-1] = "full_attention"  # Gemma 4 requires the last layer to be global.
        return types

    def num_kv_shared_layers(self) -> int:
        return scaled_kv_shared_layers(self.layer_types(), self.kv_shared_fraction)


def demo_config(shape: DemoModelShape):
    """The `Gemma4Config` of the demo model."""
    if shape.num_layers < 2:
        raise ValueError(f"layers: the demo model needs at least 2 layers, got {shape.num_layers}")
    if shape.intermediate_size % 128:
        raise ValueError(f"intermediate_size: must be a multiple of 128, got {shape.intermediate_size}")
    text_config = {
        "model_type": "gemma4_text",
        "vocab_size": shape.vocab_size,
        "vocab_size_per_layer_input": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "global_head_dim": shape.global_head_dim,
        "hidden_size_per_layer_input": shape.hidden_size_per_layer_input,
        "num_kv_shared_layers": shape.num_kv_shared_layers(),
        "layer_types": shape.layer_types(),
        "sliding_window": shape.sliding_window,
        "max_position_embeddings": 4096,
        "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True,
        "hidden_activation": "gelu_pytorch_tanh",
    }
    return _multimodal_config(text_config, shape)


def _multimodal_config(text_config: dict, shape: DemoModelShape):
    """A `Gemma4Config` around `text_config` with the demo's small vision tower and token ids."""
    from transformers import Gemma4Config

    token_ids = _token_ids()
    text_config = {
        **text_config,
        "pad_token_id": token_ids["<pad>"],
        "eos_token_id": [token_ids["<eos>"], token_ids["<end_of_turn>"]],
        "bos_token_id": token_ids["<bos>"],
    }
    vision_config = {
        "model_type": "gemma4_vision",
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_hidden_layers": shape.vision_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": shape.vision_hidden_size // 2,
        "patch_size": 16,
        "pooling_kernel_size": 3,
        "position_embedding_size": 1024,
    }
    return Gemma4Config(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=None,
        image_token_id=token_ids[MULTIMODAL_TOKENS["image_token"]],
        boi_token_id=token_ids[MULTIMODAL_TOKENS["boi_token"]],
        eoi_token_id=token_ids[MULTIMODAL_TOKENS["eoi_token"]],
        audio_token_id=token_ids[MULTIMODAL_TOKENS["audio_token"]],
        boa_token_id=token_ids[MULTIMODAL_TOKENS["boa_token"]],
        eoa_token_id=token_ids[MULTIMODAL_TOKENS["eoa_token"]],
        vision_soft_tokens_per_image=shape.image_soft_tokens,
        tie_word_embeddings=True,
        architectures=["Gemma4ForConditionalGeneration"],
    )


def scaled_layer_types(layer_types: list[str], layers: int) -> list[str]:
    """The first `layers` entries of a sliding/full pattern, the last made global (Gemma 4's rule)."""
    if not 2 <= layers <= len(layer_types):
        raise ValueError(f"layers: must be between 2 and {len(layer_types)}, got {layers}")
    types = list(layer_types[:layers])
    types[-1] = "full_attention"
    return types


def scaled_kv_shared_layers(layer_types: list[str], shared_fraction: float) -> int:
    """A KV-shared tail of `shared_fraction` of the layers, shortened until the layers before it
    include a full-attention layer (shared layers reuse the last sliding and full KV before them)."""
    shared = round(len(layer_types) * shared_fraction)
    while shared > 0 and "full_attention" not in layer_types[: len(layer_types) - shared]:
        shared -= 1
    return shared


def config_from_text_config(path: str | Path, layers: int | None = None, shape: DemoModelShape = DemoModelShape()):
    """A `Gemma4Config` for a published text config (e.g. E4B's), with the demo's vision tower.

    With `layers`, the decoder keeps the config's shapes but only its first `layers` layers (the
    same sliding/full pattern) and a KV-shared tail of the same share, scaled to fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    text = {k: v for k, v in text_config_of(data).items() if not k.startswith("_")}
    text["model_type"] = "gemma4_text"
    if layers is not None and layers != text["num_hidden_layers"]:
        types = scaled_layer_types(text["layer_types"], layers)
        fraction = text.get("num_kv_shared_layers", 0) / text["num_hidden_layers"]
        text.update(num_hidden_layers=layers, layer_types=types, num_kv_shared_layers=scaled_kv_shared_layers(types, fraction))
    return _multimodal_config(text, shape)


def _special_token_list() -> list[str]:
    return list(SPECIAL_TOKENS.values()) + TURN_TOKENS + list(MULTIMODAL_TOKENS.values()) + ["<|video|>"]


def _token_ids() -> dict[str, int]:
    return {token: i for i, token in enumerate(_special_token_list())}


def build_tokenizer(corpus: Path, vocab_size: int):
    """Train a byte-level-free BPE on `corpus` (deterministic) and wrap it for transformers.

    Like Gemma's tokenizer it puts `<bos>` before every encoded text (special tokens on), so BOS
    handling in calibration and evaluation is exercised by the demo model too.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not corpus.is_file():
        raise FileNotFoundError(f"tokenizer corpus: no such file {corpus}")
    bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_special_token_list(), show_progress=False)
    bpe.train([str(corpus)], trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, _token_ids()[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        **SPECIAL_TOKENS,
        extra_special_tokens=dict(MULTIMODAL_TOKENS),
        chat_template=CHAT_TEMPLATE,
    )


def build_processor(tokenizer, shape: DemoModelShape):
    """A `Gemma4Processor` whose image patch budget gives `shape.image_soft_tokens` per image."""
    from transformers import (
        Gemma4AudioFeatureExtractor,
        Gemma4ImageProcessorPil,
        Gemma4Processor,
        Gemma4VideoProcessor,
    )

    pooling = 3
    image_processor = Gemma4ImageProcessorPil(
        patch_size=16, max_soft_tokens=shape.image_soft_tokens, pooling_kernel_size=pooling
    )
    return Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Gemma4VideoProcessor(),
        chat_template=CHAT_TEMPLATE,
        image_seq_length=shape.image_soft_tokens,
    )


def build_demo_model(
    out_dir: str | Path,
    shape: DemoModelShape = DemoModelShape(),
    seed: int = 0,
    corpus: Path = DEFAULT_TOKENIZER_CORPUS,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the demo model (weights, config, tokenizer, processor, chat template) to `out_dir`.

    The model is built in memory; the same `shape` and `seed` give byte-identical weights (drawn in
    float32, then cast to `dtype`).
    """
    from transformers import Gemma4ForConditionalGeneration

    config = demo_config(shape)
    tokenizer = build_tokenizer(Path(corpus), shape.vocab_size)
    processor = build_processor(tokenizer, shape)
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).eval()
    _roughen_norms(model, seed)
    model.to(dtype)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "demo_model.json").write_text(json.dumps({"seed": seed, **shape.__dict__}, indent=2) + "\n")
    return Path(out_dir)


def _roughen_norms(model, seed: int) -> None:
    """Give RMSNorm scales and layer scalars random values.

    Freshly initialised norms are all ones (or zeros), which makes every channel look alike and
    leaves the FLAP scores nearly flat; varied scales give the statistics realistic spread.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.5 * torch.randn(param.shape, generator=generator))


# -- the streamed writer: models larger than memory ----------------------------------------------

_CHUNK_ELEMENTS = 32 << 20  # values generated at once (128 MB in float32)


def write_streamed_model(
    out_dir: str | Path,
    config,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    shape: DemoModelShape = DemoModelShape(),
    corpus: Path = DEFAULT_TOKENIZER_CORPUS,
    max_shard_bytes: int = 2 << 30,
) -> Path:
    """Write a random-weight checkpoint of `config` to `out_dir`, one tensor (or chunk) at a time.

    Peak memory is a chunk of values, not the model: the model exists only on the meta device, and
    each tensor is generated and written before the next. Every tensor draws from its own
    generator, seeded by `seed` and its name, so the same `config`, `seed` and `dtype` give
    byte-identical files. The distributions are transformers' initialisation (normal with the
    config's `initializer_range` for linear and embedding weights, the embedding's padding row
    zero, its own rules for the rest), with the norms roughened as in `build_demo_model`.
    `shape` gives the vision tower and tokenizer sizes.
    """
    from transformers import GenerationConfig

    from studio.streaming import ShardedWriter, checkpoint_specs, meta_model

    config.dtype = dtype
    model = meta_model(config)
    specs = checkpoint_specs(model, dtype)
    tokenizer = build_tokenizer(Path(corpus), config.get_text_config().vocab_size)
    processor = build_processor(tokenizer, shape)
    owners = _tensor_owners(model)
    with atomic_directory(out_dir) as tmp:
        writer = ShardedWriter(tmp, specs, max_shard_bytes)
        for spec in specs:
            module, attribute = owners[spec.name]
            writer.write(spec.name, _random_tensor_chunks(model, module, attribute, spec, seed))
        writer.close()
        config.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        layers = config.get_text_config().num_hidden_layers
        record = {"seed": seed, "dtype": str(dtype).removeprefix("torch."), "layers": layers, "writer": "streamed"}
        (tmp / "demo_model.json").write_text(json.dumps(record, indent=2) + "\n")
    return Path(out_dir)


def _tensor_owners(model) -> dict[str, tuple[torch.nn.Module, str]]:
    owners = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for attribute, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            owners.setdefault(prefix + attribute, (module, attribute))
    return owners


def _tensor_generator(seed: int, name: str) -> torch.Generator:
    # The CPU generator (Mersenne Twister) keeps 32 bits of its seed: hash seed and name into them.
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=4).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def _init_std(model) -> float:
    """The std transformers' `_init_weights` uses for linear and embedding weights."""
    return getattr(model.config, "initializer_range", None) or getattr(
        model.config.get_text_config(), "initializer_range", 0.02
    )


def _random_tensor_chunks(model, module, attribute: str, spec, seed: int):
    """The bytes of one freshly initialised tensor, a chunk of rows at a time."""
    from torch import nn

    from studio.streaming import tensor_bytes

    generator = _tensor_generator(seed, spec.name)
    if spec.name.endswith("norm.weight"):  # as `_roughen_norms`
        noise = torch.randn(spec.shape, generator=generator)
        yield tensor_bytes((1.0 + 0.5 * noise).to(spec.dtype))
        return
    if attribute == "weight" and isinstance(module, (nn.Linear, nn.Embedding)):
        rows, columns = spec.shape
        padding = module.padding_idx if isinstance(module, nn.Embedding) else None
        step = max(1, _CHUNK_ELEMENTS // columns)
        for start in range(0, rows, step):
            chunk = torch.empty(min(step, rows - start), columns).normal_(0.0, _init_std(model), generator=generator)
            if padding is not None and start <= padding < start + chunk.shape[0]:
                chunk[padding - start] = 0
            yield tensor_bytes(chunk.to(spec.dtype))
        return
    yield tensor_bytes(_small_initialised_tensor(model, module, attribute, generator).to(spec.dtype))


def _small_initialised_tensor(model, module, attribute: str, generator: torch.Generator) -> torch.Tensor:
    """One of `module`'s own tensors as transformers' `_init_weights` sets it (zeros where it
    sets nothing), drawing any randomness from `generator`."""
    module.to_empty(device="cpu", recurse=False)
    try:
        with torch.no_grad():
            for value in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                value.zero_()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            model._init_weights(module)
        return getattr(module, attribute).detach().clone()
    finally:
        module.to_empty(device="meta", recurse=False)
