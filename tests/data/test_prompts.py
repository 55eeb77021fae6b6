"""The Alpaca template reproduces MiniLLM's prompts byte for byte; rows of every supported format become examples."""

from __future__ import annotations

import pytest

from xpert_pl.data.prompts import InstructionExample, alpaca_prompt, example_from_row, read_examples

# Real rows copied from the data root's eval/<set>/test.jsonl (MiniLLM's prompts), with and without an input.
REAL_ROWS = [
    {  # eval/dollyeval
        "instruction": "What is LAPR?",
        "input": "",
        "prompt": "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nWhat is LAPR?\n\n### Response:\n",
    },
    {  # eval/dollyeval
        "instruction": "What is Cup Game?",
        "input": "The cup game is a children's clapping game that involves tapping and hitting a cup using a defined "
        "rhythm.",
        "prompt": "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nWhat is Cup Game?\n\n"
        "### Input:\nThe cup game is a children's clapping game that involves tapping and hitting a cup using a "
        "defined rhythm.\n\n### Response:\n",
    },
    {  # eval/selfinst
        "instruction": "What sound does this make?",
        "input": "好",
        "prompt": "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nWhat sound does this "
        "make?\n\n### Input:\n好\n\n### Response:\n",
    },
    {  # eval/vicunaeval
        "instruction": "How can I improve my time management skills?",
        "input": "",
        "prompt": "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nHow can I improve my time management skills?\n\n### Response:\n",
    },
    {  # eval/sni: the input's trailing space is kept
        "instruction": "In this task, you will be shown an incorrect English sentence. You need to generate a "
        "corrected form of the input sentence.",
        "input": "So , Ho Chi Minh city will develope ",
        "prompt": "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nIn this task, you will be "
        "shown an incorrect English sentence. You need to generate a corrected form of the input sentence.\n\n"
        "### Input:\nSo , Ho Chi Minh city will develope \n\n### Response:\n",
    },
    {  # eval/unni
        "instruction": "Find the odd one out.",
        "input": "Items: ['cat', 'dog', 'bird'].",
        "prompt": "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nFind the odd one out.\n\n"
        "### Input:\nItems: ['cat', 'dog', 'bird'].\n\n### Response:\n",
    },
]


@pytest.mark.parametrize("row", REAL_ROWS, ids=lambda r: r["instruction"][:24])
def test_alpaca_prompt_reproduces_minillm_prompts(row):
    assert alpaca_prompt(row["instruction"], row["input"]) == row["prompt"]
    assert InstructionExample(row["instruction"], row["input"], "x").prompt == row["prompt"]


def test_no_input_block_for_empty_or_missing_input():
    assert alpaca_prompt("Say hi.") == alpaca_prompt("Say hi.", None) == alpaca_prompt("Say hi.", "")
    assert "### Input:" not in alpaca_prompt("Say hi.")
    # MiniLLM tests len(input) == 0, so whitespace still opens the block.
    assert alpaca_prompt("Say hi.", " ").endswith("### Input:\n \n\n### Response:\n")


def test_rows_of_each_format_become_examples():
    dolly = {"instruction": "Q?", "context": "ctx", "response": "A.", "category": None}
    minillm = {"instruction": "Q?", "input": "", "output": ["first", "second"], "prompt": "ignored"}
    alpaca = {"instruction": "Q?", "input": "in", "output": "out"}
    assert example_from_row(dolly) == InstructionExample("Q?", "ctx", "A.")
    assert example_from_row(minillm) == InstructionExample("Q?", "", "first")
    assert example_from_row(alpaca) == InstructionExample("Q?", "in", "out")
    assert example_from_row({"instruction": "Q?", "context": None, "response": "A."}).input == ""
    custom = {"instruction": "Q?", "question_context": "c", "answer": "a"}
    assert example_from_row(custom, input_key="question_context", response_key="answer") == InstructionExample(
        "Q?", "c", "a"
    )
    with pytest.raises(ValueError, match="response"):
        example_from_row({"instruction": "Q?"})


def test_read_examples_names_the_bad_row(tmp_path, write_jsonl):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"instruction": "a", "response": "b"}, {"instruction": "c"}])
    with pytest.raises(ValueError, match=r"x.jsonl: row 2"):
        read_examples(path)
    path.write_text('{"instruction": "a", "response": "b"}\n\n{broken\n')
    with pytest.raises(ValueError, match=r"x.jsonl:3: not valid JSON"):
        read_examples(path)
