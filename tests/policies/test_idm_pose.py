"""The pose target of the IDM: joint positions read off the frames, anchored at the measured ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flywheel.config import TrainConfig
from flywheel.training.idm import WindowDataset, train_idm
from policies.errors import PolicyError
from policies.idm import IDMConfig, InverseDynamicsModel
from policies.idm.modeling_idm import color_augment
from policies.idm.processor_idm import to_float_frames

torch.set_num_threads(1)
W, A = 4, 16


def tiny(pose_input: str = "pair", **kw) -> InverseDynamicsModel:
    torch.manual_seed(0)
    cfg = IDMConfig(window=W, image_size=32, cnn_channels=8, feature_dim=32, hidden_dim=32, target="pose",
                    pose_input=pose_input, noise_samples=3, **kw)
    return InverseDynamicsModel(cfg)


def episode(t: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"frames": rng.integers(0, 256, size=(t + 1, 32, 32, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(t + 1, 32)).astype(np.float32),
            "actions": rng.normal(size=(t, A)).astype(np.float32)}


def coded_video(q: torch.Tensor) -> torch.Tensor:
    """Frames whose first pixel says which frame they are (a stand-in for a robot in the image)."""
    v = torch.zeros(q.shape[0], 3, 32, 32)
    v[:, 0, 0, 0] = torch.arange(q.shape[0]) / 100.0
    return v


def perfect_reader(model: InverseDynamicsModel, q: torch.Tensor) -> None:
    """Make `read` read the true joint positions of the coded frames (pair: their difference)."""
    idx = lambda f: torch.round(f[:, 0, 0, 0] * 100).long()
    if model.config.pose_input == "pair":
        model.read = lambda fs, ft=None: (q[idx(ft)] - q[idx(fs)], None)
    else:
        model.read = lambda fs, ft=None: (q[idx(fs)] + 5.0, None)  # a constant bias cancels in the anchoring


@pytest.mark.parametrize("pose_input", ["pair", "frame"])
def test_extraction_anchors_the_read_positions_and_leads_them(pose_input):
    t = 11  # longer than one window: the pair reader chains blocks of W frames
    q = torch.cumsum(torch.randn(t, A, generator=torch.Generator().manual_seed(1)) * 0.1, dim=0)
    model = tiny(pose_input, pose_noise=0.0, pose_smooth=0)
    model.lead.fill_(0.5)
    perfect_reader(model, q)
    proprio0 = torch.cat([q[0] + 1.0, torch.zeros(A)])  # the measured joints differ from the "true" q by +1
    ex = model.extract(coded_video(q), proprio0)
    want = (q[1:] + 1.0) + 0.5 * (q[1:] - q[:-1])
    want[:, 14:] = q[1:, 14:] + 1.0  # grips are not led (they switch in a step)
    assert ex.actions.shape == (t - 1, A) and ex.spread.shape == (t - 1,)
    torch.testing.assert_close(ex.actions, want, atol=1e-5, rtol=0)
    assert float(ex.spread.max()) < 1e-6  # no pixel noise, identical draws
    frozen = model.extract(coded_video(q)[:1].expand(t, -1, -1, -1), proprio0)
    torch.testing.assert_close(frozen.actions, (q[0] + 1.0).expand(t - 1, A), atol=1e-5, rtol=0)  # a still video holds


def test_fit_pose_finds_the_lead_of_targets_over_positions():
    model = tiny()
    g = torch.Generator().manual_seed(0)
    step = torch.randn(200, W, A, generator=g) * 0.1  # q_t - q_0
    deltas = torch.cat([step * 1.3, step], dim=-1)  # targets run 30% ahead of the positions
    model.fit_normalization(torch.randn(50, A), torch.randn(50, 32), deltas=deltas)
    torch.testing.assert_close(model.lead, torch.full((A,), 0.3), atol=1e-4, rtol=0)
    torch.testing.assert_close(model.pose_std, step.reshape(-1, A).std(0), atol=1e-5, rtol=0)
    with pytest.raises(PolicyError, match="deltas"):
        tiny().fit_normalization(torch.randn(50, A), torch.randn(50, 32), deltas=torch.randn(50, W, A))
    bare = tiny()
    bare.fit_normalization(torch.randn(50, A) * 0.01, torch.randn(50, 32))  # no deltas: the action scale, no lead
    assert torch.equal(bare.pose_std, bare.action_std) and not bool(bare.lead.any())


@pytest.mark.parametrize("pose_input", ["pair", "frame"])
def test_pose_idm_trains_extracts_and_round_trips(tmp_path, pose_input):
    eps = [episode(12, 0), episode(9, 1)]
    ds = WindowDataset(eps, W, all_frames=True)
    item = ds[2]
    assert item["frames"].shape == (W + 1, 32, 32, 3) and item["frames"].dtype == torch.uint8  # converted per pair
    assert torch.equal(to_float_frames(item["frames"][0]), item["frame0"])
    assert torch.equal(to_float_frames(item["frames"][-1]), item["frame1"])
    model = tiny(pose_input)
    res = train_idm(model, ds, TrainConfig(batch_size=2, idm_batch_size=6), tmp_path / "run", steps=60, lr=3e-3,
                    progress=False)
    assert res.losses[-1] < res.losses[0]
    video = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    p0 = torch.from_numpy(eps[0]["proprio"][0])
    a, b = model.extract(video, p0, seed=1), model.extract(video, p0, seed=1)
    assert a.actions.shape == (6, A) and torch.equal(a.actions, b.actions) and bool(torch.isfinite(a.actions).all())
    assert float(a.spread.mean()) > 0  # pixel-noise draws disagree a little
    model.save_pretrained(tmp_path / "ckpt")
    again = InverseDynamicsModel.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(again.extract(video, p0, seed=1).actions, a.actions)


def test_pose_config_is_checked():
    with pytest.raises(ValueError, match="pose_input"):
        IDMConfig(target="pose", pose_input="both")
    with pytest.raises(ValueError, match="pose_noise"):
        IDMConfig(target="pose", pose_noise=-0.1)
    with pytest.raises(ValueError, match="idm_batch_size"):
        TrainConfig(idm_batch_size=0)
    with pytest.raises(ValueError, match="pose_color_aug"):
        IDMConfig(target="pose", pose_color_aug=1.5)
    with pytest.raises(ValueError, match="pose_color_gain"):
        IDMConfig(target="pose", pose_color_gain=1.0)


def test_colour_augmentation_changes_both_frames_of_a_pair_alike():
    g = torch.Generator().manual_seed(0)
    fs = torch.rand(64, 3, 8, 8, generator=g) * 0.4
    ft = 2 * fs  # any pixel of frame t is twice frame s's: a shared per-channel change keeps that
    torch.manual_seed(1)
    a, b = color_augment(fs, ft, p=1.0, gain=0.2)
    assert torch.allclose(b, 2 * a, atol=1e-6)
    changed = (a - fs).abs().flatten(1).amax(1) > 1e-3
    assert 0.8 < float(changed.float().mean()) <= 1.0  # (a pair may draw the identity permutation and gain ~1)
    # each output channel is one input channel, scaled by at most the gain
    for i in range(8):
        ratios = [[float((a[i, j] / fs[i, c].clamp_min(1e-6)).median()) for c in range(3)] for j in range(3)]
        assert all(any(abs(r - 1) <= 0.2 + 1e-4 and torch.allclose(a[i, j], (fs[i, c] * r).clamp(0, 1), atol=1e-4)
                       for c, r in enumerate(row)) for j, row in enumerate(ratios))
    same, same_t = color_augment(fs, ft, p=0.0, gain=0.2)
    assert torch.equal(same, fs) and torch.equal(same_t, ft)
    model = tiny(pose_color_aug=0.5)  # the training loss runs with it
    batch = {"frames": torch.rand(4, W + 1, 3, 32, 32), "proprio": torch.randn(4, 32), "qpos": torch.randn(4, W, A)}
    loss, _ = model.train()._pose_loss(batch)
    assert torch.isfinite(loss)



def test_smoothing_keeps_smooth_motion_and_removes_jitter():
    t = torch.arange(9.0)[:, None]
    q = 0.02 * t + 0.004 * t**2 + torch.linspace(0, 1, A)[None]  # a quadratic motion of every joint
    jitter = 0.03 * torch.randn(9, A, generator=torch.Generator().manual_seed(0))
    model = tiny(pose_noise=0.0, pose_smooth=2)
    p0 = torch.cat([q[0], torch.zeros(A)])
    perfect_reader(model, q)
    torch.testing.assert_close(model.extract(coded_video(q), p0).actions[:, :14], q[1:, :14], atol=1e-5, rtol=0)
    perfect_reader(model, q + jitter)
    smooth = model.extract(coded_video(q), p0).actions
    model.config.pose_smooth = 0
    raw = model.extract(coded_video(q), p0).actions
    accel = lambda a: a[:, :14].diff(n=2, dim=0).abs().mean()
    assert accel(smooth) < 0.5 * accel(raw)  # the jitter's accelerations, which the planner refuses
    torch.testing.assert_close(smooth[:, 14:], raw[:, 14:])  # grips are read as they are


@pytest.mark.parametrize("pose_input", ["pair", "frame"])
def test_grip_classifier_trains_and_sets_the_grips(tmp_path, pose_input):
    eps = [episode(12, 0), episode(9, 1)]
    for e in eps:  # grip commands fully open or closed, as the expert gives them
        e["actions"][:, 14:] = np.where(e["actions"][:, 14:] > 0, 0.045, 0.0)
    model = tiny(pose_input, pose_grip="classify")
    res = train_idm(model, WindowDataset(eps, W, all_frames=True), TrainConfig(batch_size=2, idm_batch_size=6),
                    tmp_path / "run", steps=40, lr=3e-3, progress=False)
    assert res.losses[-1] < res.losses[0]
    video = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    p0 = torch.from_numpy(eps[0]["proprio"][0])
    grips = model.extract(video, p0).actions[:, 14:]
    assert bool((grips.eq(0.0) | grips.eq(torch.tensor(0.045))).all())
    model.grip_head[-1].bias.data.fill_(20.0)  # certain: closed
    assert model.extract(video, p0).actions[:, 14:].eq(0.0).all()
    model.grip_head[-1].bias.data.fill_(-20.0)
    assert model.extract(video, p0).actions[:, 14:].eq(0.045).all()
    with pytest.raises(ValueError, match="pose_grip"):
        IDMConfig(target="pose", pose_grip="both")


def test_grip_lag_reads_each_command_off_a_later_frame():
    t, lag = 9, 2
    q = torch.zeros(t, A)
    model = tiny("pair", pose_grip="classify", pose_grip_lag=lag, pose_noise=0.0)
    idx = lambda f: torch.round(f[:, 0, 0, 0] * 100).long()
    closed_from = 5  # frames 5.. show the grip closed (its consequence)
    model.read = lambda fs, ft=None: (q[idx(ft)] - q[idx(fs)], (idx(ft) >= closed_from).float()[:, None].expand(-1, 2))
    grips = model.extract(coded_video(q), torch.zeros(32)).actions[:, 14]
    # step j's command is read at frame j + 1 + lag: closed from step closed_from - 1 - lag on
    assert grips.tolist() == pytest.approx([0.045] * (closed_from - 1 - lag) + [0.0] * (t - closed_from + lag))
    with pytest.raises(ValueError, match="pose_grip_lag"):
        IDMConfig(target="pose", pose_grip="classify", pose_grip_lag=8)
    with pytest.raises(ValueError, match="pose_grip_lag"):
        IDMConfig(target="pose", pose_grip_lag=1)  # regressed grips have no labels to lag


def test_grip_lag_labels_each_pair_with_an_earlier_command(monkeypatch):
    """With lag W-1 only pairs ending at the window's last frame are labelled, with the window's first command."""
    eps = [episode(12, 0)]
    eps[0]["actions"][:, 14:] = 0.045
    eps[0]["actions"][6:, 14:] = 0.0  # closed from step 6
    ds = WindowDataset(eps, W, all_frames=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))  # window i starts at step i
    seen = []
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def spy(logits, target, **kw):
        seen.append((target.clone(), kw["weight"].clone()))
        return bce(logits, target, **kw)

    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy_with_logits", spy)
    torch.manual_seed(1)
    tiny("pair", pose_grip="classify", pose_grip_lag=W - 1)(batch)
    target, weight = seen[0]
    valid = weight[:, 0] > 0
    assert 0 < int(valid.sum()) < len(ds)  # pairs that end before frame W carry no label
    starts = torch.arange(len(ds))
    assert torch.equal(target[valid, 0], (starts[valid] >= 6).float())


def test_pose_loss_reads_uint8_env_frames_as_it_reads_float_frames():
    """The dataset hands the pose loss unconverted uint8 windows; converting only the pair must change nothing."""
    eps = [episode(12, 0)]
    ds = WindowDataset(eps, W, all_frames=True)
    batch = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ds[0]}
    model = tiny("pair")
    model.fit_normalization(*ds.stats(), deltas=ds.deltas())
    losses = []
    for frames in (batch["frames"], to_float_frames(batch["frames"])):
        torch.manual_seed(5)
        losses.append(model({**batch, "frames": frames})[0])
    assert batch["frames"].dtype == torch.uint8 and float(losses[0]) > 0
    torch.testing.assert_close(losses[0], losses[1])
    with pytest.raises(PolicyError, match="all_frames"):
        model({k: v for k, v in batch.items() if k != "frames"})


def test_extract_joints_reads_targets_and_grips_off_imagined_joint_positions():
    """`extract_joints`: arm targets q_{t+1} + lead (q_{t+1} - q_t), anchored at the measured joints; a grip is
    closed from the step its finger's imagined position drops below the threshold; bad shapes are refused."""
    idm = InverseDynamicsModel(IDMConfig(target="pose"))
    idm.lead.fill_(0.5)
    q = torch.zeros(9, 16)
    q[:, 0] = torch.linspace(0.0, 0.4, 9)
    q[:, 14:] = 0.045
    q[5:, 14] = 0.02  # the left fingers close on a cube between frames 4 and 5
    proprio = torch.zeros(32)
    proprio[0] = 1.0  # the measured pose: the imagined motion is read relative to frame 0, anchored here
    proprio[14:16] = 0.045
    ext = idm.extract_joints(q, proprio)
    assert ext.actions.shape == (8, 16) and torch.equal(ext.spread, torch.zeros(8))
    assert torch.allclose(ext.actions[:, 0], 1.0 + torch.linspace(0.05, 0.4, 8) + 0.5 * 0.05)
    open_, closed = torch.tensor(0.045), torch.tensor(0.0)
    assert torch.equal(ext.actions[:, 14], torch.stack([open_] * 4 + [closed] * 4))
    assert torch.equal(ext.actions[:, 15], open_.expand(8))
    q[3, 1] = float("nan")
    assert torch.isnan(idm.extract_joints(q, proprio).actions[:, 1]).any()  # NaN is kept for the planner to reject
    with pytest.raises(PolicyError, match="imagined joints"):
        idm.extract_joints(torch.zeros(9, 15), proprio)
