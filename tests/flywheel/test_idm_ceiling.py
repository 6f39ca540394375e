"""The IDM ceiling: open-loop replay from recorded initial states, in memory and through a store."""
from __future__ import annotations

import pytest
import torch

from db.records import EpisodeRecord
from db.store import ExperienceStore
from envs.expert import ScriptedExpert
from envs.play import collect_episode
from envs.splits import load_split
from envs.tabletop import HumanoidTabletopEnv
from flywheel.config import TrainConfig
from flywheel.errors import FlywheelError
from flywheel.evaluation.dtw import hold_baseline
from flywheel.evaluation.idm_ceiling import CeilingEpisode, ceiling_episodes_from_store, idm_ceiling
from flywheel.training.idm import WindowDataset, train_idm
from policies.idm import IDMConfig, InverseDynamicsModel

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env():
    return HumanoidTabletopEnv()


@pytest.fixture(scope="module")
def episodes(env):
    """One pick and one place expert episode on in_distribution items (both succeed)."""
    items = load_split("in_distribution")
    chosen = [next(i for i in items if i.family == f) for f in ("pick", "place")]
    eps = [collect_episode(env, ScriptedExpert(env, seed=i.seed), i.task(), i.seed) for i in chosen]
    assert all(e.success for e in eps)
    return eps


def test_true_actions_reproduce_the_expert_in_memory(env, episodes):
    eps = [CeilingEpisode.from_episode_data(e) for e in episodes]
    out = idm_ceiling(None, eps, env=env, actions=[e.actions for e in eps])
    assert set(out["families"]) == {"pick", "place"}
    for fam in out["families"].values():
        assert fam["n"] == 1 and fam["expert_success"] == 1.0 and fam["replay_success"] == 1.0
        assert fam["relative"] == 1.0
    assert [r["replay_success"] for r in out["episodes"]] == [e.success for e in eps]


def test_holding_still_fails_the_ceiling(env, episodes):
    eps = [CeilingEpisode.from_episode_data(e) for e in episodes]
    still = [hold_baseline(e.proprio[0], len(e.actions), 16) for e in eps]
    out = idm_ceiling(None, eps, env=env, actions=still, settle_steps=2)
    assert out["overall"]["replay_success"] == 0.0 and out["overall"]["relative"] == 0.0


def test_from_a_store_with_recorded_initial_states(tmp_path, env, episodes):
    store = ExperienceStore.open(f"sqlite:///{tmp_path / 's.sqlite'}", str(tmp_path / "art"), create=True)
    ids = []
    for e in episodes:
        rec = EpisodeRecord(source="expert", task_family=e.task["family"], instruction=e.task["instruction"],
                            policy="scripted_expert", success=e.success, length=e.length, task=e.task)
        arrays = {"frames": e.frames, "proprio": e.proprio, "actions": e.actions}
        ids.append(store.record_episode(rec, arrays, initial_state=e.initial_state))
    eps = ceiling_episodes_from_store(store, ids)
    assert [e.family for e in eps] == ["pick", "place"] and eps[0].id == ids[0]
    out = idm_ceiling(None, eps, env=env, actions=[e.actions for e in eps])
    assert out["overall"]["relative"] == 1.0


def test_idm_path_returns_rates_per_family(tmp_path, env, episodes):
    torch.manual_seed(0)
    cfg = IDMConfig(window=4, image_size=32, cnn_channels=8, feature_dim=32, hidden_dim=32, head_layers=1,
                    noise_samples=2, flow_steps=2, proprio_passes=1)  # fmt: skip
    model = InverseDynamicsModel(cfg)
    data = [{"frames": e.frames, "proprio": e.proprio, "actions": e.actions} for e in episodes]
    train_idm(model, WindowDataset(data, cfg.window), TrainConfig(batch_size=4), tmp_path, steps=3, lr=1e-3,
              progress=False)
    out = idm_ceiling(model, [CeilingEpisode.from_episode_data(e) for e in episodes], env=env)
    assert set(out["families"]) == {"pick", "place"}
    for fam in [*out["families"].values(), out["overall"]]:
        assert 0.0 <= fam["replay_success"] <= 1.0 and 0.0 <= fam["relative"] <= 1.0
    assert out["overall"]["n"] == 2


def test_bad_inputs_raise(env, episodes):
    eps = [CeilingEpisode.from_episode_data(e) for e in episodes]
    with pytest.raises(FlywheelError, match="no episodes"):
        idm_ceiling(None, [], env=env, actions=[])
    with pytest.raises(FlywheelError, match="2 episodes"):
        idm_ceiling(None, eps, env=env, actions=[eps[0].actions])
    with pytest.raises(FlywheelError, match="needs an IDM"):
        idm_ceiling(None, eps, env=env)


def test_replanning_extraction_uses_each_chunks_frames_and_recorded_proprio(episodes):
    from types import SimpleNamespace

    from flywheel.evaluation.idm_ceiling import extract_actions

    class ConstantIDM:  # every action of a chunk = the chunk's first joint positions + its call number
        def __init__(self) -> None:
            self.calls: list[tuple[int, torch.Tensor]] = []

        def extract(self, video, proprio0, seed=0):
            self.calls.append((video.shape[0], proprio0.clone()))
            acts = proprio0[:16].expand(video.shape[0] - 1, 16) + len(self.calls)
            return SimpleNamespace(actions=acts.clone(), spread=torch.zeros(video.shape[0] - 1))

    ep = CeilingEpisode.from_episode_data(episodes[1])
    t, h = len(ep.actions), 8
    idm = ConstantIDM()
    out = extract_actions(idm, ep, replan_every=h)
    starts = list(range(0, t, h))
    assert out.shape == (t, 16) and len(idm.calls) == len(starts)
    for k, (s, (frames, p0)) in enumerate(zip(starts, idm.calls)):
        assert frames == min(h, t - s) + 1 and torch.equal(p0, torch.as_tensor(ep.proprio[s]))
        assert (out[s : s + h] == ep.proprio[s][:16] + (k + 1)).all()
    with pytest.raises(FlywheelError, match="replan_every"):
        extract_actions(idm, ep, replan_every=-1)


