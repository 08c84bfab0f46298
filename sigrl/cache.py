"""Frozen-backbone feature cache: encode every image of a split once, train from disk.

The backbone never changes during training (docs/design.md §8), so each image's global
embedding g (D,) and local tokens L (P, D) are computed once and stored as float16::

    <dir>/manifest.json             what the cache holds (see below); "complete": true when done
    <dir>/shard-00000.global.npy    (n, D)    float16, rows [0, shard_size)
    <dir>/shard-00000.local.npy     (n, P, D) float16
    <dir>/shard-00000.json          the shard's record: rows, failed images, file sizes
    ...

Reads are memory-mapped (``np.load(mmap_mode="r")``): an epoch touches the rows it needs
and the operating system keeps hot pages in memory.

**Manifest.** Names the backbone (``spec`` + fingerprint + checkpoint hash), the
preprocessing, the split, the sha256 of its image list, the shapes, the dtype, the shard
size, the finished shards and the failed images. :func:`open_cache` refuses a cache whose
manifest does not match the run (another backbone or checkpoint: CheckpointError; another
image list: DataError), saying what to do.

**Crash safety / resume.** Every file is written to a temporary name in the same folder,
fsync'ed and renamed, so a file under its final name is always complete. A shard counts as
finished only when its record ``shard-NNNNN.json`` exists (written after both arrays) and
the array sizes it lists match the files; a killed build leaves at most temporary files,
which the next build deletes, and resumes with the unfinished shards. Only shards listed
in a complete manifest are ever read.

**Across processes.** Under ``torchrun`` / ``accelerate launch`` pass the Accelerate state:
shard ``i`` is encoded by rank ``i % world_size``, each rank writes its own shards, and
rank 0 merges the records into the manifest after a barrier.

**Independent builds of one folder** (two trainings started on the same dataset and
backbone) take turns: a build holds an exclusive ``flock`` on ``<dir>/.build.lock`` (rank 0
for a distributed build) from before it touches the folder until the manifest is complete.
A second build prints one line saying it waits, then finds the cache complete and opens it
without encoding anything (or resumes what a killed first build left). The kernel drops
the lock of a killed process. Opening a complete cache takes no lock, so a finished cache
on a read-only disk still opens. Where ``fcntl.flock`` is missing or refused by the file
system, builds are not serialised: each file is still written atomically, so concurrent
builds only duplicate work.

**Bad images** (missing, truncated, not an image) are recorded in the manifest under
``failed`` with the reason, reported on stderr, stored as zero rows, and excluded by
:attr:`FeatureCache.valid`; they never stop a build.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import CheckpointError, DataError
from .safeio import atomic_write, atomic_write_text

FORMAT = "sigrl-feature-cache"
VERSION = 2
DTYPE = "float16"
MANIFEST = "manifest.json"
LOCK = ".build.lock"

__all__ = ["FeatureCache", "build_cache", "open_cache", "ensure_cache", "cache_dir_for", "image_list_sha256",
           "FeatureDataset"]


# ----------------------------------------------------------------------------- identity
def image_list_sha256(split) -> str:
    """sha256 of the split's image list (relative paths as listed, in order), 16 chars."""
    h = hashlib.sha256()
    for name in split.images:
        h.update(str(name).encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()[:16]


def cache_dir_for(root: str | Path, split, backbone) -> Path:
    """``<root>/<split name>-<backbone fingerprint>``: one folder per (split, backbone)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", split.name or "split").strip("_") or "split"
    return Path(root) / f"{slug}-{backbone.fingerprint}"


def _identity(backbone, split) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "backbone": backbone.spec,
        "fingerprint": backbone.fingerprint,
        "checkpoint_sha256": backbone.spec.get("checkpoint_sha256"),
        "preprocess": backbone.preprocess_config.to_dict(),
        "split": split.name,
        "num_images": len(split),
        "image_list_sha256": image_list_sha256(split),
    }


def _jsonable(x):
    return json.loads(json.dumps(x))


def _check_identity(directory: Path, manifest: dict, backbone, split) -> None:
    """Raise CheckpointError / DataError when ``manifest`` was built for another run."""
    what = "delete the folder, run 'sigrl cache build CONFIG --rebuild', or point cache.dir elsewhere"
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CheckpointError(f"{directory}: not a sigrl feature cache of version {VERSION} "
                              f"(format {manifest.get('format')!r}, version {manifest.get('version')!r}); {what}")
    if backbone is not None:
        want = _jsonable(_identity(backbone, split)) if split is not None else None
        if manifest.get("fingerprint") != backbone.fingerprint or (
                manifest.get("backbone") != _jsonable(backbone.spec)):
            raise CheckpointError(
                f"{directory}: feature cache was built with backbone {manifest.get('backbone', {}).get('model')!r} "
                f"(fingerprint {manifest.get('fingerprint')}, checkpoint {manifest.get('checkpoint_sha256')}), "
                f"this run uses {backbone.spec.get('model')!r} (fingerprint {backbone.fingerprint}, "
                f"checkpoint {backbone.spec.get('checkpoint_sha256')}); {what}")
        if manifest.get("preprocess") != _jsonable(backbone.preprocess_config.to_dict()):
            raise CheckpointError(f"{directory}: feature cache used other preprocessing "
                                  f"({manifest.get('preprocess')}) than this run "
                                  f"({backbone.preprocess_config.to_dict()}); {what}")
        if want is not None and (manifest.get("image_list_sha256") != want["image_list_sha256"]
                                 or manifest.get("num_images") != want["num_images"]):
            raise DataError(
                f"{directory}: feature cache holds another image list ({manifest.get('num_images')} images, "
                f"hash {manifest.get('image_list_sha256')}) than split {split.name!r} ({len(split)} images, "
                f"hash {want['image_list_sha256']}); the dataset changed: {what}")
    elif split is not None and manifest.get("image_list_sha256") != image_list_sha256(split):
        raise DataError(f"{directory}: feature cache holds another image list than split {split.name!r}; {what}")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: {what} is not readable JSON ({err}); delete the cache folder and rebuild") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object; delete the cache folder and rebuild")
    return data


# ----------------------------------------------------------------------------- reading
class FeatureCache:
    """A complete feature cache opened for memory-mapped reads.

    Attributes:
        directory, manifest: where it is and what it holds.
        num_images (N), embed_dim (D), num_patches (P).
        valid: (N,) bool, False for images that failed to load.
    """

    def __init__(self, directory: Path, manifest: dict):
        self.directory = Path(directory)
        self.manifest = manifest
        self.num_images = int(manifest["num_images"])
        self.embed_dim = int(manifest["embed_dim"])
        self.num_patches = int(manifest["num_patches"])
        self.shard_size = int(manifest["shard_size"])
        self.valid = np.ones(self.num_images, dtype=bool)
        for item in manifest.get("failed", []):
            self.valid[int(item["index"])] = False
        self._global: list[np.ndarray] = []
        self._local: list[np.ndarray] = []
        shards = sorted(manifest["shards"], key=lambda s: s["index"])
        if [s["index"] for s in shards] != list(range(_num_shards(self.num_images, self.shard_size))):
            raise CheckpointError(f"{self.directory}: manifest does not list every shard; delete the folder and rebuild")
        for s in shards:
            g = self._map(s, "global", (s["stop"] - s["start"], self.embed_dim))
            l_ = self._map(s, "local", (s["stop"] - s["start"], self.num_patches, self.embed_dim))
            self._global.append(g)
            self._local.append(l_)

    def _map(self, shard: dict, kind: str, shape: tuple) -> np.ndarray:
        path = self.directory / shard[kind]
        try:
            if path.stat().st_size != shard[f"{kind}_bytes"]:
                raise ValueError(f"size {path.stat().st_size} != {shard[f'{kind}_bytes']}")
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path}: damaged feature shard ({err}); delete the cache folder and rebuild") from None
        if arr.shape != shape or arr.dtype != np.float16:
            raise CheckpointError(f"{path}: shard holds {arr.dtype}{arr.shape}, manifest says float16{shape}; "
                                  "delete the cache folder and rebuild")
        return arr

    def __len__(self) -> int:
        return self.num_images

    @property
    def failed(self) -> list[dict]:
        return list(self.manifest.get("failed", []))

    def read(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """rows (B,) ints -> (global (B, D), local (B, P, D)) float32 tensors."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        g = np.empty((len(rows), self.embed_dim), dtype=np.float32)
        l_ = np.empty((len(rows), self.num_patches, self.embed_dim), dtype=np.float32)
        shard, offset = np.divmod(rows, self.shard_size)
        for s in np.unique(shard):
            pick = np.flatnonzero(shard == s)
            off = offset[pick]
            g[pick] = self._global[s][off]
            l_[pick] = self._local[s][off]
        return torch.from_numpy(g), torch.from_numpy(l_)

    def global_features(self, rows=None) -> torch.Tensor:
        """(N, D) float32 global embeddings (of ``rows`` when given); no local tokens read."""
        rows = np.arange(self.num_images) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.embed_dim), dtype=np.float32)
        shard, offset = np.divmod(rows, self.shard_size)
        for s in np.unique(shard):
            pick = np.flatnonzero(shard == s)
            out[pick] = self._global[s][offset[pick]]
        return torch.from_numpy(out)


