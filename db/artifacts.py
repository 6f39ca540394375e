"""Content-addressed artifact store for large arrays and checkpoints: a local folder or any fsspec URL.

Arrays are written as a compressed `.npz` whose bytes are deterministic (fixed zip timestamps,
sorted keys), so the same arrays always get the same sha256 and the same path
`<root>/<sha256[:2]>/<sha256>.npz`. Files are written under a temporary name and renamed, so a
reader never sees half a file; every read re-hashes the bytes and refuses a mismatch.

URIs returned by `put_*` are relative to the store's root (portable when the data directory
moves); absolute paths and full fsspec URLs are accepted by `get_*` too.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import uuid
import zipfile
from pathlib import Path

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from db.errors import ArtifactError, StoreError

_CHUNK = 1 << 20
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Deterministic compressed npz bytes of `arrays` (loadable by `np.load`)."""
    if not arrays:
        raise StoreError("cannot store an empty dict of arrays")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for key in sorted(arrays):
            arr = np.asarray(arrays[key])
            if arr.dtype == object:
                raise StoreError(f"array {key!r} has dtype object; only numeric/bool/str arrays can be stored")
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)  # any layout; keeps 0-d arrays 0-d
    return buf.getvalue()


def decode_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Arrays from npz bytes, never unpickling anything."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class ArtifactStore:
    """Large arrays and files, content-addressed by sha256 under `url` (folder path or fsspec URL)."""

    def __init__(self, url: str | Path):
        self.url = str(url)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ValueError, ImportError) as exc:
            raise StoreError(f"cannot open artifact store {self.url!r}: {exc}") from None
        self.root = self.root.rstrip("/") or "/"
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            self.root = str(Path(self.root).expanduser().resolve())
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create artifact store folder {self.url!r}: {exc}") from None

    # -- addressing -------------------------------------------------------------------------------
    def resolve(self, uri: str) -> str:
        """The full path (in this store's filesystem) of `uri`."""
        if "://" in uri or uri.startswith("/"):
            return uri
        return f"{self.root}/{uri}"

    def location(self, uri: str) -> str:
        """Where `uri` lives, as a user would paste it (a local path or a full fsspec URL)."""
        path = self.resolve(uri)
        if "://" in path or self.local:
            return path
        return self.fs.unstrip_protocol(path)

    def _fs_for(self, uri: str):
        if "://" in uri:
            return fsspec.core.url_to_fs(uri)
        return self.fs, self.resolve(uri)

    # -- writing ----------------------------------------------------------------------------------
    def _put_bytes(self, data: bytes, suffix: str) -> tuple[str, str]:
        sha = hashlib.sha256(data).hexdigest()
        uri = f"{sha[:2]}/{sha}{suffix}"
        path = self.resolve(uri)
        self.fs.makedirs(f"{self.root}/{sha[:2]}", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        except OSError as exc:
            self._discard(tmp)
            raise StoreError(f"writing artifact {uri} to {self.url!r} failed: {exc}") from None
        return uri, sha

    def _discard(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except OSError:
            pass

    def put_arrays(self, arrays: dict[str, np.ndarray]) -> tuple[str, str]:
        """Store `arrays` as one compressed npz; returns `(uri, sha256)`."""
        return self._put_bytes(encode_arrays(arrays), ".npz")

    def put_file(self, path: str | Path) -> tuple[str, str]:
        """Store a file (e.g. a safetensors checkpoint), keeping its suffix; returns `(uri, sha256)`."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"cannot store {path}: not a file")
        sha = _sha256_file(path)
        uri = f"{sha[:2]}/{sha}{''.join(path.suffixes[-1:])}"
        dest = self.resolve(uri)
        self.fs.makedirs(f"{self.root}/{sha[:2]}", exist_ok=True)
        tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.put_file(str(path), tmp)
            self.fs.mv(tmp, dest)
        except OSError as exc:
            self._discard(tmp)
            raise StoreError(f"writing artifact {uri} to {self.url!r} failed: {exc}") from None
        return uri, sha

    # -- reading ----------------------------------------------------------------------------------
    def get_bytes(self, uri: str, sha256: str) -> bytes:
        """The bytes at `uri`, verified against `sha256` (ArtifactError on a mismatch or a missing file)."""
        fs, path = self._fs_for(uri)
        try:
            with fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ArtifactError(f"artifact {uri} is missing from {self.url!r}") from None
        except OSError as exc:
            raise ArtifactError(f"artifact {uri} cannot be read from {self.url!r}: {exc}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactError(
                f"artifact {uri} is corrupt: sha256 {actual[:12]}... does not match the recorded {sha256[:12]}..."
            )
        return data

    def get_arrays(self, uri: str, sha256: str) -> dict[str, np.ndarray]:
        """The arrays stored at `uri`, after checking their sha256."""
        data = self.get_bytes(uri, sha256)
        try:
            return decode_arrays(data)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"artifact {uri} is not a readable npz file: {exc}") from None

    def get_file(self, uri: str, sha256: str, dest: str | Path) -> Path:
        """Copy the file at `uri` to `dest` (a file path, or a folder to put it in) after checking its sha256."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / Path(uri).name
        fs, path = self._fs_for(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex}")
        try:
            with fs.open(path, "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise ArtifactError(f"artifact {uri} is missing from {self.url!r}") from None
        actual = _sha256_file(tmp)
        if actual != sha256:
            tmp.unlink(missing_ok=True)
            raise ArtifactError(
                f"artifact {uri} is corrupt: sha256 {actual[:12]}... does not match the recorded {sha256[:12]}..."
            )
        tmp.replace(dest)
        return dest

    def exists(self, uri: str) -> bool:
        fs, path = self._fs_for(uri)
        return bool(fs.exists(path))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
