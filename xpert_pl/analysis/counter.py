"""Routing statistics of a source MoE: how often each expert is in a token's top-k set, per layer and domain.

Statistics are collected by forward hooks on the routers only, so they do not depend on what the model's forward
returns (router logits or not, loss or not). For domain d with non-padding tokens T_d (DESIGN.md, step 1):
c_{l,d}(e) = number of tokens whose top-k contains e and f_{l,d}(e) = c_{l,d}(e) / (k |T_d|).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xpert_pl.artifacts import load_tensors, read_json, save_tensors, write_json
from xpert_pl.experts import moe_layers

COUNTS_TENSORS = "counts.safetensors"
COUNTS_META = "counts.json"


@dataclass
class ActivationCounts:
    """Accumulated routing statistics.

    Attributes:
        domains: domain names, in the order of the D axis.
        counts: (L, D, E) int64, tokens whose top-k set contains expert e.
        prob_sum: (L, D, E) float64, summed router probability of expert e.
        tokens: (D,) int64, non-padding tokens seen per domain (each token once, not once per layer).
        top_k: experts per token of the source router.
        num_experts: routed experts per layer.
    """

    domains: list[str]
    counts: torch.Tensor
    prob_sum: torch.Tensor
    tokens: torch.Tensor
    top_k: int
    num_experts: int

    @property
    def num_layers(self) -> int:
        return int(self.counts.shape[0])

    def frequency(self) -> torch.Tensor:
        """f[L, D, E] = counts / (k * tokens_d), float64; sums to 1 over experts (0 for a domain with no tokens)."""
        denom = (self.top_k * self.tokens).clamp(min=1).to(torch.float64)
        return self.counts.to(torch.float64) / denom.view(1, -1, 1)

    def mean_probability(self) -> torch.Tensor:
        """p[L, D, E] = mean router probability of expert e over domain d's tokens, float64."""
        return self.prob_sum.to(torch.float64) / self.tokens.clamp(min=1).to(torch.float64).view(1, -1, 1)

    def save(self, out_dir: str | Path, extra_meta: dict[str, Any] | None = None) -> None:
        """Write `counts.safetensors` (tensors) and `counts.json` (domains, sizes, `extra_meta`), atomically."""
        out_dir = Path(out_dir)
        tensors = {"counts": self.counts, "prob_sum": self.prob_sum, "tokens": self.tokens}
        save_tensors(out_dir / COUNTS_TENSORS, tensors)
        meta = {
            "domains": list(self.domains),
            "tokens": {d: int(t) for d, t in zip(self.domains, self.tokens.tolist(), strict=True)},
            "top_k": self.top_k,
            "num_experts": self.num_experts,
            "num_layers": self.num_layers,
            **(extra_meta or {}),
        }
        write_json(out_dir / COUNTS_META, meta)

    @classmethod
    def load(cls, directory: str | Path) -> ActivationCounts:
        """Read what `save` wrote."""
        directory = Path(directory)
        tensors = load_tensors(directory / COUNTS_TENSORS)
        meta = read_json(directory / COUNTS_META)
        return cls(
            domains=list(meta["domains"]),
            counts=tensors["counts"],
            prob_sum=tensors["prob_sum"],
            tokens=tensors["tokens"],
            top_k=int(meta["top_k"]),
            num_experts=int(meta["num_experts"]),
        )


