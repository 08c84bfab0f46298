"""The wheel carries the prompt sets and run configs (``sigrl/assets/``).

The repository's top-level ``prompts/`` and ``configs/`` are symlinks to the package's
``sigrl/assets/prompts`` and ``sigrl/assets/configs`` (one copy; the top-level names are
the editable view). The wheel is built from a copy of the sources in a temporary folder
(``--no-build-isolation``: no network; no ``build/`` left in the checkout), and is only
read, never installed. ``.ci/wheel_check`` installs it in a fresh venv and runs it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sigrl"
ASSETS = PACKAGE / "assets"


def _data_files(root: Path) -> dict[str, bytes]:
    """Every file of the package that is not Python source, by its path in the wheel."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".py", ".pyc"):
            continue
        out[path.relative_to(root.parent).as_posix()] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / "sigrl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = (tmp / "dist").glob("sigrl-*.whl")
    with zipfile.ZipFile(whl) as zf:
        yield zf


def test_top_level_folders_are_the_package_copies():
    for name in ("prompts", "configs"):
        top = REPO / name
        assert top.is_symlink(), f"{name}/ should be a symlink to sigrl/assets/{name}"
        assert not Path(top.readlink()).is_absolute(), f"{name}/ symlink should be relative"
        assert top.resolve() == (ASSETS / name).resolve()
        assert sorted(p.name for p in top.iterdir()) == sorted(p.name for p in (ASSETS / name).iterdir())


def test_package_paths_point_at_the_assets():
    from sigrl.paths import CONFIGS_DIR, PROMPTS_DIR
    from sigrl.prompts import available_prompt_sets, prompt_dirs

    assert PROMPTS_DIR.resolve() == (ASSETS / "prompts").resolve()
    assert CONFIGS_DIR.resolve() == (ASSETS / "configs").resolve()
    assert PROMPTS_DIR in prompt_dirs()
    assert {"photo", "scene", "ensemble", "bare"} <= set(available_prompt_sets())
    assert (CONFIGS_DIR / "world_zsl.yaml").is_file()


@pytest.mark.parametrize("folder", ["prompts", "configs"])
def test_every_prompt_and_config_is_in_the_wheel_with_the_same_bytes(wheel, folder):
    files = sorted(p for p in (REPO / folder).iterdir() if p.is_file())
    assert files, f"{folder}/ is empty"
    names = set(wheel.namelist())
    for path in files:
        arc = f"sigrl/assets/{folder}/{path.name}"
        assert arc in names, f"{arc} missing from the wheel"
        assert wheel.read(arc) == path.read_bytes(), f"{arc} differs from {folder}/{path.name}"


def test_every_package_data_file_is_in_the_wheel(wheel):
    """package-data in pyproject covers every non-Python file of the package (and only those exist)."""
    expected = _data_files(PACKAGE)
    assert any(k.startswith("sigrl/model_configs/") for k in expected)
    in_wheel = {n for n in wheel.namelist() if n.startswith("sigrl/") and not n.endswith((".py", "/"))}
    assert set(expected) - in_wheel == set(), "package-data in pyproject.toml misses these files"
    assert in_wheel - set(expected) == set(), "the wheel holds data files the package does not"
    for arc, data in expected.items():
        assert wheel.read(arc) == data, arc
