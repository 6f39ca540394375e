"""The expert oracle world model: its "imagined" future is what the expert really does next."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.backend import make_backend
from envs.splits import load_split
from flywheel.compose import compose, to_object
from flywheel.evaluation.oracle import ExpertOracleWorldModel
from policies.base import make_policy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    cfg = to_object(compose(["preset=demo"]))
    backend = make_backend("sim", cfg.backend, cfg.env)
    item = next(i for i in load_split("in_distribution") if i.family == "pick")
    yield cfg, backend, item
    backend.close()


def _expert(cfg, env, seed):
    return make_policy("scripted_expert", cfg, env=env, seed=seed)


def test_oracle_future_is_the_experts_real_future(setup):
    cfg, backend, item = setup
    obs = backend.reset(task=item.task(), seed=item.seed)
    real = _expert(cfg, backend.env, item.seed)
    real.reset(backend.task.to_dict(), item.instruction, None)
    for _ in range(6):  # the robot follows the expert for a while
        obs = backend.step(real.act(obs).actions).observations[-1]
    oracle = ExpertOracleWorldModel(cfg.env, backend.get_state, lambda env: _expert(cfg, env, item.seed))
    try:
        video = oracle.imagine(None, "", n=2, num_frames=5)
    finally:
        oracle.close()
    assert video.shape == (2, 5, 3, cfg.env.image_size, cfg.env.image_size)
    assert oracle.replayed_steps == 6
    frames = [obs["rgb"]]
    for _ in range(4):  # what the expert really does next
        obs = backend.step(real.act(obs).actions).observations[-1]
        frames.append(obs["rgb"])
    truth = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(video[0], video[1])
    # starts at the robot's current frame (to within the env's observation, which renders the body poses
    # of the last physics substep's start: ~0.5 mm away, a few edge pixels)
    assert (video[0, 0] - truth[0]).abs().mean() < 0.01
    err = (video[0] - truth).abs().mean().item()
    moved = (truth[-1] - truth[0]).abs().mean().item()
    assert err < 0.1 * moved, (err, moved)  # the future is the expert's, not a still scene


def test_oracle_starts_from_the_real_state_after_a_deviation(setup):
    cfg, backend, item = setup
    obs = backend.reset(task=item.task(), seed=item.seed)
    q = obs["proprio"][:16].copy()
    q[0] += 0.2  # the robot did something the expert would not have
    obs = backend.step(np.stack([q, q, q])).observations[-1]
    oracle = ExpertOracleWorldModel(cfg.env, backend.get_state, lambda env: _expert(cfg, env, item.seed))
    try:
        video = oracle.imagine(None, "", n=1, num_frames=3)
    finally:
        oracle.close()
    now = torch.from_numpy(obs["rgb"].copy()).permute(2, 0, 1).float() / 255
    assert (video[0, 0] - now).abs().mean() < 0.01
    assert backend.env.steps == 3  # the robot's env was not touched


def test_planner_executing_the_oracles_own_actions_succeeds(setup):
    """The control of the oracle planner: with the actions that made each imagined video in place of the
    IDM's extraction, the real planner (chunking, replanning, scoring, rate limit, safety filter) succeeds."""
    from flywheel.evaluation.feasibility import default_checker
    from flywheel.evaluation.oracle import OracleActions
    from policies.imagine_then_act import ImagineThenActPolicy

    cfg, backend, item = setup
    oracle = ExpertOracleWorldModel(cfg.env, backend.get_state, lambda env: _expert(cfg, env, item.seed))
    idm = OracleActions(oracle)
    with pytest.raises(Exception, match="imagined just before"):
        idm.extract(torch.zeros(9, 3, 64, 64), torch.zeros(32))
    policy = ImagineThenActPolicy(cfg, world_model=oracle, idm=idm,
                                  feasibility=default_checker(1 / cfg.env.control_hz).check,
                                  action_low=backend.action_low, action_high=backend.action_high,
                                  workspace=backend.safety.workspace)
    policy.pcfg.n_candidates = 1
    obs = backend.reset(task=item.task(), seed=item.seed)
    policy.reset(backend.task.to_dict(), item.instruction, backend.scene_description())
    success, steps = False, 0
    try:
        while steps < cfg.env.max_steps and not success:
            out = policy.act(obs)
            assert not out.hold, out.failure_reason
            res = backend.step(out.actions)
            steps += len(res.observations)
            obs, success = res.observations[-1], bool(res.success)
    finally:
        oracle.close()
    assert success


def test_oracle_grips_splices_the_oracles_grips_or_arms_into_the_idms_extraction(setup):
    from envs.robot import GRIPPER_INDEX
    from flywheel.evaluation.oracle import OracleGrips
    from policies.idm.modeling_idm import Extraction

    cfg, backend, item = setup
    backend.reset(task=item.task(), seed=item.seed)
    oracle = ExpertOracleWorldModel(cfg.env, backend.get_state, lambda env: _expert(cfg, env, item.seed))

    class Holder:  # an "IDM" that reads 7.0 everywhere
        def extract(self, video, proprio0, seed=0):
            return Extraction(actions=torch.full((video.shape[0] - 1, 16), 7.0), spread=torch.ones(video.shape[0] - 1))

    grips = sorted(GRIPPER_INDEX.values())
    arms = [j for j in range(16) if j not in grips]
    try:
        video = oracle.imagine(None, "", n=1, num_frames=5)[0]
        truth = torch.as_tensor(oracle.last_actions, dtype=torch.float32)
        g = OracleGrips(oracle, Holder(), take="grips").extract(video, torch.zeros(32))
        a = OracleGrips(oracle, Holder(), take="arms").extract(video, torch.zeros(32))
    finally:
        oracle.close()
    assert torch.equal(g.actions[:, grips], truth[:, grips]) and (g.actions[:, arms] == 7.0).all()
    assert torch.equal(a.actions[:, arms], truth[:, arms]) and (a.actions[:, grips] == 7.0).all()
    assert (g.spread == 1).all()
    with pytest.raises(ValueError, match="take"):
        OracleGrips(oracle, Holder(), take="both")


