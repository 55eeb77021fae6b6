"""Shared tiny fixtures: a three-domain corpus laid out like the data root, and a tokenizer trained on it."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import settings
from threadpoolctl import threadpool_limits

# Property-based tests draw the same examples on every run (CI stays reproducible); `--hypothesis-seed` or
# HYPOTHESIS_PROFILE=explore samples new ones when hunting for bugs.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DOMAIN_WORDS = {
    "code": [
        "def",
        "return",
        "import",
        "class",
        "self",
        "lambda",
        "yield",
        "for",
        "while",
        "if",
        "else",
        "print",
        "range",
        "len",
    ],
    "law": [
        "court",
        "statute",
        "shall",
        "section",
        "plaintiff",
        "defendant",
        "contract",
        "party",
        "clause",
        "liability",
        "appeal",
    ],
    "news": [
        "minister",
        "election",
        "reported",
        "government",
        "market",
        "said",
        "weather",
        "police",
        "city",
        "million",
        "week",
    ],
}


def write_tiny_corpus(root: Path, docs_per_domain: int = 60, seed: int = 0) -> Path:
    """corpus/<domain>/<domain>.jsonl with `docs_per_domain` short synthetic documents per domain."""
    rng = random.Random(seed)
    for domain, words in DOMAIN_WORDS.items():
        folder = root / "corpus" / domain
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{domain}.jsonl").open("w") as fh:
            for i in range(docs_per_domain):
                text = " ".join(rng.choice(words) for _ in range(rng.randint(30, 90)))
                fh.write(
                    json.dumps({"text": f"{domain} document {i}: {text}.", "source": domain, "id": f"{domain}-{i}"})
                    + "\n"
                )
    return root


@pytest.fixture(autouse=True, scope="session")
def single_threaded_blas():
    """numpy's BLAS single-threaded: on a 2-core machine OpenBLAS threads competing with torch's make the tiny HOOI
    SVDs 10-20x slower (seen: 44 s instead of 2 s for one test)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def corpus_writer():
    """`write_tiny_corpus`, for tests that need a corpus of their own size."""
    return write_tiny_corpus


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A data root with a tiny three-domain corpus."""
    return write_tiny_corpus(tmp_path_factory.mktemp("data_root"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_data_root, tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (vocabulary 320) trained on the tiny corpus."""
    from xpert_pl.tokenizer import train_bpe_tokenizer

    texts = [
        json.loads(line)["text"]
        for f in sorted((tiny_data_root / "corpus").glob("*/*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    out = tmp_path_factory.mktemp("tokenizer") / "tok"
    train_bpe_tokenizer(texts, out, vocab_size=320)
    return out


@pytest.fixture(scope="session")
def tiny_source_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A random tiny OLMoE (4 layers, H 128, I 256, 8 experts, top-2) with the tiny tokenizer, saved as an HF dir."""
    import torch

    from xpert_pl.models import OlmoeSource
    from xpert_pl.tokenizer import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    out = tmp_path_factory.mktemp("source") / "hf"
    OlmoeSource("olmoe-tiny").build(vocab_size=len(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_analysis_dir(tiny_source_dir, tmp_path_factory) -> Path:
    """`xpert analyze` output (counts, selection.json) of the tiny source over two random-token domains."""
    import torch

    from xpert_pl.analysis import ConsistentExpertSelector, run_analysis
    from xpert_pl.models import load_causal_lm

    source = load_causal_lm(tiny_source_dir)
    gen = torch.Generator().manual_seed(0)
    batches = {d: [{"input_ids": torch.randint(0, source.config.vocab_size, (2, 16), generator=gen)}] for d in "ab"}
    out = tmp_path_factory.mktemp("analysis") / "analysis"
    run_analysis(source, batches, out, ConsistentExpertSelector(n=2), plots=False)
    return out


@pytest.fixture(scope="session")
def tiny_bank(tiny_source_dir, tmp_path_factory) -> Path:
    """A full-rank knowledge bank of the tiny source (experts 1 and 5 selected in every layer, weights 3:1)."""
    from xpert_pl.bank import TuckerConsolidator, extract_bank
    from xpert_pl.models import load_causal_lm

    source = load_causal_lm(tiny_source_dir)
    layers = [{"layer": i, "experts": [1, 5], "weights": [0.75, 0.25], "scores": [1.0] * 8} for i in range(4)]
    selection = {
        "strategy": "fixture",
        "n": 2,
        "num_experts": 8,
        "top_k": 2,
        "domains": ["a", "b"],
        "score": "fixed",
        "layers": layers,
    }
    bank = extract_bank(source, selection, TuckerConsolidator(ranks=[1.0, 1.0, 1.0]), progress=False)
    out = tmp_path_factory.mktemp("bank") / "bank"
    bank.save(out)
    return out


@pytest.fixture(scope="session")
def tiny_untrained_bank(tiny_source_dir, tmp_path_factory) -> Path:
    """The XPERT procedure on an untrained copy of the tiny source: copy, analysis, selection, full-rank bank."""
    import torch

    from xpert_pl.analysis import ConsistentExpertSelector, run_analysis
    from xpert_pl.bank import TuckerConsolidator, extract_bank
    from xpert_pl.models import load_causal_lm, make_untrained_copy

    root = tmp_path_factory.mktemp("untrained")
    copy = make_untrained_copy(str(tiny_source_dir), str(root / "hf"), seed=1)
    model = load_causal_lm(copy)
    gen = torch.Generator().manual_seed(0)
    batches = {d: [{"input_ids": torch.randint(0, model.config.vocab_size, (2, 16), generator=gen)}] for d in "ab"}
    _, selection = run_analysis(model, batches, root / "analysis", ConsistentExpertSelector(n=2), plots=False)
    consolidator = TuckerConsolidator(ranks=[1.0, 1.0, 1.0], n_iter_max=3)
    bank = extract_bank(model, selection.to_dict(), consolidator, {"model": str(copy)}, progress=False)
    return bank.save(root / "bank")


@pytest.fixture(scope="session")
def tiny_layout(tmp_path_factory, tiny_source_dir, tiny_analysis_dir, tiny_bank, tiny_untrained_bank):
    """A runs folder (`RunLayout`) whose shared artifacts are the tiny ones, for binding method YAMLs (see
    tests/test_configs.py); control banks are absent (those controls then build theirs in memory)."""
    from xpert_pl.layout import RunLayout

    layout = RunLayout(tmp_path_factory.mktemp("layout"))
    for link, target in (
        (layout.source_hf, tiny_source_dir),
        (layout.analysis, tiny_analysis_dir),
        (layout.bank, tiny_bank),
        (layout.untrained_bank, tiny_untrained_bank),
    ):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
    return layout


@pytest.fixture
def no_expensive_work(monkeypatch):
    """Every expensive step (tokenising, model loading, counting, decomposing, training) fails the test if reached."""
    from safety_checks import forbid_expensive_work

    forbid_expensive_work(monkeypatch)


@pytest.fixture(scope="session")
def tiny_run_artifacts(tiny_source_dir, tiny_analysis_dir, tiny_bank, tiny_untrained_bank) -> dict[str, Path]:
    """The tiny artifacts by the argument names initializers give them (to build an initializer directly)."""
    return {
        "bank": tiny_bank,
        "source": tiny_source_dir,
        "teacher": tiny_source_dir,
        "analysis": tiny_analysis_dir,
        "selection": tiny_analysis_dir / "selection.json",
        "untrained_bank": tiny_untrained_bank,
    }
