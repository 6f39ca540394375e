"""World model from the experience store into the registry: a two-stage recipe registers a root version
with its lineage, a fine-tune registers a child, and re-running a phase returns the same version."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from db.records import EpisodeRecord
from db.store import ExperienceStore
from flywheel.config import Config, StageConfig, TrainConfig
from flywheel.registry import ModelRegistry
from flywheel.training.pipeline import StoreTrainer
from policies.world_model import WorldModel, WorldModelConfig

torch.set_num_threads(1)
S = 16


def _config(data_dir) -> Config:
    wm = WorldModelConfig(image_size=S, num_frames=3, patch_size=(1, 4, 4), text_layers=1, text_vocab_size=256,
                          max_text_tokens=12, success_hidden=16, prediction="sample")
    train = TrainConfig(batch_size=2, log_every=1, finetune_steps=2, wm_stages=[
        StageConfig(name="play", mixture={"play": 1.0}, steps=2, lr=1e-3),
        StageConfig(name="tasks", mixture={"expert": 0.8, "play": 0.2}, steps=3, lr=5e-4),
    ])
    return Config(data_dir=str(data_dir), world_model=wm, train=train)


def _fill(store: ExperienceStore, n: int = 6, moving_joints: bool = False) -> None:
    """`n` synthetic episodes (a square moving right), alternating expert / play, one rollout; with
    `moving_joints`, joint j at j/10 + step/100 (otherwise all zero)."""
    for i in range(n):
        t = 4 + i % 3
        frames = np.zeros((t + 1, S, S, 3), np.uint8)
        for k in range(t + 1):
            frames[k, 4:8, k:k + 4] = 200
        source = "rollout" if i == n - 1 else ("expert" if i % 2 == 0 else "play")
        rec = EpisodeRecord(source=source, task_family="pick", instruction="pick up the red cube", policy=source,
                            success=i % 2 == 0, length=t, seed=i)
        proprio = np.zeros((t + 1, 32), np.float32)
        if moving_joints:
            proprio[:, :16] = np.arange(16)[None] / 10 + np.arange(t + 1)[:, None] / 100
        arrays = {"frames": frames, "proprio": proprio,
                  "actions": np.full((t, 16), 0.1 * i, np.float32)}
        store.record_episode(rec, arrays, initial_state={"qpos": np.arange(3.0)})


def test_store_trainer_registers_root_and_fine_tuned_child(tmp_path):
    cfg = _config(tmp_path)
    store = ExperienceStore.from_config(cfg.db, tmp_path, create=True)
    _fill(store)
    registry = ModelRegistry(store, tmp_path)
    trainer = StoreTrainer(cfg, store, registry, progress=False, say=lambda s: None)

    root = trainer.train_world_model(parent=None, phase="bootstrap")
    row = store.get_model("world_model", root.version)
    assert row.parent_id is None and len(row.sha256) == 64 and len(row.config_hash) == 64
    assert row.data_snapshot["phase"] == "bootstrap" and row.data_snapshot["episodes"] == 6
    assert [r[0] for r in row.data_snapshot["recipe"]] == ["play", "tasks"]
    assert row.config["prediction"] == "sample" and row.training_run_id is not None
    model = WorldModel.from_pretrained(root.path)
    assert model.imagine(torch.rand(3, S, S), "pick", n=2, steps=2).shape == (2, 3, 3, S, S)

    child = trainer.train_world_model(parent=root, phase="iter1")
    assert child.version == root.version + 1 and child.parent_id == root.id
    assert store.get_model("world_model", child.version).data_snapshot["recipe"][0][0] == "finetune"
    tuned = WorldModel.from_pretrained(child.path)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), tuned.state_dict().values()))

    again = StoreTrainer(cfg, store, registry, progress=False, say=lambda s: None)  # a restarted run
    assert again.train_world_model(parent=root, phase="iter1").id == child.id
    assert again.train_world_model(parent=None, phase="bootstrap").id == root.id
    assert [r.version for r in store.list_models("world_model")] == [root.version, child.version]
    store.close()


def test_bootstrap_trains_the_kl_autoencoder_first_and_a_fine_tune_keeps_it(tmp_path):
    cfg = _config(tmp_path)
    cfg.world_model = WorldModelConfig(image_size=S, num_frames=3, vae="kl2d", kl_block_out_channels=(8, 8),
                                       patch_size=(1, 2, 2), text_layers=1, text_vocab_size=256, max_text_tokens=12,
                                       success_hidden=16, prediction="sample")
    cfg.train.vae_steps = 20
    store = ExperienceStore.from_config(cfg.db, tmp_path, create=True)
    _fill(store)
    trainer = StoreTrainer(cfg, store, ModelRegistry(store, tmp_path), progress=False, say=lambda s: None)
    torch.manual_seed(0)
    untrained = WorldModel(cfg.world_model).vae.state_dict()
    root = trainer.train_world_model(parent=None, phase="bootstrap")
    run = store.get_model("world_model", root.version).training_run_id
    metrics = store.training_run(run).metrics
    assert metrics["vae_steps"] == 20 and metrics["vae_rec_last"] < metrics["vae_rec_first"]
    vae = WorldModel.from_pretrained(root.path).vae.state_dict()
    assert any(not torch.equal(vae[k], untrained[k]) for k in vae)  # the autoencoder was trained
    child = trainer.train_world_model(parent=root, phase="iter1")
    tuned = WorldModel.from_pretrained(child.path).vae.state_dict()
    assert all(torch.equal(tuned[k], vae[k]) for k in vae)  # frozen under the fine-tuned denoiser
    store.close()


def test_a_world_model_with_joint_channels_learns_its_units_from_the_stored_joints(tmp_path):
    """`world_model.imagine_joints`: the bootstrap fits the joint channels' units on every stored episode's joint
    positions and trains on each clip's joints; a fine-tune keeps the units; the model imagines them back."""
    cfg = _config(tmp_path)
    cfg.world_model = WorldModelConfig(**{**cfg.world_model.__dict__, "imagine_joints": True})
    store = ExperienceStore.from_config(cfg.db, tmp_path, create=True)
    _fill(store, moving_joints=True)
    registry = ModelRegistry(store, tmp_path)
    trainer = StoreTrainer(cfg, store, registry, progress=False, say=lambda s: None)
    root = trainer.train_world_model(parent=None, phase="bootstrap")
    model = WorldModel.from_pretrained(root.path)
    assert model.joint_channels == 16
    joints = np.concatenate([e.proprio[:, :16] for e in trainer.episodes("all")])
    assert np.allclose(model.joint_mean.numpy(), joints.mean(0), atol=1e-5)
    pose = torch.from_numpy(joints[0])
    _, imagined = model.imagine_joints(torch.rand(3, S, S), "pick", n=2, steps=2, pose=pose)
    assert imagined.shape == (2, 3, 16) and torch.allclose(imagined[:, 0], pose.expand(2, -1), atol=1e-5)
    child = trainer.train_world_model(parent=root, phase="iter1")
    assert torch.equal(WorldModel.from_pretrained(child.path).joint_mean, model.joint_mean)
    store.close()


