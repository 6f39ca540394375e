"""The IDM ceiling: how much task success survives when the expert's actions are re-derived from video.

For each held-out expert episode the IDM extracts actions from the episode's *real* frames (with only
the proprio of frame 0, as it gets for an imagined video); they are replayed open-loop in sim from the
episode's recorded initial state, and the replay's success is compared with the expert's own. Real
frames take the world model out of the picture, so this is the best the imagine-then-act planner can
do with this IDM: the gap to 1.0 is IDM error alone.

Episodes come from memory (`CeilingEpisode`, e.g. built from `envs.play.EpisodeData`) or from a store
(`ceiling_episodes_from_store`, which reads arrays and `store.load_initial_state(id)`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.errors import FlywheelError


@dataclass
class CeilingEpisode:
    """One expert episode to replay: frames uint8 (T+1, H, W, 3), proprio (T+1, P), actions (T, A), the
    expert's success, the sim state it started from (`env.get_state()`), and its task family."""

    frames: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    success: bool
    initial_state: dict[str, np.ndarray]
    family: str
    id: int | None = None

    @classmethod
    def from_episode_data(cls, ep: Any, id: int | None = None) -> CeilingEpisode:
        """From an `envs.play.EpisodeData` (what `collect_episode` returns)."""
        return cls(ep.frames, ep.proprio, ep.actions, bool(ep.success), ep.initial_state,
                   str(ep.task["family"]), id)


def ceiling_episodes_from_store(store: Any, episode_ids: Sequence[int]) -> list[CeilingEpisode]:
    """Read episodes (arrays, success, family) and their recorded initial states from an experience store."""
    out = []
    for eid in episode_ids:
        row = store.get_episode(int(eid))
        arr = store.load_arrays(int(eid))
        missing = {"frames", "proprio", "actions"} - set(arr)
        if missing:
            raise FlywheelError(f"episode {eid} arrays lack {sorted(missing)}")
        out.append(CeilingEpisode(arr["frames"], arr["proprio"], arr["actions"], bool(row.success),
                                  _scalars(store.load_initial_state(int(eid))), str(row.task_family), int(eid)))
    return out


_SCALAR_KEYS = ("steps", "task", "layout")  # 0-d in `env.get_state()`


