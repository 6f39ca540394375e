"""The inverse dynamics model: shapes, learning, test-time averaging, proprio estimates, checkpoints."""
from __future__ import annotations

import pytest
import torch

from policies.errors import CheckpointError, PolicyError
from policies.idm import IDMConfig, InverseDynamicsModel, average_windows
from policies.idm.processor_idm import num_windows, pad_video, window_proprio

torch.set_num_threads(1)


def tiny(**kw) -> IDMConfig:
    base = {"cnn_channels": 8, "feature_dim": 32, "hidden_dim": 64, "head_layers": 2, "noise_samples": 4}
    return IDMConfig(**{**base, **kw})


def batch(b: int = 4, w: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "frame0": torch.rand(b, 3, 64, 64, generator=g),
        "frame1": torch.rand(b, 3, 64, 64, generator=g),
        "proprio": torch.randn(b, 32, generator=g),
        "actions": torch.randn(b, w, 16, generator=g),
        "qpos": torch.randn(b, w, 16, generator=g),
    }


# ------------------------------------------------------------------------------- gripper decoding
def test_gripper_snap_makes_grip_commands_binary_and_leaves_the_arm_alone():
    from policies.idm.modeling_idm import snap_grippers

    cfg = tiny(gripper_snap=0.75)
    acts = torch.rand(6, 16)
    acts[:, 14] = torch.tensor([0.0, 0.02, 0.033, 0.034, 0.045, 0.05])  # held at the cube's width, opening
    acts[:, 15] = torch.tensor([0.045, 0.04, 0.0, -0.01, 0.022, 0.0338])
    out = snap_grippers(acts, cfg)
    assert torch.equal(out[:, :14], acts[:, :14])  # the arm is untouched
    assert out[:, 14].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.045, 0.045, 0.045])  # open from 0.03375 on
    assert out[:, 15].tolist() == pytest.approx([0.045, 0.045, 0.0, 0.0, 0.0, 0.045])
    assert torch.equal(snap_grippers(acts, tiny()), acts)  # gripper_snap 0: no snapping
    with pytest.raises(ValueError, match="gripper_snap"):
        tiny(gripper_snap=1.0)
    with pytest.raises(ValueError, match="gripper_dims"):
        tiny(gripper_dims=(16,))


def test_extract_snaps_the_grippers_when_configured():
    torch.manual_seed(0)
    video, p0 = torch.rand(10, 3, 64, 64), torch.zeros(32)
    plain = InverseDynamicsModel(tiny()).eval()
    snapped = InverseDynamicsModel(tiny(gripper_snap=0.5)).eval()
    snapped.load_state_dict(plain.state_dict())
    a, b = plain.extract(video, p0, seed=1).actions, snapped.extract(video, p0, seed=1).actions
    assert torch.equal(a[:, :14], b[:, :14])
    grip = b[:, 14:]
    assert bool(((grip == 0.0) | ((grip - 0.045).abs() < 1e-7)).all())  # only fully closed or fully open
    assert torch.equal(b[:, 14:] > 0, a[:, 14:] >= 0.0225)


# ----------------------------------------------------------------------------------------- shapes
def test_forward_and_extract_shapes():
    torch.manual_seed(0)
    model = InverseDynamicsModel(tiny())
    loss, logs = model(batch())
    assert loss.dim() == 0 and torch.isfinite(loss) and set(logs) == {"loss", "action_mae"}
    model.eval()
    for t in (16, 9, 5, 2):  # 5 and 2 frames: fewer than W actions, padded with the last frame
        ext = model.extract(torch.rand(t, 3, 64, 64), torch.zeros(32))
        assert ext.actions.shape == (t - 1, 16) and ext.spread.shape == (t - 1,)
        assert ext.actions.dtype == torch.float32 and bool((ext.spread >= 0).all())


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_extract_is_deterministic_for_a_seed_and_resizes_frames(fusion):
    model = InverseDynamicsModel(tiny(fusion=fusion)).eval()
    video, p0 = torch.rand(12, 3, 48, 48), torch.randn(32)  # 48x48 frames resized to image_size 64
    a, b = model.extract(video, p0, seed=3), model.extract(video, p0, seed=3)
    c = model.extract(video, p0, seed=4)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.spread, b.spread)
    assert not torch.equal(a.actions, c.actions)


