"""Configuration of the experience store and the artifact store."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DBConfig:
    """Where episodes, the task ledger and model versions live.

    `url` None means the embedded default: a SQLite file `store.sqlite` under `data_dir`.
    `artifact_url` None means a local folder `artifacts/` under `data_dir`; any fsspec URL works.
    """

    url: str | None = None
    artifact_url: str | None = None
    echo: bool = False
    busy_timeout_ms: int = 30_000
    pool_size: int = 5

    def __post_init__(self) -> None:
        if self.busy_timeout_ms < 0:
            raise ValueError(f"db.busy_timeout_ms must be >= 0, got {self.busy_timeout_ms}")
