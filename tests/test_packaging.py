"""The project as a user without the checkout gets it: a wheel, installed elsewhere, run from elsewhere.

The slow test builds the wheel from a copy of the sources, installs it with ``--no-deps`` into a temp folder and runs
``dynagen run images`` from a folder outside the repository with ``PYTHONPATH`` pointing at that install, so the
editable checkout is not what gets imported (checked: every package's ``__file__`` lies in the install) and the
embedded model comes from the wheel (checked: the run's settings name the install's ``dynagen/_models``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGED_MODELS = "dynagen._models"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_wheel_package_list_matches_the_tree():
    """pyproject lists the packages (the models need a package-dir mapping); a package added to the tree and not
    to the list would be missing from the wheel."""
    from setuptools import find_packages

    roots = _pyproject()["tool"]["importlinter"]["root_packages"]
    found = find_packages(str(ROOT), include=[p for r in roots for p in (r, f"{r}.*")])
    declared = _pyproject()["tool"]["setuptools"]["packages"]
    assert sorted(p for p in declared if not p.startswith(PACKAGED_MODELS)) == sorted(found)
    assert _pyproject()["tool"]["setuptools"]["package-dir"][PACKAGED_MODELS] == "models"


def _copy_sources(dest: Path) -> Path:
    # A copy, so setuptools' in-tree build folder never holds files of an older layout (they would land in the wheel).
    skip = shutil.ignore_patterns(".git", ".venv", "build", "out", "*.egg-info", "__pycache__", ".pytest_cache",
                                  "tests", "bench", "docs", "*.parquet")
    shutil.copytree(ROOT, dest, ignore=skip)
    return dest


def _run(args, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{args[:4]} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow  # ~25-30 s on 2 cores (wheel build + install + a Ray run); `make test` runs it too
def test_installed_wheel_runs_images_outside_the_checkout(tmp_path):
    # 1. Build the wheel and install it, without dependencies (they are this venv's), into a folder of its own.
    src = _copy_sources(tmp_path / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp_path / "dist")])
    (wheel,) = (tmp_path / "dist").glob("dynagen-*.whl")
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)])
    assert not (site / "dynagen" / "_models" / "stepsaver" / "calibration.parquet").exists()  # training data stays

    # 2. A folder outside the repository, an environment that names no model and no checkout.
    work = tmp_path / "work"
    work.mkdir()
    (work / "prompts.jsonl").write_text('{"id": "a", "prompt": "a red circle on a white background"}\n'
                                        '{"id": "b", "prompt": "a blue square on a black background"}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNAGEN_")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", DYNAGEN_RAY__NUM_CPUS="2",
               DYNAGEN_IMAGES__CPUS_PER_ACTOR="0.5", COLUMNS="1000")
    probe = _run([sys.executable, "-c", "import json, actors, dynagen, jobs, pipelines; print(json.dumps("
                  "[m.__file__ for m in (actors, dynagen, jobs, pipelines)]))"], cwd=work, env=env)
    for f in json.loads(probe.stdout):
        assert Path(f).is_relative_to(site), f"{f} imported from outside the install"
    cli = [sys.executable, str(site / "bin" / "dynagen")]

    # 3. Settings resolve the models inside the install, and say so.
    show = _run([*cli, "config", "show"], cwd=work, env=env).stdout
    (row,) = [ln for ln in show.splitlines() if ln.split("\t")[0].strip() == "models_dir"]  # piped: tab-separated
    assert str(site / "dynagen" / "_models") in row and "default (package)" in row, row

    # 4. The image job, on the wheel's embedded model.
    _run([*cli, "run", "images", "--prompts", "prompts.jsonl", "--out", "out", "--steps", "2"], cwd=work, env=env,
         timeout=600)
    (summary,) = [json.loads(p.read_text()) for p in (work / "out" / "runs").glob("*.json")]
    assert summary["ok"] == 2 and summary["failed"] == 0, summary
    assert summary["settings"]["images"]["model"] == str(site / "dynagen" / "_models" / "tiny-sd")
    assert sorted(p.name for p in (work / "out" / "images").glob("*.png")) == ["a.png", "b.png"]