def test_lookahead_extraction_sees_frames_ahead_but_keeps_the_chunk(episodes):
    from types import SimpleNamespace

    from flywheel.evaluation.idm_ceiling import extract_actions

    class CountingIDM:  # actions = the window's first joint positions + how many frames it was given
        def __init__(self) -> None:
            self.frames: list[int] = []

        def extract(self, video, proprio0, seed=0):
            self.frames.append(video.shape[0])
            acts = proprio0[:16].expand(video.shape[0] - 1, 16) + video.shape[0]
            return SimpleNamespace(actions=acts.clone(), spread=torch.zeros(video.shape[0] - 1))

    ep = CeilingEpisode.from_episode_data(episodes[1])
    t, h, look = len(ep.actions), 2, 8
    idm = CountingIDM()
    out = extract_actions(idm, ep, replan_every=h, lookahead=look)
    starts = list(range(0, t, h))
    assert out.shape == (t, 16)
    assert idm.frames == [min(look, t - s) + 1 for s in starts]  # the frames ahead, up to the episode's end
    for s, n in zip(starts, idm.frames):
        assert (out[s : s + h] == ep.proprio[s][:16] + n).all()  # only the chunk's first h actions are kept
    with pytest.raises(FlywheelError, match="lookahead"):
        extract_actions(idm, ep, replan_every=4, lookahead=2)


def test_closed_loop_tracking_feeds_back_what_the_sim_shows(env, episodes):
    from types import SimpleNamespace

    import numpy as np

    from flywheel.evaluation.idm_ceiling import track_video
    from policies.idm.processor_idm import to_float_frames

    class ReplayIDM:  # returns the recorded action of each step, recording what it was shown
        def __init__(self, actions) -> None:
            self.actions, self.seen = actions, []

        def extract(self, video, proprio0, seed=0):
            self.seen.append((video.clone(), proprio0.clone()))
            t = len(self.seen) - 1
            acts = torch.as_tensor(self.actions[t : t + video.shape[0] - 1].copy())
            return SimpleNamespace(actions=acts, spread=torch.zeros(len(acts)))

    ep = CeilingEpisode.from_episode_data(episodes[0])
    idm = ReplayIDM(ep.actions)
    assert track_video(idm, env, ep, lookahead=4) is True  # the expert's own actions succeed
    video, p0 = idm.seen[0]
    assert video.shape[0] == 5 and torch.allclose(video, to_float_frames(torch.as_tensor(ep.frames[:5])))
    assert torch.allclose(p0, torch.as_tensor(ep.proprio[0]))
    # holding still: the sim's own observation comes back each step, and the task fails
    still = np.repeat(ep.proprio[:1, :16], len(ep.actions), axis=0)
    idm = ReplayIDM(still)
    assert track_video(idm, env, ep, lookahead=4) is False
    later, p_later = idm.seen[5]
    assert torch.allclose(p_later[:16], torch.as_tensor(ep.proprio[0][:16]), atol=0.05)  # the arm stayed put
    assert torch.allclose(later[1:], to_float_frames(torch.as_tensor(ep.frames[6:10])))  # the recording ahead
    with pytest.raises(FlywheelError, match="lookahead"):
        track_video(idm, env, ep, lookahead=0)
    # the same through idm_ceiling, which summarises per family
    out = idm_ceiling(ReplayIDM(ep.actions), [ep], env=env, track=4)
    assert out["overall"]["relative"] == 1.0 and out["track"] == 4
    with pytest.raises(FlywheelError, match="track"):
        idm_ceiling(None, [ep], env=env, track=4)


def test_video_reliance_tells_a_motion_reader_from_a_state_predictor(episodes):
    from types import SimpleNamespace

    import numpy as np

    from flywheel.evaluation.idm_ceiling import video_reliance

    eps = [CeilingEpisode.from_episode_data(e) for e in episodes]
    lookup = {}  # frame bytes at t+1 -> the recorded action at t: a perfect reader of the next frame
    for e in eps:
        for t in range(len(e.actions)):
            lookup[np.asarray(e.frames[t + 1]).tobytes()] = e.actions[t]

    class Reader:
        config = SimpleNamespace(window=4)

        def __init__(self, reads_video: bool) -> None:
            self.reads_video = reads_video

        def extract(self, video, proprio0, seed=0):
            nxt = (video[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().tobytes()
            a = lookup.get(nxt) if self.reads_video else None
            first = torch.as_tensor(a) if a is not None else proprio0[:16]  # else: hold still
            return SimpleNamespace(actions=first.expand(video.shape[0] - 1, 16).clone(), spread=torch.zeros(1))

    reader = video_reliance(Reader(True), eps, stride=3)
    assert reader["real"] < 1e-6 and reader["real_vs_hold"] < 0.01
    assert reader["frozen_vs_hold"] > 0.5  # a frozen video shows no motion to read
    holder = video_reliance(Reader(False), eps, stride=3)
    assert holder["real_vs_hold"] == pytest.approx(1.0, abs=1e-3) and holder["windows"] == reader["windows"] > 10
    with pytest.raises(FlywheelError, match="stride"):
        video_reliance(Reader(True), eps, stride=0)
