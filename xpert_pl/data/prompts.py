"""Instruction examples and the Alpaca-style prompt template exactly as MiniLLM writes it.

MiniLLM (Gu et al., ICLR 2024; `minillm/tools/process_data_dolly.py`) builds every prompt of its training data and
of its dialogue evaluation sets (DollyEval, SelfInst, VicunaEval, S-NI, UnNI) with two templates: one for rows
whose `input` is empty and one with an `### Input:` block. `alpaca_prompt` reproduces those prompts byte for byte
(the `prompt` field of every row under `eval/` and `eval_final/` of the data root), so a model fine-tuned here
sees at evaluation time exactly the prompt format it was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

# Field names accepted for the optional input and for the response, in order of preference: Dolly rows carry
# `context`/`response`, Alpaca and MiniLLM rows `input`/`output`.
INPUT_KEYS = ("input", "context")
RESPONSE_KEYS = ("response", "output")


def alpaca_prompt(instruction: str, input: str | None = "") -> str:
    """The MiniLLM/Alpaca prompt: the input block only when `input` is non-empty (MiniLLM tests `len(input) == 0`)."""
    if not input:
        return PROMPT_NO_INPUT.format(instruction=instruction)
    return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)


@dataclass(frozen=True)
class InstructionExample:
    """One instruction-tuning example: the prompt is `alpaca_prompt(instruction, input)`, the target `response`."""

    instruction: str
    input: str
    response: str

    @property
    def prompt(self) -> str:
        """The prompt the model is trained (and evaluated) on."""
        return alpaca_prompt(self.instruction, self.input)


def _first_present(row: dict[str, Any], keys: tuple[str, ...], wanted: str | None) -> Any:
    if wanted is not None:
        return row.get(wanted)
    return next((row[k] for k in keys if row.get(k) is not None), None)


def example_from_row(
    row: dict[str, Any], input_key: str | None = None, response_key: str | None = None
) -> InstructionExample:
    """An example from a Dolly (`context`, `response`), Alpaca or MiniLLM (`input`, `output`) row.

    A list-valued response (several references, as in S-NI) trains on its first element.

    Raises:
        ValueError: the row has no instruction or no response.
    """
    instruction = row.get("instruction")
    response = _first_present(row, RESPONSE_KEYS, response_key)
    if isinstance(response, list):
        response = response[0] if response else None
    if not isinstance(instruction, str) or not isinstance(response, str):
        wanted = response_key or "/".join(RESPONSE_KEYS)
        raise ValueError(f"expected an `instruction` and a response ({wanted}), got keys {sorted(row)}")
    return InstructionExample(instruction, _first_present(row, INPUT_KEYS, input_key) or "", response)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a jsonl file (blank lines skipped), with the file and line in the error for a bad line."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return rows


def read_examples(
    path: str | Path, input_key: str | None = None, response_key: str | None = None
) -> list[InstructionExample]:
    """Instruction examples of a jsonl file of instruction/input/response rows (see `example_from_row`)."""
    examples = []
    for number, row in enumerate(read_jsonl(path), start=1):
        try:
            examples.append(example_from_row(row, input_key, response_key))
        except ValueError as err:
            raise ValueError(f"{path}: row {number}: {err}") from None
    return examples