def test_start_clips_take_their_share_of_each_stage(tmp_path, monkeypatch):
    """`train.wm_start_clips`: that share of each stage's clips start on an episode's first frame (where the
    robot at rest has to decide what to do), drawn from the stage's own components; 0 keeps clips uniform."""
    import itertools

    import flywheel.training.world_model as twm
    from flywheel.data import ClipDataset

    cfg = _config(tmp_path)
    store = ExperienceStore.from_config(cfg.db, tmp_path, create=True)
    _fill(store, n=12)
    starts = {}

    def capture(model, stages, tcfg, out, progress=False):  # what each recipe would train on
        items = list(itertools.islice(iter(stages[1].data), 400))
        starts[tcfg.wm_start_clips] = np.mean([float(it["video"][0, 0, 5, 0]) > 0.5 for it in items])
        raise RuntimeError("captured")

    monkeypatch.setattr(twm, "train_world_model", capture)
    for share in (0.0, 0.6):
        cfg.train = TrainConfig(**{**cfg.train.__dict__, "wm_start_clips": share})
        trainer = StoreTrainer(cfg, store, ModelRegistry(store, tmp_path), progress=False, say=lambda s: None)
        with pytest.raises(RuntimeError, match="captured"):
            trainer.train_world_model(parent=None, phase=f"p{share}")
    eps = trainer.episodes("expert") + trainer.episodes("play")
    assert len(ClipDataset(eps, 3, starts_only=True)) == len(eps)  # one start clip per episode
    uniform = len(eps) / len(ClipDataset(eps, 3, stride=2))
    assert abs(starts[0.0] - uniform) < 0.1  # the square is at column 0 only on an episode's first frame
    assert abs(starts[0.6] - (0.6 + 0.4 * uniform)) < 0.1
    with pytest.raises(ValueError, match="wm_start_clips"):
        TrainConfig(wm_start_clips=1.0)
    store.close()


