"""Per-image backbone features kept on disk, keyed by file content and backbone.

``sigrl tag --features DIR`` and ``sigrl calibrate --features DIR`` keep the global and
local features of every image they encode, so a second run over the same photos (new
labels, another calibration) reads them instead of decoding and encoding::

    DIR/<backbone fingerprint>/backbone.json    the backbone's spec, shapes and probe
    DIR/<backbone fingerprint>/<shard>.npz      keys (N,) content hashes, fingerprint,
                                                global (N, D) and local (N, P, D) fp16

* An image's key is the SHA-256 of its file bytes (renaming or copying a photo keeps
  its features; editing it makes a new key), under the backbone's
  :attr:`~sigrl.backbones.base.Backbone.fingerprint` (spec + preprocessing).
* Another backbone: its own sub-folder, never another's features. ``backbone.json``
  also holds the features of a fixed probe image; a backbone whose fingerprint matches
  but whose probe features do not (the weights file was replaced under the same name)
  is refused (:class:`~sigrl.errors.UsageError`), and so is a shard whose recorded
  fingerprint is not its folder's.
* Shards are written whole and atomically (:func:`sigrl.safeio.atomic_write`), by any
  number of processes at once (each writes its own new files; nothing is rewritten).
  A shard that cannot be read back (torn by a copy, a full disk, a crash of a
  filesystem without atomic rename) is moved aside as ``*.torn`` with a warning; its
  images are encoded again and written to a new shard.
* Features are stored in fp16; whoever scores through the store scores the fp16
  features (first run and re-runs alike, so they give the same scores).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from .errors import UsageError
from .safeio import atomic_write, atomic_write_text

FORMAT = "sigrl-feature-store"
VERSION = 1
#: probe features of the same backbone must agree to this (fp32 vs fp32, same machine or not)
PROBE_ATOL = 1e-3


def content_key(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex, 32 chars) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()[:32]


def _probe(backbone):
    """Features of a fixed synthetic image (a gradient): ``(global (D,), local (P, D))``."""
    import torch
    from PIL import Image

    size = backbone.preprocess_config.image_size
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], -1)
    pixels = backbone.preprocess(Image.fromarray(rgb.astype(np.uint8)))
    with torch.no_grad():
        g, l = backbone.encode_images(pixels.unsqueeze(0).to(backbone.device))
    return g[0].float().cpu().numpy(), l[0].float().cpu().numpy()


class FeatureStore:
    """The features of one backbone in ``root`` (see the module docstring).

    ``store.get(key)`` -> ``(global (D,), local (P, D))`` fp16 arrays or None;
    ``store.put(key, g, l)`` buffers new features, written as a shard every
    ``shard_size`` images and by :meth:`flush` (call it at the end; a killed run loses
    only the unflushed images, which are encoded again next time).
    """

    def __init__(self, root: str | os.PathLike, backbone, *, shard_size: int = 256, check_probe: bool = True,
                 variant: str | None = None):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--features {self.root}: is a file (give a folder)")
        # variant: e.g. the hash of a run's fine-tuned image-tower tensors (other features)
        self.fingerprint = backbone.fingerprint + (f"-{variant}" if variant else "")
        self.dir = self.root / self.fingerprint
        self.shard_size = int(shard_size)
        self.dir.mkdir(parents=True, exist_ok=True)
        top = self.root / "store.json"
        if not top.exists():
            atomic_write_text(top, json.dumps({"format": FORMAT, "version": VERSION}) + "\n")
        self._check_backbone(backbone, check_probe)
        self._index: dict[str, tuple[str, int]] = {}
        self._loaded: dict[str, dict] = {}
        self._pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.torn: list[str] = []
        self.written = 0
        self._scan()
        self._names_path = self.root / "names.json"
        self._names = self._read_names()
        self._names_changed = False

    # ------------------------------------------------------------------ backbone identity
    def _check_backbone(self, backbone, check_probe: bool) -> None:
        info_path = self.dir / "backbone.json"
        g, l = _probe(backbone) if check_probe or not info_path.exists() else (None, None)
        if info_path.exists():
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise UsageError(f"{info_path}: unreadable ({err}); delete {self.dir} to rebuild it") from None
            if info.get("fingerprint") != self.fingerprint:
                raise UsageError(f"{info_path}: features of backbone {info.get('fingerprint')!r} in the folder of "
                                 f"{self.fingerprint!r}; refusing them (delete {self.dir})")
            if g is not None:
                pg, pl = np.asarray(info["probe_global"], np.float32), np.asarray(info["probe_local_mean"], np.float32)
                if (pg.shape != g.shape or pl.shape != l.mean(0).shape or not np.allclose(pg, g, atol=PROBE_ATOL)
                        or not np.allclose(pl, l.mean(0), atol=PROBE_ATOL)):
                    raise UsageError(f"--features {self.root}: its features of {backbone.spec.get('model', 'this model')!r} "
                                     "were computed with other weights (same name and settings, different "
                                     f"outputs); refusing them. Use another folder or delete {self.dir}")
            self.embed_dim, self.patches = int(info["embed_dim"]), int(info["patches"])
            return
        self.embed_dim, self.patches = int(g.shape[0]), int(l.shape[0])
        info = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                "spec": {k: str(v) for k, v in backbone.spec.items()},
                "preprocess": backbone.preprocess_config.to_dict(), "embed_dim": self.embed_dim,
                "patches": self.patches, "probe_global": [round(float(x), 6) for x in g],
                "probe_local_mean": [round(float(x), 6) for x in l.mean(0)]}
        atomic_write_text(info_path, json.dumps(info) + "\n")

    # ------------------------------------------------------------------ content keys
    def _read_names(self) -> dict:
        try:
            names = json.loads(self._names_path.read_text(encoding="utf-8"))
            return names if isinstance(names, dict) else {}
        except (OSError, ValueError):
            return {}  # absent or unreadable: keys are computed from the bytes again

    def key_of(self, path: str | os.PathLike) -> str | None:
        """The content key of a file (None when it cannot be read). The SHA-256 of a
        file seen before with the same size, mtime and inode is taken from
        ``DIR/names.json`` (as git does) instead of reading the bytes again."""
        try:
            st = os.stat(path)
            name = os.path.abspath(path)
        except (OSError, ValueError):
            return None
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        seen = self._names.get(name)
        if seen and seen[:3] == stamp:
            return seen[3]
        try:
            key = content_key(path)
        except OSError:
            return None
        self._names[name] = stamp + [key]
        self._names_changed = True
        return key

    # ------------------------------------------------------------------------ shards
    def _scan(self) -> None:
        for path in sorted(self.dir.glob("*.npz")):
            try:
                with np.load(path) as z:
                    keys = z["keys"]
                    fp = str(z["fingerprint"])
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                self._set_aside(path, err)
                continue
            if fp != self.fingerprint:
                self._set_aside(path, f"written by backbone {fp!r}, not {self.fingerprint!r}")
                continue
            for row, key in enumerate(keys.tolist()):
                self._index.setdefault(str(key), (path.name, row))

    def _set_aside(self, path: Path, why) -> None:
        self.torn.append(path.name)
        try:
            os.replace(path, path.with_suffix(".torn"))
        except OSError:
            pass
        print(f"sigrl: feature store: {path.name} unreadable ({why}); set aside, its images are encoded again",
              file=sys.stderr)
        self._index = {k: v for k, v in self._index.items() if v[0] != path.name}

    def _shard(self, name: str) -> dict | None:
        if name not in self._loaded:
            path = self.dir / name
            try:
                with np.load(path) as z:
                    data = {"keys": z["keys"], "global": z["global"], "local": z["local"]}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                self._set_aside(path, err)
                return None
            if len(self._loaded) >= 2:  # memory: at most two shards held
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[name] = data
        return self._loaded[name]

    def keys(self) -> set[str]:
        return set(self._index) | set(self._pending)

    def __contains__(self, key: str) -> bool:
        return key in self._index or key in self._pending

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str):
        """``(global (D,), local (P, D))`` fp16 or None (unknown key, or its shard is torn)."""
        where = self._index.get(key)
        if where is None:
            return self._pending.get(key)
        shard = self._shard(where[0])
        if shard is None:
            return None
        return shard["global"][where[1]], shard["local"][where[1]]

    def get_many(self, keys: list[str]) -> list:
        """:meth:`get` of many keys, reading each shard once."""
        return [self.get(k) for k in keys]

    def put(self, key: str, global_feat, local_feat) -> None:
        g = np.asarray(global_feat, dtype=np.float16)
        l = np.asarray(local_feat, dtype=np.float16)
        if g.shape != (self.embed_dim,) or l.shape != (self.patches, self.embed_dim):
            raise UsageError(f"feature store: features of shape {g.shape}, {l.shape} for a backbone with "
                             f"({self.embed_dim},), ({self.patches}, {self.embed_dim})")
        if key in self:
            return
        self._pending[key] = (g, l)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered features as one new shard (atomically), and the content
        keys of the files seen."""
        if self._names_changed:
            names = {**self._read_names(), **self._names}  # another process's entries kept
            atomic_write_text(self._names_path, json.dumps(names))
            self._names, self._names_changed = names, False
        if not self._pending:
            return
        keys = np.array(list(self._pending), dtype="U32")
        glob = np.stack([g for g, _ in self._pending.values()])
        loc = np.stack([l for _, l in self._pending.values()])
        name = f"{time.time_ns():x}-{os.getpid()}.npz"

        def write(fh):
            buf = io.BytesIO()
            np.savez(buf, keys=keys, fingerprint=np.array(self.fingerprint), **{"global": glob, "local": loc})
            fh.write(buf.getvalue())

        atomic_write(self.dir / name, write)
        for row, key in enumerate(keys.tolist()):
            self._index.setdefault(key, (name, row))
        self.written += len(self._pending)
        self._pending = {}
