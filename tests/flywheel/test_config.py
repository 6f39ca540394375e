"""The Hydra config tree composes, presets are consistent, and bad overrides fail with one line."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from flywheel.compose import compose
from flywheel.config import GROUPS, Config
from flywheel.errors import ConfigError


def test_default_composes_to_typed_config():
    cfg = OmegaConf.to_object(compose())
    assert isinstance(cfg, Config)
    assert cfg.preset_name == "demo"
    assert cfg.env.image_size == 64 and cfg.world_model.size == "tiny" and cfg.idm.window == 8


@pytest.mark.parametrize("preset", ["demo", "joints", "full"])
def test_presets_select_consistent_sets(preset):
    cfg = OmegaConf.to_object(compose([f"preset={preset}"]))
    assert cfg.preset_name == preset
    assert cfg.world_model.size == cfg.idm.size == ("full" if preset == "full" else "tiny")
    assert cfg.env.image_size == cfg.world_model.image_size
    assert cfg.idm.action_dim == cfg.world_model.action_dim == 16


def test_every_group_has_yaml_validated_by_its_schema():
    from flywheel.compose import config_dir

    for group in GROUPS:
        files = sorted((config_dir() / group).glob("*.yaml"))
        assert files, f"no yaml in configs/{group}"
        for f in files:
            cfg = compose([f"{group}={f.stem}"])
            assert group in cfg


def test_override_reaches_the_config():
    cfg = compose(["db.url=postgresql://u@h/db", "env.image_size=32", "data_dir=/tmp/x"])
    assert cfg.db.url == "postgresql://u@h/db" and cfg.env.image_size == 32 and cfg.data_dir == "/tmp/x"


def test_stage_mixtures_are_exactly_what_the_yaml_or_override_gives():
    """A training stage's mixture is the one written, not merged with a default component: until session 19
    every stage of every recipe also drew from all episodes at weight 1 ({"all": 1.0} merged into each)."""
    cfg = compose(["preset=demo"])
    assert [dict(s.mixture) for s in cfg.train.wm_stages] == [
        {"play": 1.0}, {"expert": 0.8, "play": 0.2}, {"rollouts": 0.7, "expert": 0.3}]
    cfg = compose(["preset=demo", "train.wm_stages=[{name:a,mixture:{expert:1.0},steps:5,lr:1e-3},{name:b,steps:2}]"])
    assert [dict(s.mixture) for s in cfg.train.wm_stages] == [{"expert": 1.0}, {}]  # {} trains on every episode


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("db.nope=1", "db.nope"),
        ("nope=3", "nope"),
        ("env.image_size=abc", "env.image_size"),
        ("env.image_size=5", "env.image_size"),
        ("preset=nope", "preset/nope"),
        ("train.precision=fp8", "train.precision"),
    ],
)
def test_bad_override_is_one_line_naming_it(override, fragment):
    with pytest.raises(ConfigError) as info:
        compose([override])
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_the_joints_preset_is_a_coherent_recipe_for_a_planner_that_reads_imagined_joints(tmp_path):
    """`preset=joints` (the best CPU recipe so far): its world model imagines the joints over exactly the frames the
    planner imagines, it trains with the weight average, and a planner built from it reads the joints without
    text guidance, from one frame of context."""
    from policies.idm import InverseDynamicsModel
    from policies.imagine_then_act import ImagineThenActPolicy
    from policies.world_model import WorldModel

    cfg = OmegaConf.to_object(compose(["preset=joints", f"data_dir={tmp_path}"]))
    assert cfg.preset_name == "joints" and cfg.world_model.imagine_joints
    assert cfg.world_model.goal_joints and cfg.world_model.goal_count == 2  # session 31's grasp and carry goals
    assert cfg.world_model.num_frames == cfg.policy.imagine_frames == cfg.policy.horizon + 1
    assert cfg.train.wm_ema_decay == 0.999 and sum(s.steps for s in cfg.train.wm_stages) == 6000
    assert cfg.policy.guidance == 1.0 and cfg.policy.caption_upsampler == "task_pose"
    assert cfg.world_model.max_text_tokens == 96  # what the task_pose captions need (tests/policies/test_captions.py)
    policy = ImagineThenActPolicy(cfg, WorldModel(cfg.world_model).eval(), InverseDynamicsModel(cfg.idm).eval())
    assert policy.from_joints and policy.context == 1 and policy.uses_goal
