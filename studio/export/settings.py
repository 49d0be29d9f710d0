"""How the export stage writes the servable folder: one settings type for the library, job specs and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from studio.fields import reject_unknown


@dataclass(frozen=True)
class ExportSettings:
    """`max_shard_size`: the largest safetensors shard (e.g. 2GB, 500MB); `name`: the model name in
    the card and vllm_config.yaml (None: the job's output name)."""

    max_shard_size: str = "4GB"
    name: str | None = None

    def __post_init__(self):
        from studio.export.shards import parse_size

        try:
            parse_size(self.max_shard_size)
        except ValueError as err:
            raise ValueError(f"export.{err}") from err
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ValueError(f"export.name: must be a non-empty string, got {self.name!r}")

    @classmethod
    def from_dict(cls, data: dict) -> ExportSettings:
        """Settings from a job spec's `export` mapping (or a stored one); unknown fields are errors."""
        reject_unknown("export.", data, (f.name for f in fields(cls)))
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)
