"""The shared `transfer` argument (`FFNTransfer`): each method's default equals its former per-method defaults, and
jsonargparse sets it field by field from YAML and the command line, keeping the method's other defaults."""

from __future__ import annotations

import json
from argparse import ArgumentError

import pytest
import torch
from jsonargparse import ArgumentParser

from xpert_pl.bank import TuckerConsolidator
from xpert_pl.initializers import (
    FFNTransfer,
    FullExpertsInit,
    Initializer,
    LinearExpansionInit,
    NormMatchedScratchInit,
    RandomExpertsInit,
    RareExpertsInit,
    ShuffledXpertInit,
    SingleExpertInit,
    SpectrumMatchedInit,
    UntrainedSourceInit,
    WeightSelectionInit,
    XpertInit,
)
from xpert_pl.models import DenseStudent

FAST = TuckerConsolidator(n_iter_max=3)
XPERT_DEFAULTS = FFNTransfer(rescale="expert_norm", depth_strategy="uniform", neuron_selection="energy")

# Each method's adaptation before `transfer` existed (its own rescale/depth_strategy/... defaults), and how to
# build the method from the tiny artifacts with a given transfer (None: the method's default).
METHODS = {
    "xpert": (XPERT_DEFAULTS, lambda a, t: XpertInit(a["bank"], **t)),
    "random_experts": (
        XPERT_DEFAULTS,
        lambda a, t: RandomExpertsInit(a["source"], a["analysis"], consolidator=FAST, **t),
    ),
    "rare_experts": (XPERT_DEFAULTS, lambda a, t: RareExpertsInit(a["source"], a["analysis"], consolidator=FAST, **t)),
    "full_experts": (XPERT_DEFAULTS, lambda a, t: FullExpertsInit(a["source"], a["selection"], **t)),
    "single_expert": (FFNTransfer(rescale="none"), lambda a, t: SingleExpertInit(a["source"], a["analysis"], **t)),
    "weight_selection": (
        FFNTransfer(rescale="none", depth_strategy="first", neuron_selection="uniform"),
        lambda a, t: WeightSelectionInit(a["source"], **t),
    ),
    "linear_expansion": (
        FFNTransfer(rescale="none", depth_strategy="first"),
        lambda a, t: LinearExpansionInit(a["source"], **t),
    ),
    "shuffled_xpert": (XPERT_DEFAULTS, lambda a, t: ShuffledXpertInit(a["bank"], **t)),
    "spectrum_matched": (XPERT_DEFAULTS, lambda a, t: SpectrumMatchedInit(a["bank"], **t)),
    "norm_matched_scratch": (XPERT_DEFAULTS, lambda a, t: NormMatchedScratchInit(a["bank"], **t)),
    "untrained_source": (XPERT_DEFAULTS, lambda a, t: UntrainedSourceInit(a["untrained_bank"], **t)),
}


def initialised(make, artifacts, transfer: FFNTransfer | None, intermediate: int) -> dict[str, torch.Tensor]:
    """A seeded student's weights after `make`'s initializer, with `transfer` (None: omitted)."""
    vocab = json.loads((artifacts["source"] / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    model = DenseStudent("llama-tiny", overrides={"intermediate_size": intermediate}).build(vocab)
    paths = {k: str(v) for k, v in artifacts.items()}
    make(paths, {} if transfer is None else {"transfer": transfer}).initialize(model)
    return model.state_dict()


# Each one builds a Tucker bank or runs SVDs per call; their weights follow from the `transfer` equality asserted
# for every method, since FFNTransfer.apply depends on nothing else than the transfer and the source matrices.
SLOW = {"random_experts", "rare_experts", "spectrum_matched"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_omitting_transfer_gives_the_former_defaults(name, tiny_run_artifacts):
    old_defaults, make = METHODS[name]
    assert make({k: str(v) for k, v in tiny_run_artifacts.items()}, {}).transfer == old_defaults
    if name in SLOW:
        return
    # The source's FFN width and a narrower one (neuron selection) for XPERT and SingleExpertInit (whose default
    # rescale differs); the narrower one for the others.
    widths = (256, 96) if name in ("xpert", "single_expert") else (96,)
    for intermediate in widths:
        default = initialised(make, tiny_run_artifacts, None, intermediate)
        explicit = initialised(make, tiny_run_artifacts, old_defaults, intermediate)
        assert default.keys() == explicit.keys()
        assert all(torch.equal(default[k], explicit[k]) for k in default), (name, intermediate)


def parse(spec: dict) -> Initializer:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Initializer, "initializer")
    return parser.instantiate(parser.parse_object({"initializer": spec})).initializer


def test_yaml_sets_single_fields_and_keeps_the_method_defaults():
    spec = {"source": "src", "analysis": "an", "transfer": {"depth_strategy": "grouped"}}
    init = parse({"class_path": "xpert_pl.initializers.SingleExpertInit", "init_args": spec})
    assert init.transfer == FFNTransfer(rescale="none", depth_strategy="grouped")
    init = parse({"class_path": "xpert_pl.initializers.XpertInit", "init_args": {"bank": "b"}})
    assert init.transfer == FFNTransfer()


def test_command_line_sets_a_nested_field():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Initializer, "initializer")
    args = [
        "--initializer=xpert_pl.initializers.WeightSelectionInit",
        "--initializer.init_args.source=src",
        "--initializer.init_args.transfer.wider_ffn=split",
    ]
    init = parser.instantiate(parser.parse_args(args)).initializer
    assert init.transfer == FFNTransfer(
        rescale="none", depth_strategy="first", neuron_selection="uniform", wider_ffn="split"
    )


def test_an_invalid_field_is_refused_by_the_parser():
    spec = {"class_path": "xpert_pl.initializers.XpertInit", "init_args": {"bank": "b", "transfer": {"rescale": "max"}}}
    with pytest.raises(ArgumentError, match="rescale"):
        parse(spec)
