"""Export folders that vLLM serves: shards, configs, tokenizer, the FLAP plugin and a model card."""

from studio.export.folder import ExportResult, export_checkpoint, update_evaluation

__all__ = ["ExportResult", "export_checkpoint", "update_evaluation"]
