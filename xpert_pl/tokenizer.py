"""Tokenizers: loaded as named (a local directory or a Hub id), trained only when asked (`xpert tokenizer`, whose
corpus side is `xpert_pl.tokenizer_training`), and checked against the model they are used with."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from xpert_pl.artifacts import atomic_directory, write_json
from xpert_pl.errors import ConfigError, raise_if_problems

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Blocks are packed by the data module, so the tokenizer itself never truncates.
_MODEL_MAX_LENGTH = 1 << 60
META_FILE = "xpert_tokenizer.json"
# `owner/name` as the Hub spells repo ids; a leading `.`, `/` or `~` always means a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# Files of which any one means a model directory ships its own tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
MIN_VOCAB = 258  # the 256 byte tokens and the two special tokens


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
    settings: dict[str, Any] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and save it (atomically) as a Hugging Face tokenizer directory.

    Args:
        texts: training texts.
        out_dir: directory to write; replaced as a whole once training succeeded.
        vocab_size: target vocabulary size, special tokens included.
        min_frequency: minimum pair frequency for a merge.
        domains: names of the corpus domains the texts came from, recorded in `xpert_tokenizer.json`.
        settings: what `train_tokenizer` was asked for, recorded there too (so a rerun can tell whether it matches).

    Returns:
        The trained tokenizer.
    """
    from transformers import PreTrainedTokenizerFast

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
    if settings is not None:
        meta["settings"] = settings
    with atomic_directory(out_dir, "tokenizer") as tmp:
        hf_tok.save_pretrained(str(tmp))
        write_json(tmp / META_FILE, meta)
    return hf_tok


def is_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a Hugging Face Hub repo id (`owner/name`, no leading `.`, `/` or `~`)."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def is_local_dir_or_hub_id(name: str) -> bool:
    """Whether `name` can name a directory to load: an existing local directory, or (no such path) a Hub id."""
    path = Path(name).expanduser()
    return path.is_dir() or (not path.exists() and is_hub_id(name))


class TokenizerNotFoundError(FileNotFoundError):
    """A tokenizer name is neither a local tokenizer directory nor a cached or reachable Hub tokenizer."""


def _not_found(name: str, reason: str) -> TokenizerNotFoundError:
    fixes = (
        f"if it is a local path, correct it, or train a tokenizer on the corpus there with "
        f"`xpert tokenizer --out_dir {name}`"
    )
    if is_hub_id(name):
        fixes += (
            f"; if it is a Hub id, download it while online (e.g. `hf download {name}`), which puts it in the "
            "Hugging Face cache ($HF_HOME) that offline runs read"
        )
    return TokenizerNotFoundError(
        f"tokenizer '{name}' is neither a local tokenizer directory nor a cached or reachable Hugging Face Hub "
        f"tokenizer ({reason}). Fix: {fixes}. Nothing was written at '{name}'."
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer as named: a local directory, else a Hub id (`owner/name`; from the HF cache when offline).

    A tokenizer without a pad token gets pad = eos. Nothing is ever trained or written at `name_or_path`.

    Raises:
        TokenizerNotFoundError: neither a local tokenizer directory nor a cached or reachable Hub tokenizer.
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    path = Path(name).expanduser()
    if not is_local_dir_or_hub_id(name):
        missing = "no such directory, and not a Hub id of the form `owner/name`"
        raise _not_found(name, "it is a file, not a directory" if path.exists() else missing)
    if not path.exists() and path.parent.is_dir():
        # `runs/tokenizer` with a local `runs/` folder is a missing local directory, not a Hub repository: say so at
        # once instead of asking the Hub (which, offline, retries for half a minute).
        raise _not_found(name, f"no such directory in the local folder '{path.parent}'")
    try:
        # A Hub id is read from the local cache first, and downloaded only when it is not there.
        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else name, trust_remote_code=False)
    except (OSError, ValueError) as err:
        if path.exists():
            raise _not_found(name, f"the directory holds no loadable tokenizer: {_first_line(err)}") from err
        raise _not_found(name, f"not cached, and not downloadable from the Hub: {_first_line(err)}") from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_tokenizer_matches(
    tokenizer: PreTrainedTokenizerBase, model: str | Path, exact: bool = False, trust_remote_code: bool = False
) -> None:
    """Refuse a tokenizer that does not fit `model`, reading only its config and tokenizer files (before loading it).

    When the model ships its own tokenizer, the two vocabularies (token -> id) must be equal. The tokenizer may not
    have more tokens than the model's `vocab_size`; fewer (a padded embedding: OLMoE has 50,280 tokens and
    vocab_size 50,304) is logged as a warning, or refused with `exact` (weights copied into a model built for the
    tokenizer).

    Args:
        tokenizer: the tokenizer the run uses.
        model: a local Hugging Face model directory or a Hub id.
        exact: require len(tokenizer) == vocab_size.
        trust_remote_code: allow the model's own config code to run.

    Raises:
        ConfigError: the vocabularies differ, or the model's config cannot be read.
    """
    vocab_size, own = _model_vocab_size(model, trust_remote_code), _shipped_tokenizer(model)
    size, problems = len(tokenizer), []
    if own is not None and own.get_vocab() != tokenizer.get_vocab():
        problems.append(
            f"the tokenizer's vocabulary differs from the one {model} ships ({size} vs {len(own)} tokens; "
            f"{_vocab_difference(tokenizer.get_vocab(), own.get_vocab())}): use the model's own tokenizer "
            f"(e.g. --data.tokenizer={model})"
        )
    if size > vocab_size or (exact and size != vocab_size):
        problems.append(
            f"tokenizer has {size} tokens but {model} has vocab_size {vocab_size}; use the tokenizer the model was "
            "trained with"
        )
    raise_if_problems(problems)
    if size < vocab_size and own is None:
        log.warning(
            "tokenizer has %d tokens, fewer than the vocab_size %d of %s (a padded embedding?)", size, vocab_size, model
        )


def _model_vocab_size(model: str | Path, trust_remote_code: bool) -> int:
    """`vocab_size` of a model's config (of its text model for a composite config), read without the weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(
            [
                f"cannot read the config of model '{model}' (give a local model directory, or a Hub id that is "
                f"cached or reachable): {_first_line(err)}"
            ]
        ) from err
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.vocab_size)


def _shipped_tokenizer(model: str | Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer a model directory (or Hub repo) ships, if any."""
    from transformers import AutoTokenizer

    path = Path(model)
    if path.is_dir() and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(model), trust_remote_code=False)
    except (OSError, ValueError):
        return None


def _vocab_difference(given: dict[str, int], own: dict[str, int]) -> str:
    """One example of the difference, e.g. "'ab' is id 7 here, 9 there"."""
    for token, index in given.items():
        if own.get(token) != index:
            there = "absent there" if token not in own else f"{own[token]} there"
            return f"{token!r} is id {index} here, {there}"
    token = next(t for t in own if t not in given)
    return f"{token!r} (id {own[token]} there) is absent here"
