"""Benchmark: NUS-WIDE test list loading/checking and the metrics at full protocol size.

    python benchmarks/bench_nuswide.py [--nus-dir ../shared/data/nus-wide] [--images N] [--labels C]

1. The real ``test_img_names.pkl`` (107,859 names): restricted unpickler vs. plain
   ``pickle`` (reference only — this file is known to be plain data), the
   name → ``Flickr/<folder>/<file>`` mapping with validation, and a stat() of every
   image path (the images are absent here, so this measures the existence check).
2. Metrics on random data of the GZSL size (107,859 images × 1006 labels):
   float32 scores ~ U[0, 1), targets +1 with p = 0.02, 0 (unknown) with p = 0.05, else -1.
   mAP with both empty-class rules, and overall F1@3 / F1@5. For random scores the
   expected AP of a class is about its positive rate among known entries (≈ 0.021).

Wall-clock seconds on whatever machine runs it (single process; numpy may use its
own threads for nothing here — sorting and partitioning are single-threaded).
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sigrl.data.nuswide import name_to_relpath, read_image_names  # noqa: E402
from sigrl.metrics import precision_recall_f1_at_k, mean_average_precision  # noqa: E402
from sigrl.safeio import safe_load_pickle  # noqa: E402


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def bench_names(nus_dir: Path) -> None:
    pkl = nus_dir / "test_img_names.pkl"
    if not pkl.is_file():
        print(f"[names] skipped: {pkl} not found")
        return
    _, t_plain = timed(lambda: pickle.loads(pkl.read_bytes()))
    obj, t_safe = timed(safe_load_pickle, pkl)
    names, t_read = timed(read_image_names, pkl)
    rels, t_map = timed(lambda: [name_to_relpath(n) for n in names])
    root = nus_dir
    _, t_stat = timed(lambda: sum((root / r).is_file() for r in rels))
    print(f"[names] {pkl} ({pkl.stat().st_size / 2**20:.1f} MiB): {len(names):,} names")
    print(f"[names] plain pickle.loads (reference)      {t_plain:7.3f} s")
    print(f"[names] safe_load_pickle (no globals)       {t_safe:7.3f} s")
    print(f"[names] read_image_names (load + validate)  {t_read:7.3f} s")
    print(f"[names] name -> Flickr/<folder>/<file>      {t_map:7.3f} s  ({len({r.split('/')[1] for r in rels})} folders)")
    print(f"[names] existence check of every path       {t_stat:7.3f} s  (images absent here)")
    print(f"[names] total load + map + check            {t_read + t_map + t_stat:7.3f} s")


def random_problem(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.random((n, c), dtype=np.float32)
    targets = np.full((n, c), -1, dtype=np.int8)
    block = 8192
    for r0 in range(0, n, block):
        u = rng.random((min(block, n - r0), c), dtype=np.float32)
        tb = targets[r0 : r0 + block]
        tb[u < 0.02] = 1
        tb[(u >= 0.02) & (u < 0.07)] = 0
    return scores, targets


def bench_metrics(n: int, c: int, seed: int) -> None:
    (scores, targets), t_gen = timed(random_problem, n, c, seed)
    print(f"[metrics] {n:,} images x {c:,} labels, float32 scores "
          f"({scores.nbytes / 2**20:.0f} MiB), int8 targets; generated in {t_gen:.1f} s")
    m0, t0 = timed(mean_average_precision, scores, targets, empty_class="zero")
    m1, t1 = timed(mean_average_precision, scores, targets, empty_class="skip")
    zsl, tz = timed(mean_average_precision, scores[:, -81:], targets[:, -81:])
    print(f"[metrics] mAP (empty classes = 0)      {m0:.4f}   {t0:7.2f} s")
    print(f"[metrics] mAP (empty classes skipped)  {m1:.4f}   {t1:7.2f} s")
    print(f"[metrics] mAP over last 81 columns     {zsl:.4f}   {tz:7.2f} s")
    for k in (3, 5):
        (p, r, f), tk = timed(precision_recall_f1_at_k, scores, targets, k)
        print(f"[metrics] P/R/F1@{k}  {p:.4f} / {r:.4f} / {f:.4f}   {tk:7.2f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nus-dir", type=Path, default=REPO.parent / "shared" / "data" / "nus-wide")
    ap.add_argument("--images", type=int, default=107_859)
    ap.add_argument("--labels", type=int, default=1006)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    bench_names(args.nus_dir)
    bench_metrics(args.images, args.labels, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
