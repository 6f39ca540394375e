"""Configuration of the Celery broker, result backend and worker pool."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BrokerConfig:
    """`url` None means the embedded broker (SQLite-backed, no server) under data_dir.

    `queue_prefix` namespaces every queue name (`<prefix>sim`, `<prefix>neo.<id>`, ...) so that several
    deployments or test sessions can share one Redis/RabbitMQ server without seeing each other's tasks.
    """

    url: str | None = None
    result_url: str | None = None
    queues: list[str] = field(default_factory=lambda: ["sim", "train", "eval"])
    concurrency: int = 1
    soft_time_limit_s: int = 900
    time_limit_s: int = 1200
    heartbeat_s: float = 2.0
    stale_after_s: float = 30.0
    max_retries: int = 3
    queue_prefix: str = ""
    max_payload_bytes: int = 65_536  # larger task messages are rejected by the worker
    sweep_interval_s: float | None = None  # None: stale_after_s / 2
    polling_interval_s: float = 0.1  # embedded broker: how often an idle worker polls its queues

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"broker.concurrency must be >= 1, got {self.concurrency}")
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError("broker.time_limit_s must be greater than broker.soft_time_limit_s")
        if self.heartbeat_s <= 0 or self.stale_after_s <= self.heartbeat_s:
            raise ValueError("broker.stale_after_s must be greater than broker.heartbeat_s (> 0)")
        if self.max_retries < 0:
            raise ValueError(f"broker.max_retries must be >= 0, got {self.max_retries}")
        if self.max_payload_bytes < 1024:
            raise ValueError(f"broker.max_payload_bytes must be >= 1024, got {self.max_payload_bytes}")

    @property
    def visibility_timeout_s(self) -> int:
        """Redis redelivers an unacked task after this long: longer than the longest task can run."""
        return 2 * self.time_limit_s + 60

    @property
    def sweep_every_s(self) -> float:
        return self.sweep_interval_s if self.sweep_interval_s is not None else self.stale_after_s / 2