def test_extract_rejects_bad_inputs():
    model = InverseDynamicsModel(tiny()).eval()
    with pytest.raises(PolicyError, match="video"):
        model.extract(torch.rand(1, 3, 64, 64), torch.zeros(32))
    with pytest.raises(PolicyError, match="proprio0"):
        model.extract(torch.rand(4, 3, 64, 64), torch.zeros(16))


# --------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("target,fusion", [("absolute", "late"), ("delta", "late"), ("delta", "early")])
def test_overfits_a_tiny_batch(target, fusion):
    torch.manual_seed(0)
    model = InverseDynamicsModel(tiny(flow_steps=8, target=target, fusion=fusion))
    data = batch(b=4)
    q0 = data["proprio"][:, None, :16]
    deltas = torch.cat([data["actions"] - q0, data["qpos"] - q0], dim=-1)
    model.fit_normalization(data["actions"].reshape(-1, 16), data["proprio"], deltas=deltas)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(400):
        loss, _ = model(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last < 0.25 * first, (first, last)
    # sampling from the learned flow reproduces the memorised chunks far better than the data spread
    model.eval()
    with torch.no_grad():
        cond = model.condition(*model.encode_pairs(data["frame0"], data["frame1"]).chunk(2, dim=-1), data["proprio"])
        noise = torch.randn(4, 8 * model.token_dim, generator=torch.Generator().manual_seed(0))
        pred = model.sample(cond, noise, data["proprio"][:, :16])[..., :16]
    err = (pred - data["actions"]).pow(2).mean()
    spread = data["actions"].var() if target == "absolute" else deltas[..., :16].var()  # what the head denoises
    assert err < 0.1 * spread, (float(err), float(spread))


def test_delta_target_needs_future_joint_positions_and_matching_stats():
    model = InverseDynamicsModel(tiny(target="delta"))
    data = batch()
    with pytest.raises(PolicyError, match="qpos"):
        model({k: v for k, v in data.items() if k != "qpos"})
    with pytest.raises(PolicyError, match="deltas"):
        model.fit_normalization(data["actions"].reshape(-1, 16), data["proprio"], deltas=torch.zeros(5, 8, 16))


def test_chained_extraction_integrates_constant_deltas_exactly():
    """A delta head that always says "each step moves every joint by +1" (zero-init output, ~zero std):
    window n starts where the windows before it put frame n, so action t is proprio0 + t + 1."""
    w = 4
    model = InverseDynamicsModel(tiny(target="delta", window=w, noise_samples=2)).eval()
    steps = torch.arange(1.0, w + 1)[:, None].expand(w, 16)
    model.fit_normalization(torch.randn(8, 16), torch.randn(8, 32))
    model.delta_mean.copy_(torch.cat([steps, steps], dim=-1))
    model.delta_std.fill_(1e-12)  # the zero-initialised head outputs v = 0: x0 = noise * std + mean
    p0 = torch.randn(32)
    ext = model.extract(torch.rand(11, 3, 64, 64), p0)
    expected = p0[:16] + torch.arange(1.0, 11.0)[:, None]
    assert torch.allclose(ext.actions, expected, atol=1e-4), (ext.actions - expected).abs().max()
    assert float(ext.spread.max()) < 1e-6


def test_spatial_softmax_finds_a_peak_and_keypoints_reach_the_features():
    from policies.idm.modeling_idm import SpatialSoftmax

    h = torch.full((1, 2, 5, 9), -1e4)
    h[0, 0, 0, 8] = 0.0  # top right: x = 1, y = -1
    h[0, 1, 2, 4] = 0.0  # centre
    assert torch.allclose(SpatialSoftmax()(h), torch.tensor([[1.0, 0.0, -1.0, 0.0]]), atol=1e-5)
    model = InverseDynamicsModel(tiny(keypoints=8))
    assert model.backbone.proj.in_features == 8 * 4 * 16 + 16
    model.backbone(batch()["frame0"]).pow(2).sum().backward()
    assert model.backbone.kp[0].weight.grad.abs().sum() > 0  # the keypoints feed the features


# ------------------------------------------------------------------------------ window averaging
def test_average_windows_constant_prediction_per_window_is_exact():
    n_windows, k, w, n_actions = 6, 3, 4, 9  # windows start 0..5 and cover steps n..n+3
    c = torch.arange(n_windows, dtype=torch.float64) * 10.0  # window n predicts the constant c_n
    preds = c.view(-1, 1, 1, 1).expand(n_windows, k, w, 2).clone()
    mean, spread = average_windows(preds, n_actions)
    for t in range(n_actions):
        covering = [c[n] for n in range(max(0, t - w + 1), min(t, n_windows - 1) + 1)]
        assert torch.allclose(mean[t], torch.stack(covering).mean().expand(2))
    assert mean[0, 0] == 0.0 and mean[3, 0] == 15.0 and mean[8, 0] == 50.0  # 1, 4 and 1 windows
    assert torch.equal(spread, torch.zeros(n_actions, dtype=torch.float64))


def test_average_windows_spread_is_std_across_draws():
    offsets = torch.tensor([-1.0, 1.0])  # K=2 draws at c_n -/+ 1: std 1 (population), mean unchanged
    preds = torch.full((3, 2, 4, 16), 5.0) + offsets.view(1, 2, 1, 1)
    mean, spread = average_windows(preds, 6)
    assert torch.allclose(mean, torch.full((6, 16), 5.0)) and torch.allclose(spread, torch.ones(6))
    # a single padded window (T-1 < W): steps past n_actions are dropped
    mean, _ = average_windows(torch.arange(4.0).view(1, 1, 4, 1), 2)
    assert mean.flatten().tolist() == [0.0, 1.0]


def test_padding_and_window_count():
    video = torch.rand(4, 3, 8, 8)
    padded = pad_video(video, 8)
    assert padded.shape[0] == 9 and torch.equal(padded[4:], video[-1:].expand(5, 3, 8, 8))
    assert pad_video(torch.rand(12, 3, 8, 8), 8).shape[0] == 12
    assert num_windows(15, 8) == 8 and num_windows(3, 8) == 1


def test_window_proprio_uses_running_actions_as_joint_estimate():
    p0 = torch.arange(32.0)
    assert torch.equal(window_proprio(p0, None, 3, 16, 0.1), p0.expand(3, 32))
    actions = torch.ones(5, 16) * torch.arange(1.0, 6.0)[:, None]  # action s is all (s + 1)
    out = window_proprio(p0, actions, 3, 16, 0.5)
    assert torch.equal(out[0], p0)
    assert torch.equal(out[1, :16], actions[0]) and torch.equal(out[2, :16], actions[1])
    assert torch.allclose(out[1, 16:], (actions[0] - p0[:16]) / 0.5)
    assert torch.allclose(out[2, 16:], torch.full((16,), 2.0))  # (2 - 1) / 0.5


# ------------------------------------------------------------------------------------ checkpoints
def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = InverseDynamicsModel(tiny(window=4))
    data = batch(b=2, w=4)
    model.fit_normalization(data["actions"].reshape(-1, 16) * 3 + 1, data["proprio"])
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = InverseDynamicsModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config and bool(loaded.stats_fitted)
    video, p0 = torch.rand(10, 3, 64, 64), torch.randn(32)
    a, b = model.extract(video, p0, seed=5), loaded.extract(video, p0, seed=5)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.spread, b.spread)


