"""The model registry: checkpoint directories in the artifact store, versions and aliases in SQL.

A checkpoint is a directory (`model.safetensors`, `config.json`, `manifest.json`). Registering puts each
file into the content-addressed artifact store and a small JSON *bundle* naming them; the model
version row records the bundle's URI and sha256, the config hash, the parent and the data snapshot
(lineage). Materialising a version copies the files into `data_dir/models/<kind>/v<N>/`, each verified
by sha256, so a corrupt artifact is refused before anything loads it.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.errors import FlywheelError

KINDS = ("world_model", "idm", "policy")


@dataclass
class RegisteredModel:
    """A model version as the flywheel sees it: the row plus where its files are on this machine."""

    id: int
    kind: str
    version: int
    path: Path
    parent_id: int | None
    config_hash: str


class ModelRegistry:
    """Register, materialise, alias and load model versions of one experience store."""

    def __init__(self, store: Any, data_dir: str | Path):
        self.store = store
        self.cache = Path(data_dir) / "models"

    # -- writing ----------------------------------------------------------------------------------
    def register(
        self, kind: str, checkpoint_dir: str | Path, config: dict[str, Any], *,
        parent_id: int | None = None, data_snapshot: dict[str, Any] | None = None,
        training_run_id: int | None = None,
    ) -> RegisteredModel:
        """Store the checkpoint's files and register them as the next version of `kind`."""
        if kind not in KINDS:
            raise FlywheelError(f"model kind must be one of {', '.join(KINDS)}, got {kind!r}")
        src = Path(checkpoint_dir)
        files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else []
        if not files:
            raise FlywheelError(f"checkpoint {src} is empty or missing; nothing to register")
        bundle = {"kind": kind, "files": {}}
        for f in files:
            uri, sha = self.store.artifacts.put_file(f)
            bundle["files"][f.name] = {"uri": uri, "sha256": sha}
        with tempfile.TemporaryDirectory() as tmp:
            bpath = Path(tmp) / "bundle.json"
            bpath.write_text(json.dumps(bundle, sort_keys=True, indent=1))
            b_uri, b_sha = self.store.artifacts.put_file(bpath)
        row = self.store.register_model(
            kind, b_uri, b_sha, config, parent_id=parent_id, data_snapshot=data_snapshot,
            training_run_id=training_run_id,
        )
        dest = self._dir(kind, row.version)
        if not dest.exists():
            shutil.copytree(src, dest)
        return self._wrap(row, dest)

    def promote(self, kind: str, model_id: int, reason: str, alias: str = "champion") -> None:
        """Point `alias` at a version (the alias history keeps the previous one)."""
        self.store.set_alias(kind, alias, model_id, reason)

    # -- reading ----------------------------------------------------------------------------------
    def alias(self, kind: str, alias: str = "champion") -> RegisteredModel | None:
        row = self.store.get_alias(kind, alias)
        return None if row is None else self.materialise(row)

    def get(self, kind: str, version: int) -> RegisteredModel:
        return self.materialise(self.store.get_model(kind, version))

    def by_id(self, model_id: int) -> RegisteredModel:
        return self.materialise(self.store.get_model_by_id(model_id))

    def resolve(self, kind: str, ref: str | int | None) -> RegisteredModel | None:
        """`ref` is an alias name ("champion"), a version number, "v3", or None (the champion)."""
        if ref is None:
            return self.alias(kind)
        text = str(ref)
        if text.lstrip("v").isdigit():
            return self.get(kind, int(text.lstrip("v")))
        return self.alias(kind, text)

    def materialise(self, row: Any) -> RegisteredModel:
        """Copy a version's files (sha256-verified) into the local cache, once; return where they are."""
        dest = self._dir(row.kind, row.version)
        if not (dest / ".complete").exists():
            bundle = json.loads(self.store.artifacts.get_bytes(row.artifact_uri, row.sha256).decode())
            tmp = dest.with_name(dest.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name, meta in bundle["files"].items():
                self.store.artifacts.get_file(meta["uri"], meta["sha256"], tmp / name)
            (tmp / ".complete").write_text(row.sha256)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        return self._wrap(row, dest)

    def _dir(self, kind: str, version: int) -> Path:
        return self.cache / kind / f"v{version}"

    @staticmethod
    def _wrap(row: Any, path: Path) -> RegisteredModel:
        return RegisteredModel(id=row.id, kind=row.kind, version=row.version, path=path,
                               parent_id=row.parent_id, config_hash=row.config_hash)
