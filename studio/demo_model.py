"""A small, offline, deterministic Gemma 4 that keeps E4B's structure.

The demo model is what the out-of-the-box studio and every test run on: no hub access is needed.
It keeps the parts of google/gemma-4-E4B-it that the compression recipe touches or must leave alone:
a vision tower, per-layer embeddings (PLE), sliding and full attention layers with different head
dims, a KV-shared (YOCO) tail, tied embeddings, and FFN widths that are multiples of 128 so that
GPTQ's group size of 128 applies. Weights are random (seeded); the tokenizer is a BPE trained on the
project's own WikiText-2 copy, so calibration text tokenizes into realistic ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.atomic import atomic_directory
from studio.calibration import OFFLINE_CALIBRATION_TEXT

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
        shared = round(self.num_layers * self.kv_shared_fraction)
        # The layers before the shared tail must produce both KV kinds (sliding and full).
        while shared > 0 and "full_attention" not in self.layer_types()[: self.num_layers - shared]:
            shared -= 1
        return shared


def demo_config(shape: DemoModelShape):
    """The `Gemma4Config` of the demo model."""
    from transformers import Gemma4Config

    if shape.num_layers < 2:
        raise ValueError(f"layers: the demo model needs at least 2 layers, got {shape.num_layers}")
    if shape.intermediate_size % 128:
        raise ValueError(f"intermediate_size: must be a multiple of 128, got {shape.intermediate_size}")
    token_ids = _token_ids()
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
) -> Path:
    """Write the demo model (weights, config, tokenizer, processor, chat template) to `out_dir`.

    The same `shape` and `seed` give byte-identical weights.
    """
    from transformers import Gemma4ForConditionalGeneration

    config = demo_config(shape)
    tokenizer = build_tokenizer(Path(corpus), shape.vocab_size)
    processor = build_processor(tokenizer, shape)
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).eval()
    _roughen_norms(model, seed)
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
