"""Corpus domains: where each domain's text comes from and its deterministic train/validation split."""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets

from xpert_pl.paths import DATA_ROOT_ENV, DataRootError, corpus_domains
from xpert_pl.paths import data_root as resolve_data_root

Split = Literal["train", "validation"]


@dataclass
class DomainSpec:
    """One domain of the pre-training mixture.

    Attributes:
        name: domain name (used in metric names and cache files).
        files: glob patterns of local files, relative to the data root or absolute; default `corpus/<name>/*.jsonl`.
            Formats by extension (one per domain): `.jsonl`/`.json` (one document per row), `.parquet` (one
            per row), `.txt` (one document per non-blank line, field `text`).
        hub_id: a Hugging Face dataset id, streamed instead of local files (needs network access).
        hub_config: configuration name of `hub_id`.
        hub_split: split of `hub_id` to read; the train/validation split is then made by hashing.
        text_field: field holding the document text.
        weight: mixing weight of the domain in the training stream (normalised over domains).
    """

    name: str
    files: list[str] | None = None
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    text_field: str = "text"
    weight: float = 1.0


def default_domains(data_root: str | None = None) -> list[DomainSpec]:
    """One spec per corpus domain under the data root, sorted by name, all with weight 1."""
    return [DomainSpec(name=name) for name in sorted(corpus_domains(data_root))]


def is_validation(key: str, val_fraction: float, salt: str = "xpert") -> bool:
    """Deterministic split: True when sha1(salt + key), mapped to [0, 1), falls below `val_fraction`."""
    digest = hashlib.sha1(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def resolve_files(spec: DomainSpec, data_root: str | None = None) -> list[str]:
    """Sorted local files of a domain, with a clear error when none match.

    Raises:
        DataRootError: the data root is missing or a pattern matches no file.
    """
    patterns = spec.files or [f"corpus/{spec.name}/*.jsonl"]
    files: list[str] = []
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(resolve_data_root(data_root) / pattern)
        matched = sorted(glob.glob(full))
        if not matched:
            raise DataRootError(
                f"domain '{spec.name}': no file matches '{full}' (pattern '{pattern}'). Check {DATA_ROOT_ENV} / "
                "data_root, or the domain's `files`."
            )
        files.extend(matched)
    return files


def text_file_problem(path: str, text_field: str = "text") -> str | None:
    """The first problem of a local text file, naming the file, the line and the field (None when it is sound).

    A `.jsonl`/`.json` file must be non-empty UTF-8 with one JSON object per non-blank line whose `text_field` is
    a string; a `.txt` file must be non-empty UTF-8. Other formats are left to their reader.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in (".jsonl", ".json", ".txt"):
        return None
    if Path(path).stat().st_size == 0:
        return f"{path} is empty (0 bytes): remove it or fill it"
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            problem = _line_problem(raw, text_field, suffix == ".txt")
            if problem is not None:
                return f"{path}, line {number}: {problem}"
    return None


def _line_problem(raw: bytes, text_field: str, plain_text: bool) -> str | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not valid UTF-8 ({err.reason} at byte {err.start})"
    if plain_text or not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg}; a truncated line?)"
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object with a '{text_field}' field"
    if text_field not in row:
        return f"no field '{text_field}' (fields: {', '.join(sorted(row)[:8])}); set the domain's text_field"
    if not isinstance(row[text_field], str):
        return f"field '{text_field}' is {json.dumps(row[text_field])[:20]}, not a string"
    return None


# Builder of `datasets.load_dataset` for each local file extension.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def file_builder(spec: DomainSpec, files: list[str]) -> str:
    """The `datasets` builder that reads a domain's files, which must all have one supported format.

    Raises:
        ValueError: an unsupported extension, formats mixed in one domain, or a `.txt` domain whose
            `text_field` is not `text` (the text builder has only that column).
    """
    builders = {FILE_BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in builders or len(builders) != 1:
        suffixes = sorted({Path(f).suffix for f in files})
        raise ValueError(
            f"domain '{spec.name}': files must share one format of {sorted(FILE_BUILDERS)}, got {suffixes}"
        )
    builder = builders.pop()
    if builder == "text" and spec.text_field != "text":
        raise ValueError(f"domain '{spec.name}': .txt files have the single field 'text', not '{spec.text_field}'")
    return builder


def _nonblank(batch: dict[str, list[str]]) -> list[bool]:
    return [bool(t.strip()) for t in batch["text"]]


def _split_mask(batch: dict[str, list[Any]], text_field: str, val_fraction: float, want_val: bool) -> list[bool]:
    texts = batch[text_field]
    ids = batch.get("id") or [None] * len(texts)
    keys = [str(i) if i is not None else t for i, t in zip(ids, texts, strict=True)]
    return [is_validation(k, val_fraction) == want_val for k in keys]


def _open(
    spec: DomainSpec, data_root: str | None, streaming: bool, cache_dir: str | None
) -> datasets.Dataset | datasets.IterableDataset:
    if spec.hub_id:
        return datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.hub_split, streaming=True)
    files = resolve_files(spec, data_root)
    builder = file_builder(spec, files)
    ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir, streaming=streaming)
    # Text files: one document per line; blank lines (paragraph breaks) are not documents.
    return ds.filter(_nonblank, batched=True) if builder == "text" else ds


def load_domain_texts(
    spec: DomainSpec,
    split: Split,
    data_root: str | None = None,
    val_fraction: float = 0.05,
    max_docs: int | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Documents of one domain's split, as a dataset with the single column `text`.

    Args:
        spec: the domain.
        split: "train" or "validation" (a deterministic hash of the doc `id`, or of its text when it has none).
        data_root: data root for relative file patterns (default: `xpert_pl.paths.data_root()`).
        val_fraction: fraction of documents in the validation split.
        max_docs: keep only the first `max_docs` documents of the split.
        streaming: return an `IterableDataset` read lazily (always the case for `hub_id` domains).
        cache_dir: Arrow cache directory of `datasets` for local files (default: the `datasets` cache).

    Raises:
        DataRootError: local files are missing.
        ValueError: the split of a (non-streamed) domain is empty.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    ds = _open(spec, data_root, streaming, cache_dir)
    kwargs = {"text_field": spec.text_field, "val_fraction": val_fraction, "want_val": split == "validation"}
    ds = ds.filter(_split_mask, batched=True, fn_kwargs=kwargs)
    ds = ds.select_columns([spec.text_field])
    if spec.text_field != "text":
        ds = ds.rename_column(spec.text_field, "text")
    if isinstance(ds, datasets.IterableDataset):
        return ds.take(max_docs) if max_docs is not None else ds
    if max_docs is not None:
        ds = ds.select(range(min(max_docs, len(ds))))
    if len(ds) == 0:
        raise ValueError(
            f"domain '{spec.name}': the {split} split is empty (val_fraction={val_fraction}, max_docs={max_docs})"
        )
    return ds
