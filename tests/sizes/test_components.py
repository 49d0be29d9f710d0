"""The one component taxonomy: which component a tensor name belongs to."""

from __future__ import annotations

import pytest

from studio.sizes import COMPONENT_LABELS, COMPONENTS, component_of


@pytest.mark.parametrize(
    ("name", "component"),
    [
        ("model.language_model.embed_tokens.weight", "embeddings"),
        ("model.embed_tokens_per_layer.weight", "ple_embeddings"),
        ("model.language_model.layers.3.self_attn.q_proj.weight", "attention"),
        ("model.language_model.layers.3.self_attn.o_proj.qweight", "attention"),
        ("model.language_model.layers.3.self_attn.q_norm.weight", "norms"),
        ("model.layers.0.mlp.down_proj.bias", "ffn"),
        ("model.layers.0.mlp.gate_proj.g_idx", "ffn"),
        ("model.language_model.layers.0.per_layer_input_gate.weight", "ple_projections"),
        ("model.language_model.per_layer_model_projection.weight", "ple_projections"),
        ("model.language_model.per_layer_projection_norm.weight", "norms"),
        ("model.language_model.layers.0.layer_scalar", "norms"),
        ("model.vision_tower.encoder.layers.0.mlp.gate_proj.linear.weight", "vision_tower"),
        ("model.embed_vision.embedding_projection.weight", "vision_tower"),
        ("model.audio_tower.layers.0.ffw.weight", "audio_tower"),
        ("lm_head.weight", "lm_head"),
    ],
)
def test_component_of(name, component):
    assert component_of(name) == component


def test_every_component_has_a_label():
    assert list(COMPONENT_LABELS) == list(COMPONENTS)
