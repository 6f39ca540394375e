"""Typed structured configs for the whole product, registered with Hydra's ConfigStore.

The YAML tree in `configs/` fills these schemas; an override naming an unknown key or a value of
the wrong type fails when the config is composed (see `flywheel.compose`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from db.config import DBConfig
from envs.config import BackendConfig, EnvConfig
from policies.config import PolicyConfig
from policies.idm.configuration_idm import IDMConfig
from policies.world_model.configuration_world_model import WorldModelConfig
from workers.config import BrokerConfig


@dataclass
class StageConfig:
    """One stage of a multi-stage training recipe: a data mixture, a step budget and a learning rate."""

    name: str = "stage"
    # empty means every stored episode ({"all": 1.0}). A non-empty default would be merged into every mixture a
    # YAML or an override gives (OmegaConf merges dicts key by key), as {"all": 1.0} was until session 19
    mixture: dict[str, float] = field(default_factory=dict)
    steps: int = 100
    lr: float = 3e-4


@dataclass
class TrainConfig:
    """How the world model and the IDM are trained (per stage for the world model)."""

    device: str = "cpu"  # cpu | cuda | auto
    precision: str = "fp32"  # fp32 | bf16 | fp16 (AMP)
    batch_size: int = 8
    num_workers: int = 0
    seed: int = 0
    wm_stages: list[StageConfig] = field(
        default_factory=lambda: [
            StageConfig(name="play", mixture={"play": 1.0}, steps=100, lr=1e-3),
            StageConfig(name="tasks", mixture={"expert": 0.8, "play": 0.2}, steps=200, lr=5e-4),
            StageConfig(name="robot", mixture={"rollouts": 0.7, "expert": 0.3}, steps=100, lr=2e-4),
        ]
    )
    vae_steps: int = 1000  # world_model.vae=kl2d without vae_path: autoencoder steps before the first stage
    vae_lr: float = 1e-3
    idm_steps: int = 400
    idm_batch_size: int | None = None  # None: batch_size
    idm_lr: float = 1e-3
    # the IDM's learning rate over a run: "constant", or "cosine" from idm_lr down to idm_lr * idm_lr_min
    # at the run's last step (a regression's error floor at a constant rate is the rate's noise)
    idm_lr_schedule: str = "constant"
    idm_lr_min: float = 0.05
    finetune_steps: int = 100
    grad_clip: float = 1.0
    log_every: int = 20
    # > 0: the world model that is saved is an exponential moving average of its weights over the run, with
    # this decay (warmed up as min(decay, (1 + step) / (10 + step))); 0: the last weights
    wm_ema_decay: float = 0.0
    # the fraction of each world-model stage's clips that start on an episode's first frame, drawn from the
    # same mixture. Only there does the robot, still at rest, have to decide what to do (which arm, where);
    # elsewhere the pose already shows it. With clips every 2nd frame that is 1 in ~10 of an expert episode's
    # clips, and the imagine-mode half of those. 0: clips uniformly over each episode
    wm_start_clips: float = 0.0
    # the probability that a world-model training clip is mirrored across the robot's sagittal plane: frames
    # flipped left-right, the arms' joints swapped and their rolls and yaws negated (`envs.robot.mirror_joints`,
    # for positions, targets and the clip's start pose), "left" and "right" swapped in the caption. The robot,
    # the head camera and the scene distribution (object places, the light's side) are mirror-symmetric, so a
    # mirrored clip is another plausible episode (up to the table's checker phase): twice the scenes. 0: off
    wm_mirror: float = 0.0

    def __post_init__(self) -> None:
        if self.idm_lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.idm_lr_schedule must be constant or cosine, got {self.idm_lr_schedule!r}")
        if not 0.0 <= self.idm_lr_min <= 1.0:
            raise ValueError(f"train.idm_lr_min must be in [0, 1], got {self.idm_lr_min}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.wm_start_clips < 1.0:
            raise ValueError(f"train.wm_start_clips must be in [0, 1), got {self.wm_start_clips}")
        if not 0.0 <= self.wm_mirror <= 1.0:
            raise ValueError(f"train.wm_mirror must be in [0, 1], got {self.wm_mirror}")
        if not 0.0 <= self.wm_ema_decay < 1.0:
            raise ValueError(f"train.wm_ema_decay must be in [0, 1), got {self.wm_ema_decay}")
        if self.idm_batch_size is not None and self.idm_batch_size < 1:
            raise ValueError(f"train.idm_batch_size must be >= 1 (or null: batch_size), got {self.idm_batch_size}")
        if self.vae_steps < 0 or self.vae_lr <= 0:
            raise ValueError(f"train.vae_steps must be >= 0 and train.vae_lr > 0, got {self.vae_steps}, {self.vae_lr}")


@dataclass
class FlywheelConfig:
    """The self-improvement loop: bootstrap data, iterations, retraining cadence, promotion gate."""

    iterations: int = 3
    bootstrap_expert_episodes: int = 40
    bootstrap_play_episodes: int = 20
    bootstrap_perturbed_episodes: int = 0  # the expert pushed off its path (policy perturbed_expert): IDM data
    # a detour, then the expert taking over (policy recovery_expert): the world model's `recovery` component
    bootstrap_recovery_episodes: int = 0
    episodes_per_iteration: int = 16
    retrain_every: int = 16  # K: retrain after this many new episodes
    eval_split_subset: int = 8  # episodes per split in the CI regression suite
    promotion_alpha: float = 0.1  # significance level of the paired test
    n_workers: int = 2
    beat_interval_s: float | None = None  # Celery beat schedule for long-running deployments
    evaluator_states: int = 4  # initial states for the world model as policy evaluator (0: skip it)
    evaluator_policies: list[str] = field(
        default_factory=lambda: ["expert@0", "expert@1", "expert@2", "expert@3", "random"])


@dataclass
class Config:
    """The whole product's configuration. `data_dir` holds everything a run writes."""

    data_dir: str = "./flywheel-data"
    preset_name: str = "demo"
    seed: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    idm: IDMConfig = field(default_factory=IDMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    db: DBConfig = field(default_factory=DBConfig)
    flywheel: FlywheelConfig = field(default_factory=FlywheelConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()


GROUPS: dict[str, type] = {
    "env": EnvConfig,
    "backend": BackendConfig,
    "policy": PolicyConfig,
    "world_model": WorldModelConfig,
    "idm": IDMConfig,
    "train": TrainConfig,
    "broker": BrokerConfig,
    "db": DBConfig,
    "flywheel": FlywheelConfig,
}


def register_configs() -> None:
    """Register the schemas so every YAML in `configs/<group>/` is validated against its dataclass."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, node in GROUPS.items():
        cs.store(group=group, name="schema", node=node)
