"""Mutation score: how many small wrong versions of our numerical code the tests catch.

    python benchmarks/bench_mutation.py [SRC[=TEST,TEST...] ...] [--max-children 2]
        [--timeout-per-file 1500] [--json out.json] [--keep DIR]

Runs mutmut (>= 3, a dev extra; ``pip install "mutmut>=3"``) once per source file, each
time in a fresh temporary copy of the checkout (git's tracked + untracked-not-ignored
files, without ``shared/``), so the working tree is never touched: mutmut 3 writes its
mutated copy to ``./mutants`` of the directory it runs in. Configuration is a ``setup.cfg``
written into that copy (any ``[tool.mutmut]`` table of the copy's pyproject.toml is
removed there, since mutmut would otherwise read that instead):

    source_paths = sigrl/                 (the whole package is copied; imports work)
    only_mutate  = <the one source file>
    pytest_add_cli_args_test_selection = <its test files>

mutmut runs the listed tests once to learn which test touches which function, then,
for every mutant (one operator, constant or call changed inside one function), only
the tests that touched that function; a mutant is *killed* when one of them fails.

Arguments: each SRC is a path relative to the repository root; its tests are given after
``=`` (comma-separated) or else found by name: ``tests/test_<stem>.py``,
``tests/test_math_<stem>*.py`` and the entries of ``DEFAULT_TESTS`` below. Without
arguments the default set is used: ``sigrl/modules/*.py``, ``sigrl/metrics.py``,
``sigrl/losses/*.py``, the resume code (``sigrl/checkpoint.py``, ``sigrl/state.py``) and
the scorer (``sigrl/scorer.py``); files that do not exist (yet) are reported and skipped,
and so are source files without any test file.

Prints, per file: mutants, killed (test failure; timeouts counted as killed and shown
apart), survived, no tests, the killed share and the wall time; then every surviving
mutant as ``file:line  mutant-name`` followed by its diff. ``--json`` writes the same.
Exit code 0 (figures printed) or 2 (mutmut missing, or nothing to run).
"""
from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DEFAULT_SOURCES = [
    "sigrl/modules/*.py",
    "sigrl/metrics.py",
    "sigrl/losses/*.py",
    "sigrl/checkpoint.py",
    "sigrl/state.py",
    "sigrl/scorer.py",
]

# test files for sources whose tests are not named after them (extra, not instead)
DEFAULT_TESTS = {
    "sigrl/metrics.py": ["tests/test_metrics.py", "tests/test_math_metrics.py"],
    "sigrl/losses/spml.py": ["tests/test_spml_losses.py", "tests/test_math_spml.py"],
    "sigrl/losses/transport.py": ["tests/test_transport.py", "tests/test_math_transport.py"],
    "sigrl/losses/ranking.py": ["tests/test_ranking_loss.py"],
    "sigrl/losses/__init__.py": ["tests/test_spml_losses.py"],
    "sigrl/losses/asl.py": ["tests/test_prompt_learners.py"],
    "sigrl/modules/svfr.py": ["tests/test_svfr.py", "tests/test_reference_svfr.py"],
    "sigrl/modules/gmc.py": ["tests/test_gmc.py", "tests/test_reference_gmc.py", "tests/test_math_graphs.py"],
    "sigrl/modules/head.py": ["tests/test_head.py", "tests/test_reference_head.py"],
    "sigrl/modules/adapter.py": ["tests/test_head.py", "tests/test_transport.py"],
    "sigrl/modules/matching.py": ["tests/test_head.py", "tests/test_reference_head.py", "tests/test_math_matching.py"],
    "sigrl/modules/scoring.py": ["tests/test_prompt_learners.py", "tests/test_head.py",
                                 "tests/test_reference_head.py"],
    "sigrl/modules/prompt_learner.py": ["tests/test_prompt_learners.py"],
    "sigrl/modules/dualcoop.py": ["tests/test_prompt_learners.py"],
    "sigrl/checkpoint.py": ["tests/test_train.py", "tests/test_hardening_crash.py"],
    "sigrl/state.py": ["tests/test_train.py", "tests/test_hardening_crash.py"],
    "sigrl/scorer.py": ["tests/test_bench.py", "tests/test_zero_shot_rule.py", "tests/test_tag_independence.py",
                        "tests/test_tag.py", "tests/test_export_onnx.py", "tests/test_prompt_learners.py"],
}

# statuses of mutmut 3 (mutmut.stats.status_by_exit_code) grouped for the table
KILLED = {"killed", "caught by type check"}
TIMEOUT = {"timeout", "segfault"}


