"""The promotion gate on real registered models: a worse challenger is not promoted and the champion is
untouched; a better one is; a better one whose checkpoint is corrupt is refused."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from db.store import ExperienceStore
from flywheel.compose import compose
from flywheel.evaluation.regression import SuiteItem
from flywheel.loop import Flywheel
from flywheel.registry import ModelRegistry


@pytest.fixture
def world(tmp_path):
    from policies.idm import IDMConfig, InverseDynamicsModel
    from policies.world_model import WorldModel, WorldModelConfig

    cfg = OmegaConf.to_object(compose(["preset=smoke", f"data_dir={tmp_path}"]))
    store = ExperienceStore.from_config(cfg.db, tmp_path, create=True)
    reg = ModelRegistry(store, tmp_path)
    pairs = []
    for i in range(2):  # champion (v1) and challenger (v2) of each kind
        wm_dir, idm_dir = tmp_path / f"wm{i}", tmp_path / f"idm{i}"
        WorldModel(WorldModelConfig(image_size=16, num_frames=5, patch_size=(1, 8, 8))).save_pretrained(wm_dir)
        InverseDynamicsModel(IDMConfig(image_size=16, hidden_dim=32)).save_pretrained(idm_dir)
        parent = pairs[0] if pairs else (None, None)
        wm = reg.register("world_model", wm_dir, {"i": i}, parent_id=parent[0].id if parent[0] else None)
        idm = reg.register("idm", idm_dir, {"i": i}, parent_id=parent[1].id if parent[1] else None)
        pairs.append((wm, idm))
    for m in pairs[0]:
        reg.promote(m.kind, m.id, "bootstrap")
    fw = Flywheel(cfg, store, reg, run_episodes=None, trainer=None, progress=lambda m: None)
    yield fw, store, pairs
    store.close()


def _suite(n: int) -> list[SuiteItem]:
    return [SuiteItem("in_distribution", f"in_distribution:{i}", {}) for i in range(n)]


def _outcomes(values: list[bool]) -> dict[str, bool]:
    return {f"in_distribution:{i}": v for i, v in enumerate(values)}


def test_worse_challenger_is_not_promoted_and_champion_untouched(world):
    fw, store, (champ, chall) = world
    before = store.alias_history("world_model", "champion")
    res = fw.gate(1, champ, chall, _outcomes([True] * 8), _outcomes([False] * 8), _suite(8))
    assert res["promoted"] is False and "not better" in res["reason"]
    for m in champ:
        assert store.get_alias(m.kind, "champion").id == m.id
    assert store.alias_history("world_model", "champion") == before
    evals = store.evaluations(model_version_id=chall[0].id)
    assert evals and evals[0]["value"] == 0.0 and evals[0]["n"] == 8


def test_better_challenger_is_promoted_with_the_reason(world):
    fw, store, (champ, chall) = world
    res = fw.gate(1, champ, chall, _outcomes([False] * 8), _outcomes([True] * 8), _suite(8))
    assert res["promoted"] is True and res["p_value"] == pytest.approx(0.5**8)
    for m in chall:
        assert store.get_alias(m.kind, "champion").id == m.id
    history = store.alias_history("idm", "champion")
    assert len(history) == 2 and "McNemar" in history[-1].reason


def test_noise_is_not_enough(world):
    fw, store, (champ, chall) = world
    res = fw.gate(1, champ, chall, _outcomes([False, True, False, True]), _outcomes([True, False, True, True]),
                  _suite(4))
    assert res["promoted"] is False
    assert store.get_alias("world_model", "champion").id == champ[0].id


def test_corrupt_challenger_checkpoint_is_refused(world):
    fw, store, (champ, chall) = world
    weights = Path(chall[0].path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte: same size, wrong sha256
    weights.write_bytes(bytes(data))
    res = fw.gate(1, champ, chall, _outcomes([False] * 8), _outcomes([True] * 8), _suite(8))
    assert res["promoted"] is False and "refused" in res["reason"] and "sha256" in res["reason"]
    for m in champ:
        assert store.get_alias(m.kind, "champion").id == m.id
