"""export_checkpoint's checks on its input folder (studio.export.folder)."""

from __future__ import annotations

import json

import pytest

from studio.export import export_checkpoint


def test_a_gptq_config_without_gptqmodels_settings_is_refused_naming_the_checkpoint(demo_model_dir, tmp_path):
    source = tmp_path / "int4"
    source.mkdir()
    config = json.loads((demo_model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"^checkpoint: {source} is a GPTQ checkpoint without the quantize_config\.json"):
        export_checkpoint(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^checkpoint: no config\.json in {tmp_path}$"):
        export_checkpoint(tmp_path, tmp_path / "out")