def test_oracle_joints_reads_the_experts_joint_positions_with_extract_joints(setup):
    """`OracleJoints`: the IDM's reading of the oracle video's joint positions (the ceiling of a world model that
    imagines the joints) starts at the robot's joints and follows the expert's own targets far closer than
    holding still does."""
    from envs.robot import GRIPPER_INDEX
    from flywheel.evaluation.oracle import OracleJoints
    from policies.idm import IDMConfig, InverseDynamicsModel

    cfg, backend, item = setup
    obs = backend.reset(task=item.task(), seed=item.seed)
    oracle = ExpertOracleWorldModel(cfg.env, backend.get_state, lambda env: _expert(cfg, env, item.seed))
    reader = OracleJoints(oracle, InverseDynamicsModel(IDMConfig(target="pose")))
    try:
        with pytest.raises(Exception, match="imagined just before"):
            reader.extract(torch.zeros(9, 3, 64, 64), torch.zeros(32))
        video = oracle.imagine(None, "", n=1, num_frames=9)[0]
        ext = reader.extract(video, torch.from_numpy(obs["proprio"]))
    finally:
        oracle.close()
    assert np.allclose(oracle.last_joints[0], obs["proprio"][:16], atol=1e-3)
    arm = [i for i in range(16) if i not in GRIPPER_INDEX.values()]
    want = oracle.last_actions[:, arm]
    err = np.abs(ext.actions.numpy()[:, arm] - want).mean()
    hold = np.abs(obs["proprio"][arm][None] - want).mean()
    assert len(arm) == 14 and err < 0.5 * hold, (err, hold)


def test_noisy_oracle_joints_is_off_by_the_asked_fraction_of_holding_still(setup):
    """`NoisyOracleJoints`: error 0 is `OracleJoints`; error E moves the arm targets of the first `horizon`
    steps by E times holding still's error (mean absolute), in a direction drawn from the candidate's seed;
    the grips stay the oracle's; a negative error is refused."""
    from flywheel.evaluation.oracle import NoisyOracleJoints, OracleJoints
    from policies.idm import IDMConfig, InverseDynamicsModel

    cfg, backend, item = setup
    obs = backend.reset(task=item.task(), seed=item.seed)
    oracle = ExpertOracleWorldModel(cfg.env, backend.get_state, lambda env: _expert(cfg, env, item.seed))
    idm = InverseDynamicsModel(IDMConfig(target="pose"))
    proprio = torch.from_numpy(obs["proprio"])
    try:
        video = oracle.imagine(None, "", n=1, num_frames=9)[0]
        exact = OracleJoints(oracle, idm).extract(video, proprio).actions.numpy()
        noisy = {(e, s): NoisyOracleJoints(oracle, idm, e, horizon=4).extract(video, proprio, seed=s).actions.numpy()
                 for e, s in ((0.0, 0), (0.5, 0), (0.5, 1), (1.0, 0))}
        biased = NoisyOracleJoints(oracle, idm, 0.5, horizon=4, mode="shared")
        shared = [biased.extract(video, proprio, seed=s).actions.numpy() for s in (0, 1)]  # episode seed 0
        biased.episode_seed = 7
        other_episode = biased.extract(video, proprio, seed=0).actions.numpy()
        slow = NoisyOracleJoints(oracle, idm, 0.5, horizon=4, mode="undershoot").extract(video, proprio).actions.numpy()
    finally:
        oracle.close()
    np.testing.assert_allclose(noisy[0.0, 0], exact, atol=1e-6)
    hold = np.abs(exact[:4, :14] - obs["proprio"][:14]).mean()
    assert hold > 0.01  # the expert moves its arms here
    for (e, s), acts in noisy.items():
        off = acts - exact
        assert np.abs(off[:4, :14]).mean() == pytest.approx(e * hold, rel=1e-4)
        np.testing.assert_allclose(off[:, 14:], 0.0, atol=1e-7)  # grips untouched
        assert np.abs(off[-1, :14]).mean() >= np.abs(off[0, :14]).mean()  # the error grows along the chunk
    assert not np.allclose(noisy[0.5, 0], noisy[0.5, 1])  # each candidate seed its own direction
    np.testing.assert_array_equal(shared[0], shared[1])  # shared: one direction for every candidate and step
    np.testing.assert_allclose(shared[0], noisy[0.5, 0], atol=1e-6)  # (episode seed 0 draws as candidate seed 0)
    assert not np.allclose(other_episode, shared[0])  # ... and another for another episode
    # undershoot: halfway between the measured joints and the oracle's targets, every step
    np.testing.assert_allclose(slow[:, :14], 0.5 * (exact[:, :14] + obs["proprio"][:14]), atol=1e-5)
    with pytest.raises(ValueError, match="error"):
        NoisyOracleJoints(oracle, idm, -0.1, horizon=4)
    with pytest.raises(ValueError, match="mode"):
        NoisyOracleJoints(oracle, idm, 0.5, horizon=4, mode="sideways")