def _scalars(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undo the artifact store's 0-d -> (1,) promotion of the state's scalars (np.ascontiguousarray)."""
    return {k: v.reshape(()) if k in _SCALAR_KEYS and np.shape(v) == (1,) else v for k, v in state.items()}


def replay(env: Any, initial_state: dict[str, np.ndarray], actions: np.ndarray, settle_steps: int = 0) -> bool:
    """Run `actions` (T, A) open-loop from `initial_state`; True if the task succeeds on the way.

    `settle_steps` > 0 holds the last action that many more steps (the robot reaching its last target).
    Actions are clipped to the actuator range by the env, like every command it receives.
    """
    env.reset(options={"state": initial_state})
    actions = np.asarray(actions, np.float32)
    if settle_steps > 0 and len(actions):
        actions = np.concatenate([actions, np.repeat(actions[-1:], settle_steps, axis=0)])
    for a in actions:
        _obs, _r, terminated, truncated, info = env.step(a)
        if info["success"]:
            return True
        if terminated or truncated:
            break
    return False


def extract_actions(idm: Any, ep: CeilingEpisode, seed: int = 0, replan_every: int | None = None,
                    lookahead: int | None = None) -> np.ndarray:
    """The IDM's actions (T, A) from the episode's real frames.

    Default: one extraction over the whole video with only the frame-0 proprio (as for one imagined
    video). `replan_every=H`: one extraction per chunk of H actions, each from its own H+1 frames and
    the recorded proprio at its first frame, as the imagine-then-act planner gets a fresh observation
    every H steps. `lookahead=L` (>= H): each extraction sees the next L frames instead of H, of which
    the first H actions are kept, as the planner extracts from a whole imagined video (L = its imagined
    frames - 1) and executes the first H (without it the chunk's last frame is repeated to fill the
    window; measured, the two give the same ceiling: docs/BENCHMARKS.md, IDM, session 5)."""
    import torch

    from policies.idm.processor_idm import to_float_frames

    video = to_float_frames(torch.as_tensor(np.asarray(ep.frames)))  # (T+1, 3, H, W)
    proprio = torch.as_tensor(np.asarray(ep.proprio), dtype=torch.float32)  # (T+1, P)
    if not replan_every:
        return idm.extract(video, proprio[0], seed=seed).actions.numpy()
    if replan_every < 1:
        raise FlywheelError(f"replan_every must be >= 1, got {replan_every}")
    if lookahead is not None and lookahead < replan_every:
        raise FlywheelError(f"lookahead ({lookahead}) must be >= replan_every ({replan_every})")
    t, span = video.shape[0] - 1, lookahead or replan_every
    chunks = [idm.extract(video[s : s + span + 1], proprio[s], seed=seed + s).actions.numpy()[:replan_every]
              for s in range(0, t, replan_every)]
    return np.concatenate(chunks)[:t]


def track_video(idm: Any, env: Any, ep: CeilingEpisode, lookahead: int, seed: int = 0) -> bool:
    """Closed loop: from the episode's initial state, at every step extract from the sim's *own* current
    frame and proprio followed by the recorded frames of the next `lookahead` steps, execute the first
    action. True if the task succeeds. Unlike the open-loop replays above, the IDM's errors feed back
    into what it sees next, as they do for the imagine-then-act planner (whose imagination, unlike the
    recording here, starts from where the robot really is)."""
    import torch

    from policies.idm.processor_idm import to_float_frames

    if lookahead < 1:
        raise FlywheelError(f"lookahead must be >= 1, got {lookahead}")
    video = to_float_frames(torch.as_tensor(np.asarray(ep.frames)))  # (T+1, 3, H, W)
    obs, _ = env.reset(options={"state": ep.initial_state})
    t_max = len(ep.actions)
    for t in range(t_max):
        now = to_float_frames(torch.as_tensor(np.ascontiguousarray(obs["rgb"])))[None]
        ahead = video[t + 1 : min(t + lookahead, t_max) + 1]
        clip = torch.cat([now, ahead if len(ahead) else now])
        with torch.no_grad():
            action = idm.extract(clip, torch.as_tensor(obs["proprio"], dtype=torch.float32),
                                 seed=seed + t).actions[0].numpy()
        obs, _r, terminated, truncated, info = env.step(action)
        if info["success"]:
            return True
        if terminated or truncated:
            break
    return False


def idm_ceiling(
    idm: Any,
    episodes: Sequence[CeilingEpisode],
    env_cfg: Any = None,
    *,
    env: Any = None,
    seed: int = 0,
    settle_steps: int = 0,
    actions: Sequence[np.ndarray] | None = None,
    replan_every: int | None = None,
    lookahead: int | None = None,
    track: int | None = None,
) -> dict[str, Any]:
    """Replay the IDM's extraction of each episode from its initial state; success per family vs the expert.

    Returns `{"families": {family: {...}}, "overall": {...}, "episodes": [...]}` where each summary has
    `n`, `expert_success` and `replay_success` (rates in [0, 1]), `replay_given_expert` (replay success
    among the expert's successes) and `relative` = replay_success / expert_success (None when the expert
    never succeeded). `actions` (one (T, A) array per episode) replays those instead of extracting with
    `idm`: the IDM's extraction computed elsewhere, or the recorded actions (a check of the replay
    machinery, which must reproduce the expert exactly). `replan_every` extracts per chunk of that many
    actions (see `extract_actions`), each seeing `lookahead` frames ahead. `track=L` runs the IDM closed
    loop instead (`track_video` with lookahead L). `env` (a `HumanoidTabletopEnv`) is built from `env_cfg` when not given.
    """
    if not episodes:
        raise FlywheelError("idm_ceiling got no episodes")
    if actions is not None and len(actions) != len(episodes):
        raise FlywheelError(f"idm_ceiling got {len(actions)} action sequences for {len(episodes)} episodes")
    if track is not None and (idm is None or actions is not None):
        raise FlywheelError("idm_ceiling with track needs an IDM and no actions")
    if idm is None and actions is None:
        raise FlywheelError("idm_ceiling needs an IDM or the actions to replay")
    if env is None:
        from envs.tabletop import HumanoidTabletopEnv

        env = HumanoidTabletopEnv(env_cfg)
    rows = []
    for k, ep in enumerate(episodes):
        if track is not None:
            ok = track_video(idm, env, ep, lookahead=track, seed=seed + k)
        else:
            acts = (actions[k] if actions is not None
                    else extract_actions(idm, ep, seed=seed + k, replan_every=replan_every, lookahead=lookahead))
            ok = replay(env, ep.initial_state, acts, settle_steps)
        rows.append({"id": ep.id, "family": ep.family, "expert_success": bool(ep.success), "replay_success": ok,
                     "length": len(ep.actions)})
    families = {f: _summary([r for r in rows if r["family"] == f]) for f in sorted({r["family"] for r in rows})}
    return {"families": families, "overall": _summary(rows), "settle_steps": settle_steps,
            "replan_every": replan_every, "lookahead": lookahead, "track": track, "episodes": rows}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    expert = sum(r["expert_success"] for r in rows)
    rep = sum(r["replay_success"] for r in rows)
    rep_given = sum(r["replay_success"] for r in rows if r["expert_success"])
    return {
        "n": n,
        "expert_success": expert / n,
        "replay_success": rep / n,
        "replay_given_expert": rep_given / expert if expert else None,
        "relative": (rep / n) / (expert / n) if expert else None,
    }


def video_reliance(idm: Any, episodes: Sequence[CeilingEpisode], stride: int = 2, seed: int = 0) -> dict[str, Any]:
    """How much of the IDM's skill comes from the video. At every `stride`-th step t of each episode (with a
    full window ahead) the first action is extracted from the recorded frames t..t+W and the recorded proprio
    at t, and again from a frozen video (frame t repeated: no motion to read). Arm-joint MAE (rad) of each
    against the recorded action, and of holding still (the joint positions at t).

    An IDM that reads the motion has `real` well below `frozen`; one that mostly predicts the next action
    from the state (a behaviour-cloning shortcut, which only works where the data's policy would be) has
    `real` near `frozen`, and near `hold` on states that policy never visits. Returns the three MAEs, the
    ratios `real_vs_hold` and `frozen_vs_hold`, and the number of windows."""
    import torch

    from envs.robot import ARM_SLICE
    from policies.idm.processor_idm import to_float_frames

    if stride < 1:
        raise FlywheelError(f"stride must be >= 1, got {stride}")
    w = int(idm.config.window)
    arm = np.r_[tuple(ARM_SLICE.values())]
    err: dict[str, list[float]] = {"real": [], "frozen": [], "hold": []}
    for k, ep in enumerate(episodes):
        video = to_float_frames(torch.as_tensor(np.asarray(ep.frames)))
        proprio = torch.as_tensor(np.asarray(ep.proprio), dtype=torch.float32)
        acts = np.asarray(ep.actions)
        for t in range(0, len(acts) - w + 1, stride):
            truth = acts[t, arm]
            with torch.no_grad():
                real = idm.extract(video[t : t + w + 1], proprio[t], seed=seed + k * 1000 + t).actions[0].numpy()
                frozen = idm.extract(video[t : t + 1].expand(w + 1, -1, -1, -1), proprio[t],
                                     seed=seed + k * 1000 + t).actions[0].numpy()
            err["real"].append(float(np.abs(real[arm] - truth).mean()))
            err["frozen"].append(float(np.abs(frozen[arm] - truth).mean()))
            err["hold"].append(float(np.abs(proprio[t, arm].numpy() - truth).mean()))
    if not err["real"]:
        raise FlywheelError(f"video_reliance: no episode has a full window of {w} steps")
    out: dict[str, Any] = {key: round(float(np.mean(v)), 5) for key, v in err.items()}
    out["real_vs_hold"] = round(out["real"] / out["hold"], 3)
    out["frozen_vs_hold"] = round(out["frozen"] / out["hold"], 3)
    out["windows"] = len(err["real"])
    return out
