"""World-model training loop: overfitting, multi-stage recipes, exact resume, data paths, metrics."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import IterableDataset

from flywheel.config import StageConfig, TrainConfig
from flywheel.evaluation.video_metrics import auroc, error_regions, evaluate_world_model, psnr, ssim
from flywheel.training.common import load_training_checkpoint
from flywheel.training.world_model import Stage, collate_clips, train_world_model
from policies.errors import CheckpointError
from policies.world_model import WorldModel, WorldModelConfig

torch.set_num_threads(1)
S = 16


def tiny_model(seed: int = 0, cond_frames: int = 1) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(WorldModelConfig(image_size=S, num_frames=3, patch_size=(1, 4, 4), text_dropout=0.0,
                                       action_dropout=0.0, text_layers=1, text_vocab_size=256,
                                       max_text_tokens=12, success_hidden=16, cond_frames=cond_frames))


def clip(seed: int, success: float | None = 1.0, actions: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"video": torch.rand(3, 3, S, S, generator=g), "caption": f"pick cube {seed % 3}", "success": success}
    if actions:
        out["actions"] = torch.randn(2, 16, generator=g)
    return out


def test_tiny_model_overfits_a_single_clip(tmp_path):
    c = clip(1)
    cfg = TrainConfig(batch_size=4, log_every=5)
    res = train_world_model(tiny_model(), [Stage("overfit", [c] * 4, 200, 3e-3)], cfg, tmp_path, progress=False)
    fm = [h["loss_fm"] for h in res.history]
    first, last = fm[0], sum(fm[-4:]) / 4  # means over steps 1-5 and 181-200
    assert last * 10 <= first, f"flow-matching loss fell only from {first:.3f} to {last:.3f}"


def test_multi_stage_recipe_writes_a_loadable_model(tmp_path):
    play = [clip(i, success=None) for i in range(3)]
    tasks = [clip(10 + i, success=float(i % 2)) for i in range(4)]
    cfg = TrainConfig(batch_size=2, log_every=2)
    res = train_world_model(tiny_model(), [("play", play, 2, 1e-3), Stage("tasks", tasks, 3, 5e-4)], cfg,
                            tmp_path, progress=False)
    assert res.steps == 5 and math.isfinite(res.final_loss)
    assert [h["stage"] for h in res.history] == ["play", "tasks", "tasks"]
    assert "loss_success" in res.history[-1] and "loss_success" not in res.history[0]
    loaded = WorldModel.from_pretrained(res.model_dir)
    assert loaded.imagine(torch.rand(3, S, S), "pick", n=2, steps=2).shape == (2, 3, 3, S, S)
    assert res.clips_per_s > 0


def test_resume_continues_bit_for_bit(tmp_path):
    data = [clip(i) for i in range(5)]
    cfg = TrainConfig(batch_size=2, log_every=1)
    straight = tiny_model()
    train_world_model(straight, [Stage("s", data, 6, 1e-3)], cfg, tmp_path / "a", progress=False)
    half = train_world_model(tiny_model(), [Stage("s", data, 3, 1e-3)], cfg, tmp_path / "b", progress=False)
    resumed = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    res = train_world_model(resumed, [Stage("s", data, 6, 1e-3)], cfg, tmp_path / "c",
                            resume_from=half.checkpoint_dir, progress=False)
    assert res.steps == 6 and [h["step"] for h in res.history] == [4, 5, 6]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_weight_average_is_what_is_saved_and_resumes_bit_for_bit(tmp_path):
    data = [clip(i) for i in range(5)]
    cfg = TrainConfig(batch_size=2, log_every=1, wm_ema_decay=0.9)
    raw = tiny_model()
    train_world_model(raw, [Stage("s", data, 6, 1e-3)], TrainConfig(batch_size=2, log_every=1), tmp_path / "r",
                      progress=False)
    straight = tiny_model()
    res = train_world_model(straight, [Stage("s", data, 6, 1e-3)], cfg, tmp_path / "a", progress=False)
    # the same trajectory (the average does not feed back), but the saved weights are its average
    init, last = tiny_model().transformer.proj_out.weight, raw.transformer.proj_out.weight
    avg = straight.transformer.proj_out.weight
    assert not torch.equal(avg, last) and not torch.equal(avg, init)
    assert torch.equal(WorldModel.from_pretrained(res.model_dir).transformer.proj_out.weight, avg)
    half = train_world_model(tiny_model(), [Stage("s", data, 3, 1e-3)], cfg, tmp_path / "b", progress=False)
    resumed = tiny_model(seed=123)
    train_world_model(resumed, [Stage("s", data, 6, 1e-3)], cfg, tmp_path / "c", resume_from=half.checkpoint_dir,
                      progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    plain = train_world_model(tiny_model(), [Stage("s", data, 3, 1e-3)], TrainConfig(batch_size=2), tmp_path / "d",
                              progress=False)
    with pytest.raises(CheckpointError, match="weight average"):
        train_world_model(tiny_model(), [Stage("s", data, 6, 1e-3)], cfg, tmp_path / "e",
                          resume_from=plain.checkpoint_dir, progress=False)
    with pytest.raises(ValueError, match="wm_ema_decay"):
        TrainConfig(wm_ema_decay=1.0)


def test_corrupt_training_checkpoint_is_refused(tmp_path):
    res = train_world_model(tiny_model(), [Stage("s", [clip(0)], 1, 1e-3)], TrainConfig(batch_size=1), tmp_path,
                            progress=False)
    f = tmp_path / "checkpoint" / "trainer.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="truncated"):
        load_training_checkpoint(res.checkpoint_dir, tiny_model())


class Stream(IterableDataset):
    def __iter__(self):
        return iter([clip(i, actions=False) for i in range(3)])


def test_iterable_data_and_bf16_autocast(tmp_path):
    cfg = TrainConfig(batch_size=2, precision="bf16", log_every=1,
                      wm_stages=[StageConfig("a", steps=2, lr=1e-3), StageConfig("b", steps=1, lr=1e-4)])
    res = train_world_model(tiny_model(), Stream(), cfg, tmp_path, progress=False)
    assert res.steps == sum(s.steps for s in cfg.wm_stages)  # one dataset: the recipe's total steps
    assert all(math.isfinite(h["loss"]) for h in res.history)


def test_collate_marks_missing_actions_and_labels():
    b = collate_clips([clip(0, success=None), clip(1, success=0.0, actions=False)])
    assert b["video"].shape == (2, 3, 3, S, S) and b["actions"] is None
    assert math.isnan(b["success"][0]) and b["success"][1] == 0.0
    assert collate_clips([clip(0), clip(1)])["actions"].shape == (2, 2, 16)


def test_metrics_on_known_values():
    x = torch.rand(2, 3, S, S)
    assert psnr(x, x) == float("inf")
    assert psnr(torch.zeros(4), torch.full((4,), 0.1)) == pytest.approx(20.0)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    assert ssim(x, torch.rand(2, 3, S, S)) < 0.5
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.9], [1, 1, 0]) == 0.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    assert math.isnan(auroc([0.5], [1]))


def test_error_regions_split_moving_near_and_far_pixels():
    last, future = torch.zeros(3, 32, 32), torch.zeros(2, 3, 32, 32)
    future[:, :, 10:12, 10:12] = 1.0  # 4 pixels move in each of 2 frames
    pred = future.clone()
    pred[:, :, 14, 14] = 0.5  # drawn next to the motion
    pred[:, :, 30, 30] = 0.3  # and far from it
    r = error_regions(pred, future, last)
    assert r["moving"] == (0.0, 8)
    assert r["near"][0] == pytest.approx(2 * 0.25) and r["far"][0] == pytest.approx(2 * 0.09)
    assert r["moving"][1] + r["near"][1] + r["far"][1] == 2 * 32 * 32


def test_evaluate_world_model_reports_baseline_and_auroc():
    model = tiny_model().eval()
    metrics = evaluate_world_model(model, [clip(0, 1.0), clip(1, 0.0), clip(2, None)], steps=2)
    assert metrics["n_clips"] == 3 and metrics["n_labelled"] == 2
    assert all(math.isfinite(metrics[k]) for k in ("psnr", "ssim", "psnr_copy_last", "success_auroc"))
    assert "psnr_imagine" not in metrics
    # the standard error of the per-clip gain over copying, from the same per-clip figures
    gains = []
    for i, c in enumerate([clip(0, 1.0), clip(1, 0.0), clip(2, None)]):
        v = torch.as_tensor(c["video"], dtype=torch.float32)
        pred, _ = model.predict(v[0], c["actions"], c["caption"], seed=i, steps=2)
        gains.append(psnr(pred[1:], v[1:]) - psnr(v[:1].expand_as(v[1:]), v[1:]))
    assert metrics["psnr"] - metrics["psnr_copy_last"] == pytest.approx(sum(gains) / 3, abs=1e-4)
    assert metrics["psnr_gain_se"] == pytest.approx(torch.tensor(gains).std().item() / 3 ** 0.5, rel=1e-4)
    assert sum(metrics[f"frac_{k}"] for k in ("moving", "near", "far")) == pytest.approx(1.0)
    present = [k for k in ("moving", "near", "far") if metrics[f"frac_{k}"] > 0]
    assert present and all(metrics[f"mse_{k}"] > 0 and metrics[f"mse_copy_{k}"] > 0 for k in present)


def test_a_clip_where_nothing_moves_is_counted_apart_not_averaged_as_infinite_psnr():
    model = tiny_model().eval()
    still = clip(5, 0.0)
    still["video"][1:] = still["video"][:1]  # the robot held still: copying is exact, its PSNR infinite
    moving = [clip(0, 1.0), clip(1, 0.0)]
    m = evaluate_world_model(model, [*moving, still], steps=2, imagine=True)
    ref = evaluate_world_model(model, moving, steps=2, imagine=True)
    assert m["n_clips"] == 2 and m["n_static_clips"] == 1 and m["n_labelled"] == 3  # its label still counts
    assert all(math.isfinite(m[k]) for k in ("psnr", "psnr_copy_last", "psnr_gain_se", "psnr_imagine"))
    assert m["psnr_copy_last"] == pytest.approx(ref["psnr_copy_last"])
    v = torch.as_tensor(still["video"])
    pred, _ = model.predict(v[0], still["actions"], still["caption"], seed=2, steps=2)
    assert m["mse_static"] == pytest.approx(float(((pred[1:] - v[1:]) ** 2).mean()), rel=1e-5)
    assert ref["n_static_clips"] == 0 and math.isnan(ref["mse_static"])


def test_evaluate_world_model_imagine_mode_and_context_frames():
    model = tiny_model(cond_frames=2).eval()
    clips = [clip(0, 1.0), clip(1, 0.0)]
    m = evaluate_world_model(model, clips, steps=2, imagine=True, guidance=2.0)
    assert math.isfinite(m["psnr_imagine"]) and math.isfinite(m["ssim_imagine"])
    # the baseline copies the last of the two given frames over the one frame after them
    v = [torch.as_tensor(c["video"], dtype=torch.float32) for c in clips]
    expect = sum(psnr(x[1:2], x[2:]) for x in v) / 2
    assert m["psnr_copy_last"] == pytest.approx(expect)


@pytest.mark.parametrize("conditioning", [{}, {"action_map": True}, {"action_map": True, "action_layers": 2}],
                         ids=["embedding", "map", "map-two-layers"])
def test_evaluation_mode_follows_the_actions_on_a_task_that_needs_them(conditioning):
    """A square drawn where the action puts it: after a short training, predicting with the true actions
    must beat predicting with another clip's actions by a wide margin (the action pathway works end to end:
    embedding, standardisation, position embedding, sampling)."""
    s = 16
    torch.manual_seed(0)
    m = WorldModel(WorldModelConfig(image_size=s, num_frames=4, patch_size=(1, 4, 4), num_layers=2, ffn_dim=128,
                                    text_layers=1, text_vocab_size=256, max_text_tokens=8, success_hidden=16,
                                    prediction="sample", pos_embed=True, action_hidden=32, normalize_actions=True,
                                    action_dropout=0.0, flow_shift=3.0, **conditioning))
    g = torch.Generator().manual_seed(0)

    def clips(b: int) -> dict:
        a = torch.rand(b, 4, 16, generator=g)  # frame k shows the square at action k-1; frame 0 at a hidden one
        v = torch.full((b, 4, 3, s, s), 0.2)
        for i in range(b):
            for k in range(4):
                x, y = (a[i, k - 1 if k else 3, :2] * (s - 4)).long().tolist()
                v[i, k, :, y:y + 4, x:x + 4] = 0.9
        return {"video": v, "caption": ["move"] * b, "actions": a[:, :3], "success": torch.full((b,), math.nan)}

    m.fit_action_stats(torch.rand(512, 16, generator=g))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(400):
        loss, _ = m(clips(16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    b = clips(16)
    err = {"true": 0.0, "shuffled": 0.0}
    for i in range(16):
        v = b["video"][i]
        for k, acts in (("true", b["actions"][i]), ("shuffled", b["actions"][(i + 1) % 16])):
            pred, _ = m.predict(v[0], acts, "move", steps=1)
            err[k] += float(((pred[1:] - v[1:]) ** 2).mean())
    psnr = {k: 10 * math.log10(16 / e) for k, e in err.items()}
    assert psnr["true"] > psnr["shuffled"] + 3.0, psnr


def test_store_clips_carry_their_episode_outcome():
    """Every clip says whether its episode succeeded (the world model's `imagine_from_success` reads it), also
    clips that do not end on the outcome; collated, the batch has it when every clip does."""
    import numpy as np

    from flywheel.data import ClipDataset, LoadedEpisode

    def ep(i: int, ok: bool) -> LoadedEpisode:
        return LoadedEpisode(id=i, caption="c", success=ok, frames=np.zeros((6, S, S, 3), np.uint8),
                             proprio=np.zeros((6, 32), np.float32), actions=np.zeros((5, 16), np.float32),
                             source="expert", task_family="pick")

    ds = ClipDataset([ep(1, True), ep(2, False)], num_frames=3)
    items = [ds[i] for i in range(len(ds))]
    assert [it["episode_success"] for it in items] == [True] * 4 + [False] * 4
    assert math.isnan(float(items[0]["success"]))  # its outcome frame is not in this clip
    assert collate_clips([items[0], items[-1]])["episode_success"].tolist() == [True, False]
    assert "episode_success" not in collate_clips([clip(0), clip(1)])


def test_store_clips_carry_the_joint_positions_at_their_start():
    """A clip's start_pose is the joints of the episode's proprio at its first frame (the world model's action
    head learns the actions relative to it); collated when every clip has it."""
    import numpy as np

    from flywheel.data import ClipDataset, LoadedEpisode

    proprio = np.arange(6 * 32, dtype=np.float32).reshape(6, 32)
    e = LoadedEpisode(id=1, caption="c", success=True, frames=np.zeros((6, S, S, 3), np.uint8), proprio=proprio,
                      actions=np.zeros((5, 16), np.float32), source="expert", task_family="pick")
    ds = ClipDataset([e], num_frames=3, stride=2)
    assert [ds.index[i][1] for i in range(len(ds))] == [0, 2, 3]
    assert np.array_equal(ds[1]["start_pose"].numpy(), proprio[2, :16])
    assert collate_clips([ds[0], ds[2]])["start_pose"].tolist() == [proprio[0, :16].tolist(), proprio[3, :16].tolist()]
    assert "start_pose" not in collate_clips([clip(0), clip(1)])


def test_mirrored_clips_flip_the_frames_swap_the_arms_and_the_caption():
    """`train.wm_mirror`: a mirrored clip's frames are flipped left-right, its joint vectors (actions, poses,
    start pose) go through the robot's mirror map, "left" and "right" swap in its caption; mirroring twice
    gives the clip back. The mixture mirrors about the asked share of its clips, reproducibly."""
    import numpy as np

    from envs import robot
    from flywheel.data import ClipDataset, LoadedEpisode, MixtureDataset, mirror_caption, mirror_clip

    rng = np.random.default_rng(0)
    proprio = rng.uniform(-1, 1, (6, 32)).astype(np.float32)
    e = LoadedEpisode(id=1, caption="The robot reaches with its left hand for the cube at the near right; leftover",
                      success=True, frames=rng.integers(0, 255, (6, S, S, 3), dtype=np.uint8), proprio=proprio,
                      actions=rng.uniform(-1, 1, (5, 16)).astype(np.float32), source="expert", task_family="pick")
    item = ClipDataset([e], num_frames=3)[1]
    m = mirror_clip(item)
    assert m["caption"] == "The robot reaches with its right hand for the cube at the near left; leftover"
    assert mirror_caption("Left LEFT right") == "Right RIGHT left"
    assert mirror_caption("10 cm left, turned 30 degrees clockwise") == "10 cm right, turned 30 degrees counterclockwise"
    assert torch.equal(m["video"], item["video"].flip(-1)) and not torch.equal(m["video"], item["video"])
    np.testing.assert_allclose(m["poses"][:, 7:14].numpy(), item["poses"][:, 0:7].numpy() * [1, -1, -1, 1, -1, 1, -1])
    np.testing.assert_allclose(m["actions"][:, 14], item["actions"][:, 15])  # the grippers swap too
    np.testing.assert_allclose(m["start_pose"].numpy(), robot.mirror_joints(item["start_pose"].numpy()))
    back = mirror_clip(m)
    for k in ("video", "actions", "poses", "start_pose"):
        assert torch.allclose(back[k], item[k]), k
    assert back["caption"] == item["caption"] and m["episode_success"] == item["episode_success"]

    def flipped(mirror: float, n: int = 400) -> list[bool]:
        stream = iter(MixtureDataset({"all": ClipDataset([e], num_frames=3)}, {"all": 1.0}, seed=3, mirror=mirror))
        return [next(stream)["caption"] != e.caption for _ in range(n)]

    assert not any(flipped(0.0)) and all(flipped(1.0))
    share = flipped(0.5)
    assert 0.4 < np.mean(share) < 0.6 and share == flipped(0.5)


def test_the_head_camera_sits_on_the_robots_plane_of_symmetry():
    """What `mirror_clip` relies on to flip frames: the egocentric camera is at y = 0 in the head, its image x
    axis along the world's -y and its other axes in the x-z plane, so a left-right flip of the frame is the
    mirror-image scene."""
    import mujoco
    import numpy as np

    from envs import robot

    m = mujoco.MjModel.from_xml_path(robot.ROBOT_XML)
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    cam = m.camera("ego").id
    assert abs(d.cam_xpos[cam][1]) < 1e-9
    axes = d.cam_xmat[cam].reshape(3, 3)  # columns: the camera's x (image right), y (image up), z (backward)
    np.testing.assert_allclose(axes[:, 0], [0, -1, 0], atol=1e-9)
    assert abs(axes[1, 1]) < 1e-9 and abs(axes[1, 2]) < 1e-9