def test_corrupt_truncated_or_missing_checkpoint_raises(tmp_path):
    model = InverseDynamicsModel(tiny())
    d = model.save_pretrained(tmp_path / "ok")
    weights = d / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated"):
        InverseDynamicsModel.from_pretrained(d)
    weights.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # one flipped byte
    with pytest.raises(CheckpointError, match="sha256"):
        InverseDynamicsModel.from_pretrained(d)
    with pytest.raises(CheckpointError, match="does not exist"):
        InverseDynamicsModel.from_pretrained(tmp_path / "nowhere")
    (d / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest"):
        InverseDynamicsModel.from_pretrained(d)


# ---------------------------------------------------------------------------------- depth_anything
def test_depth_anything_needs_a_local_path():
    with pytest.raises(PolicyError, match="backbone_path"):
        InverseDynamicsModel(tiny(backbone="depth_anything", backbone_path=None))
    with pytest.raises(PolicyError, match="backbone_path"):
        InverseDynamicsModel(tiny(backbone="depth_anything", backbone_path="/no/such/dir"))


def test_depth_anything_backbone_from_a_local_checkpoint(tmp_path):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    dino = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14,
        image_size=28, out_features=["stage1", "stage2"], reshape_hidden_states=False,
    )  # fmt: skip
    da = DepthAnythingConfig(
        backbone_config=dino, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32], reassemble_factors=[2, 1],
        fusion_hidden_size=16, head_hidden_size=8,
    )  # fmt: skip
    DepthAnythingForDepthEstimation(da).save_pretrained(tmp_path / "da")
    cfg = tiny(backbone="depth_anything", backbone_path=str(tmp_path / "da"), image_size=28, window=2)
    model = InverseDynamicsModel(cfg).eval()
    loss, _ = model(batch(b=2, w=2))
    assert torch.isfinite(loss)
    video, p0 = torch.rand(4, 3, 64, 64), torch.zeros(32)
    model.save_pretrained(tmp_path / "idm")
    (tmp_path / "da" / "config.json").unlink()  # the IDM checkpoint is self-contained
    loaded = InverseDynamicsModel.from_pretrained(tmp_path / "idm")
    assert torch.equal(model.extract(video, p0).actions, loaded.extract(video, p0).actions)