def test_mirrored_training_clips_and_their_units(tmp_path, monkeypatch):
    """`train.wm_mirror`: every stage draws mirrored clips at that rate, and the joint channels' and the actions'
    units are fitted on the stored joints and their mirror images (the data the model then sees)."""
    import flywheel.training.world_model as twm
    from envs.robot import mirror_joints

    cfg = _config(tmp_path)
    cfg.world_model = WorldModelConfig(**{**cfg.world_model.__dict__, "imagine_joints": True, "normalize_actions": True})
    cfg.train = TrainConfig(**{**cfg.train.__dict__, "wm_mirror": 0.5})
    store = ExperienceStore.from_config(cfg.db, tmp_path, create=True)
    _fill(store, moving_joints=True)
    seen = {}

    def capture(model, stages, tcfg, out, progress=False):
        seen["mirror"] = [s.data.mirror for s in stages]
        seen["joint_mean"], seen["action_mean"] = model.joint_mean.clone(), model.action_mean.clone()
        raise RuntimeError("captured")

    monkeypatch.setattr(twm, "train_world_model", capture)
    trainer = StoreTrainer(cfg, store, ModelRegistry(store, tmp_path), progress=False, say=lambda s: None)
    with pytest.raises(RuntimeError, match="captured"):
        trainer.train_world_model(parent=None, phase="m")
    assert seen["mirror"] == [0.5] * len(cfg.train.wm_stages)
    joints = np.concatenate([e.proprio[:, :16] for e in trainer.episodes("all")])
    acts = np.concatenate([e.actions for e in trainer.episodes("all")])
    assert np.allclose(seen["joint_mean"].numpy(), np.concatenate([joints, mirror_joints(joints)]).mean(0), atol=1e-5)
    assert np.allclose(seen["action_mean"].numpy(), np.concatenate([acts, mirror_joints(acts)]).mean(0), atol=1e-5)
    assert not np.allclose(seen["joint_mean"].numpy(), joints.mean(0), atol=1e-3)  # the mirror images count
    with pytest.raises(ValueError, match="wm_mirror"):
        TrainConfig(wm_mirror=1.5)
    store.close()


def test_recovery_episodes_train_from_their_takeover_and_stay_out_of_play(tmp_path):
    """The recovery expert's episodes (stored as play) are the `recovery` mixture component only, and their clips
    start where the expert took over (`takeover_step` in the policy's logs); a malformed step is one clear error."""
    from flywheel.data import MIXTURE_SOURCES, ClipDataset, EpisodeFilter, load_episodes
    from flywheel.errors import FlywheelError

    store = ExperienceStore.from_config(_config(tmp_path).db, tmp_path, create=True)
    _fill(store, n=4)
    t = 10
    arrays = {"frames": np.zeros((t + 1, S, S, 3), np.uint8), "proprio": np.zeros((t + 1, 32), np.float32),
              "actions": np.zeros((t, 16), np.float32)}

    def recovery(step: object) -> int:
        rec = EpisodeRecord(source="play", task_family="pick", instruction="pick up the red cube",
                            policy="recovery_expert", success=True, length=t, seed=7,
                            meta={"policy_logs": {"takeover_step": step}})
        return store.record_episode(rec, arrays)

    eid = recovery(6)
    play = load_episodes(store, EpisodeFilter(limit=None, **MIXTURE_SOURCES["play"]))
    assert len(store.episodes(source="play", limit=None)) == 2 and len(play) == 1 and play[0].id != eid
    (ep,) = load_episodes(store, EpisodeFilter(limit=None, **MIXTURE_SOURCES["recovery"]))
    assert ep.id == eid and ep.first_step == 6
    assert [s for _, s in ClipDataset([ep], 3, stride=2).index] == [6, 8]  # never the detour's frames
    assert [s for _, s in ClipDataset([ep], 3, starts_only=True).index] == [6]
    assert len(ClipDataset([ep], 6)) == 0  # fewer than 6 frames after the takeover
    assert {e.first_step for e in load_episodes(store, EpisodeFilter(limit=None)) if e.id != eid} == {0}
    recovery(t + 5)
    with pytest.raises(FlywheelError, match="takeover_step"):
        load_episodes(store, EpisodeFilter(limit=None, **MIXTURE_SOURCES["recovery"]))
    store.close()


