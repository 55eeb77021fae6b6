"""Every MoE family of the installed transformers is either supported (and checked here) or refused with a reason."""

from __future__ import annotations

import pytest
import torch
from test_checkpoint import assert_same_experts
from tiny_families import FAMILY_NAMES, build_generic
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from xpert_pl.analysis import count_activations
from xpert_pl.sources.checkpoint import CheckpointExperts
from xpert_pl.sources.experts import moe_layers
from xpert_pl.sources.families import FAMILIES, REFUSED, UnsupportedModelError, family_of

GENERIC = sorted(set(FAMILIES) - set(FAMILY_NAMES))


def _mentions_experts(config: dict) -> bool:
    """Whether a config (or a nested sub-config) has a field about experts."""
    return any("expert" in str(key) or (isinstance(v, dict) and _mentions_experts(v)) for key, v in config.items())


def registry_moe_types() -> list[str]:
    """Model types of the installed transformers whose default config has an expert field."""
    found = []
    for model_type in CONFIG_MAPPING:
        try:
            config = CONFIG_MAPPING[model_type]().to_dict()
        except Exception:  # a config that cannot be built with defaults says nothing either way
            continue
        if _mentions_experts(config):
            found.append(model_type)
    return found


def test_every_moe_family_of_transformers_is_supported_or_refused():
    moe = registry_moe_types()
    unclassified = [t for t in moe if t not in FAMILIES and t not in REFUSED]
    assert not unclassified, (
        f"new MoE families in transformers: add a Family record or a REFUSED reason: {unclassified}"
    )
    assert not set(FAMILIES) & set(REFUSED)
    assert set(FAMILIES) | set(REFUSED) <= set(CONFIG_MAPPING), "a record names a model type transformers lacks"
    assert len(moe) > 80 and all(reason and "\n" not in reason for reason in REFUSED.values())


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_families_say_why(model_type):
    with pytest.raises(UnsupportedModelError) as info:
        family_of({"model_type": model_type})
    assert REFUSED[model_type] in str(info.value) and "\n" not in str(info.value)


def _plain_top_k(model, layers, ids):
    """Per MoE layer: the router inputs seen, then (counts, probability sums) of a plain top-k of its scores."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        layer.router.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].detach()))
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for hook in hooks:
        hook.remove()
    out = []
    for i, layer in enumerate(layers):
        logits = seen[i].reshape(-1, seen[i].shape[-1]).double() @ layer.router.weight.detach().double().T
        probs = torch.softmax(logits, -1) if layer.scoring == "softmax" else torch.sigmoid(logits)
        top = probs.topk(layer.top_k, dim=-1).indices
        out.append((torch.bincount(top.reshape(-1), minlength=layer.num_experts), probs.sum(0)))
    return out


@pytest.mark.parametrize("model_type", GENERIC)
def test_generic_family_counts_and_experts_on_disk(model_type, tmp_path):
    model = build_generic(model_type)
    layers = moe_layers(model)
    assert layers and all(layer.num_experts == 8 and layer.top_k == 2 for layer in layers)
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    counts = count_activations(model, {"d": [{"input_ids": ids}]}, progress=False, precision="float32")
    assert counts.layer_indices == [layer.index for layer in layers]
    for i, (expected, prob_sum) in enumerate(_plain_top_k(model, layers, ids)):
        assert torch.equal(counts.counts[i, 0], expected), (model_type, layers[i].index)
        torch.testing.assert_close(counts.prob_sum[i, 0], prob_sum, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path)
    reader = CheckpointExperts(tmp_path)
    assert reader.family.name == model_type and reader.scoring == layers[0].scoring
    assert_same_experts(model, reader)


def test_refused_family_is_refused_from_config_json_before_anything_loads(
    tiny_tokenizer_dir, tmp_path, capsys, no_expensive_work
):
    """A gpt-oss directory: analyze and extract stop at its config.json (the weights are never read)."""
    import json

    from safetensors.torch import save_file
    from safety_checks import refused

    CONFIG_MAPPING["gpt_oss"]().to_json_file(str(tmp_path / "config.json"))
    save_file({"unread": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    reason = REFUSED["gpt_oss"]
    argv = ["analyze", f"--model={tmp_path}", f"--data.tokenizer={tiny_tokenizer_dir}", f"--out_dir={tmp_path / 'a'}"]
    refused(capsys, argv, "'gpt_oss'", reason)
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"layers": [], "source": {"fingerprint": "0" * 16, "model": str(tmp_path)}}))
    argv = ["extract", f"--model={tmp_path}", f"--selection={selection}", f"--out_dir={tmp_path / 'b'}"]
    refused(capsys, argv, "'gpt_oss'", reason)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
