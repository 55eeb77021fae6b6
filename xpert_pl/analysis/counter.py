"""Routing statistics of a source MoE: how often each expert is in a token's top-k set, per layer and domain.

Statistics are collected by forward hooks on the routers only, so they do not depend on what the model's forward
returns (router logits or not, loss or not). For domain d with non-padding tokens T_d (DESIGN.md, step 1):
c_{l,d}(e) = number of tokens whose top-k contains e and f_{l,d}(e) = c_{l,d}(e) / (k |T_d|).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from xpert_pl.artifacts import load_tensors, read_json, save_tensors, write_json
from xpert_pl.layout import COUNTS_FILE
from xpert_pl.sources.experts import moe_layers

COUNTS_TENSORS = "counts.safetensors"
COUNTS_META = COUNTS_FILE

Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")


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
        layer_indices: the decoder-layer index of each row of the L axis (dense layers, e.g. DeepSeek's first,
            have no row); default 0..L-1.
    """

    domains: list[str]
    counts: torch.Tensor
    prob_sum: torch.Tensor
    tokens: torch.Tensor
    top_k: int
    num_experts: int
    layer_indices: list[int] | None = None

    def __post_init__(self) -> None:
        if self.layer_indices is None:
            self.layer_indices = list(range(self.num_layers))
        if len(self.layer_indices) != self.num_layers:
            raise ValueError(f"{len(self.layer_indices)} layer indices for {self.num_layers} counted layers")

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
            "layer_indices": list(self.layer_indices),
            **(extra_meta or {}),
        }
        write_json(out_dir / COUNTS_META, meta)

    @classmethod
    def concat(cls, parts: list[ActivationCounts]) -> ActivationCounts:
        """The counts of several domain groups of one model side by side (domains in the order given)."""
        first = parts[0]
        for part in parts[1:]:
            same = (part.top_k, part.num_experts, part.layer_indices) == (
                first.top_k,
                first.num_experts,
                first.layer_indices,
            )
            if not same:
                raise ValueError("counts of different models (top-k, experts or layers differ) cannot be combined")
        return cls(
            domains=[d for part in parts for d in part.domains],
            counts=torch.cat([part.counts for part in parts], dim=1),
            prob_sum=torch.cat([part.prob_sum for part in parts], dim=1),
            tokens=torch.cat([part.tokens for part in parts]),
            top_k=first.top_k,
            num_experts=first.num_experts,
            layer_indices=list(first.layer_indices),
        )

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
            layer_indices=meta.get("layer_indices"),
        )


