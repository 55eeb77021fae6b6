"""A wheel of the kit carries what its commands need: installed into a fresh virtual environment, `xpert` runs from
any folder and finds the shipped configs inside the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from (copied, so no stale build/ folder of the checkout can leak into it).
SOURCES = ("pyproject.toml", "README.md", "xpert_pl", "callbacks", "configs")
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _check(command: list, **kwargs) -> str:
    """Run `command`; its stdout, or a failure that shows its stderr."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stderr}"
    return result.stdout


def _build_wheel(tmp: Path) -> Path:
    """`pip wheel` of a copy of the package's sources."""
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    _check([*PIP, "wheel", source, "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist"])
    return next((tmp / "dist").glob("xpert_pl-*.whl"))


def _install(wheel: Path, venv: Path) -> Path:
    """Install `wheel` alone into a new venv that sees this interpreter's dependencies; returns the venv's bin/."""
    _check([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = _check([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    # Plain paths (the .pth files inside them are not run): the dependencies, but no other copy of xpert_pl.
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    deps.append(sysconfig.get_paths()["purelib"])
    Path(purelib, "project-deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    _check([*PIP, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    return venv / "bin"


def test_installed_wheel_finds_the_demo_matrix_and_lists_its_configs(tmp_path):
    bin_dir = _install(_build_wheel(tmp_path), tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    # `xpert bench run configs/bench/demo.yaml` from any folder: the matrix and the configs it names are shipped.
    script = "from xpert_pl.experiments.matrix import load_matrix; m = load_matrix('configs/bench/demo.yaml'); "
    script += "print(m.source.config); print(m.methods['xpert'])"
    found = _check([bin_dir / "python", "-c", script], cwd=elsewhere, env=env).split()
    assert [Path(p).relative_to(tmp_path / "venv").parts[-3:] for p in found] == [
        ("configs", "source", "tiny.yaml"),
        ("configs", "methods", "xpert.yaml"),
    ]
    header, *rows = _check([bin_dir / "xpert", "configs"], cwd=elsewhere, env=env).splitlines()
    folder = Path(header.removeprefix("shipped configs in ").removesuffix(":"))
    assert folder.is_relative_to(tmp_path / "venv") and folder.parts[-2:] == ("xpert_pl", "configs")
    names = {row.split()[0] for row in rows}
    assert {"pretrain/tiny.yaml", "source/tiny.yaml", "analyze/tiny.yaml", "extract/tiny.yaml"} <= names
    assert names == {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
