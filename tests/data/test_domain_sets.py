"""Domain sets: YAML parsing and its errors, txt/parquet corpora, the shipped corpus set, and `xpert analyze`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

from xpert_pl.data.corpus import DomainSpec, load_domain_texts
from xpert_pl.data.domain_sets import describe_domain_set, domain_file_problems, load_domain_set, parse_domain_set
from xpert_pl.errors import ConfigError
from xpert_pl.paths import DataRootError, data_root

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "domains" / "corpus.yaml"
CORPUS_DOMAINS = ["books", "code", "law", "medicine", "news", "science", "wikipedia"]


def test_parse_valid_set(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text(
        "- name: law\n  files: corpus/law/*.jsonl\n  weight: 2\n"
        "- name: web\n  hub_id: allenai/c4\n  hub_config: en\n  hub_split: validation\n"
        "- name: notes\n  files: [a/*.txt, b/*.txt]\n  text_field: text\n"
        "- name: code\n"
    )
    specs = load_domain_set(path)
    assert specs == [
        DomainSpec("law", files=["corpus/law/*.jsonl"], weight=2.0),
        DomainSpec("web", hub_id="allenai/c4", hub_config="en", hub_split="validation"),
        DomainSpec("notes", files=["a/*.txt", "b/*.txt"]),
        DomainSpec("code"),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "non-empty YAML list"),
        ({"name": "law"}, "non-empty YAML list"),
        (None, "non-empty YAML list"),
        ([{"files": ["x/*.jsonl"]}], "missing `name`"),
        ([{"name": "law", "path": "x"}], r"unknown keys \['path'\]"),
        ([{"name": "law"}, {"name": "law"}], r"duplicate domain names \['law'\]"),
        ([{"name": "law", "files": ["x"], "hub_id": "y"}], "not both"),
        ([{"name": "law", "weight": -1}], "weight"),
        ([{"name": "law", "files": []}], "`files` must be"),
        (["law"], "expected a mapping"),
    ],
)
def test_invalid_sets_are_explained(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_domain_set(raw, source="set.yaml")


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_domain_set([{"files": "x"}, {"name": "b", "colour": 1}, {"name": "b"}])
    assert len(err.value.problems) == 3


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="domain set"):
        load_domain_set(tmp_path / "nope.yaml")


def test_txt_one_document_per_nonblank_line(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("first line\n\nsecond line\n   \nthird line\n")
    spec = DomainSpec("notes", files=["notes/*.txt"])
    texts = [r["text"] for r in load_domain_texts(spec, "train", data_root=str(tmp_path), val_fraction=0.0)]
    assert texts == ["first line", "second line", "third line"]
    with pytest.raises(ValueError, match="single field 'text'"):
        load_domain_texts(DomainSpec("notes", files=["notes/*.txt"], text_field="body"), "train", str(tmp_path))


def test_parquet_with_another_text_field(tmp_path):
    rows = {"body": [f"doc {i}" for i in range(6)], "id": [str(i) for i in range(6)]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "part.parquet"))
    spec = DomainSpec("pq", files=["*.parquet"], text_field="body")
    ds = load_domain_texts(spec, "train", data_root=str(tmp_path), val_fraction=0.0)
    assert ds.column_names == ["text"] and [r["text"] for r in ds] == rows["body"]


def test_mixed_formats_in_one_domain_are_refused(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    (tmp_path / "b.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(ValueError, match="one format"):
        load_domain_texts(DomainSpec("m", files=["a.txt", "b.jsonl"]), "train", data_root=str(tmp_path))


def test_file_problems_name_the_domain(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.jsonl").write_text("")
    specs = [
        DomainSpec("gone", files=["gone/*.jsonl"]),
        DomainSpec("empty", files=["empty/*.jsonl"]),
        DomainSpec("hub", hub_id="org/data"),
    ]
    problems = domain_file_problems(specs, str(tmp_path))
    assert len(problems) == 2
    assert "domain 'gone'" in problems[0] and "gone/*.jsonl" in problems[0]
    assert "domain 'empty'" in problems[1] and "e.jsonl" in problems[1]


def test_shipped_corpus_set_resolves_all_seven_domains():
    assert SHIPPED.read_text().startswith("# xpert analyze --config configs/analyze/tiny.yaml --domains ")
    specs = load_domain_set(SHIPPED)
    assert sorted(s.name for s in specs) == CORPUS_DOMAINS
    try:
        root = data_root()
    except DataRootError:
        pytest.skip("no shared data root on this machine: only the YAML was checked")
    assert domain_file_problems(specs, str(root)) == []
    described = describe_domain_set(specs, str(root))
    for entry in described:
        assert entry["resolved_files"] and all(f.endswith(".jsonl") for f in entry["resolved_files"])
        assert all(Path(f).parent.name == entry["name"] for f in entry["resolved_files"])


def _analyze(args: list[str]) -> None:
    from xpert_pl.cli import main

    main(["analyze", *args])


def test_analyze_with_a_domain_set(tiny_data_root, tiny_tokenizer_dir, tmp_path):
    from xpert_pl.models import OlmoeSource

    torch.manual_seed(0)
    OlmoeSource("olmoe-tiny").build(320).save_pretrained(tmp_path / "moe")
    domain_set = tmp_path / "set.yaml"
    domain_set.write_text("- name: legal\n  files: corpus/law/*.jsonl\n  weight: 2\n- name: code\n")
    common = [
        f"--model={tmp_path / 'moe'}",
        f"--data.tokenizer={tiny_tokenizer_dir}",
        "--data.block_size=32",
        f"--data.data_root={tiny_data_root}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        "--plots=false",
    ]
    out = tmp_path / "analysis"
    _analyze([*common, f"--domains={domain_set}", f"--out_dir={out}", "--max_tokens_per_domain=100"])
    meta = json.loads((out / "counts.json").read_text())
    assert meta["domains"] == ["legal", "code"] and meta["tokens"] == {"legal": 100, "code": 100}
    assert [d["name"] for d in meta["domain_set"]] == ["legal", "code"]
    assert meta["domain_set"][0]["weight"] == 2.0 and meta["domain_set"][0]["files"] == ["corpus/law/*.jsonl"]
    assert meta["domain_set"][1]["resolved_files"][0].endswith("code/code.jsonl")
    assert meta["precision"] == "float32" and meta["model_fingerprint"]
    assert meta["timing"]["tokens"] == 200 and meta["timing"]["tokens_per_second"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokens"] == {"legal": 100, "code": 100} and "selection.json" in manifest["files"]


def test_analyze_reports_a_missing_domain_before_loading_the_model(
    tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys
):
    domain_set = tmp_path / "set.yaml"
    domain_set.write_text("- name: code\n- name: poetry\n  files: [corpus/poetry/*.jsonl]\n")
    with pytest.raises(SystemExit) as exc:  # the model path does not exist: the domain check must come first
        _analyze(
            [
                f"--model={tmp_path / 'no-model'}",
                f"--data.tokenizer={tiny_tokenizer_dir}",
                f"--data.data_root={tiny_data_root}",
                f"--domains={domain_set}",
                f"--out_dir={tmp_path / 'o'}",
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "domain 'poetry'" in err and "corpus/poetry/*.jsonl" in err