class ExpertActivationCounter:
    """Forward hooks on every router of a supported MoE that accumulate `ActivationCounts`.

    The top-k set of a token is the router's own choice when the router returns `(logits, weights, indices)`
    (transformers 5), which is exact for grouped or bias-corrected routing (DeepSeek); a router that returns logits
    only (transformers 4) is routed here as top-k of its probabilities. The router probability is softmax(logits) or
    sigmoid(logits), per the layer's `scoring`.

    Usage: `with ExpertActivationCounter(model, domains) as c: c.set_domain(d); c.set_attention_mask(m); model(...)`.
    """

    def __init__(self, model: nn.Module, domains: list[str], layers: list[Any] | None = None):
        """
        Args:
            model: a Hugging Face MoE causal LM of a family `moe_layers` understands.
            domains: names of the domains whose statistics are kept apart.
            layers: the MoE blocks to hook (objects with `router`, `num_experts`, `top_k` and optionally
                `scoring`); default `moe_layers(model)`.

        Raises:
            UnsupportedModelError: the model is not a supported MoE.
        """
        if not domains or len(set(domains)) != len(domains):
            raise ValueError(f"domains must be a non-empty list of distinct names, got {domains}")
        layers = moe_layers(model) if layers is None else list(layers)
        self.domains = list(domains)
        self.num_experts = layers[0].num_experts
        self.top_k = layers[0].top_k
        # Objects without `index` (hand-made layer lists) are numbered by position.
        self.layer_indices = [int(getattr(layer, "index", i)) for i, layer in enumerate(layers)]
        shape = (len(layers), len(domains), self.num_experts)
        # One extra column is the sink of masked-out tokens: masking by index redirection needs no host sync.
        self._counts = torch.zeros((*shape[:2], self.num_experts + 1), dtype=torch.int64)
        self._prob_sum = torch.zeros(shape, dtype=torch.float64)
        self._tokens = torch.zeros(len(domains), dtype=torch.int64)
        # A single domain needs no set_domain call.
        self._domain: int | None = 0 if len(domains) == 1 else None
        self._mask: torch.Tensor | None = None
        self._handles = [
            layer.router.register_forward_hook(self._make_hook(i, getattr(layer, "scoring", "softmax")))
            for i, layer in enumerate(layers)
        ]

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

    def state_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The live accumulators (counts with the padding sink column, prob_sum, tokens), e.g. to all-reduce."""
        return self._counts, self._prob_sum, self._tokens

    def result(self) -> ActivationCounts:
        """A CPU copy of the statistics accumulated so far."""
        return ActivationCounts(
            domains=list(self.domains),
            counts=self._counts[..., : self.num_experts].cpu().clone(),
            prob_sum=self._prob_sum.cpu().clone(),
            tokens=self._tokens.cpu().clone(),
            top_k=self.top_k,
            num_experts=self.num_experts,
            layer_indices=list(self.layer_indices),
        )

    def __enter__(self) -> ExpertActivationCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _make_hook(self, layer: int, scoring: str):
        if scoring not in ("softmax", "sigmoid"):
            raise ValueError(f"layer {layer}: unknown router scoring '{scoring}' (expected softmax or sigmoid)")

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            logits, indices = output, None
            if isinstance(output, tuple | list):
                logits = output[0]
                if len(output) == 3 and not output[2].is_floating_point():
                    indices = output[2]
            self._accumulate(layer, logits.detach(), indices, scoring)

        return hook

    @torch.no_grad()
    def _accumulate(self, layer: int, logits: torch.Tensor, indices: torch.Tensor | None, scoring: str) -> None:
        if self._domain is None:
            raise RuntimeError("call set_domain() before running the model")
        logits = logits.reshape(-1, self.num_experts)
        self._to_device(logits.device)
        # Probabilities in float32 as the routers themselves compute them, so a recomputed top-k matches theirs.
        logits = logits.float()
        probs = torch.softmax(logits, dim=-1) if scoring == "softmax" else torch.sigmoid(logits)
        top = torch.topk(probs, self.top_k, dim=-1).indices if indices is None else indices
        top = top.reshape(probs.shape[0], -1)
        mask = self._mask
        if mask is not None:
            if mask.numel() != probs.shape[0]:
                raise ValueError(
                    f"attention mask has {mask.numel()} tokens but the router saw {probs.shape[0]}; "
                    "call set_attention_mask() with the mask of the batch being run"
                )
            mask = mask.to(probs.device, non_blocking=True)
            top = torch.where(mask.unsqueeze(1), top, self.num_experts)  # padding goes to the sink column
            probs = probs * mask.unsqueeze(1)
        flat = top.reshape(-1)
        self._counts[layer, self._domain].index_add_(0, flat, torch.ones_like(flat))
        self._prob_sum[layer, self._domain] += probs.sum(dim=0, dtype=torch.float64)
        if layer == 0:  # every token passes layer 0 once
            self._tokens[self._domain] += probs.shape[0] if mask is None else mask.sum()

    def _to_device(self, device: torch.device) -> None:
        # Accumulators follow the model so that a GPU forward does not sync to the CPU on every layer.
        if self._counts.device != device:
            self._counts = self._counts.to(device)
            self._prob_sum = self._prob_sum.to(device)
            self._tokens = self._tokens.to(device)


def compute_dtype(precision: Precision, device: torch.device, param_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The compute dtype `precision` means for parameters of `param_dtype` on `device`.

    `auto`: parameters already in a reduced precision run as they are; float32 ones run in bfloat16 on a CUDA
    device that supports it, else in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return getattr(torch, precision)
    if param_dtype != torch.float32:
        return param_dtype
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if cuda_bf16 else torch.float32


def resolve_precision(precision: Precision, model: nn.Module) -> torch.dtype:
    """The compute dtype of `precision` for `model` as it is (device and parameter dtype); see `compute_dtype`."""
    param = next(model.parameters())
    return compute_dtype(precision, param.device, param.dtype)


def precision_context(model: nn.Module, precision: Precision) -> contextlib.AbstractContextManager:
    """A context that runs `model` in `precision`: nothing when its parameters have that dtype, else autocast.

    Raises:
        ValueError: float32 is asked of a model whose parameters are in a lower precision (load it in float32).
    """
    dtype = resolve_precision(precision, model)
    param = next(model.parameters())
    if dtype == param.dtype:
        return contextlib.nullcontext()
    if dtype == torch.bfloat16:
        return torch.autocast(param.device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision {precision!r} needs float32 parameters but the model is in {param.dtype}")


def count_activations(
    model: nn.Module,
    batches_by_domain: dict[str, Iterable[dict[str, torch.Tensor]]],
    max_tokens_per_domain: int | None = None,
    progress: bool = True,
    precision: Precision = "auto",
) -> ActivationCounts:
    """Run `model` over each domain's batches and return its routing statistics.

    Args:
        model: a supported Hugging Face MoE causal LM; it is run in eval mode and restored to its previous mode.
        batches_by_domain: per domain, batches with `input_ids` (B, T) and optional `attention_mask` (B, T).
        max_tokens_per_domain: stop a domain after this many non-padding tokens; the last batch is truncated so
            the budget is met exactly.
        progress: show a tqdm bar per domain.
        precision: compute dtype (see `resolve_precision`); statistics accumulate in int64/float64 regardless.
    """
    check_budget(max_tokens_per_domain)
    device = next(model.parameters()).device
    extra = forward_extras(model)
    was_training = model.training
    model.eval()
    try:
        with (
            ExpertActivationCounter(model, list(batches_by_domain)) as counter,
            torch.inference_mode(),
            precision_context(model, precision),
        ):
            for domain, batches in batches_by_domain.items():
                counter.set_domain(domain)
                _run_domain(model, counter, batches, max_tokens_per_domain, device, extra, progress, domain)
            return counter.result()
    finally:
        model.train(was_training)


def _run_domain(
    model: nn.Module,
    counter: ExpertActivationCounter,
    batches: Iterable[dict[str, torch.Tensor]],
    budget: int | None,
    device: torch.device,
    extra: dict[str, Any],
    progress: bool,
    desc: str,
) -> None:
    from tqdm.auto import tqdm

    seen = 0
    with tqdm(total=budget, desc=desc, unit="tok", disable=not progress) as bar:
        for batch in batches:
            ids, mask = truncate_batch(batch, None if budget is None else budget - seen)
            if ids is None:
                break
            n = run_batch(model, counter, ids, mask, device, extra)
            seen += n
            bar.update(n)
            if budget is not None and seen >= budget:
                break


def run_batch(
    model: nn.Module,
    counter: ExpertActivationCounter,
    ids: torch.Tensor,
    mask: torch.Tensor,
    device: torch.device,
    extra: dict[str, Any],
) -> int:
    """One forward of `model` on a (truncated) batch with the counter watching; returns its non-padding tokens."""
    n = int(mask.sum())  # on the host tensor: no device sync
    ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    # An all-ones mask is dropped: the counter then skips masking work in every layer.
    counter.set_attention_mask(None if n == mask.numel() else mask)
    model(input_ids=ids, attention_mask=mask, **extra)
    return n


def check_budget(max_tokens: int | None) -> None:
    """Reject a token budget below 1 (None means no budget)."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens_per_domain must be >= 1 or None, got {max_tokens}")


def forward_extras(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments that skip work the statistics do not need (cache, aux loss, full-vocab logits)."""
    params = inspect.signature(model.forward).parameters
    wanted = {"use_cache": False, "output_router_logits": False, "logits_to_keep": 1}
    return {k: v for k, v in wanted.items() if k in params}


def truncate_batch(batch: dict[str, torch.Tensor], budget: int | None) -> tuple[torch.Tensor | None, torch.Tensor]:
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