def expand_sources(patterns: list[str]) -> tuple[list[str], list[str]]:
    """(existing source files, patterns/paths that matched nothing)."""
    found, missing = [], []
    for pat in patterns:
        if any(ch in pat for ch in "*?["):
            hits = sorted(str(Path(p).relative_to(REPO)) for p in glob.glob(str(REPO / pat)))
            hits = [h for h in hits if h.endswith(".py")]
            (found.extend(hits) if hits else missing.append(pat))
        elif (REPO / pat).is_file():
            found.append(pat)
        else:
            missing.append(pat)
    seen: set[str] = set()
    return [f for f in found if not (f in seen or seen.add(f))], missing


def tests_for(source: str, explicit: list[str] | None) -> list[str]:
    if explicit is not None:
        cands = explicit
    else:
        stem = Path(source).stem
        cands = [f"tests/test_{stem}.py", *sorted(
            str(Path(p).relative_to(REPO)) for p in glob.glob(str(REPO / f"tests/test_math_{stem}*.py"))
        ), *DEFAULT_TESTS.get(source, [])]
    out: list[str] = []
    for t in cands:
        if (REPO / t).is_file() and t not in out:
            out.append(t)
    return out


def repo_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files (what a fresh clone plus work in progress has)."""
    res = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True)
    files = [f for f in res.stdout.decode().split("\0") if f]
    return [f for f in files if not f.startswith(("shared/", "mutants/"))
            and ((REPO / f).is_symlink() or (REPO / f).is_file())]


def strip_tool_mutmut(pyproject: Path) -> None:
    """Remove a [tool.mutmut] table (and its sub-tables) so setup.cfg is the config read."""
    if not pyproject.is_file():
        return
    out, skipping = [], False
    for line in pyproject.read_text().splitlines(keepends=True):
        head = re.match(r"\s*\[+\s*([^\]]+?)\s*\]+\s*$", line)
        if head:
            skipping = head.group(1) == "tool.mutmut" or head.group(1).startswith("tool.mutmut.")
        if not skipping:
            out.append(line)
    pyproject.write_text("".join(out))


def make_copy(dest: Path, files: list[str], source: str, tests: list[str], extra_pytest: list[str]) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / f).is_symlink():  # e.g. prompts/ -> sigrl/assets/prompts: keep it a link
            os.symlink(os.readlink(REPO / f), target)
        else:
            shutil.copy2(REPO / f, target)
    strip_tool_mutmut(dest / "pyproject.toml")
    pkg = source.split("/")[0]
    pytest_args = ["-p", "no:cacheprovider", "-q", "-x", *extra_pytest]
    lines = ["[mutmut]", f"source_paths={pkg}/", f"only_mutate={source}",
             "pytest_add_cli_args=" + "\n    ".join(pytest_args),
             "pytest_add_cli_args_test_selection=" + "\n    ".join(tests), "use_git_change_detection=false", ""]
    (dest / "setup.cfg").write_text("\n".join(lines))


def function_spans(source_text: str) -> dict[str, tuple[int, int]]:
    """'func' and 'Class.method' -> (first line, last line), 1-based."""
    spans: dict[str, tuple[int, int]] = {}
    tree = ast.parse(source_text)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            spans[node.name] = (node.lineno, node.end_lineno or node.lineno)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    spans[f"{node.name}.{sub.name}"] = (sub.lineno, sub.end_lineno or sub.lineno)
    return spans


def mutant_function(name: str) -> str:
    """'sigrl.metrics.x__check__mutmut_3' -> '_check'; '...xǁClsǁmeth__mutmut_2' -> 'Cls.meth'."""
    tail = name.rsplit(".", 1)[-1]
    tail = re.sub(r"__mutmut_\d+$", "", tail)
    if tail.startswith("xǁ"):
        return ".".join(tail[2:].split("ǁ"))
    return tail[2:] if tail.startswith("x_") else tail


def mutant_line(diff: str, name: str, source_lines: list[str], spans: dict[str, tuple[int, int]]) -> int | None:
    """File line of the first changed line of a mutant's diff (None if not found)."""
    removed = [l[1:] for l in diff.splitlines() if l.startswith("-") and not l.startswith("---")]
    if not removed:
        return None
    lo, hi = spans.get(mutant_function(name), (1, len(source_lines)))
    for i in range(lo - 1, min(hi, len(source_lines))):
        if source_lines[i].strip() == removed[0].strip():  # method diffs are dedented
            return i + 1
    return lo


