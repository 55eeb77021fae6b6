"""`benchmarks/rederive_t_intervals.py` on a fresh report whose per-seed values are dropped: the re-derived
statistics sections must read as the report itself wrote them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from xpert_pl.report import write_report

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rederive_t_intervals.py"


def load_script():
    spec = importlib.util.spec_from_file_location("rederive_t_intervals", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def drop_per_seed_values(summary: dict) -> None:
    """Leave what the old report.json kept: seeds, mean difference and p-value (and a wrong interval)."""
    for group in summary["groups"]:
        for entry in group["methods"].values():
            for name in ("vs_scratch", "xpert_vs"):
                for key, value in entry.get(name, {}).items():
                    if name == "vs_scratch" or key == "val/loss":
                        value.update(a=None, b=None, ci=[-9.0, 9.0], direction="unclear")


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def test_rederived_sections_match_the_report(runs_dir, tmp_path):
    script = load_script()
    out = write_report(str(runs_dir), str(tmp_path / "out")).parent
    original = (out / "report.md").read_text()
    summary = json.loads((out / "report.json").read_text())
    drop_per_seed_values(summary)
    (out / "report.json").write_text(json.dumps(summary))
    script.main(out)
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    spans = (("## Verdict", "## Runs"), ("### Paired comparison", "### Rouge-L"), ("## Knowledge", "## Convergence"))
    for start, end in spans:
        assert section(markdown, start, end) == section(original, start, end)
    assert markdown.count("**Statistics re-derived") == 1 and "<p><strong>Statistics re-derived" in page
    notes = markdown[markdown.index("### Statistics used") :].split("\n\n#")[0]
    assert "derived from the recorded mean difference and p-value" in notes
    rederived = json.loads((out / "report.json").read_text())
    entry = rederived["groups"][1]["methods"]["xpert"]["vs_scratch"]["val/loss"]
    assert entry["interval"] == script.DERIVED and entry["ci"] != [-9.0, 9.0]
    files = [(out / f"report.{ext}").read_text() for ext in ("md", "html", "json")]
    script.main(out)  # idempotent
    assert [(out / f"report.{ext}").read_text() for ext in ("md", "html", "json")] == files
