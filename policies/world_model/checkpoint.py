"""One checkpoint format: `model.safetensors` + `config.json` + `manifest.json` (sha256 and size of each).

Loading checks the manifest first, so a truncated or altered file is refused with `CheckpointError`
before any tensor is read. No pickle anywhere.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from policies.errors import CheckpointError

WEIGHTS, CONFIG, MANIFEST = "model.safetensors", "config.json", "manifest.json"
FORMAT = "flywheel-checkpoint/1"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | Path, names: list[str]) -> dict:
    """Write `manifest.json` listing sha256 and byte size of `names` inside `directory`."""
    d = Path(directory)
    files = {n: {"sha256": sha256_file(d / n), "bytes": (d / n).stat().st_size} for n in names}
    manifest = {"format": FORMAT, "files": files}
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def verify_manifest(directory: str | Path) -> dict:
    """Check every file of `manifest.json` (present, size, sha256); raise CheckpointError otherwise."""
    d = Path(directory)
    if not (d / MANIFEST).is_file():
        raise CheckpointError(f"checkpoint {d} has no {MANIFEST}; it is incomplete or not a checkpoint")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {d}: {MANIFEST} is unreadable ({e})") from e
    for name, meta in files.items():
        f = d / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {d}: {name} is missing")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"checkpoint {d}: {name} is truncated or altered ({size} bytes, expected {meta['bytes']})")
        digest = sha256_file(f)
        if digest != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint {d}: sha256 of {name} is {digest[:12]}..., the manifest says "
                f"{meta['sha256'][:12]}...; the file is corrupt, refusing to load it"
            )
    return manifest


def save_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], config: dict) -> str:
    """Write weights, config and manifest; return the sha256 of the weights file."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(d / WEIGHTS))
    (d / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return write_manifest(d, [WEIGHTS, CONFIG])["files"][WEIGHTS]["sha256"]


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Verify the manifest, then read weights and config."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist")
    verify_manifest(d)
    try:
        tensors = load_file(str(d / WEIGHTS))
        config = json.loads((d / CONFIG).read_text())
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {d} could not be read: {e}") from e
    return tensors, config
