"""Load a source MoE for analysis once, in its compute dtype, after checking that it fits in memory.

`transformers`' `from_pretrained` keeps the safetensors files memory-mapped while it builds fused expert tensors
from per-expert keys, so at its peak the process holds the weights twice (mapped file pages plus the copies).
`load_for_analysis` instead builds the model without initialising it (pages untouched until written) and reads
every tensor of a local safetensors checkpoint with `readinto` straight into its parameter (per-expert keys into
their slice of the fused parameter), converting dtype through one tensor-sized buffer only when the stored dtype
differs. Peak memory is then the parameters once plus one tensor.

Before loading, `plan_precision` sums the parameter bytes from the safetensors headers in the compute dtype and
refuses, with the `--precision` that would fit, when they plus headroom exceed the available memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Activations, the tokenizer, the data and Python's own heap on top of the weights.
HEADROOM_FRACTION = 0.10
HEADROOM_MIN_BYTES = 1 << 30

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lies in a safetensors file: absolute byte range, dtype and shape."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype, or None for a dtype this loader does not read (e.g. FP8)."""
        return _DTYPES.get(self.dtype)


def safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file, from its header only (8-byte length, then JSON)."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    base = 8 + length
    return {
        key: StoredTensor(path, v["dtype"], tuple(v["shape"]), base + v["data_offsets"][0], base + v["data_offsets"][1])
        for key, v in header.items()
        if key != "__metadata__"
    }


def checkpoint_tensors(directory: str | os.PathLike) -> dict[str, StoredTensor] | None:
    """Every tensor of a local safetensors checkpoint (shard index or single file); None when it is not one."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        return None
    tensors: dict[str, StoredTensor] = {}
    for name in files:
        tensors.update(safetensors_header(directory / name))
    return tensors


def stored_dtype(tensors: dict[str, StoredTensor]) -> torch.dtype:
    """The floating dtype holding most of the checkpoint's bytes."""
    totals: dict[torch.dtype, int] = {}
    for t in tensors.values():
        if t.torch_dtype is not None and t.torch_dtype.is_floating_point:
            totals[t.torch_dtype] = totals.get(t.torch_dtype, 0) + t.end - t.start
    return max(totals, key=totals.__getitem__) if totals else torch.float32


def parameter_bytes(tensors: dict[str, StoredTensor], dtype: torch.dtype) -> int:
    """Bytes of the checkpoint's tensors once floating ones are converted to `dtype`."""
    total = 0
    for t in tensors.values():
        numel = 1
        for size in t.shape:
            numel *= size
        floating = t.torch_dtype is not None and t.torch_dtype.is_floating_point
        total += numel * dtype.itemsize if floating else t.end - t.start
    return total


def needed_bytes(tensors: dict[str, StoredTensor], dtype: torch.dtype) -> int:
    """Memory an analysis in `dtype` needs: its parameters plus headroom."""
    params = parameter_bytes(tensors, dtype)
    return params + max(HEADROOM_MIN_BYTES, int(HEADROOM_FRACTION * params))


