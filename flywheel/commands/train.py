"""`flywheel train`: train a world-model or IDM version from the experience store, in this process."""
from __future__ import annotations

import argparse
import time
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a world model and/or IDM version from the store",
                       description="Train from the episodes in the store (the world model with the multi-stage "
                       "recipe of train.wm_stages, the IDM on all episodes) and register the version.")
    p.add_argument("kind", choices=["world_model", "idm", "both"])
    p.add_argument("--parent", default=None, help="fine-tune from this version or alias (e.g. champion)")
    p.add_argument("--phase", default=None, help="a name for this training (re-using one returns its version)")
    p.add_argument("--promote", action="store_true", help="make the new version the champion")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, dcfg: Any) -> int:
    from omegaconf import OmegaConf

    from db.store import ExperienceStore
    from flywheel.errors import FlywheelError
    from flywheel.hooks import load_checked
    from flywheel.registry import ModelRegistry
    from flywheel.training.pipeline import StoreTrainer

    cfg = OmegaConf.to_object(dcfg)
    store = ExperienceStore.from_config(cfg.db, cfg.data_path)
    reg = ModelRegistry(store, cfg.data_path)
    trainer = StoreTrainer(cfg, store, reg)
    phase = args.phase or f"manual-{time.strftime('%Y%m%d-%H%M%S')}"
    for kind in ("world_model", "idm") if args.kind == "both" else (args.kind,):
        parent = reg.resolve(kind, args.parent) if args.parent else None
        if args.parent and parent is None:
            raise FlywheelError(f"no {kind} version or alias {args.parent!r} in the registry")
        m = (trainer.train_world_model if kind == "world_model" else trainer.train_idm)(parent=parent, phase=phase)
        print(f"{kind} v{m.version} registered (id {m.id}, parent {parent.version if parent else None}) at {m.path}")
        if args.promote:
            load_checked(kind, m.path)
            reg.promote(kind, m.id, f"flywheel train --promote ({phase})")
            print(f"{kind} v{m.version} is now the champion")
    return 0
