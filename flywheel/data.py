"""Datasets read from the experience store: world-model clips and IDM windows, with filters and mixtures.

Episodes come from SQL (`ExperienceStore.episodes`) and their arrays from the artifact store
(sha256-verified). A stage of the training recipe names a mixture such as `{"expert": 0.8, "play": 0.2}`;
each name is a filter (`MIXTURE_SOURCES`), and `MixtureDataset` samples clips from them by weight.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from envs.goals import GOALS
from flywheel.errors import FlywheelError

# mixture component name -> episode filters
MIXTURE_SOURCES: dict[str, dict[str, Any]] = {
    "all": {},
    "play": {"source": "play", "exclude_policies": ("recovery_expert",)},
    "expert": {"source": "expert"},
    "rollouts": {"source": "rollout"},
    "successes": {"success": True},
    "failures": {"success": False},
    # the expert's corrections after a detour (policy recovery_expert, stored as play): clips from the takeover on
    "recovery": {"policy": "recovery_expert"},
}


HELD_OUT_EVERY = 5  # every 5th episode (by id) is kept out of training, for held-out metrics


def is_held_out(episode_id: int) -> bool:
    """Episodes kept out of training so held-out metrics (PSNR, AUROC, DTW) are honest."""
    return episode_id % HELD_OUT_EVERY == 0


@dataclass
class EpisodeFilter:
    """Which stored episodes to read (None means any)."""

    task: str | None = None
    success: bool | None = None
    backend: str | None = None
    source: str | None = None
    policy: str | None = None
    exclude_policies: tuple[str, ...] = ()  # episodes of these policies are left out
    split: str | None = None
    world_model_version: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    def query(self) -> dict[str, Any]:
        """The store's `episodes` filters (`exclude_policies` is applied to the rows it returns)."""
        return {k: v for k, v in asdict(self).items() if (v is not None or k == "limit") and k != "exclude_policies"}


@dataclass
class LoadedEpisode:
    """One episode's metadata and arrays: frames uint8 (T+1, H, W, 3), proprio (T+1, P), actions (T, A)."""

    id: int
    caption: str
    success: bool
    frames: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    source: str
    task_family: str
    first_step: int = 0  # clips start here: a recovery episode's takeover (its detour before is not the task's motion)
    goal: np.ndarray | None = None  # (GOALS, A) the expert's task goals from the episode's start (`goals=True`), or None

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "proprio": self.proprio, "actions": self.actions,
                "success": self.success, "caption": self.caption, "id": self.id}


def load_episodes(store: Any, flt: EpisodeFilter | None = None, goals: bool = False,
                  goal_cache: dict[int, np.ndarray | None] | None = None) -> list[LoadedEpisode]:
    """Read episodes matching `flt` with their arrays. Episodes without arrays are skipped. `goals`: also each
    episode's task goals (`episode_goal`), for a world model with `goal_joints`; `goal_cache` (by episode id)
    keeps them between calls (an episode's recorded start does not change)."""
    flt = flt or EpisodeFilter()
    out = []
    goal_env = None
    goal_cache = {} if goal_cache is None else goal_cache
    for row in store.episodes(**flt.query()):
        if row.artifact_uri is None or row.policy in flt.exclude_policies:
            continue
        arr = store.load_arrays(row.id)
        missing = {"frames", "proprio", "actions"} - set(arr)
        if missing:
            raise FlywheelError(f"episode {row.id} arrays lack {sorted(missing)}")
        out.append(LoadedEpisode(
            id=row.id, caption=row.caption or row.instruction, success=bool(row.success),
            frames=arr["frames"], proprio=arr["proprio"], actions=arr["actions"],
            source=row.source, task_family=row.task_family, first_step=first_step(row),
        ))
        if goals:
            if row.id not in goal_cache:
                goal_env = goal_env or _goal_env()
                goal_cache[row.id] = episode_goal(store, row, goal_env)
            out[-1].goal = goal_cache[row.id]
    return out


