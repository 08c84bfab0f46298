"""Start-up cost of the CLI, and what tagging one image with the tiny world model costs.

    python benchmarks/bench_startup.py [--runs 5] [--tag-runs 3] [--top 10]

Prints
  (a) the wall time of ``sigrl --help``, ``sigrl tag --help``, ``sigrl train --help``
      (median of ``--runs`` subprocess runs after one warm-up; goal for ``sigrl --help``:
      under 0.3 s);
  (b) the end-to-end wall time of ``sigrl tag IMAGE --labels ... --prompts photo`` with
      the tiny world model: the files the package ships (``sigrl/world/model/``), else the one the
      cache holds (``$SIGRL_CACHE`` or the user cache; when there is none,
      ``sigrl world pretrain --quick`` builds one first and this says so); the image is
      a test image of the cached world (``sigrl world generate --quick`` when none),
      split into interpreter start, imports (``-X importtime``) and the rest (model load,
      label encoding, the image);
  (c) the ``--top`` largest cumulative import costs of ``sigrl --help`` and of that
      ``sigrl tag`` run (``python -X importtime``), and the top-level imports of each.

The figures are wall times on whatever machine runs it; on a shared machine run it
while nothing else is busy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SIGRL = [str(BIN / "sigrl")] if (BIN / "sigrl").exists() else [sys.executable, "-m", "sigrl"]
LABELS = "red circle,blue square,green triangle,yellow star"


def wall(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return dt


def median_wall(cmd: list[str], runs: int, env: dict | None = None) -> tuple[float, list[float]]:
    wall(cmd, env)  # warm-up: file cache, .pyc
    times = [wall(cmd, env) for _ in range(runs)]
    return statistics.median(times), times


def importtime(args: list[str], env: dict | None = None) -> list[tuple[int, int, int, str]]:
    """(depth, self us, cumulative us, module) for each import of ``python -m sigrl ARGS``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "sigrl", *args],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"sigrl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        # "import time:  self |  cumulative | <1 space + 2 per nesting level>module"
        self_part, cum_part, raw = line.split(":", 1)[1].split("|", 2)
        depth = (len(raw) - len(raw.lstrip(" ")) - 1) // 2
        rows.append((depth, int(self_part), int(cum_part), raw.strip()))
    return rows


def print_imports(title: str, rows: list[tuple[int, int, int, str]], top: int) -> float:
    roots = [r for r in rows if r[0] == 0]
    total = sum(r[2] for r in roots) / 1e6
    print(f"\n{title}: {len(rows)} modules imported, {total:.2f} s of imports in all")
    print(f"  top {top} cumulative (depth = nesting level):")
    for depth, _, cum, name in sorted(rows, key=lambda r: -r[2])[:top]:
        print(f"    {cum / 1e6:7.3f} s  depth {depth}  {name}")
    print(f"  top {top} top-level imports (what sigrl's own code, or the interpreter, imported):")
    for _, _, cum, name in sorted(roots, key=lambda r: -r[2])[:top]:
        print(f"    {cum / 1e6:7.3f} s  {name}")
    return total


def find_world_model() -> tuple[list[str], str, Path, str]:
    """(--model/--pretrained arguments, what they are, a world image, a note on what was built)."""
    from sigrl.paths import cache_dir

    notes = []
    import sigrl

    shipped = Path(sigrl.__file__).parent / "world" / "model" / "world.safetensors"
    model_args, what = None, ""
    if shipped.is_file():
        # its files, not the short name --model world (sigrl tag gives a name without
        # --pretrained the "openai" weights before the short name is looked at)
        model_args = ["--model", str(shipped.parent / "world.json"), "--pretrained", str(shipped)]
        what = f"the shipped world model ({shipped.parent})"
    else:
        for d in sorted(cache_dir().glob("vlp-*")):
            if (d / "model.json").is_file() and (d / "model.safetensors").is_file():
                model_args = ["--model", str(d / "model.json"), "--pretrained", str(d / "model.safetensors")]
                what = f"the cached tiny world model ({d})"
                break
    if model_args is None:
        notes.append("no world model shipped or cached: built one with `sigrl world pretrain --quick`")
        subprocess.run([*SIGRL, "world", "pretrain", "--quick"], check=True, stdout=subprocess.DEVNULL)
        return find_world_model()[0:3] + ("; ".join(notes),)

    def image():
        found = sorted(cache_dir().glob("world-*/images/test/*.png"))
        return found[0] if found else None

    img = image()
    if img is None:
        notes.append("no world image in the cache: generated one with `sigrl world generate --quick`")
        subprocess.run([*SIGRL, "world", "generate", "--quick"], check=True, stdout=subprocess.DEVNULL)
        img = image()
        if img is None:
            raise SystemExit("sigrl world generate --quick left no image in the cache")
    return model_args, what, img, "; ".join(notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per --help timing (median)")
    ap.add_argument("--tag-runs", type=int, default=3, help="runs of the end-to-end tag timing (median)")
    ap.add_argument("--top", type=int, default=10, help="import costs listed")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    print(f"sigrl: {' '.join(SIGRL)}   python {sys.version.split()[0]}   cpus {os.cpu_count()}")
    print(f"\n(a) --help wall time, median of {args.runs} (goal for `sigrl --help`: < 0.3 s)")
    bare = median_wall([sys.executable, "-c", "pass"], args.runs, env)[0]
    print(f"    {bare:6.3f} s  python -c pass (interpreter start, the floor)")
    for verb in ([], ["tag"], ["train"]):
        med, times = median_wall([*SIGRL, *verb, "--help"], args.runs, env)
        flag = "" if verb or med < 0.3 else "   <-- over 0.3 s"
        print(f"    {med:6.3f} s  sigrl {' '.join(verb + ['--help'])}   (runs: {', '.join(f'{t:.3f}' for t in times)}){flag}")

    model_args, what, image, notes = find_world_model()
    tag_args = ["tag", str(image), "--labels", LABELS, "--prompts", "photo", *model_args, "--format", "json"]
    print(f"\n(b) sigrl tag, one image, {what}")
    if notes:
        print(f"    note: {notes}")
    print(f"    {' '.join(['sigrl', *tag_args])}")
    med, times = median_wall([*SIGRL, *tag_args], args.tag_runs, env)
    print(f"    {med:6.3f} s  end to end, median of {args.tag_runs} (runs: {', '.join(f'{t:.3f}' for t in times)})")

    help_rows = importtime(["--help"], env)
    tag_rows = importtime(tag_args, env)
    print("\n(c) python -X importtime")
    print_imports("sigrl --help", help_rows, args.top)
    tag_imports = print_imports("sigrl tag (one image)", tag_rows, args.top)
    rest = max(0.0, med - bare - tag_imports)
    print(f"\nsigrl tag, one image: {med:.2f} s = {bare:.2f} s interpreter start + {tag_imports:.2f} s imports"
          f" + {rest:.2f} s model load, label encoding and the image (importtime's own overhead included)")


if __name__ == "__main__":
    main()
