"""Configuration of the Celery broker, result backend and worker pool."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BrokerConfig:
    """`url` None means the embedded broker (SQLite-backed, no server) under data_dir."""

    url: str | None = None
    result_url: str | None = None
    queues: list[str] = field(default_factory=lambda: ["sim", "train", "eval"])
    concurrency: int = 1
    soft_time_limit_s: int = 900
    time_limit_s: int = 1200
    heartbeat_s: float = 2.0
    stale_after_s: float = 30.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"broker.concurrency must be >= 1, got {self.concurrency}")
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError("broker.time_limit_s must be greater than broker.soft_time_limit_s")
