"""Training helpers shared by the world-model and IDM trainers: device and AMP selection, a progress
bar, sha256, and resumable checkpoints (model + optimizer + RNG in safetensors, counters in JSON).

A training checkpoint directory:
    model/               the model's own checkpoint (save_pretrained: safetensors + config + manifest)
    trainer.safetensors  optimizer state tensors and RNG states
    trainer_state.json   step counters, optimizer hyper-parameters, anything the trainer adds
    manifest.json        sha256 and size of the two trainer files
It is written to a temporary sibling and renamed, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from policies.errors import CheckpointError
from policies.world_model.checkpoint import load_checkpoint, sha256_file, verify_manifest, write_manifest

__all__ = [
    "autocast", "load_training_checkpoint", "make_grad_scaler", "progress_bar", "resolve_device",
    "save_training_checkpoint", "sha256_file",
]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda[:i]`, `mps` or `auto` (the GPU when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """AMP context for `precision` in fp32 | bf16 | fp16 (fp32: no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling, enabled only for fp16 on CUDA (bf16 needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")


def progress_bar(total: int, enabled: bool, desc: str, initial: int = 0):
    """A tqdm bar (disabled => silent); call `.set_postfix(loss=...)` and `.update()`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_training_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model, optimizer, RNG, `extra` tensors (e.g. a weight average, keys without dots) and `state`
    (JSON-able counters) atomically to `directory`."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model")
    tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "trainer.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps({"state": state, "optimizer": optim_meta}, indent=2))
    write_manifest(tmp, ["trainer.safetensors", "trainer_state.json"])
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_checkpoint(directory: str | Path, model: torch.nn.Module,
                             optimizer: torch.optim.Optimizer | None = None,
                             extra: dict[str, torch.Tensor] | None = None) -> dict:
    """Restore model weights, optimizer and RNG from `directory` (verified); return the saved `state`.
    The `extra` tensors saved with it are put into the `extra` dict when one is given."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"training checkpoint {d} does not exist")
    verify_manifest(d)
    weights, _ = load_checkpoint(d / "model")
    unexpected = set(weights) - set(model.state_dict())
    if unexpected:
        raise CheckpointError(f"training checkpoint {d} holds weights this model lacks: {sorted(unexpected)[:3]}")
    model.load_state_dict(weights, strict=False)
    try:
        tensors = load_file(str(d / "trainer.safetensors"))
        meta = json.loads((d / "trainer_state.json").read_text())
    except Exception as e:
        raise CheckpointError(f"training checkpoint {d} could not be read: {e}") from e
    if optimizer is not None:
        optim_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                optim_state.setdefault(int(idx), {})[name] = value
        for key, value in meta["optimizer"]["scalars"].items():
            idx, name = key.split(".", 1)
            optim_state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": optim_state, "param_groups": meta["optimizer"]["param_groups"]})
    if extra is not None:
        extra.update({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("extra.")})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta["state"]


def cycle(iterable: Iterable):
    """Repeat an iterable forever (re-iterating it each pass); error if it is empty."""
    while True:
        empty = True
        for item in iterable:
            empty = False
            yield item
        if empty:
            raise ValueError("the training data is empty")
