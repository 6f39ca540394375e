"""Training from the experience store into the model registry: the world model's multi-stage recipe,
the IDM on all stored episodes, and fine-tuning challengers from champions.

Each call is keyed by a `phase` ("bootstrap", "iter3"): if a version of that kind was already registered
for the phase (a restarted run), it is returned instead of training again, so no version is duplicated.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.data import ClipDataset, EpisodeFilter, MixtureDataset, is_held_out, load_episodes
from flywheel.errors import FlywheelError
from flywheel.registry import ModelRegistry, RegisteredModel

if TYPE_CHECKING:
    import numpy as np

# Fine-tuning mixture: the robot's own recent rollouts, anchored by expert and play data.
FINETUNE_MIXTURE = {"rollouts": 0.6, "expert": 0.3, "play": 0.1}


def with_mirrored(q: np.ndarray, mirror: float) -> np.ndarray:
    """Joint vectors `(N, 16)` and, when clips are mirrored (`train.wm_mirror` > 0), their mirror images: the units
    of the clips the world model trains on."""
    if mirror <= 0:
        return q
    import numpy as np

    from envs.robot import mirror_joints

    return np.concatenate([q, mirror_joints(q)])


class StoreTrainer:
    """Builds world-model and IDM versions from the episodes in `store`."""

    def __init__(self, cfg: Any, store: Any, registry: ModelRegistry, progress: bool = True,
                 say: Callable[[str], None] = print):
        self.cfg, self.store, self.registry, self.progress, self.say = cfg, store, registry, progress, say
        self.work = Path(cfg.data_path) / "training"
        self._episodes: dict[str, list] = {}
        self._goals: dict[int, Any] = {}  # episode id -> task goals (world_model.goal_joints), read once per trainer

    # -- data ------------------------------------------------------------------------------------
    def episodes(self, name: str, goals: bool = False) -> list:
        """Episodes of a mixture component (cached per trainer: one read per phase); `goals`: with their task goals
        (for a world model with `goal_joints`; a fine-tune follows its parent's config, not the run's)."""
        from flywheel.data import MIXTURE_SOURCES

        if name not in MIXTURE_SOURCES:
            raise FlywheelError(f"unknown mixture component {name!r}; known: {', '.join(MIXTURE_SOURCES)}")
        key = f"{name}+goals" if goals else name
        if key not in self._episodes:
            eps = load_episodes(self.store, EpisodeFilter(limit=None, **MIXTURE_SOURCES[name]), goals=goals,
                                goal_cache=self._goals)
            # held-out episodes stay out of training; an episode that never moved has nothing to learn
            self._episodes[key] = [e for e in eps if not is_held_out(e.id) and len(e.actions) > 0]
        return self._episodes[key]

    def snapshot(self) -> dict[str, Any]:
        c = self.store.counts()
        newest = self.store.episodes(limit=1)
        return {"episodes": c.get("episodes", 0), "max_episode_id": newest[0].id if newest else 0}

    def _existing(self, kind: str, phase: str) -> RegisteredModel | None:
        for row in self.store.list_models(kind):
            if (row.data_snapshot or {}).get("phase") == phase:
                return self.registry.materialise(row)
        return None

    def _register(self, kind: str, model_dir: Path, cfg_obj: Any, parent: RegisteredModel | None, phase: str,
                  run_id: int, extra: dict[str, Any]) -> RegisteredModel:
        snap = {**self.snapshot(), "phase": phase, **extra}
        reg = self.registry.register(kind, model_dir, dataclasses.asdict(cfg_obj),
                                     parent_id=parent.id if parent else None, data_snapshot=snap,
                                     training_run_id=run_id)
        self.say(f"registered {kind} v{reg.version} (parent {parent.version if parent else None}, phase {phase})")
        return reg

    # -- world model -----------------------------------------------------------------------------
    def train_world_model(self, parent: RegisteredModel | None, phase: str) -> RegisteredModel:
        import numpy as np

        from flywheel.training.world_model import Stage, train_world_model
        from policies.world_model import WorldModel

        if (done := self._existing("world_model", phase)) is not None:
            return done
        wcfg, tcfg = self.cfg.world_model, self.cfg.train
        model = WorldModel.from_pretrained(parent.path) if parent else WorldModel(wcfg)
        if parent is None and wcfg.action_conditioning and wcfg.normalize_actions:  # a fine-tune keeps its stats
            acts = [e.actions for e in self.episodes("all") if len(e.actions)]
            if acts:
                model.fit_action_stats(with_mirrored(np.concatenate(acts), tcfg.wm_mirror))
        if parent is None and wcfg.imagine_joints:  # the joint channels' units, kept by fine-tunes
            joints = [e.proprio[:, : wcfg.action_dim] for e in self.episodes("all") if len(e.proprio)]
            if joints:
                model.fit_joint_stats(with_mirrored(np.concatenate(joints), tcfg.wm_mirror))
        clip = lambda eps: ClipDataset(eps, num_frames=wcfg.num_frames, stride=2)
        goals = model.cfg.goal_joints  # the model's own: a fine-tune keeps its parent's conditioning
        if parent is None:
            recipe = [(s.name, dict(s.mixture) or {"all": 1.0}, s.steps, s.lr) for s in tcfg.wm_stages]
        else:
            recipe = [("finetune", FINETUNE_MIXTURE, tcfg.finetune_steps, tcfg.wm_stages[-1].lr)]
        stages = []
        for name, mixture, steps, lr in recipe:
            comps = {k: clip(self.episodes(k, goals)) for k in mixture}
            if tcfg.wm_start_clips > 0:  # each component's episode-start clips, as a share of its own weight
                f = tcfg.wm_start_clips
                comps |= {f"{k}@start": ClipDataset(self.episodes(k, goals), wcfg.num_frames, starts_only=True)
                          for k in mixture}
                mixture = {k: w * (1 - f) for k, w in mixture.items()} | {f"{k}@start": w * f
                                                                           for k, w in mixture.items()}
            stages.append(Stage(name, MixtureDataset(comps, mixture, seed=tcfg.seed, mirror=tcfg.wm_mirror), steps, lr))
        run_id = self.store.start_training_run("world_model", {"recipe": [list(r) for r in recipe]},
                                               self.snapshot())
        out = self.work / f"world_model-{phase}"
        vae_logs: dict[str, float] = {}
        try:
            if parent is None and wcfg.vae == "kl2d" and not wcfg.vae_path and tcfg.vae_steps > 0:
                # latent diffusion: the autoencoder first, on every stored frame, then frozen (fine-tunes keep it)
                from flywheel.training.vae import frame_pool, train_vae

                vae_logs = train_vae(model.vae, frame_pool([e.frames for e in self.episodes("all")]),
                                     tcfg.vae_steps, tcfg.vae_lr, seed=tcfg.seed, device=tcfg.device,
                                     precision=tcfg.precision, progress=self.progress)
                self.say(f"autoencoder: reconstruction MSE {vae_logs['vae_rec_first']:.4f} -> "
                         f"{vae_logs['vae_rec_last']:.4f} in {tcfg.vae_steps} steps")
            res = train_world_model(model, stages, tcfg, out, progress=self.progress)
        except Exception as exc:
            self.store.finish_training_run(run_id, "failed", error=str(exc)[:500])
            raise
        self.store.finish_training_run(run_id, "succeeded", {"final_loss": res.final_loss, "steps": res.steps,
                                                             "clips_per_s": res.clips_per_s, **vae_logs})
        return self._register("world_model", Path(res.model_dir), model.cfg, parent, phase, run_id,
                              {"recipe": [list(r[:2]) for r in recipe]})

    # -- IDM -------------------------------------------------------------------------------------
    def train_idm(self, parent: RegisteredModel | None, phase: str) -> RegisteredModel:
        from flywheel.training.idm import WindowDataset, train_idm
        from policies.idm import InverseDynamicsModel

        if (done := self._existing("idm", phase)) is not None:
            return done
        icfg, tcfg = self.cfg.idm, self.cfg.train
        model = InverseDynamicsModel.from_pretrained(parent.path) if parent else InverseDynamicsModel(icfg)
        eps = [e.as_dict() for e in self.episodes("all")]  # unfiltered: play, expert, successes, failures
        if not eps:
            raise FlywheelError("no episodes with arrays in the store to train the IDM on")
        ds = WindowDataset(eps, icfg.window, all_frames=icfg.target == "pose")
        steps = tcfg.idm_steps if parent is None else tcfg.finetune_steps
        run_id = self.store.start_training_run("idm", {"steps": steps, "lr": tcfg.idm_lr}, self.snapshot())
        out = self.work / f"idm-{phase}"
        try:
            res = train_idm(model, ds, tcfg, out, steps=steps, lr=tcfg.idm_lr, progress=self.progress)
        except Exception as exc:
            self.store.finish_training_run(run_id, "failed", error=str(exc)[:500])
            raise
        self.store.finish_training_run(run_id, "succeeded", {"final_loss": res.losses[-1] if res.losses else None,
                                                             "steps": res.step})
        return self._register("idm", out / "model", model.config, parent, phase, run_id, {"windows": len(ds)})

    def train_pair(self, parents: tuple[RegisteredModel | None, RegisteredModel | None],
                   phase: str) -> tuple[RegisteredModel, RegisteredModel]:
        """Both models of a phase, one after the other (the in-process counterpart of DispatchTrainer)."""
        return self.train_world_model(parents[0], phase), self.train_idm(parents[1], phase)
