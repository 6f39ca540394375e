"""IDM training: windows from episodes, checkpoints, exact resume, and the evaluation helper."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flywheel.config import TrainConfig
from flywheel.evaluation.dtw import evaluate_idm
from flywheel.training.idm import WindowDataset, cosine_factor, train_idm
from policies.idm import IDMConfig, InverseDynamicsModel

torch.set_num_threads(1)
W = 4


def episode(t: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "frames": rng.integers(0, 256, size=(t + 1, 32, 32, 3), dtype=np.uint8),
        "proprio": rng.normal(size=(t + 1, 32)).astype(np.float32),
        "actions": rng.normal(size=(t, 16)).astype(np.float32),
    }


def tiny_model(**kw) -> InverseDynamicsModel:
    torch.manual_seed(0)
    cfg = IDMConfig(window=W, image_size=32, cnn_channels=8, feature_dim=32, hidden_dim=32, head_layers=1,
                    noise_samples=2, flow_steps=2, **kw)  # fmt: skip
    return InverseDynamicsModel(cfg)


def test_window_dataset_cuts_and_pads_episodes():
    eps = [episode(10, 0), episode(2, 1)]  # 7 windows + 1 padded window
    ds = WindowDataset(eps, W)
    assert len(ds) == 7 + 1
    item = ds[3]
    assert item["frame0"].shape == (3, 32, 32) and item["actions"].shape == (W, 16)
    assert torch.allclose(item["frame1"], torch.from_numpy(eps[0]["frames"][3 + W]).permute(2, 0, 1) / 255.0)
    assert torch.equal(item["proprio"], torch.from_numpy(eps[0]["proprio"][3]))
    assert torch.equal(item["qpos"], torch.from_numpy(eps[0]["proprio"][4 : 4 + W, :16]))  # frames 4..3+W
    deltas = ds.deltas()  # (windows, W, 2A): [actions - q0, qpos - q0]
    assert deltas.shape == (8, W, 32)
    q0 = item["proprio"][:16]
    assert torch.allclose(deltas[3], torch.cat([item["actions"] - q0, item["qpos"] - q0], dim=-1))
    short = ds[7]  # actions of the 2-step episode, then its last action held
    assert torch.equal(short["actions"][2:], torch.from_numpy(eps[1]["actions"][-1:]).expand(2, 16))
    actions, proprio = ds.stats()
    assert actions.shape == (12, 16) and proprio.shape == (14, 32)
    with pytest.raises(ValueError, match="episode"):
        WindowDataset([{**eps[0], "actions": eps[0]["actions"][:5]}], W)


@pytest.mark.parametrize("target", ["absolute", "delta"])
def test_train_writes_a_checkpoint_and_fits_stats(tmp_path, target):
    model, ds = tiny_model(target=target), WindowDataset([episode(10, 0), episode(8, 1)], W)
    cfg = TrainConfig(batch_size=4, log_every=2)
    result = train_idm(model, ds, cfg, tmp_path / "run", steps=4, lr=1e-3, progress=False)
    assert result.step == 4 and len(result.losses) == 4 and all(np.isfinite(result.losses))
    assert bool(model.stats_fitted)
    assert torch.allclose(model.action_mean, ds.stats()[0].mean(0))
    if target == "delta":
        assert torch.allclose(model.delta_mean, ds.deltas().mean(0))
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["state"]["step"] == 4
    loaded = InverseDynamicsModel.from_pretrained(tmp_path / "run" / "model")
    video, p0 = torch.rand(6, 3, 32, 32), torch.zeros(32)
    assert torch.equal(loaded.extract(video, p0).actions, model.extract(video, p0).actions)


def test_resume_continues_exactly(tmp_path):
    ds = WindowDataset([episode(10, 0), episode(8, 1)], W)
    cfg = TrainConfig(batch_size=4, seed=3)
    straight = tiny_model()
    train_idm(straight, ds, cfg, tmp_path / "straight", steps=6, lr=1e-3, progress=False)
    first = tiny_model()
    train_idm(first, ds, cfg, tmp_path / "first", steps=3, lr=1e-3, progress=False)
    resumed = tiny_model()
    result = train_idm(resumed, ds, cfg, tmp_path / "second", steps=6, lr=1e-3,
                       resume_from=tmp_path / "first", progress=False)  # fmt: skip
    assert result.step == 6 and len(result.losses) == 3
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_cosine_schedule_decays_the_idm_rate_to_its_floor(tmp_path):
    assert cosine_factor(0, 10, 0.05) == 1.0 and cosine_factor(9, 10, 0.05) == pytest.approx(0.05)
    assert 0.05 < cosine_factor(5, 10, 0.05) < 1.0
    ds = WindowDataset([episode(10, 0), episode(8, 1)], W)
    for schedule, last in (("constant", 1e-3), ("cosine", 1e-3 * 0.05)):
        cfg = TrainConfig(batch_size=4, idm_lr_schedule=schedule, idm_lr_min=0.05)
        train_idm(tiny_model(), ds, cfg, tmp_path / schedule, steps=4, lr=1e-3, progress=False)
        groups = json.loads((tmp_path / schedule / "trainer_state.json").read_text())["optimizer"]["param_groups"]
        assert groups[0]["lr"] == pytest.approx(last)  # the rate of the last step
    with pytest.raises(ValueError, match="idm_lr_schedule"):
        TrainConfig(idm_lr_schedule="linear")


def test_evaluate_idm_reports_dtw_and_mse_against_the_hold_baseline():
    model = tiny_model().eval()
    eps = [episode(6, 0), episode(9, 1)]
    low, high = -np.ones(16, np.float32) * 3, np.ones(16, np.float32) * 3
    out = evaluate_idm(model, eps, low, high)
    assert out["episodes"] == 2 and len(out["mse_per_joint_idm"]) == 16
    assert out["dtw_idm"] > 0 and out["dtw_baseline"] > 0
    assert out["dtw_ratio"] == pytest.approx(out["dtw_idm"] / out["dtw_baseline"])