class ExpertActivationCounter:
    """Forward hooks on every router of a supported MoE that accumulate `ActivationCounts`.

    Usage: `with ExpertActivationCounter(model, domains) as c: c.set_domain(d); c.set_attention_mask(m); model(...)`.
    """

    def __init__(self, model: nn.Module, domains: list[str]):
        """
        Args:
            model: a Hugging Face MoE causal LM of a family `moe_layers` understands.
            domains: names of the domains whose statistics are kept apart.

        Raises:
            UnsupportedModelError: the model is not a supported MoE.
        """
        if not domains or len(set(domains)) != len(domains):
            raise ValueError(f"domains must be a non-empty list of distinct names, got {domains}")
        layers = moe_layers(model)
        self.domains = list(domains)
        self.num_experts = layers[0].num_experts
        self.top_k = layers[0].top_k
        shape = (len(layers), len(domains), self.num_experts)
        self._counts = torch.zeros(shape, dtype=torch.int64)
        self._prob_sum = torch.zeros(shape, dtype=torch.float64)
        self._tokens = torch.zeros(len(domains), dtype=torch.int64)
        # A single domain needs no set_domain call.
        self._domain: int | None = 0 if len(domains) == 1 else None
        self._mask: torch.Tensor | None = None
        self._handles = [layer.router.register_forward_hook(self._make_hook(i)) for i, layer in enumerate(layers)]

    def set_domain(self, name: str) -> None:
        """Attribute the following forward passes to domain `name`."""
        if name not in self.domains:
            raise KeyError(f"unknown domain '{name}'; known: {self.domains}")
        self._domain = self.domains.index(name)

    def set_attention_mask(self, mask: torch.Tensor | None) -> None:
        """The (B, T) attention mask of the batch about to run; tokens where it is 0 are not counted."""
        self._mask = None if mask is None else mask.detach().reshape(-1).bool()

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def result(self) -> ActivationCounts:
        """A CPU copy of the statistics accumulated so far."""
        return ActivationCounts(
            domains=list(self.domains),
            counts=self._counts.cpu().clone(),
            prob_sum=self._prob_sum.cpu().clone(),
            tokens=self._tokens.cpu().clone(),
            top_k=self.top_k,
            num_experts=self.num_experts,
        )

    def __enter__(self) -> ExpertActivationCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _make_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            logits = output[0] if isinstance(output, tuple | list) else output
            self._accumulate(layer, logits.detach())

        return hook

    @torch.no_grad()
    def _accumulate(self, layer: int, logits: torch.Tensor) -> None:
        if self._domain is None:
            raise RuntimeError("call set_domain() before running the model")
        logits = logits.reshape(-1, self.num_experts)
        self._to_device(logits.device)
        if self._mask is not None:
            if self._mask.numel() != logits.shape[0]:
                raise ValueError(
                    f"attention mask has {self._mask.numel()} tokens but the router saw {logits.shape[0]}; "
                    "call set_attention_mask() with the mask of the batch being run"
                )
            logits = logits[self._mask.to(logits.device)]
        # Probabilities in float32 as the router itself does, so the top-k set is the one the model routes by.
        probs = torch.softmax(logits.float(), dim=-1)
        top = torch.topk(probs, self.top_k, dim=-1).indices.reshape(-1)
        self._counts[layer, self._domain] += torch.bincount(top, minlength=self.num_experts)
        self._prob_sum[layer, self._domain] += probs.sum(dim=0, dtype=torch.float64)
        if layer == 0:  # every token passes layer 0 once
            self._tokens[self._domain] += logits.shape[0]

    def _to_device(self, device: torch.device) -> None:
        # Accumulators follow the model so that a GPU forward does not sync to the CPU on every layer.
        if self._counts.device != device:
            self._counts = self._counts.to(device)
            self._prob_sum = self._prob_sum.to(device)
            self._tokens = self._tokens.to(device)


def count_activations(
    model: nn.Module,
    batches_by_domain: dict[str, Iterable[dict[str, torch.Tensor]]],
    max_tokens_per_domain: int | None = None,
    progress: bool = True,
) -> ActivationCounts:
    """Run `model` over each domain's batches and return its routing statistics.

    Args:
        model: a supported Hugging Face MoE causal LM; it is run in eval mode and restored to its previous mode.
        batches_by_domain: per domain, batches with `input_ids` (B, T) and optional `attention_mask` (B, T).
        max_tokens_per_domain: stop a domain after this many non-padding tokens; the last batch is truncated so
            the budget is met exactly.
        progress: show a tqdm bar per domain.
    """
    from tqdm.auto import tqdm

    if max_tokens_per_domain is not None and max_tokens_per_domain < 1:
        raise ValueError(f"max_tokens_per_domain must be >= 1 or None, got {max_tokens_per_domain}")
    device = next(model.parameters()).device
    extra = _forward_extras(model)
    was_training = model.training
    model.eval()
    try:
        with ExpertActivationCounter(model, list(batches_by_domain)) as counter, torch.inference_mode():
            for domain, batches in batches_by_domain.items():
                counter.set_domain(domain)
                seen = 0
                with tqdm(total=max_tokens_per_domain, desc=domain, unit="tok", disable=not progress) as bar:
                    for batch in batches:
                        ids, mask = _truncate(
                            batch, None if max_tokens_per_domain is None else max_tokens_per_domain - seen
                        )
                        if ids is None:
                            break
                        ids, mask = ids.to(device), mask.to(device)
                        counter.set_attention_mask(mask)
                        model(input_ids=ids, attention_mask=mask, **extra)
                        n = int(mask.sum())
                        seen += n
                        bar.update(n)
                        if max_tokens_per_domain is not None and seen >= max_tokens_per_domain:
                            break
            return counter.result()
    finally:
        model.train(was_training)


def _forward_extras(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments that skip work the statistics do not need (cache, aux loss, full-vocab logits)."""
    params = inspect.signature(model.forward).parameters
    wanted = {"use_cache": False, "output_router_logits": False, "logits_to_keep": 1}
    return {k: v for k, v in wanted.items() if k in params}


def _truncate(batch: dict[str, torch.Tensor], budget: int | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The batch's ids and mask, with tokens past `budget` non-padding tokens masked out and dropped.

    Tokens are taken in row-major order; the ones past the budget are masked, which in a causal model leaves the
    kept tokens' routing unchanged. Rows and trailing columns that end up fully masked are dropped.
    """
    ids = batch["input_ids"]
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask.reshape(ids.shape).to(ids.dtype)
    if budget is not None:
        keep = (mask.reshape(-1).cumsum(0) <= budget).reshape(mask.shape)
        mask = mask * keep.to(mask.dtype)
        rows = mask.any(dim=1)
        if not bool(rows.any()):
            return None, mask
        cols = mask.any(dim=0).nonzero().max().item() + 1
        ids, mask = ids[rows, :cols], mask[rows, :cols]
    return ids, mask