def available_memory() -> int:
    """Bytes the kernel says a new allocation can get without swapping (`MemAvailable` in /proc/meminfo)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def plan_precision(
    model: str, precision: str, device: torch.device, available: Callable[[], int] | None = None
) -> tuple[torch.dtype, list[str]]:
    """The compute dtype to load `model` in for `precision`, and the problem when it does not fit in memory.

    `auto` on a CPU prefers float32, but takes the checkpoint's stored dtype when float32 would not fit. Only a
    local safetensors checkpoint is estimated (from its headers, no weight read); anything else is not checked.
    """
    from xpert_pl.analysis.counter import compute_dtype

    preferred = compute_dtype(precision, device)  # type: ignore[arg-type]
    tensors = checkpoint_tensors(model) if Path(model).is_dir() else None
    if not tensors:
        return preferred, []
    free = (available or available_memory)()
    stored = stored_dtype(tensors)
    if precision == "auto" and needed_bytes(tensors, preferred) > free and stored.itemsize < preferred.itemsize:
        log.info("float32 would need %s of %s available: analysing in %s", _gib(needed_bytes(tensors, preferred)),
                 _gib(free), stored)  # fmt: skip
        preferred = stored
    need = needed_bytes(tensors, preferred)
    if need <= free:
        return preferred, []
    name = str(preferred).removeprefix("torch.")
    smaller = "bfloat16" if preferred.itemsize > 2 else None
    fix = (
        f"use --precision {smaller} (needs {_gib(needed_bytes(tensors, torch.bfloat16))})"
        if smaller
        else "use a machine with more memory, or free some"
    )
    return preferred, [
        f"--model '{model}': analysing it in {name} needs about {_gib(need)} of memory (parameters "
        f"{_gib(parameter_bytes(tensors, preferred))} plus headroom) but only {_gib(free)} is available; {fix}"
    ]


def load_for_analysis(
    model: str,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    fallback: Callable[..., torch.nn.Module] | None = None,
) -> torch.nn.Module:
    """The source MoE in `dtype`: streamed from a local safetensors checkpoint when every tensor can be placed,
    else (a hub id, other weight files, remote code, an unexpected key) through `fallback` (`load_causal_lm`)."""
    from xpert_pl.models import load_causal_lm

    load_causal_lm = fallback or load_causal_lm
    tensors = checkpoint_tensors(model) if Path(model).is_dir() and not trust_remote_code else None
    loaded = _load_streaming(model, tensors, dtype) if tensors else None
    if loaded is not None:
        return loaded
    return load_causal_lm(model, trust_remote_code=trust_remote_code, dtype=dtype)


def _load_streaming(directory: str, tensors: dict[str, StoredTensor], dtype: torch.dtype) -> torch.nn.Module | None:
    """Build the model uninitialised in `dtype` and read every tensor into place; None if some cannot be placed."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(directory)
    with no_init_weights():  # parameters stay untouched (unbacked) pages until their bytes are read in
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    plan, missing = _read_plan(model, config, tensors)
    if missing:
        log.warning("%s: no tensor for %s in its safetensors files; loading it with from_pretrained", directory,
                    ", ".join(missing[:3]))  # fmt: skip
        return None
    with torch.no_grad():
        _read_all(plan)
    return model.eval()


def _expert_sources(config: Any, state: dict[str, torch.Tensor], tensors: dict[str, StoredTensor]) -> dict:
    """Fused expert parameters -> the per-expert (or renamed fused) stored tensors that fill them, slice by slice."""
    from xpert_pl.sources.families import UnsupportedModelError, family_of

    try:
        family = family_of(config)
    except UnsupportedModelError:
        return {}
    sources: dict[str, list[tuple[torch.Tensor, StoredTensor | None]]] = {}
    for layer in range(config.num_hidden_layers):  # layers without fused expert parameters are skipped below
        for block in family.blocks:
            prefix = f"model.layers.{layer}.{block}.{family.experts}."
            gate_up, down = state.get(prefix + "gate_up_proj"), state.get(prefix + "down_proj")
            if gate_up is not None and down is not None:
                sources |= _layer_sources(family, layer, prefix, gate_up, down, tensors)
    return {name: parts for name, parts in sources.items() if all(s is not None for _, s in parts)}


def _layer_sources(
    family: Any, layer: int, prefix: str, gate_up: torch.Tensor, down: torch.Tensor, tensors: dict[str, StoredTensor]
) -> dict[str, list[tuple[torch.Tensor, StoredTensor | None]]]:
    """One layer's fused (E x 2I x H, gate rows first) and (E x H x I) targets and what fills them."""
    pair = next((p for p in family.fused_key_pairs(layer) if p[0] in tensors and p[1] in tensors), None)
    if pair is not None:
        return {
            prefix + "gate_up_proj": [(gate_up, tensors[pair[0]])],
            prefix + "down_proj": [(down, tensors[pair[1]])],
        }
    half = gate_up.shape[1] // 2
    up_parts, down_parts = [], []
    for e in range(gate_up.shape[0]):
        up_parts.append((gate_up[e, :half], _first(tensors, family.per_expert_keys(layer, e, "gate"))))
        up_parts.append((gate_up[e, half:], _first(tensors, family.per_expert_keys(layer, e, "up"))))
        down_parts.append((down[e], _first(tensors, family.per_expert_keys(layer, e, "down"))))
    return {prefix + "gate_up_proj": up_parts, prefix + "down_proj": down_parts}


