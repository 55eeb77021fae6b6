"""`xpert tokenizer`: a byte-level BPE tokenizer trained on the train split of every corpus domain, reused when
the folder already holds one trained with the same settings."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xpert_pl.artifacts import read_json
from xpert_pl.errors import ConfigError, raise_if_problems
from xpert_pl.tokenizer import META_FILE, MIN_VOCAB, train_bpe_tokenizer

log = logging.getLogger(__name__)


def corpus_training_texts(
    data_root: str | None = None, max_chars_per_domain: int = 2_000_000, val_fraction: float = 0.05
) -> tuple[Iterator[str], list[str]]:
    """Texts of the train split of every corpus domain, each domain capped at `max_chars_per_domain` characters.

    Returns:
        A lazy iterator of texts and the list of domain names.
    """
    # Imported here: xpert_pl.data loads Lightning, and `xpert bench --help` imports this module.
    from xpert_pl.data.corpus import default_domains, load_domain_texts

    specs = default_domains(data_root)

    def generate() -> Iterator[str]:
        for spec in specs:
            # Streaming reads the jsonl lazily and writes no Arrow cache: the cap stops it early.
            ds = load_domain_texts(spec, "train", data_root=data_root, val_fraction=val_fraction, streaming=True)
            used = 0
            for row in ds:
                text = row["text"][: max_chars_per_domain - used]
                used += len(text)
                yield text
                if used >= max_chars_per_domain:
                    break

    return generate(), [s.name for s in specs]


def train_tokenizer(
    out_dir: str | Path,
    data_root: str | None = None,
    vocab_size: int = 4096,
    max_chars_per_domain: int = 2_000_000,
    overwrite: bool = False,
) -> Path:
    """Train a byte-level BPE tokenizer on the corpus train split and save it to `out_dir` (`xpert tokenizer`).

    An `out_dir` holding a tokenizer this step wrote with the same settings is reused as it is.

    Args:
        out_dir: directory of the tokenizer, written atomically; an existing folder the kit did not write (no
            `xpert_tokenizer.json`) is never replaced.
        data_root: data root (default: $XPERT_DATA_ROOT, else ../shared/data); every domain under corpus/ is used.
        vocab_size: vocabulary size, the 256 byte tokens and 2 special tokens included.
        max_chars_per_domain: characters read from each domain's train split.
        overwrite: replace a kit tokenizer at `out_dir` trained with other settings.

    Returns:
        `out_dir`.
    """
    out = Path(out_dir)
    raise_if_problems(_training_problems(vocab_size, max_chars_per_domain))
    settings = {"vocab_size": vocab_size, "max_chars_per_domain": max_chars_per_domain}
    texts, domains = corpus_training_texts(data_root, max_chars_per_domain)
    if _reusable(out, {**settings, "domains": domains}, overwrite):
        log.info("tokenizer at %s was trained with these settings: reused", out)
        return out
    log.info("training a byte-level BPE tokenizer (vocab %d) at %s on the corpus train split", vocab_size, out)
    start = time.perf_counter()
    tok = train_bpe_tokenizer(texts, out, vocab_size=vocab_size, domains=domains, settings=settings)
    log.info("tokenizer trained in %.1fs: %d tokens, saved to %s", time.perf_counter() - start, len(tok), out)
    return out


def _training_problems(vocab_size: int, max_chars_per_domain: int) -> list[str]:
    problems = []
    if vocab_size < MIN_VOCAB:
        problems.append(f"vocab_size must be >= {MIN_VOCAB} (256 byte tokens + 2 special tokens), got {vocab_size}")
    if max_chars_per_domain < 1:
        problems.append(f"max_chars_per_domain must be >= 1, got {max_chars_per_domain}")
    return problems


def _reusable(out: Path, wanted: dict[str, Any], overwrite: bool) -> bool:
    """Whether `out` already holds the tokenizer `wanted` describes; refuses what must not be replaced."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not (out / META_FILE).is_file():
        raise ConfigError(
            [
                f"'{out}' exists but is not a tokenizer written by `xpert tokenizer` (no {META_FILE}); it is never "
                "replaced: choose another --out_dir (to use an existing tokenizer, name it instead of training one)"
            ]
        )
    meta = read_json(out / META_FILE)
    # Tokenizers written before settings were recorded are compared on what they recorded.
    recorded = {**meta.get("settings", {"vocab_size": meta.get("vocab_size")}), "domains": meta.get("domains")}
    differ = {k: (v, wanted.get(k)) for k, v in recorded.items() if v != wanted.get(k)}
    if not differ:
        return True
    if overwrite:
        log.info("replacing the tokenizer at %s (%s)", out, _describe_difference(differ))
        return False
    raise ConfigError(
        [
            f"'{out}' holds a tokenizer trained with other settings ({_describe_difference(differ)}); pass "
            "--overwrite true to replace it, or choose another --out_dir"
        ]
    )


def _describe_difference(differ: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} there, {new!r} asked" for k, (old, new) in differ.items())