def test_goal_joints_train_on_each_episodes_grasp_goal_from_its_recorded_start(tmp_path):
    """`world_model.goal_joints`: the trainer reads each episode's grasp goal from the scene at its recorded start
    (restored on a sim env), as the planner computes it at reset; an episode of a family without a goal gives NaN;
    a start that cannot be restored is one error naming the episode."""
    from envs.config import EnvConfig
    from envs.goals import task_goals
    from envs.splits import ci_subset
    from envs.tabletop import HumanoidTabletopEnv
    from flywheel.data import ClipDataset, EpisodeFilter, load_episodes
    from flywheel.errors import FlywheelError

    cfg = _config(tmp_path)
    cfg.world_model = WorldModelConfig(**{**cfg.world_model.__dict__, "imagine_joints": True, "goal_joints": True})
    store = ExperienceStore.from_config(cfg.db, tmp_path, create=True)
    env = HumanoidTabletopEnv(EnvConfig(render=False))
    items = ci_subset("in_distribution", 1) + [it for it in ci_subset("new_tasks", 8) if it.family == "drawer"][:1]
    goals = {}
    for item in items:
        env.reset(seed=item.seed, options={"task": item.task()})
        t = 4
        proprio = np.zeros((t + 1, 32), np.float32)
        proprio[:, :16] = np.arange(t + 1)[:, None] / 100
        rec = EpisodeRecord(source="expert" if item.family == "pick" else "play", task_family=item.family,
                            instruction=item.instruction,
                            policy="scripted_expert", success=True, length=t, seed=item.seed)
        eid = store.record_episode(rec, {"frames": np.zeros((t + 1, S, S, 3), np.uint8), "proprio": proprio,
                                         "actions": np.zeros((t, 16), np.float32)}, initial_state=env.get_state())
        goals[eid] = task_goals(env.scene_description(), env.cfg.control_hz)
    env.close()
    eps = {e.id: e for e in load_episodes(store, EpisodeFilter(limit=None), goals=True)}
    (pick,) = [i for i, g in goals.items() if g is not None]
    assert np.array_equal(eps[pick].goal, goals[pick])
    items = {e.id: ClipDataset([e], 3)[0]["goal"] for e in eps.values()}
    assert torch.equal(items[pick], torch.from_numpy(goals[pick]))
    assert all(torch.isnan(g).all() for i, g in items.items() if i != pick)  # the drawer: no goal
    assert all(e.goal is None for e in load_episodes(store, EpisodeFilter(limit=None)))  # only when asked

    registry = ModelRegistry(store, tmp_path)
    trainer = StoreTrainer(cfg, store, registry, progress=False, say=lambda s: None)
    root = trainer.train_world_model(parent=None, phase="bootstrap")
    model = WorldModel.from_pretrained(root.path)
    assert model.goal_channels == 17
    assert set(trainer._goals) == set(goals)  # each episode's goal read once, whichever components it is in
    _, joints = model.imagine_joints(torch.rand(3, S, S), "pick", n=2, steps=2, pose=torch.zeros(16),
                                     goal=torch.from_numpy(goals[pick][0]))
    assert torch.isfinite(joints).all()
    plain_cfg = _config(tmp_path)  # a run configured without goals fine-tunes the goal model with its goals
    plain_cfg.world_model = WorldModelConfig(**{**plain_cfg.world_model.__dict__, "imagine_joints": True})
    plain_cfg.train.wm_stages = cfg.train.wm_stages
    plain_cfg.train.finetune_steps = 2
    child = StoreTrainer(plain_cfg, store, registry, progress=False, say=lambda s: None).train_world_model(
        parent=root, phase="iter1")
    assert WorldModel.from_pretrained(child.path).goal_channels == 17

    rec = EpisodeRecord(source="expert", task_family="pick", instruction="pick up the red cube",
                        policy="scripted_expert", success=True, length=4, seed=1)
    bad = store.record_episode(rec, {"frames": np.zeros((5, S, S, 3), np.uint8), "proprio": np.zeros((5, 32), np.float32),
                                     "actions": np.zeros((4, 16), np.float32)}, initial_state={"qpos": np.arange(3.0)})
    with pytest.raises(FlywheelError, match=f"episode {bad}"):
        load_episodes(store, EpisodeFilter(limit=None), goals=True)
    store.close()