def _first(tensors: dict[str, StoredTensor], keys: list[str]) -> StoredTensor | None:
    return next((tensors[k] for k in keys if k in tensors), None)


def _read_plan(
    model: torch.nn.Module, config: Any, tensors: dict[str, StoredTensor]
) -> tuple[list[tuple[torch.Tensor, StoredTensor]], list[str]]:
    """(target, stored) pairs covering every parameter and persistent buffer, and the names nothing covers."""
    from xpert_pl.sources.families import FAMILIES

    state = model.state_dict()
    experts = _expert_sources(config, state, tensors)
    family = FAMILIES.get(getattr(config, "model_type", ""))
    plan: list[tuple[torch.Tensor, StoredTensor]] = []
    missing, covered = [], set()
    for name, target in state.items():
        stored = _first(tensors, _aliases(family, name))
        parts = [(target, stored)] if stored is not None else experts.get(name)
        if parts is None and target.data_ptr() not in covered:
            missing.append(name)
        elif parts:
            plan.extend(parts)
            covered.add(target.data_ptr())
    bad = [f"{s.file.name}:{s.start}" for t, s in plan if s.torch_dtype is None or t.shape != torch.Size(s.shape)]
    return plan, missing + bad


def _aliases(family: Any, name: str) -> list[str]:
    """Keys a parameter may be stored under: its own name, with the MoE block renamed as an original checkpoint names
    it (Mixtral: block_sparse_moe for mlp), and for a router weight the family's router keys."""
    if family is None:
        return [name]
    aliases = [name] + [name.replace(f".{family.blocks[0]}.", f".{b}.") for b in family.blocks[1:]]
    parts = name.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        router = {f"model.layers.{parts[2]}.{b}.{family.router}.weight" for b in family.blocks}
        if name in router:
            aliases += family.router_key_candidates(int(parts[2]))
    return aliases


def _read_all(plan: list[tuple[torch.Tensor, StoredTensor]]) -> None:
    """Read every stored tensor into its target, one file open at a time, in file order."""
    by_file: dict[Path, list[tuple[torch.Tensor, StoredTensor]]] = {}
    for target, stored in plan:
        by_file.setdefault(stored.file, []).append((target, stored))
    for file, parts in by_file.items():
        with open(file, "rb", buffering=0) as fh:
            for target, stored in sorted(parts, key=lambda p: p[1].start):
                _read_into(fh, target.detach(), stored)


def _read_into(fh: Any, target: torch.Tensor, stored: StoredTensor) -> None:
    """Read one stored tensor's bytes into `target` (directly when dtype and layout allow, else via a buffer)."""
    direct = stored.torch_dtype == target.dtype and target.is_contiguous()
    buf = target if direct else torch.empty(stored.shape, dtype=stored.torch_dtype)
    raw = buf.reshape(-1).view(torch.uint8).numpy()
    if raw.nbytes != stored.end - stored.start:
        raise ValueError(f"{stored.file}: tensor at byte {stored.start} has {stored.end - stored.start} bytes, "
                         f"expected {raw.nbytes}")  # fmt: skip
    fh.seek(stored.start)
    view, done = memoryview(raw), 0
    while done < raw.nbytes:  # readinto may return less than asked
        n = fh.readinto(view[done:])
        if not n:
            raise ValueError(f"{stored.file} ends before byte {stored.end}: truncated checkpoint")
        done += n
    if not direct:
        target.copy_(buf)


def bound_cpu_allocations() -> None:
    """Stop a CPU process's memory from growing batch after batch while it counts in bfloat16.

    oneDNN caches a primitive (with a reordered copy of the weight) for each new matmul shape, and the experts see a
    new token count at every batch; glibc then keeps the freed multi-MB buffers in its heap. Measured on a 340 MB
    bf16 OLMoE (benchmarks/analysis_memory.py), RSS grew by 40-90 MB per batch of 1,024 tokens without these
    settings, and about a third of that with them, at the same speed. An explicit `ONEDNN_PRIMITIVE_CACHE_CAPACITY`
    is kept; both settings are process-wide, for a command that runs alone.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")  # read when oneDNN builds its first primitive
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to set
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 16)  # large buffers go back to the OS when freed
