"""Every YAML in configs/ parses and builds (classes instantiated) with tiny overrides, on CPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from xpert_pl.analysis import ActivationCounts
from xpert_pl.cli import run_lightning_cli
from xpert_pl.layout import Artifact
from xpert_pl.pipeline.config import artifact_specs, bind_artifacts, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_YAMLS = sorted(CONFIGS.rglob("*.yaml"))
FIT_BASES = sorted((CONFIGS / "pretrain").glob("*.yaml")) + sorted((CONFIGS / "source").glob("*.yaml"))


def test_every_yaml_starts_with_the_command_that_runs_it():
    assert ALL_YAMLS, "no configs found"
    for path in ALL_YAMLS:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# xpert "), f"{path} must start with the command that runs it"


def _tiny_data_args(data_root: Path, tokenizer: Path, tmp_path: Path) -> list[str]:
    return [
        f"--data.init_args.data_root={data_root}",
        f"--data.init_args.tokenizer={tokenizer}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--data.init_args.block_size=32",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.precision=32-true",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}",
    ]


@pytest.mark.parametrize("base", FIT_BASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fit_configs_build(base, tiny_data_root, tiny_tokenizer_dir, tmp_path):
    # Paper-scale presets are built on a tiny preset override, so only the wiring is exercised on CPU.
    args = ["fit", "--config", str(base), *_tiny_data_args(tiny_data_root, tiny_tokenizer_dir, tmp_path)]
    preset = "olmoe-tiny" if "source" in base.parts else "llama-tiny"
    args.append(f"--model.model.init_args.preset={preset}")
    cli = run_lightning_cli(args, run=False)
    cli.model.configure_model()
    assert cli.model.hparams.vocab_size == cli.datamodule.vocab_size == len(cli.datamodule.tokenizer)
    assert cli.model.val_domains == ["code", "law", "news"]
    assert cli.trainer.max_steps > 0


@pytest.mark.parametrize("overlay", sorted((CONFIGS / "gpu").glob("*.yaml")), ids=lambda p: p.name)
def test_gpu_presets_build(overlay, tiny_data_root, tiny_tokenizer_dir, tmp_path):
    """The GPU presets parse and build, CPU standing in for the GPU; strategy and precision are kept (the FSDP2
    preset is run sharded by tests/training/test_sharded.py)."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from xpert_pl.training import FSDP2Strategy

    spec = yaml.safe_load(overlay.read_text())
    args = ["fit", "--config", str(CONFIGS / "pretrain" / "tiny.yaml")]
    if "trainer" not in spec:  # a model-only overlay (compile) goes on top of the DDP preset
        args += ["--config", str(CONFIGS / "gpu" / "ddp-bf16.yaml")]
    args += ["--config", str(overlay)]
    keep = ("--trainer.strategy=", "--trainer.precision=")
    args += [a for a in _tiny_data_args(tiny_data_root, tiny_tokenizer_dir, tmp_path) if not a.startswith(keep)]
    cli = run_lightning_cli(args, run=False)
    sharded = overlay.name.startswith("fsdp")
    single = overlay.name.startswith("single")  # one device: Lightning's default single-device strategy
    assert isinstance(
        cli.trainer.strategy, SingleDeviceStrategy if single else FSDP2Strategy if sharded else DDPStrategy
    )
    if sharded:
        assert cli.trainer.strategy.activation_checkpointing and not cli.trainer.strategy._save_distributed_checkpoint
    assert cli.trainer.precision == "bf16-mixed"
    cli.model.configure_model()
    compiled = getattr(cli.model.model, "_compiled_call_impl", None) is not None
    assert compiled == (overlay.name == "compile.yaml") == cli.model.hparams.compile


def _expected_report(initializer: dict) -> tuple[str, set[str]]:
    """The report name an initializer spec should give, and the name patterns of the tensors it sets."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", initializer["class_path"].rsplit(".", 1)[1].removesuffix("Init")).lower()
    if snake == "scratch":
        return snake, set()
    if snake == "with_source_weights":
        base, _ = _expected_report(initializer["init_args"]["base"])
        return f"{base}+source_weights", {"mlp", "self_attn"}
    return snake, {"mlp"}


@pytest.mark.parametrize("method", sorted((CONFIGS / "methods").glob("*.yaml")), ids=lambda p: p.name)
def test_method_configs_build_on_the_tiny_student(method, tiny_data_root, tiny_tokenizer_dir, tmp_path, tiny_layout):
    bound = bind_artifacts(load_config([method]), tiny_layout, method.stem)
    for spec, cls in artifact_specs(bound):  # no control bank is staged here: the control builds its own
        if Artifact.CONTROL_BANK in cls.artifacts.values():
            spec["init_args"]["bank"] = None
        if "domain" in spec.get("init_args", {}):  # a single-domain ablation: a domain of the tiny analysis
            spec["init_args"]["domain"] = ActivationCounts.load(tiny_layout.analysis).domains[0]
    overlay = tmp_path / "method.yaml"
    overlay.write_text(yaml.safe_dump(bound))
    args = [
        "fit",
        "--config",
        str(CONFIGS / "pretrain" / "tiny.yaml"),
        "--config",
        str(overlay),
        *_tiny_data_args(tiny_data_root, tiny_tokenizer_dir, tmp_path),
    ]
    cli = run_lightning_cli(args, run=False)
    spec = yaml.safe_load(method.read_text())["model"]["initializer"]
    assert type(cli.model.initializer).__name__ == spec["class_path"].rsplit(".", 1)[1]
    params_before = sum(p.numel() for p in cli.model.model_builder.build(cli.model.hparams.vocab_size).parameters())
    cli.model.configure_model()
    assert sum(p.numel() for p in cli.model.model.parameters()) == params_before
    name, kinds = _expected_report(spec)
    assert cli.model.init_report.initializer == name
    layers = cli.model.model.config.num_hidden_layers
    ffn = {f"model.layers.{j}.mlp.{p}_proj.weight" for j in range(layers) for p in ("gate", "up", "down")}
    changed = set(cli.model.init_report.set_parameters)
    assert (ffn <= changed) == ("mlp" in kinds)  # every expert-based method sets every FFN matrix
    assert all(k.startswith("model.layers.") for k in changed)  # no method here transfers embeddings
    parts = {k.split(".")[3] for k in changed}
    assert parts <= {"mlp", "self_attn", "input_layernorm", "post_attention_layernorm"}
    assert ("self_attn" in parts) == ("self_attn" in kinds)


@pytest.mark.parametrize("name", ["analyze", "extract"])
def test_function_command_configs_parse_and_build(name, tiny_data_root, tiny_tokenizer_dir, tmp_path):
    from jsonargparse import ArgumentParser

    from xpert_pl.pipeline import steps as commands

    for path in sorted((CONFIGS / name).glob("*.yaml")):
        parser = ArgumentParser(exit_on_error=False)
        parser.add_function_arguments(getattr(commands, name))
        cfg = parser.parse_path(str(path))
        if name == "analyze":  # the real tokenizer/data are not on a CI machine: build on the tiny ones
            data = cfg.data.init_args
            data.tokenizer, data.data_root, data.cache_dir = str(tiny_tokenizer_dir), str(tiny_data_root), str(tmp_path)
        built = parser.instantiate_classes(cfg)
        assert built.model and built.out_dir
        if name == "analyze":
            assert built.selector.n >= 1
        else:
            assert len(built.consolidator.ranks) == 3
