"""How a worker process gets the product's config, and the per-process caches it keeps.

A worker reads its config as a `WorkerConfig` (below). The process that starts workers (`flywheel worker`, `WorkerPool`) puts the resolved config in the
environment as JSON (`FLYWHEEL_CONFIG_JSON`); a worker started by hand with `celery -A workers worker`
composes the Hydra config instead, with the overrides in `FLYWHEEL_OVERRIDES` (a JSON list such as
`["broker=redis", "data_dir=/srv/flywheel"]`). `flywheel` is imported lazily, never at module import.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.config import DBConfig
from envs.config import BackendConfig, EnvConfig, SafetyConfig
from policies.config import PolicyConfig
from workers.config import BrokerConfig
from workers.errors import WorkerError

CONFIG_ENV = "FLYWHEEL_CONFIG_JSON"
OVERRIDES_ENV = "FLYWHEEL_OVERRIDES"


@dataclass
class WorkerConfig:
    """The parts of the product's config a worker reads, built from the resolved JSON without importing
    `flywheel.config` (which pulls in the model code: torch, diffusers). `full()` gives the typed
    `flywheel.config.Config` when a task needs it (model policies, flywheel hooks)."""

    data_dir: str
    seed: int
    env: EnvConfig
    backend: BackendConfig
    policy: PolicyConfig
    broker: BrokerConfig
    db: DBConfig
    raw: dict[str, Any] = field(repr=False)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerConfig:
        backend = dict(d.get("backend", {}))
        safety = SafetyConfig(**backend.pop("safety", {}))
        return cls(
            data_dir=str(d.get("data_dir", "./flywheel-data")), seed=int(d.get("seed", 0)),
            env=EnvConfig(**d.get("env", {})), backend=BackendConfig(**backend, safety=safety),
            policy=PolicyConfig(**d.get("policy", {})), broker=BrokerConfig(**d.get("broker", {})),
            db=DBConfig(**d.get("db", {})), raw=d,
        )

    def full(self) -> Any:
        return as_config(self.raw)


def as_config(cfg: Any) -> Any:
    """The typed `flywheel.config.Config` for a composed DictConfig, a plain dict, or a Config."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, WorkerConfig):
        return cfg.full()
    from flywheel.config import Config

    if isinstance(cfg, Config):
        return cfg
    if isinstance(cfg, dict):
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(cfg))
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_object(cfg)
    raise WorkerError(f"expected a flywheel config, got {type(cfg).__name__}")


def full_config(cfg: Any) -> Any:
    """The typed Config whatever `cfg` is (a WorkerConfig is expanded on demand)."""
    return cfg.full() if isinstance(cfg, WorkerConfig) else as_config(cfg)


def config_to_json(cfg: Any) -> str:
    """The resolved config as JSON, for a worker process's environment (data_dir made absolute)."""
    import dataclasses

    if isinstance(cfg, WorkerConfig):
        data = dict(cfg.raw)
    else:
        obj = as_config(cfg)
        data = dataclasses.asdict(obj)
    data["data_dir"] = str(Path(data["data_dir"]).expanduser().resolve())
    return json.dumps(data)


def load_config() -> Any:
    """The config of this worker process (see the module docstring)."""
    raw = os.environ.get(CONFIG_ENV)
    if raw:
        try:
            return WorkerConfig.from_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise WorkerError(f"{CONFIG_ENV} does not hold a valid flywheel config: {exc}") from None
    overrides = json.loads(os.environ.get(OVERRIDES_ENV, "[]"))
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise WorkerError(f"{OVERRIDES_ENV} must be a JSON list of 'key=value' strings")
    from flywheel.compose import compose

    return as_config(compose(overrides))


def worker_env(cfg: Any) -> dict[str, str]:
    """Environment for a child worker process: ours plus the resolved config."""
    env = dict(os.environ)
    env[CONFIG_ENV] = config_to_json(cfg)
    env.pop(OVERRIDES_ENV, None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MUJOCO_GL", "egl")
    return env


_stores: dict[tuple[str | None, str | None, str], Any] = {}


def open_store(cfg: Any) -> Any:
    """The experience store for `cfg`, one per process and config (connections are reused).

    A forked child must not reuse its parent's connections, so the cache is keyed by pid too."""
    from db.store import ExperienceStore

    key = (cfg.db.url, cfg.db.artifact_url, f"{cfg.data_path}:{os.getpid()}")
    if key not in _stores:
        _stores[key] = ExperienceStore.from_config(cfg.db, cfg.data_path)
    return _stores[key]
