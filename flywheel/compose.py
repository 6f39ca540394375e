"""Compose the product's config with Hydra's compose API, so every CLI subcommand takes overrides."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from flywheel.errors import ConfigError

CONFIG_DIR_ENV = "FLYWHEEL_CONFIG_DIR"


def config_dir() -> Path:
    """The Hydra config tree: $FLYWHEEL_CONFIG_DIR, else `configs/` at the repository root."""
    env = os.environ.get(CONFIG_DIR_ENV)
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "configs"
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"config tree not found at {path} (set {CONFIG_DIR_ENV} to the folder holding config.yaml)")
    return path


def _one_line(exc: BaseException) -> str:
    """The first line of the error, plus the first line of its cause (omegaconf says what was wrong)."""
    head = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip():
        reason = str(cause).strip().splitlines()[0]
        if reason not in head:
            head = f"{head}: {reason}"
    return head


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose `configs/config.yaml` with `overrides`; any error becomes one ConfigError line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from flywheel.config import register_configs

    register_configs()
    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
        # Instantiate the dataclasses once so __post_init__ validation runs on the final values.
        OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - hydra/omegaconf raise many types; the user needs one line
        raise ConfigError(f"bad config or override: {_one_line(exc)}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def to_object(cfg: DictConfig):
    """The typed `flywheel.config.Config` for a composed config."""
    return OmegaConf.to_object(cfg)
