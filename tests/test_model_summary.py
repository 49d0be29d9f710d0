"""A model's structure from its config alone: layers, attention kinds, the KV-shared tail and
parameters by component."""

from __future__ import annotations

from studio.model_summary import structure_summary
from studio.modeling import load_text_config
from studio.sizes import COMPONENTS, config_from_file, model_shapes
from tests.conftest import E4B_CONFIG

HIDDEN, LAYERS, WIDTH = 2560, 42, 10240


def test_structure_summary_of_e4b():
    config = load_text_config(E4B_CONFIG)
    summary = structure_summary(config, model_shapes(config_from_file(E4B_CONFIG)))
    assert summary["layers"] == LAYERS and summary["attention"] == {"sliding": 35, "full": 7}
    assert summary["kv_shared_layers"] == list(range(24, 42))
    assert summary["params_by_component"]["ffn"] == 3 * HIDDEN * WIDTH * LAYERS
    assert summary["params_by_component"]["embeddings"] == 262144 * HIDDEN
    assert set(summary["params_by_component"]) <= set(COMPONENTS)
    assert summary["total_params"] == sum(summary["params_by_component"].values()) == 7_463_013_418
