"""Byte-level BPE tokenizer: training on the corpus, atomic saving, and loading any Hugging Face tokenizer."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from xpert_pl.artifacts import atomic_directory, write_json

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Blocks are packed by the data module, so the tokenizer itself never truncates.
_MODEL_MAX_LENGTH = 1 << 60
META_FILE = "xpert_tokenizer.json"


class _CharCounter:
    """Wraps a text iterable, counting characters as the trainer consumes them."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = texts
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.chars += len(text)
            yield text


def _build_bpe(vocab_size: int, min_frequency: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False and no normalizer: decode(encode(text)) must give text back byte for byte.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def train_bpe_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    domains: list[str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and save it (atomically) as a Hugging Face tokenizer directory.

    Args:
        texts: training texts.
        out_dir: directory to write; replaced as a whole once training succeeded.
        vocab_size: target vocabulary size, special tokens included.
        min_frequency: minimum pair frequency for a merge.
        domains: names of the corpus domains the texts came from, recorded in `xpert_tokenizer.json`.

    Returns:
        The trained tokenizer.
    """
    tok, trainer = _build_bpe(vocab_size, min_frequency)
    counter = _CharCounter(texts)
    tok.train_from_iterator(counter, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=_MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    meta = {"vocab_size": len(hf_tok), "training_chars": counter.chars, "domains": list(domains or [])}
    with atomic_directory(out_dir, "tokenizer") as tmp:
        hf_tok.save_pretrained(str(tmp))
        write_json(tmp / META_FILE, meta)
    return hf_tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a Hugging Face tokenizer directory; a tokenizer without a pad token gets pad = eos.

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"tokenizer not found at '{path}'. Train one with xpert_pl.tokenizer.ensure_tokenizer('{path}') "
            "(the pre-training data module does this automatically) or point `tokenizer` at a Hugging Face "
            "tokenizer directory."
        )
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def corpus_training_texts(
    data_root: str | None = None, max_chars_per_domain: int = 2_000_000, val_fraction: float = 0.05
) -> tuple[Iterator[str], list[str]]:
    """Texts of the train split of every corpus domain, each domain capped at `max_chars_per_domain` characters.

    Returns:
        A lazy iterator of texts and the list of domain names.
    """
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


def ensure_tokenizer(
    path: str | Path,
    data_root: str | None = None,
    vocab_size: int = 8192,
    max_chars_per_domain: int = 2_000_000,
) -> PreTrainedTokenizerFast:
    """Load the tokenizer at `path`, training it first on the corpus (train split only) when it does not exist."""
    if Path(path).exists():
        return load_tokenizer(path)
    log.info("training a byte-level BPE tokenizer (vocab %d) at %s on the corpus train split", vocab_size, path)
    start = time.perf_counter()
    texts, domains = corpus_training_texts(data_root, max_chars_per_domain)
    tok = train_bpe_tokenizer(texts, path, vocab_size=vocab_size, domains=domains)
    log.info("tokenizer trained in %.1fs: %d tokens, saved to %s", time.perf_counter() - start, len(tok), path)
    return load_tokenizer(path)