def run_one(source: str, tests: list[str], files: list[str], args) -> dict:
    mutmut = [sys.executable, "-m", "mutmut"]
    work = Path(tempfile.mkdtemp(prefix="sigrl-mut-", dir=args.keep))
    make_copy(work, files, source, tests, args.pytest_arg)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MUTANT_UNDER_TEST")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=args.timeout_per_file)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as err:
        rc, tail = "timeout", str(err)[-3000:]
    seconds = time.perf_counter() - t0
    meta = work / "mutants" / (source + ".meta")
    result = {"file": source, "tests": tests, "seconds": round(seconds, 1), "rc": rc, "workdir": str(work)}
    if not meta.is_file():
        result["error"] = f"mutmut produced no results (rc {rc}): {tail.strip().splitlines()[-5:] if tail else ''}"
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return result
    from mutmut.stats import status_by_exit_code

    codes = json.loads(meta.read_text())["exit_code_by_key"]
    statuses = {k: status_by_exit_code[v] for k, v in codes.items()}
    if statuses and all(v is None for v in codes.values()):
        # mutmut stops before testing any mutant when the unmutated tests fail
        result["error"] = (f"no mutant was tested (mutmut rc {rc}); the clean run of {', '.join(tests)} "
                           f"probably fails: {' | '.join(tail.strip().splitlines()[-4:])}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return result
    text = (REPO / source).read_text()
    lines, spans = text.splitlines(), function_spans(text)
    survivors = []
    for name, st in sorted(statuses.items(), key=lambda kv: (kv[0].rsplit("_", 1)[0], int(kv[0].rsplit("_", 1)[1]))):
        if st in KILLED or st in TIMEOUT:
            continue
        show = subprocess.run([*mutmut, "show", name], cwd=work, env=env, capture_output=True, text=True)
        diff = "\n".join(l for l in show.stdout.splitlines() if not l.startswith("# "))
        survivors.append({"name": name, "status": st, "line": mutant_line(diff, name, lines, spans), "diff": diff})
    counts = {"total": len(statuses),
              "killed": sum(s in KILLED for s in statuses.values()),
              "timeout": sum(s in TIMEOUT for s in statuses.values()),
              "survived": sum(s == "survived" for s in statuses.values()),
              "no tests": sum(s == "no tests" for s in statuses.values()),
              "other": sum(s not in KILLED | TIMEOUT | {"survived", "no tests"} for s in statuses.values())}
    counts["killed_share"] = (counts["killed"] + counts["timeout"]) / counts["total"] if counts["total"] else None
    result.update(counts=counts, survivors=survivors)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sources", nargs="*", help="SRC or SRC=TEST,TEST (default: the numerical core, see --help)")
    ap.add_argument("--max-children", type=int, default=2, help="mutmut worker processes (default 2)")
    ap.add_argument("--timeout-per-file", type=float, default=1500, help="seconds per source file (default 1500)")
    ap.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", help="keep the temporary copies under this folder (to browse with mutmut)")
    ap.add_argument("--no-diffs", action="store_true", help="list survivors without their diffs")
    args = ap.parse_args(argv)
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print('mutmut is not installed: pip install "mutmut>=3" (the dev extra)', file=sys.stderr)
        return 2
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    explicit: dict[str, list[str]] = {}
    patterns = []
    for item in args.sources or DEFAULT_SOURCES:
        src, _, tst = item.partition("=")
        patterns.append(src)
        if tst:
            explicit[src] = [t for t in tst.split(",") if t]
    sources, missing = expand_sources(patterns)
    for m in missing:
        print(f"[skip] {m}: no such file")
    files = repo_files()
    results = []
    t_all = time.perf_counter()
    for src in sources:
        tests = tests_for(src, explicit.get(src))
        if not tests:
            print(f"[skip] {src}: no test file found (give one with {src}=tests/test_x.py)")
            continue
        print(f"[run ] {src}  with {', '.join(tests)}", flush=True)
        res = run_one(src, tests, files, args)
        results.append(res)
        if "error" in res:
            print(f"[fail] {src}: {res['error']}", flush=True)
        else:
            c = res["counts"]
            print(f"[done] {src}: {c['killed'] + c['timeout']}/{c['total']} killed "
                  f"({100 * (c['killed_share'] or 0):.1f} %) in {res['seconds']:.0f} s", flush=True)
    total = time.perf_counter() - t_all
    if not results:
        print("nothing to run", file=sys.stderr)
        return 2

    print(f"\n{'file':34s} {'mutants':>7s} {'killed':>6s} {'timeout':>7s} {'survived':>8s} {'no tests':>8s} "
          f"{'killed %':>8s} {'time s':>7s}")
    for r in results:
        if "error" in r:
            print(f"{r['file']:34s} error: {r['error']}")
            continue
        c = r["counts"]
        share = "-" if c["killed_share"] is None else f"{100 * c['killed_share']:.1f}"
        print(f"{r['file']:34s} {c['total']:7d} {c['killed']:6d} {c['timeout']:7d} {c['survived']:8d} "
              f"{c['no tests']:8d} {share:>8s} {r['seconds']:7.0f}")
    print(f"total wall time {total:.0f} s, {args.max_children} mutmut worker(s)")

    for r in results:
        for s in r.get("survivors", []):
            print(f"\n--- {r['file']}:{s['line']}  {s['name']}  ({s['status']})")
            if not args.no_diffs:
                print(s["diff"].rstrip())
    if args.json:
        args.json.write_text(json.dumps({"results": results, "seconds": round(total, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
