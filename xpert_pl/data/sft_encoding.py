"""SFT examples as tokens: response-only labels, the length rule, length-bucketed or packed batches.

Length rule (`fit_example`), for prompt tokens P and response tokens R (EOS appended, part of the loss):
1. R alone needs at least one prompt token before it: when len(R) >= max_length the example is dropped and
   counted (`dropped_long_response`); a response is never cut.
2. The prompt may use `min(max_prompt_length, max_length - len(R))` tokens. A longer prompt is dropped when
   `long_prompt="drop"` (MiniLLM drops prompts over 256 tokens) and otherwise cut in the middle, keeping its first
   and last halves of the budget: the head holds the template preamble and the start of the instruction, the tail
   the end of the input and the `### Response:` marker the answer must follow (`truncated_prompt`).
Labels are the token ids on response tokens and -100 on prompt and padding tokens (`IGNORE_INDEX`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import torch

from xpert_pl.data.prompts import InstructionExample

IGNORE_INDEX = -100
LongPrompt = Literal["truncate", "drop"]
# Outcomes of `fit_example`; the per-split statistics count them, plus `examples` and `kept` (intact + truncated).
OUTCOMES = ("intact", "truncated_prompt", "dropped_long_prompt", "dropped_long_response")


def truncate_middle(ids: Sequence[int], budget: int) -> list[int]:
    """Keep the first `budget - budget // 2` and the last `budget // 2` tokens of `ids` (all when it fits)."""
    if len(ids) <= budget:
        return list(ids)
    tail = budget // 2
    return [*ids[: budget - tail], *ids[len(ids) - tail :]] if tail else list(ids[:budget])


def fit_example(
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    max_length: int,
    max_prompt_length: int | None = None,
    long_prompt: LongPrompt = "truncate",
) -> tuple[tuple[list[int], list[int]] | None, str]:
    """Apply the length rule of this module to one example.

    Args:
        prompt_ids: prompt tokens.
        response_ids: response tokens, EOS included.
        max_length: most tokens of prompt + response.
        max_prompt_length: most prompt tokens (None: only `max_length` limits the prompt).
        long_prompt: "truncate" (middle cut) or "drop" a prompt over its budget.

    Returns:
        `(input_ids, labels)` or None when dropped, and the outcome (one of `OUTCOMES`).
    """
    if len(response_ids) >= max_length:
        return None, "dropped_long_response"
    budget = max_length - len(response_ids)
    if max_prompt_length is not None:
        budget = min(budget, max_prompt_length)
    outcome = "intact"
    if len(prompt_ids) > budget:
        if long_prompt == "drop":
            return None, "dropped_long_prompt"
        prompt_ids, outcome = truncate_middle(prompt_ids, budget), "truncated_prompt"
    input_ids = [*prompt_ids, *response_ids]
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    return (input_ids, labels), outcome


def encode_examples(
    examples: Sequence[InstructionExample],
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int | None = None,
    long_prompt: LongPrompt = "truncate",
) -> tuple[list[tuple[list[int], list[int]]], dict[str, int]]:
    """Tokenise examples (prompt and response separately, no special tokens, EOS after the response) and fit them.

    Prompt and response are tokenised apart so the label boundary is exact whatever the tokenizer merges; with
    a byte-level BPE the ids still decode to exactly `prompt + response + EOS`.

    Returns:
        The kept `(input_ids, labels)` pairs, in order, and the counts `{"examples", "kept", <outcome>, ...}`.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; SFT appends EOS to every response")
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"] if examples else []
    responses = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"] if examples else []
    kept, counts = [], Counter({o: 0 for o in OUTCOMES})
    for prompt_ids, response_ids in zip(prompts, responses, strict=True):
        pair, outcome = fit_example(prompt_ids, [*response_ids, eos], max_length, max_prompt_length, long_prompt)
        counts[outcome] += 1
        if pair is not None:
            kept.append(pair)
    return kept, {"examples": len(examples), "kept": len(kept), **counts}


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, window: int, generator: torch.Generator | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length.

    With a generator the indices are shuffled first, then taken `window * batch_size` at a time and sorted by
    length (longest first) inside each window, so batches waste little padding while their content stays random
    (window 1: plain random batches). Without a generator all indices are sorted by length (evaluation).
    """
    if generator is None:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = max(1, window) * batch_size
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return batches


def pack_examples(lengths: Sequence[int], block_size: int, generator: torch.Generator) -> list[list[int]]:
    """Greedy packing: examples in a seeded random order fill blocks of `block_size` tokens, in that order.

    Returns:
        The example indices of each block (every example fits alone: `fit_example` guarantees it).
    """
    blocks: list[list[int]] = []
    used = block_size
    for i in torch.randperm(len(lengths), generator=generator).tolist():
        if used + lengths[i] > block_size:
            blocks.append([])
            used = 0
        blocks[-1].append(i)
        used += lengths[i]
    return blocks


def collate_rows(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, pad_to: int | None = None) -> dict:
    """Right-padded `input_ids`, `attention_mask` (0 on padding) and `labels` (-100 on padding)."""
    width = max(pad_to or 0, max(len(ids) for ids, _ in rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, labs) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[r, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        attention_mask[r, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def concat_rows(rows: Sequence[tuple[list[int], list[int]]]) -> tuple[list[int], list[int]]:
    """One packed row: the examples' tokens and labels end to end (each example keeps its own label mask)."""
    return [t for ids, _ in rows for t in ids], [t for _, labs in rows for t in labs]