def test_checkpoints_from_before_the_cnn_split_still_load(tmp_path):
    """Session-1 checkpoints name the small CNN's layers backbone.net.{3 * stage + layer}."""
    import json
    import re
    from dataclasses import asdict

    from policies.idm.modeling_idm import CHECKPOINT_FORMAT
    from policies.world_model.checkpoint import save_checkpoint

    model = InverseDynamicsModel(tiny()).eval()
    legacy = {}
    for k, v in model.state_dict().items():
        m = re.fullmatch(r"backbone\.(low|high)\.(\d)\.(\d)\.(weight|bias)", k)
        if m:
            stage = int(m.group(2)) + (2 if m.group(1) == "high" else 0)
            k = f"backbone.net.{3 * stage + int(m.group(3))}.{m.group(4)}"
        legacy[k] = v
    assert "backbone.net.9.weight" in legacy
    meta = {"format": CHECKPOINT_FORMAT, "config": asdict(model.config), "backbone_hf_config": None}
    save_checkpoint(tmp_path / "old", legacy, json.loads(json.dumps(meta)))
    loaded = InverseDynamicsModel.from_pretrained(tmp_path / "old")
    video, p0 = torch.rand(10, 3, 64, 64), torch.randn(32)
    assert torch.equal(loaded.extract(video, p0).actions, model.extract(video, p0).actions)


@pytest.mark.parametrize("hidden", ["none", "position"])
def test_proprio_input_hides_what_it_says(hidden):
    torch.manual_seed(0)
    m = InverseDynamicsModel(tiny(proprio_input=hidden)).eval()
    f = torch.rand(2, m.config.feature_dim)
    p = torch.randn(2, m.config.proprio_dim)
    other = p.clone()
    other[:, m.config.action_dim:] += 1.0  # other velocities
    assert torch.equal(m.condition(f, f, p), m.condition(f, f, other))
    other[:, : m.config.action_dim] += 1.0  # other positions: seen with "position" only
    assert torch.equal(m.condition(f, f, p), m.condition(f, f, other)) == (hidden == "none")
    full = InverseDynamicsModel(tiny()).eval()
    assert not torch.equal(full.condition(f, f, p), full.condition(f, f, other))


def test_proprio_input_is_validated():
    with pytest.raises(ValueError, match="proprio_input"):
        tiny(proprio_input="velocity")
