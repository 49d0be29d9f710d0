"""True sizes of Gemma 4 checkpoints: parameters and bytes per component, one size model.

- `components`: the taxonomy every report uses (`COMPONENTS`, `COMPONENT_LABELS`, `component_of`);
- `report`: stored tensors (`TensorInfo`) and what they add up to (`SizeReport`, `tally`);
- `measure`: exact sizes of a checkpoint on disk, from its safetensors headers (`measure_checkpoint`);
- `estimate`: the same from a config, a plan and GPTQ settings, without weights (`estimate`;
  `model_shapes` + `ModelShapes.report` / `estimate_stages` for re-estimating per edit), and the
  GPTQ v1 storage formula (`gptq_tensor_infos`);
- `card`: the size claims of the gemma4-lite-round2 model card that estimates are compared with.

On the demo export the estimate equals the measurement per component, in parameters and bytes.
"""

from studio.sizes.components import COMPONENT_LABELS, COMPONENTS, component_of
from studio.sizes.estimate import (
    STAGES,
    ModelShapes,
    config_from_file,
    estimate,
    estimate_stages,
    gptq_tensor_infos,
    model_shapes,
)
from studio.sizes.measure import checkpoint_bits, checkpoint_files, measure_checkpoint, read_tensor_infos
from studio.sizes.report import GPTQ_PARTS, ComponentSize, SizeReport, TensorInfo, tally

__all__ = [
    "COMPONENTS",
    "COMPONENT_LABELS",
    "GPTQ_PARTS",
    "ComponentSize",
    "ModelShapes",
    "STAGES",
    "SizeReport",
    "TensorInfo",
    "checkpoint_bits",
    "checkpoint_files",
    "component_of",
    "config_from_file",
    "estimate",
    "estimate_stages",
    "gptq_tensor_infos",
    "measure_checkpoint",
    "model_shapes",
    "read_tensor_infos",
    "tally",
]
