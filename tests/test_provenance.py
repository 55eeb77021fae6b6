"""Provenance: one source fingerprint (live or on disk, any load dtype), and every artifact made from another model
refused before any expert is read, with nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import xpert_pl.models
import xpert_pl.pipeline.steps as commands

# Lightning imported at collection (xpert_pl.cli does not load it): its log handler binds to pytest's capture, not
# to one test's capsys stream, which is closed by the time a later test logs.
import xpert_pl.training.lightning_cli
from xpert_pl.bank import KnowledgeBank
from xpert_pl.bank.store import BankIntegrityError
from xpert_pl.bank.tucker import TuckerConsolidator
from xpert_pl.cli import main
from xpert_pl.errors import ConfigError
from xpert_pl.initializers import (
    FullExpertsInit,
    RandomExpertsInit,
    SingleExpertInit,
    UntrainedSourceInit,
    WithSourceWeights,
    XpertInit,
)
from xpert_pl.models import DenseStudent, load_causal_lm
from xpert_pl.provenance import SourceMismatchError, architecture_fields, source_fingerprint
from xpert_pl.resume import partial_directory
from xpert_pl.sources.checkpoint import CheckpointExperts

ROUTER = "model.layers.2.mlp.gate.weight"


def _copy_source(src: Path, dst: Path, edit=None) -> Path:
    """A copy of an HF directory; `edit(tensors)` may change its weights first."""
    shutil.copytree(src, dst)
    if edit is not None:
        tensors = load_file(dst / "model.safetensors")
        edit(tensors)
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _retrain_router(tensors: dict[str, torch.Tensor]) -> None:
    tensors[ROUTER] = tensors[ROUTER] + 0.25  # as training moves a router: far above bfloat16 rounding


@pytest.fixture(scope="module")
def other_source_dir(tiny_source_dir, tmp_path_factory) -> Path:
    """The tiny source with one router moved: same architecture and experts, another model."""
    return _copy_source(tiny_source_dir, tmp_path_factory.mktemp("other") / "hf", _retrain_router)


@pytest.fixture
def no_expensive_work(monkeypatch):
    """Fail the test if any expert is read, the model is loaded or a Tucker decomposition starts."""

    def forbidden(*args, **kwargs):
        raise AssertionError("expensive work started before the provenance check")

    monkeypatch.setattr(CheckpointExperts, "stack_experts", forbidden)
    monkeypatch.setattr(xpert_pl.models, "load_causal_lm", forbidden)
    monkeypatch.setattr(commands, "load_causal_lm", forbidden)
    monkeypatch.setattr(TuckerConsolidator, "decompose", forbidden)
    return forbidden


def _tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes under `root` ('' when it does not exist)."""
    if not root.exists():
        return ""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _exit_status(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def _student(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return DenseStudent("llama-tiny").build(vocab_size=vocab)


def _state_digest(model: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()


# --- one fingerprint -------------------------------------------------------------------------------------------


def test_one_fingerprint_from_disk_and_from_live_models_in_any_dtype(tiny_source_dir):
    disk = source_fingerprint(tiny_source_dir)
    assert len(disk) == 16 and source_fingerprint(CheckpointExperts(tiny_source_dir)) == disk
    assert json.loads((tiny_source_dir / "config.json").read_text())["dtype"] == "float32"
    for dtype in (torch.float32, torch.bfloat16):
        live = load_causal_lm(tiny_source_dir, dtype=dtype)
        assert next(live.parameters()).dtype == dtype
        assert source_fingerprint(live) == disk, dtype
    # Loading-time flags and where it was loaded from do not change what the model is.
    flags = xpert_pl.models.AutoModelForCausalLM.from_pretrained(str(tiny_source_dir), output_router_logits=False)
    assert source_fingerprint(flags) == disk
    fields = architecture_fields(flags.config)
    assert not {"dtype", "torch_dtype", "transformers_version", "output_router_logits", "_name_or_path"} & set(fields)


def test_a_moved_router_gives_another_fingerprint_live_and_on_disk(tiny_source_dir, other_source_dir):
    assert source_fingerprint(other_source_dir) != source_fingerprint(tiny_source_dir)
    live = load_causal_lm(tiny_source_dir)
    with torch.no_grad():
        live.model.layers[2].mlp.gate.weight += 0.25
    assert source_fingerprint(live) == source_fingerprint(other_source_dir)


def test_analysis_and_extract_record_the_fingerprint(tiny_source_dir, tiny_analysis_dir, tiny_bank):
    fingerprint = source_fingerprint(tiny_source_dir)
    selection = json.loads((tiny_analysis_dir / "selection.json").read_text())
    counts = json.loads((tiny_analysis_dir / "counts.json").read_text())
    assert selection["source"]["fingerprint"] == counts["source"]["fingerprint"] == fingerprint
    assert KnowledgeBank.load(tiny_bank).manifest["source"]["fingerprint"] == fingerprint


# --- extract refuses a selection of another model ---------------------------------------------------------------


@pytest.mark.parametrize("existing_output", [False, True])
def test_extract_refuses_a_selection_from_another_model(
    tiny_analysis_dir, tiny_bank, other_source_dir, tmp_path, capsys, no_expensive_work, existing_output
):
    out = tmp_path / "bank"
    if existing_output:  # a bank already there must be left exactly as it was
        shutil.copytree(tiny_bank, out)
    before = _tree_digest(out)
    selection = tiny_analysis_dir / "selection.json"
    argv = ["extract", f"--model={other_source_dir}", f"--selection={selection}", f"--out_dir={out}"]
    code, err = _exit_status(argv, capsys)
    assert code == 2 and "Traceback" not in err
    recorded = json.loads(selection.read_text())["source"]["fingerprint"]
    for words in ("was made from another model", recorded, source_fingerprint(other_source_dir)):
        assert words in err
    assert (
        f"re-run `xpert analyze` on {other_source_dir}" in err and "pass the source the selection was made from" in err
    )
    assert _tree_digest(out) == before and out.exists() == existing_output
    assert not partial_directory(out).exists()


def test_extract_refuses_a_selection_without_a_fingerprint(
    tiny_source_dir, tiny_analysis_dir, tmp_path, capsys, no_expensive_work, monkeypatch
):
    monkeypatch.setattr(CheckpointExperts, "router_weight", no_expensive_work)  # nothing of the source is read
    old = json.loads((tiny_analysis_dir / "selection.json").read_text())
    del old["source"]
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps(old))
    out = tmp_path / "bank"
    for extra in ([], ["--dry_run=true"]):
        argv = ["extract", f"--model={tiny_source_dir}", f"--selection={selection}", f"--out_dir={out}", *extra]
        code, err = _exit_status(argv, capsys)
        assert code == 2 and "records no source fingerprint" in err and "re-run `xpert analyze`" in err
        assert not out.exists() and not partial_directory(out).exists()


# --- initializers refuse an analysis, selection or bank of another model ----------------------------------------


def test_full_experts_refuses_another_models_selection(tiny_analysis_dir, other_source_dir, no_expensive_work):
    student = _student(320)
    before = _state_digest(student)
    init = FullExpertsInit(str(other_source_dir), str(tiny_analysis_dir / "selection.json"))
    with pytest.raises(SourceMismatchError, match="was made from another model") as exc:
        init.initialize(student)
    assert isinstance(exc.value, ConfigError) and "re-run `xpert analyze`" in str(exc.value)
    assert _state_digest(student) == before


@pytest.mark.parametrize("control", [SingleExpertInit, RandomExpertsInit])
def test_analysis_controls_refuse_another_models_analysis(
    control, tiny_analysis_dir, other_source_dir, no_expensive_work
):
    student = _student(320)
    before = _state_digest(student)
    with pytest.raises(SourceMismatchError, match=r"analysis .* was made from another model"):
        control(str(other_source_dir), str(tiny_analysis_dir)).initialize(student)
    assert _state_digest(student) == before


def test_source_weights_refuse_a_bank_of_another_model(tiny_bank, other_source_dir, monkeypatch, no_expensive_work):
    monkeypatch.setattr(CheckpointExperts, "read_tensor", no_expensive_work)
    student = _student(320)
    before = _state_digest(student)
    init = WithSourceWeights(XpertInit(str(tiny_bank)), str(other_source_dir))
    with pytest.raises(SourceMismatchError, match=r"bank .* was made from another model.*xpert extract"):
        init.initialize(student)
    assert _state_digest(student) == before


def test_untrained_control_refuses_a_bank_of_the_trained_source(tiny_bank):
    with pytest.raises(ValueError, match="not built from an untrained copy"):
        UntrainedSourceInit(str(tiny_bank)).initialize(_student(320))


def test_untrained_control_refuses_a_bank_not_made_from_the_copy_it_names(tiny_bank, tiny_untrained_bank, tmp_path):
    copy = KnowledgeBank.load(tiny_untrained_bank).manifest["source"]["model"]
    bank = shutil.copytree(tiny_bank, tmp_path / "bank")  # the trained source's bank, claiming the untrained copy
    manifest = json.loads((bank / "manifest.json").read_text())
    manifest["source"]["model"] = copy
    (bank / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SourceMismatchError, match=r"bank .* was made from another model"):
        UntrainedSourceInit(str(bank)).load_bank()
    UntrainedSourceInit(str(tiny_untrained_bank)).load_bank()  # the real one passes


# --- bank manifests are validated on load ------------------------------------------------------------------------


def _edited_bank(tiny_bank: Path, out: Path, layer: int, experts=None, weights=None) -> Path:
    """A copy of the tiny bank with one layer's expert ids (manifest) or weights (tensors, checksum re-stamped)."""
    shutil.copytree(tiny_bank, out)
    manifest = json.loads((out / "manifest.json").read_text())
    record = next(r for r in manifest["layers"] if r["layer"] == layer)
    if experts is not None:
        record["experts"] = experts
    if weights is not None:  # as a buggy writer would: consistent checksum, impossible weights
        tensors = load_file(out / "bank.safetensors")
        tensors[f"layers.{layer}.weights"] = torch.tensor(weights)
        save_file(tensors, out / "bank.safetensors", metadata={"format": "xpert-knowledge-bank"})
        manifest["tensors"]["sha256"] = hashlib.sha256((out / "bank.safetensors").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize(
    ("edit", "file", "words"),
    [
        ({"experts": [1, 8]}, "manifest.json", "expert ids [8] out of range [0, 8)"),
        ({"experts": [-1, 5]}, "manifest.json", "expert ids [-1] out of range"),
        ({"experts": [5, 5]}, "manifest.json", "names an expert twice"),
        ({"weights": [1.25, -0.25]}, "bank.safetensors", "non-negative"),
        ({"weights": [0.5, 0.25]}, "bank.safetensors", "sum to 1"),
        ({"weights": [float("nan"), 0.5]}, "bank.safetensors", "finite"),
    ],
)
def test_bank_with_impossible_experts_or_weights_is_refused(tiny_bank, tmp_path, edit, file, words):
    bank = _edited_bank(tiny_bank, tmp_path / "bank", layer=2, **edit)
    with pytest.raises(BankIntegrityError) as exc:
        KnowledgeBank.load(bank)
    message = str(exc.value)
    assert str(bank / file) in message and "layer 2" in message and words in message
    assert "re-run `xpert extract`" in message


def test_bank_refusal_exits_with_status_2_through_fit(tiny_bank, tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    bank = _edited_bank(tiny_bank, tmp_path / "bank", layer=1, weights=[0.5, 0.25])
    configs = Path(__file__).resolve().parents[1] / "configs"
    argv = [
        "fit",
        "--config",
        str(configs / "pretrain" / "tiny.yaml"),
        "--config",
        str(configs / "methods" / "xpert.yaml"),
    ]
    argv += [f"--data.init_args.data_root={tiny_data_root}", f"--data.init_args.tokenizer={tiny_tokenizer_dir}"]
    argv += [f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--data.init_args.block_size=32"]
    argv += ["--data.init_args.batch_size=4", f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}"]
    argv += ["--trainer.max_steps=1", f"--model.initializer.init_args.bank={bank}"]
    code, err = _exit_status(argv, capsys)
    assert code == 2 and "layer 1" in err and "sum to 1" in err
