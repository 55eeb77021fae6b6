"""Experiment matrix YAMLs: the shipped ones build, bad ones fail with every problem at once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from xpert_pl.errors import ConfigError
from xpert_pl.experiments.matrix import load_matrix
from xpert_pl.report.runs import _expected_cells

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "bench").glob("*.yaml")))
def test_shipped_matrices_build(name):
    matrix = load_matrix(REPO / "configs" / "bench" / name, root=REPO)
    cells = matrix.cells()
    long, short = matrix.budgets[matrix.largest_budget], min(matrix.budgets.values())
    per_seed_scale = len(matrix.methods) + len(matrix.sweep_methods) * (len(matrix.budgets) - 1)
    assert len(cells) == per_seed_scale * sum(len(matrix.scale_seeds(s)) for s in matrix.scales)
    assert {c.steps for c in cells} == set(matrix.budgets.values()) and short <= long
    assert {c.method for c in cells if c.steps == short} == set(
        matrix.sweep_methods if short < long else matrix.methods
    )
    assert "scratch" in matrix.methods
    if name not in ("demo.yaml", "reference-4l-lr.yaml"):  # one seed: the demo, and a learning-rate probe; the
        assert len(matrix.seeds) >= 2  # benchmarks compare over seeds (and budgets, but for the reference headline,
        # whose budget sweep is its own matrix)
        assert len(matrix.budgets) >= 2 or name in (
            "reference.yaml",
            "reference-gpu.yaml",
            "reference-design.yaml",
            "reference-4l.yaml",
            "reference-domains.yaml",
        )


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "bench").glob("*.yaml")))
def test_every_cell_of_the_shipped_matrices_parses(name, tiny_data_root, monkeypatch):
    from xpert_pl.experiments.runner import MatrixRunner

    monkeypatch.chdir(REPO)
    matrix = load_matrix(REPO / "configs" / "bench" / name, root=REPO)
    matrix.data["data_root"] = str(tiny_data_root)
    assert MatrixRunner(matrix).config_problems() == []


def test_the_reference_matrices_are_the_issues_design():
    headline = load_matrix(REPO / "configs" / "bench" / "reference.yaml", root=REPO)
    assert headline.scale_seeds("2l") == [0, 1, 2, 3, 4] and len(headline.methods) == 8
    assert headline.budgets["long"] * 32 * 128 >= 2_000_000  # students past the early phase: >= 2 M tokens
    assert headline.lr_sweep.methods == ("scratch", "xpert") and len(headline.lr_sweep.rates) >= 4
    assert headline.sft.methods == ("scratch", "xpert") and headline.sft.stage.steps == 200
    assert [p.name for p in headline.sft.stage.configs] == ["final.yaml"]  # eval_final, whole sets
    extended = load_matrix(REPO / "configs" / "bench" / "reference-extended.yaml", root=REPO)
    assert {"xpert_target_init", "norm_matched_scratch", "domain_code", "domain_law"} <= set(extended.methods)
    assert len(extended.budgets) == 3 and len(extended.scales) == 2
    design = load_matrix(REPO / "configs" / "bench" / "reference-design.yaml", root=REPO)
    assert design.out_dir == headline.out_dir and design.lr_sweep == headline.lr_sweep  # same runs, 2 more methods
    assert set(design.methods) - set(headline.methods) == {"xpert_target_init", "aligned_xpert", "domain_code"}
    assert set(headline.cells()) < set(design.cells()) and len(design.cells()) == 55
    domains = load_matrix(REPO / "configs" / "bench" / "reference-domains.yaml", root=REPO)
    single = {f"domain_{d}" for d in ("law", "medicine", "books", "news", "science", "wikipedia")}
    assert domains.out_dir == headline.out_dir and set(domains.methods) - set(design.methods) == single
    assert set(design.cells()) < set(domains.cells()) and len(domains.cells()) == 85  # 6 more methods, 5 seeds
    budgets = load_matrix(REPO / "configs" / "bench" / "reference-budgets.yaml", root=REPO)
    assert budgets.out_dir != headline.out_dir and budgets.source_hf == Path("runs/bench-reference/shared/source/hf")
    assert sorted(steps * 32 * 128 for steps in budgets.budgets.values()) == [1_003_520, 2_007_040, 4_014_080]
    assert budgets.budgets["long"] == headline.budgets["long"] and budgets.sweep_methods == ["scratch", "xpert"]
    assert len(budgets.cells()) == 3 * 2 * 3 and budgets.lr_sweep is None and budgets.sft is None
    assert budgets.scales["2l"].overrides == {"model.learning_rate": 3.0e-3}  # the reference sweep's chosen rate
    deep = load_matrix(REPO / "configs" / "bench" / "reference-4l.yaml", root=REPO)
    assert deep.out_dir.name == "bench-reference-4l" and deep.source_hf == budgets.source_hf and deep.lr_sweep is None
    assert deep.scales["4l"].overrides == {
        "model.model.init_args.preset": "llama-tiny-4l",
        "model.learning_rate": 3.0e-3,
    }
    assert len(deep.cells()) == 4 * 3 and deep.budgets == headline.budgets  # 2.0 M tokens, the 2 x 2 x 3 seeds
    assert {"scratch", "xpert", "norm_matched_scratch", "xpert_target_init"} == set(deep.methods)
    probe = load_matrix(REPO / "configs" / "bench" / "reference-4l-lr.yaml", root=REPO)
    assert probe.out_dir != deep.out_dir and probe.source_hf == deep.source_hf and len(probe.cells()) == 2 * 2
    assert probe.scales["4l"].overrides == deep.scales["4l"].overrides | {"model.learning_rate": 1.0e-3}
    assert probe.scales["4l_lr1e-2"].overrides == deep.scales["4l"].overrides | {"model.learning_rate": 1.0e-2}


def test_the_gpu_reference_is_the_same_matrix_with_a_gpu_overlay_on_every_training_stage(tiny_data_root):
    from xpert_pl.experiments.runner import MatrixRunner

    cpu, gpu = (
        load_matrix(REPO / "configs" / "bench" / n, root=REPO) for n in ("reference.yaml", "reference-gpu.yaml")
    )
    assert gpu.out_dir.name == "bench-reference-gpu" != cpu.out_dir.name
    assert gpu.cells() == cpu.cells() and gpu.lr_sweep == cpu.lr_sweep and gpu.sft == cpu.sft
    assert [p.name for p in gpu.training_overlay] == ["single-bf16.yaml"] and cpu.training_overlay == ()
    runners = []
    for matrix in (cpu, gpu):
        matrix.data["data_root"] = str(tiny_data_root)
        runners.append(MatrixRunner(matrix))
    cell = cpu.cells()[1]
    calls = [r.pretrain_call(cell) for r in runners] + [r.sft_call(cell) for r in runners]
    for cpu_call, gpu_call in (calls[:2], calls[2:]):
        assert gpu_call.config["trainer"] | {"accelerator": "cpu", "precision": "32-true"} == cpu_call.config["trainer"]
        assert gpu_call.config["trainer"]["precision"] == "bf16-mixed" and gpu_call.config["trainer"]["devices"] == 1
        # Everything else is the same, up to the runs folder the artifacts (bank, tokenizer, cache) live in.
        rest = [json.dumps({k: v for k, v in c.config.items() if k != "trainer"}) for c in (cpu_call, gpu_call)]
        assert rest[1].replace(str(gpu.out_dir), str(cpu.out_dir)) == rest[0]
    source = [r.stage_config(r.matrix.source, {}) for r in runners]
    assert source[1]["trainer"]["accelerator"] == "gpu" and source[0]["trainer"]["accelerator"] == "cpu"


def test_a_run_of_an_extending_matrix_records_the_resolved_matrix(tmp_path, monkeypatch):
    from xpert_pl.experiments.runner import MatrixRunner

    monkeypatch.chdir(REPO)
    gpu_file = REPO / "configs" / "bench" / "reference-gpu.yaml"
    matrix = load_matrix(gpu_file, root=REPO)
    matrix.out_dir = tmp_path / "bench"
    matrix.out_dir.mkdir()
    MatrixRunner(matrix).write_matrix_record(gpu_file)
    assert (matrix.out_dir / "matrix.extends.yaml").read_text() == gpu_file.read_text()
    header = (matrix.out_dir / "matrix.yaml").read_text().splitlines()[0]  # no machine's path in a committed record
    assert header == "# configs/bench/reference-gpu.yaml resolved: the matrix it extends, with its own keys laid over"
    recorded = yaml.safe_load((matrix.out_dir / "matrix.yaml").read_text())
    assert "extends" not in recorded and recorded["training_overlay"] == ["configs/gpu/single-bf16.yaml"]
    assert recorded["out_dir"] == "runs/bench-reference-gpu" and len(recorded["methods"]) == 8
    assert len(_expected_cells(recorded)) == len(matrix.cells())  # what the report lists as expected
    plain = REPO / "configs" / "bench" / "reference.yaml"
    matrix = load_matrix(plain, root=REPO)
    matrix.out_dir = tmp_path / "bench"  # the plain matrix run later in the same folder: its record replaces both
    MatrixRunner(matrix).write_matrix_record(plain)
    assert (matrix.out_dir / "matrix.yaml").read_text() == plain.read_text()  # verbatim, comments included
    assert not (matrix.out_dir / "matrix.extends.yaml").exists()


@pytest.mark.parametrize(
    ("extends", "fragment"),
    [("configs/bench/nowhere.yaml", "is not a matrix file"), ("SELF", "extends itself")],
)
def test_bad_extends_is_refused(tmp_path, extends, fragment):
    path = tmp_path / "m.yaml"
    path.write_text(f"extends: {path if extends == 'SELF' else extends}\nout_dir: x\n")
    with pytest.raises(ConfigError, match=fragment):
        load_matrix(path, root=REPO)


def test_a_missing_training_overlay_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("extends: configs/bench/reference.yaml\ntraining_overlay: [configs/gpu/nowhere.yaml]\n")
    with pytest.raises(ConfigError, match=r"training_overlay: config .*nowhere\.yaml' does not exist"):
        load_matrix(path, root=REPO)


def test_the_demo_is_one_seed_of_scratch_and_xpert():
    demo = load_matrix(REPO / "configs" / "bench" / "demo.yaml", root=REPO)
    assert [(c.method, c.seed, c.steps) for c in demo.cells()] == [("scratch", 0, 300), ("xpert", 0, 300)]
    assert demo.source.steps == 800 and demo.data == {"max_docs_per_domain": 300}


def test_quick_and_small_sizes():
    quick = load_matrix(REPO / "configs" / "bench" / "quick.yaml", root=REPO)
    small = load_matrix(REPO / "configs" / "bench" / "small.yaml", root=REPO)
    assert len(quick.cells()) == 12
    assert len(small.scales) >= 2 and len(small.seeds) >= 3 and len(small.methods) >= 10
    assert max(len(small.scale_seeds(s)) for s in small.scales) >= 5  # the headline scale
    sft = [c for c in small.cells() if small.wants_sft(c)]
    assert {(c.scale, c.budget) for c in sft} == {("2l", "long")} and len(sft) == 3 * 5


def test_a_scale_can_have_its_own_seeds(tmp_path):
    for name in ("m.yaml", "scratch.yaml", "student.yaml"):
        (tmp_path / name).write_text("{}\n")
    text = (
        "budgets: {short: 10, long: 20}\nseeds: [0, 1, 2]\nmethods: {scratch: scratch.yaml, xpert: scratch.yaml}\n"
        "sweep_methods: [scratch]\nsource: {config: m.yaml, steps: 5}\nanalyze: m.yaml\nextract: m.yaml\n"
        "scales: {big: {config: student.yaml}, small: {config: student.yaml, seeds: [0, 1, 2, 3, 4]}}\n"
    )
    (tmp_path / "matrix.yaml").write_text(text)
    matrix = load_matrix(tmp_path / "matrix.yaml", root=tmp_path)
    assert matrix.scale_seeds("big") == [0, 1, 2] and matrix.scale_seeds("small") == [0, 1, 2, 3, 4]
    cells = matrix.cells()
    # per seed: 2 methods at the long budget + scratch at the short one
    assert len(cells) == 3 * 3 + 3 * 5
    assert {c.seed for c in cells if c.scale == "small" and c.method == "xpert"} == {0, 1, 2, 3, 4}
    expected = {(c.scale, c.budget, c.method, c.seed) for c in cells}
    absent = _expected_cells(yaml.safe_load(text))
    assert {(a.scale, a.budget, a.method, a.seed) for a in absent} == expected
    (tmp_path / "matrix.yaml").write_text(text.replace("seeds: [0, 1, 2, 3, 4]", "seeds: [1, 1]"))
    with pytest.raises(ConfigError, match=r"scales\.small\.seeds"):
        load_matrix(tmp_path / "matrix.yaml", root=tmp_path)


def test_every_problem_is_reported_together(tmp_path):
    (tmp_path / "m.yaml").write_text(
        "out_dir: runs/x\nbudgets: {a: 0}\nseeds: [1, 1]\nmethods: {xpert: nowhere.yaml}\nscales: {}\ncolour: red\n"
        "source: {config: nowhere.yaml}\nanalyze: nowhere.yaml\nextract: nowhere.yaml\nsweep_methods: [scratch]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_matrix(tmp_path / "m.yaml", root=tmp_path)
    text = str(err.value)
    for fragment in (
        "unknown key 'colour'",
        "baseline 'scratch'",
        "budgets",
        "seeds",
        "methods.xpert",
        "scales",
        "source: 'steps'",
        "sweep_methods: 'scratch'",
    ):
        assert fragment in text, fragment


def _minimal(tmp_path: Path, extra: str) -> Path:
    for name in ("m.yaml", "scratch.yaml"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "matrix.yaml").write_text(
        "budgets: {b: 10}\nseeds: [0]\nmethods: {scratch: scratch.yaml}\nsource: {config: m.yaml, steps: 5}\n"
        "analyze: m.yaml\nextract: m.yaml\nscales: {s: {config: m.yaml}}\n" + extra
    )
    return tmp_path / "matrix.yaml"


def test_the_tokenizer_block_holds_the_training_settings(tmp_path):
    assert load_matrix(_minimal(tmp_path, ""), root=tmp_path).tokenizer == {}
    matrix = load_matrix(
        _minimal(tmp_path, "tokenizer: {vocab_size: 512, max_chars_per_domain: 1000}\n"), root=tmp_path
    )
    assert matrix.tokenizer == {"vocab_size": 512, "max_chars_per_domain": 1000} and "tokenizer" not in matrix.data
    named = load_matrix(_minimal(tmp_path, "data: {tokenizer: some/tokenizer}\n"), root=tmp_path)
    assert named.tokenizer == {} and named.data["tokenizer"] == "some/tokenizer"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("data: {tokenizer_vocab_size: 4096}\n", "write `tokenizer: {vocab_size: N}`"),
        ("tokenizer: {vocab_size: 0}\n", "tokenizer.vocab_size: a positive integer"),
        ("tokenizer: {size: 10}\n", "tokenizer.size: unknown key"),
        ("tokenizer: {vocab_size: 512}\ndata: {tokenizer: runs/tok}\n", "give either the block"),
        ("tokenizer: 4096\n", "tokenizer: expected a mapping"),
    ],
)
def test_bad_tokenizer_settings_are_refused(tmp_path, extra, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_matrix(_minimal(tmp_path, extra), root=tmp_path)
