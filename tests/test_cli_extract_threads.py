"""`xpert extract` makes idle OpenMP threads wait passively, unless the user chose a policy or torch is loaded."""

from __future__ import annotations

import os
import subprocess
import sys

from xpert_pl import cli

PROBE = "import os, xpert_pl.cli as c; c._passive_openmp_threads(); print(os.environ.get('OMP_WAIT_POLICY'))"


def _policy(env: dict[str, str]) -> str:
    run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return run.stdout.strip()


def test_passive_by_default_and_the_users_choice_kept():
    assert _policy({"PATH": "/usr/bin"}) == "PASSIVE"
    assert _policy({"PATH": "/usr/bin", "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_nothing_set_once_torch_is_loaded(monkeypatch):
    import torch  # noqa: F401  (loaded: its OpenMP runtime has read the policy already)

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli._passive_openmp_threads()
    assert "OMP_WAIT_POLICY" not in os.environ
