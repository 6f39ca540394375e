"""Artifact store: content-addressed npz and files, atomic writes, sha256 checked on every read."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from db.artifacts import ArtifactStore
from db.errors import ArtifactError, StoreError


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "frames": rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8),  # (T+1, H, W, 3)
        "actions": rng.standard_normal((4, 16)).astype(np.float32),  # (T, 16)
    }


@pytest.fixture(params=["local", "memory"])
def artifacts(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(tmp_path / "artifacts")
    return ArtifactStore(f"memory://flywheel-test-{uuid.uuid4().hex}")


def test_roundtrip_is_content_addressed_and_deterministic(artifacts):
    uri, sha = artifacts.put_arrays(_arrays())
    assert uri == f"{sha[:2]}/{sha}.npz"
    again, sha2 = artifacts.put_arrays(_arrays())
    assert (again, sha2) == (uri, sha)  # same arrays, same bytes, same address
    out = artifacts.get_arrays(uri, sha)
    for k, v in _arrays().items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].dtype == v.dtype
    assert not [p for p in artifacts.fs.find(artifacts.root) if ".tmp-" in p]  # no temp files left


def test_corrupted_artifact_is_detected(artifacts):
    uri, sha = artifacts.put_arrays(_arrays())
    path = artifacts.resolve(uri)
    data = bytearray(artifacts.fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    artifacts.fs.pipe_file(path, bytes(data))
    with pytest.raises(ArtifactError, match=f"artifact {uri} is corrupt"):
        artifacts.get_arrays(uri, sha)


def test_missing_artifact_is_detected(artifacts):
    uri, sha = artifacts.put_arrays(_arrays())
    artifacts.fs.rm(artifacts.resolve(uri))
    with pytest.raises(ArtifactError, match="is missing"):
        artifacts.get_arrays(uri, sha)


def test_object_arrays_are_refused(artifacts):
    with pytest.raises(StoreError, match="dtype object"):
        artifacts.put_arrays({"x": np.array([{"a": 1}], dtype=object)})


def test_files_roundtrip_and_verify(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    src = tmp_path / "model.safetensors"
    src.write_bytes(b"\x00" * 100 + b"weights")
    uri, sha = store.put_file(src)
    assert uri.endswith(".safetensors") and sha in uri
    dest = store.get_file(uri, sha, tmp_path / "out" / "model.safetensors")
    assert dest.read_bytes() == src.read_bytes()
    store.fs.pipe_file(store.resolve(uri), b"tampered")
    with pytest.raises(ArtifactError, match="corrupt"):
        store.get_file(uri, sha, tmp_path / "out2.safetensors")
    assert not (tmp_path / "out2.safetensors").exists()


def test_zero_d_and_non_contiguous_arrays_keep_their_shape(tmp_path):
    import numpy as np

    from db.artifacts import ArtifactStore

    store = ArtifactStore(str(tmp_path / "a"))
    arrays = {"steps": np.array(7), "t": np.arange(12.0).reshape(3, 4).T}
    uri, sha = store.put_arrays(arrays)
    back = store.get_arrays(uri, sha)
    assert back["steps"].shape == () and int(back["steps"]) == 7
    assert back["t"].shape == (4, 3) and (back["t"] == arrays["t"]).all()
