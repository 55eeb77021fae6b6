"""Start-up time of the `xpert` command: `xpert --help`, `xpert report --help` and `xpert report` on an empty
folder (its error) against a bare `python -c "import xpert_pl"`, each a new process, in one run.

Every round runs each command once, in an order that rotates between rounds, so all of them see the same load on
a shared machine; a command's time is the median over rounds of its wall time, and its ratio is that median over
the bare import's median (1.0 would mean the command costs nothing beyond starting Python and the package).

    python benchmarks/startup.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "startup.json"
XPERT = str(Path(sys.executable).parent / "xpert")  # the console script of this interpreter's environment
BASELINE = "import xpert_pl"


def commands(empty_dir: Path) -> dict[str, list[str]]:
    """The timed command lines, by name; `import xpert_pl` is the baseline."""
    return {
        BASELINE: [sys.executable, "-c", "import xpert_pl"],
        "xpert --help": [XPERT, "--help"],
        "xpert report --help": [XPERT, "report", "--help"],
        "xpert report <empty dir>": [XPERT, "report", str(empty_dir)],
    }


def wall_time(command: list[str], cwd: Path) -> float:
    """Seconds from start to exit of `command` (its output discarded; an error exit is timed like any other)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def measure(rounds: int) -> dict:
    """Warm the file cache with one untimed run of each command, then `rounds` rotating rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "empty").mkdir()
        lines = commands(cwd / "empty")
        names = list(lines)
        for name in names:
            wall_time(lines[name], cwd)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                seconds[name].append(wall_time(lines[name], cwd))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "median_s": medians,
        "ratio_to_import": {name: medians[name] / medians[BASELINE] for name in names},
        "seconds_per_round": seconds,
        "config": {"rounds": rounds, "python": sys.executable, "xpert": XPERT},
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min_at_end": os.getloadavg()[0],  # other work on a shared machine shows up here
    }


def main() -> None:
    """Parse arguments, measure, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, median in result["median_s"].items():
        print(f"{name:<26} {median:6.3f} s  x{result['ratio_to_import'][name]:.2f}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