def _goal_env() -> Any:
    """A sim env to restore episodes' recorded starts on (for their scene descriptions; it renders nothing)."""
    from envs.config import EnvConfig
    from envs.tabletop import HumanoidTabletopEnv

    return HumanoidTabletopEnv(EnvConfig(action_space="joint", render=False))


def episode_goal(store: Any, row: Any, env: Any) -> np.ndarray | None:
    """The task goals (`envs.goals.task_goals`: the grasp, the carry) of a stored episode, from the scene at its
    recorded start restored on the sim env `env`, as the planner computes them from the scene it is given. None
    for an episode without a recorded start, or a task family without goals. A start that cannot be restored is
    an error naming the episode."""
    from envs.goals import GOAL_FAMILIES, task_goals

    if row.initial_state_uri is None or row.task_family not in GOAL_FAMILIES:
        return None
    try:
        env.set_state(store.load_initial_state(row.id))
        return task_goals(env.scene_description(), env.cfg.control_hz)
    except Exception as exc:
        raise FlywheelError(f"the task goals of episode {row.id} could not be computed: {exc}") from exc


def first_step(row: Any) -> int:
    """Where an episode's clips start: the `takeover_step` its policy logged (the recovery expert's), else 0."""
    logs = ((row.meta or {}).get("policy_logs") or {}) if isinstance(row.meta, dict) else {}
    step = logs.get("takeover_step", 0) if isinstance(logs, dict) else 0
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= row.length:
        raise FlywheelError(f"episode {row.id}: takeover_step must be an integer in [0, {row.length}], got {step!r}")
    return step


def recaption(store: Any, backend: Any, upsampler: Any) -> dict[str, int]:
    """Caption every episode of `store` again with `upsampler`, from the scene at its recorded start: its
    initial state (which holds its task), restored on `backend` (a sim backend). Episodes without a recorded
    initial state are left as they are (`skipped`). The new captions replace the old in one transaction,
    after every episode is captioned: an upsampler or a state that fails part-way changes nothing (the error
    names the episode). After switching `policy.caption_upsampler` (workers stopped, or restarted with it),
    this lets a store's world model train on the captions it will be prompted with.
    """
    captions: dict[int, str] = {}
    skipped = 0
    for row in store.episodes(limit=None):
        if row.initial_state_uri is None:
            skipped += 1
            continue
        try:
            backend.reset(state=store.load_initial_state(row.id))
            captions[row.id] = upsampler.upsample(row.instruction, backend.scene_description())
        except Exception as exc:  # one line naming the episode; nothing is written
            raise FlywheelError(f"recaptioning episode {row.id} ({row.backend}) failed: {exc}") from exc
    changed = store.set_captions(captions)
    return {"episodes": len(captions) + skipped, "captioned": len(captions), "changed": changed, "skipped": skipped}


def frames_to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


class ClipDataset(Dataset):
    """World-model clips: `num_frames` consecutive frames (start frame first) with the actions between
    them, the caption, and a success label for clips that end on the episode's last frame (NaN otherwise:
    the success head only learns from frames whose outcome is known)."""

    def __init__(self, episodes: Sequence[LoadedEpisode], num_frames: int, stride: int = 1,
                 starts_only: bool = False):
        """`starts_only`: only the clip that starts on each episode's first frame (where the robot, at rest,
        has to decide what to do; `train.wm_start_clips`). Clips start at each episode's `first_step`: a
        recovery episode's first clip is where the expert took over."""
        if num_frames < 2:
            raise FlywheelError(f"num_frames must be >= 2, got {num_frames}")
        self.episodes = list(episodes)
        self.num_frames = num_frames
        self.index: list[tuple[int, int]] = []  # (episode, start)
        for e, ep in enumerate(self.episodes):
            n, first = len(ep.frames), ep.first_step
            if n - first < num_frames:
                continue
            starts = [first] if starts_only else list(range(first, n - num_frames + 1, stride))
            if not starts_only and starts[-1] != n - num_frames:
                starts.append(n - num_frames)  # always include the clip that ends on the outcome
            self.index += [(e, s) for s in starts]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e, s = self.index[i]
        ep = self.episodes[e]
        t = self.num_frames
        ends_episode = s + t == len(ep.frames)
        return {
            "video": frames_to_video(ep.frames[s : s + t]),  # (T, 3, H, W)
            "actions": torch.from_numpy(np.ascontiguousarray(ep.actions[s : s + t - 1], dtype=np.float32)),
            "caption": ep.caption,
            "success": torch.tensor(float(ep.success) if ends_episode else math.nan),
            "episode_success": bool(ep.success),
            # the joint positions at the clip's start frame: the world model's action head (imagine_action_loss)
            # says where the joints go from there
            "start_pose": torch.from_numpy(np.ascontiguousarray(ep.proprio[s, : ep.actions.shape[1]], dtype=np.float32)),
            # every frame's joint positions (T, A): the joint channels of a world model with imagine_joints
            "poses": torch.from_numpy(np.ascontiguousarray(ep.proprio[s : s + t, : ep.actions.shape[1]], dtype=np.float32)),
            # the episode's task goals (GOALS, A), NaN for none: the conditioning of a world model with goal_joints
            "goal": torch.from_numpy(np.asarray(ep.goal, dtype=np.float32)) if ep.goal is not None
            else torch.full((GOALS, ep.actions.shape[1]), math.nan),
        }