def open_cache(directory: str | Path, backbone=None, split=None) -> FeatureCache:
    """Open a complete cache; with ``backbone``/``split`` check that it was built for them."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise CheckpointError(f"{directory}: no feature cache here (no {MANIFEST}); build it with 'sigrl cache build CONFIG'")
    manifest = _read_json(directory / MANIFEST, "feature-cache manifest")
    _check_identity(directory, manifest, backbone, split)
    if not manifest.get("complete"):
        raise CheckpointError(f"{directory}: feature cache is incomplete (an interrupted build); "
                              "run 'sigrl cache build CONFIG' again to finish it")
    return FeatureCache(directory, manifest)


class FeatureDataset(torch.utils.data.Dataset):
    """Rows of a cached split as training/eval items.

    Item ``i``: ``{"index": i, "global": (D,), "local": (P, D), "target": (C,)}`` where
    ``index`` is the position in ``rows`` (what per-image losses and label recovery use).
    """

    def __init__(self, cache: FeatureCache, rows, targets):
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        if len(self.rows) != len(self.targets):
            raise ValueError(f"{len(self.rows)} rows but {len(self.targets)} target rows")

    def __len__(self) -> int:
        return len(self.rows)

    def set_targets(self, targets) -> None:
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)

    def __getitem__(self, i: int) -> dict:
        g, l_ = self.cache.read(self.rows[i : i + 1])
        return {"index": i, "global": g[0], "local": l_[0], "target": self.targets[i]}


# ----------------------------------------------------------------------------- building
def _num_shards(n: int, shard_size: int) -> int:
    return (n + shard_size - 1) // shard_size


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _atomic_save_npy(path: Path, array: np.ndarray) -> int:
    """np.save through :func:`~sigrl.safeio.atomic_write` (temp file, fsync, rename).
    Returns the file size."""
    atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))
    return path.stat().st_size


def _finished_record(directory: Path, i: int) -> dict | None:
    """The record of shard ``i`` when the shard is complete on disk, else None."""
    rec_path = directory / f"{_shard_name(i)}.json"
    if not rec_path.is_file():
        return None
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        for kind in ("global", "local"):
            if (directory / rec[kind]).stat().st_size != rec[f"{kind}_bytes"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rec


class _ImageRows(torch.utils.data.Dataset):
    def __init__(self, split, rows, transform):
        self.split, self.rows, self.transform = split, rows, transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        from .images import ImageError, load_image

        row = int(self.rows[i])
        try:
            pixels = self.transform(load_image(self.split.path(row)))
            return row, pixels, ""
        except ImageError as err:
            return row, None, str(err)
        except Exception as err:  # noqa: BLE001 - a bad image must never stop the build
            return row, None, f"{type(err).__name__}: {err}"


def _collate(items):
    return items


def _existing_manifest(directory: Path, backbone, split, rebuild: bool) -> dict | None:
    """The folder's manifest, checked against ``backbone`` and ``split`` (raises when it
    belongs to others); None when there is none or the cache is being rebuilt."""
    path = directory / MANIFEST
    if rebuild or not path.is_file():
        return None
    manifest = _read_json(path, "feature-cache manifest")
    _check_identity(directory, manifest, backbone, split)
    return manifest


def _lock_folder(directory: Path):
    """Hold an exclusive lock on ``directory/LOCK`` (waiting for another build that holds
    it); returns the open lock file (closing it releases the lock) or None where the
    platform or file system has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    try:
        fh = open(directory / LOCK, "a+b")  # noqa: SIM115 - kept open while the lock is held
    except OSError as err:
        raise CheckpointError(f"{directory / LOCK}: cannot create the build lock ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"sigrl cache: {directory} is being built by another process; waiting for it to finish",
                  file=sys.stderr, flush=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    except OSError:  # e.g. ENOLCK on a network file system: go on without the lock
        fh.close()
        return None
    except BaseException:
        fh.close()
        raise
    return fh


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    def barrier(self, state):
        if state is not None and self.world > 1:
            state.wait_for_everyone()


def _encode_shard(split, backbone, start: int, stop: int, shapes: tuple[int, int], batch_size: int,
                  num_workers: int, bar) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    n_patches, dim = shapes
    g = np.zeros((stop - start, dim), dtype=np.float16)
    l_ = np.zeros((stop - start, n_patches, dim), dtype=np.float16)
    failed = []
    loader = torch.utils.data.DataLoader(_ImageRows(split, np.arange(start, stop), backbone.preprocess),
                                         batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
                                         generator=torch.Generator())  # leaves the global RNG alone
    for items in loader:
        ok = [(row, px) for row, px, _ in items if px is not None]
        for row, px, err in items:
            if px is None:
                failed.append({"index": row, "path": str(split.images[row]), "error": err})
                print(f"sigrl cache: skipping image {split.path(row)}: {err}", file=sys.stderr)
        if ok:
            pixels = torch.stack([px for _, px in ok]).to(backbone.device)
            with torch.no_grad():
                gb, lb = backbone.encode_images(pixels)
            idx = np.array([row - start for row, _ in ok])
            g[idx] = gb.float().cpu().numpy().astype(np.float16)
            l_[idx] = lb.float().cpu().numpy().astype(np.float16)
        if bar is not None:
            bar.update(len(items))
    return g, l_, failed


def _probe_shapes(backbone) -> tuple[int, int]:
    size = backbone.preprocess_config.image_size
    with torch.no_grad():
        g, l_ = backbone.encode_images(torch.zeros(1, 3, size, size, device=backbone.device))
    return int(l_.shape[1]), int(g.shape[1])


def build_cache(split, backbone, directory: str | Path, *, shard_size: int = 1024, batch_size: int = 64,
                num_workers: int = 0, state=None, rebuild: bool = False, progress: bool = True,
                on_shard: Callable[[int], None] | None = None) -> FeatureCache:
    """Encode every image of ``split`` with ``backbone`` into ``directory``; resume an
    interrupted build; return the opened cache.

    Args:
        split: a :class:`~sigrl.data.base.MultiLabelSplit` (its images and root).
        backbone: a frozen :class:`~sigrl.backbones.Backbone`.
        shard_size: images per shard file (a resumed build keeps the existing size).
        state: Accelerate ``PartialState``/``AcceleratorState`` when several processes
            build together (each must call this); None for one process.
        rebuild: delete an existing cache in ``directory`` first.
        on_shard: called with the shard index after each shard this process finished.

    Raises:
        CheckpointError / DataError: ``directory`` holds a cache of another backbone or
            image list (and ``rebuild`` is False).
    """
    directory = Path(directory)
    dist = _Dist(getattr(state, "process_index", 0), getattr(state, "num_processes", 1))
    # 0. a complete cache opens without writing anything (no lock: read-only caches work)
    manifest = _existing_manifest(directory, backbone, split, rebuild)
    if manifest is not None and manifest.get("complete"):
        return FeatureCache(directory, manifest)
    # 1. one build of this folder at a time: rank 0 holds the lock until the manifest is complete
    lock = None
    if dist.rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        lock = _lock_folder(directory)
    try:
        dist.barrier(state)  # the other ranks start once rank 0 holds the lock
        return _build_locked(split, backbone, directory, dist, shard_size=shard_size, batch_size=batch_size,
                             num_workers=num_workers, state=state, rebuild=rebuild, progress=progress,
                             on_shard=on_shard)
    finally:
        if lock is not None:
            lock.close()


def _build_locked(split, backbone, directory: Path, dist: _Dist, *, shard_size, batch_size, num_workers, state,
                  rebuild, progress, on_shard) -> FeatureCache:
    """:func:`build_cache` once this build holds the folder's lock."""
    identity = _jsonable(_identity(backbone, split))
    manifest_path = directory / MANIFEST
    # 2. every rank checks an existing manifest (so all fail alike; another build may have
    #    finished it while this one waited for the lock); rank 0 prepares the folder
    manifest = _existing_manifest(directory, backbone, split, rebuild)
    if manifest is not None:
        if manifest.get("complete"):
            return FeatureCache(directory, manifest)
        shard_size = int(manifest["shard_size"])
    if dist.rank == 0:
        if rebuild and directory.exists():
            _wipe(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for tmp in directory.glob(".*.tmp"):  # leftovers of a killed build, never read
            tmp.unlink(missing_ok=True)
        if not manifest_path.is_file():
            n_patches, dim = _probe_shapes(backbone)
            atomic_write_text(manifest_path, json.dumps({
                **identity, "embed_dim": dim, "num_patches": n_patches, "dtype": DTYPE,
                "shard_size": shard_size, "complete": False, "shards": [], "failed": []}, indent=1))
    dist.barrier(state)
    manifest = _read_json(manifest_path, "feature-cache manifest")
    shard_size = int(manifest["shard_size"])
    shapes = (int(manifest["num_patches"]), int(manifest["embed_dim"]))
    n = len(split)
    mine = [i for i in range(_num_shards(n, shard_size))
            if i % dist.world == dist.rank and _finished_record(directory, i) is None]
    bar = None
    if progress and dist.rank == 0 and mine:
        from tqdm.auto import tqdm

        todo = sum(min(n, (i + 1) * shard_size) - i * shard_size for i in mine)
        bar = tqdm(total=todo, desc=f"cache {split.name or 'split'}", unit="img", file=sys.stderr,
                   dynamic_ncols=True, leave=False)
    try:
        for i in mine:
            start, stop = i * shard_size, min(n, (i + 1) * shard_size)
            g, l_, failed = _encode_shard(split, backbone, start, stop, shapes, batch_size, num_workers, bar)
            name = _shard_name(i)
            record = {"index": i, "start": start, "stop": stop,
                      "global": f"{name}.global.npy", "local": f"{name}.local.npy", "failed": failed}
            record["global_bytes"] = _atomic_save_npy(directory / record["global"], g)
            record["local_bytes"] = _atomic_save_npy(directory / record["local"], l_)
            atomic_write_text(directory / f"{name}.json", json.dumps(record))  # the "finished" mark
            if on_shard is not None:
                on_shard(i)
    finally:
        if bar is not None:
            bar.close()
    # 3. after every rank is done, rank 0 merges the shard records into the manifest
    dist.barrier(state)
    if dist.rank == 0:
        records = []
        for i in range(_num_shards(n, shard_size)):
            rec = _finished_record(directory, i)
            if rec is None:
                raise CheckpointError(f"{directory}: shard {i} is missing after the build; run the build again")
            records.append(rec)
        failed = [f for rec in records for f in rec.pop("failed")]
        manifest.update(shards=records, failed=failed, complete=True)
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
        if failed:
            print(f"sigrl cache: {len(failed)} of {n} images of {split.name or 'the split'} could not be read; "
                  f"they are excluded (listed under 'failed' in {manifest_path})", file=sys.stderr)
    dist.barrier(state)
    return open_cache(directory, backbone, split)


def _wipe(directory: Path) -> None:
    """Delete the files a cache consists of (nothing else) and the folder if empty."""
    for p in directory.iterdir():
        if p.name == MANIFEST or re.fullmatch(r"\.?shard-\d{5}\..*", p.name) or p.name.endswith(".tmp"):
            p.unlink()
    try:
        directory.rmdir()
    except OSError:
        pass


def ensure_cache(split, backbone, root: str | Path, **kwargs) -> FeatureCache:
    """The cache of ``split`` under ``root`` (see :func:`cache_dir_for`), built or resumed
    when needed; all processes of a distributed run must call it."""
    return build_cache(split, backbone, cache_dir_for(root, split, backbone), **kwargs)