_SIDE = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT|clockwise|counterclockwise)\b")
_OTHER_SIDE = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT",
               "clockwise": "counterclockwise", "counterclockwise": "clockwise"}


def mirror_caption(caption: str) -> str:
    """The caption of the mirror-image scene: every whole word left / right swapped (case kept), and clockwise /
    counterclockwise (a mirror turns an object's yaw the other way: the `task_pose` captions)."""
    return _SIDE.sub(lambda m: _OTHER_SIDE[m.group(0)], caption)


def mirror_clip(item: dict[str, Any]) -> dict[str, Any]:
    """A `ClipDataset` item mirrored across the robot's sagittal plane (`train.wm_mirror`): frames flipped
    left-right, every joint vector (actions, start pose, poses) through `envs.robot.mirror_joints`, the caption's
    sides swapped. The success labels are unchanged (the mirror of a success is a success)."""
    from envs.robot import ACTION_DIM, mirror_joints

    out = dict(item)
    for key in ("actions", "start_pose", "poses", "goal"):
        if key not in item:
            continue
        v = item[key]
        if v.shape[-1] != ACTION_DIM:
            raise FlywheelError(f"mirroring needs {ACTION_DIM} joints per {key} vector, got shape {tuple(v.shape)}")
        out[key] = torch.from_numpy(mirror_joints(v.numpy()))
    out["video"] = item["video"].flip(-1)  # (T, 3, H, W): the head camera sits on the plane of symmetry
    out["caption"] = mirror_caption(item["caption"])
    return out


class MixtureDataset(IterableDataset):
    """An endless stream of items drawn from named datasets with the given weights (seeded).

    Components that are empty are dropped and the remaining weights renormalised; an all-empty
    mixture is an error naming the components."""

    def __init__(self, components: dict[str, Dataset], weights: dict[str, float], seed: int = 0,
                 mirror: float = 0.0):
        """`mirror`: the probability that a drawn clip is mirrored (`mirror_clip`, `train.wm_mirror`)."""
        unknown = set(weights) - set(components)
        if unknown:
            raise FlywheelError(f"mixture names {sorted(unknown)} have no dataset")
        live = {k: w for k, w in weights.items() if w > 0 and len(components[k]) > 0}
        if not live:
            raise FlywheelError(f"mixture {weights} has no data: every component is empty")
        self.components = components
        self.names = list(live)
        total = sum(live.values())
        self.probs = np.array([live[k] / total for k in self.names])
        self.seed = seed
        self.mirror = mirror

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng(self.seed)
        while True:
            name = self.names[rng.choice(len(self.names), p=self.probs)]
            ds = self.components[name]
            item = ds[int(rng.integers(len(ds)))]
            yield mirror_clip(item) if self.mirror and rng.random() < self.mirror else item
