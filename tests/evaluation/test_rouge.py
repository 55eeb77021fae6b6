"""Rouge-L as MiniLLM scores it, batched generation with left padding, and `evaluate_rouge` on plain HF models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM

from xpert_pl.data.prompts import alpaca_prompt
from xpert_pl.evaluation import RougeResult, evaluate_rouge
from xpert_pl.evaluation.rouge import generate_responses, load_dialogue_set, rouge_l, rouge_l_scores
from xpert_pl.models import DenseStudent
from xpert_pl.tokenizer import load_tokenizer

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}


def test_rouge_l_of_a_known_pair():
    # LCS of "the cat sat on the mat" and "the cat is on the mat" is 5 of 6 tokens: P = R = F = 5/6.
    assert rouge_l(["the cat sat on the mat"], [["the cat is on the mat"]]) == pytest.approx(100 * 5 / 6)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = scorer.score("the cat is on the mat", "the cat sat on the mat")["rougeL"].fmeasure
    assert rouge_l_scores(["the cat sat on the mat"], [["the cat is on the mat"]]) == [expected]
    # Stemmed and lower-cased, punctuation dropped: "Dogs running!" matches "dog run".
    assert rouge_l(["Dogs running!"], [["dog run"]]) == pytest.approx(100.0)


def test_rouge_l_takes_the_best_reference_and_averages_examples():
    predictions = ["the cat sat on the mat", "hello there"]
    references = [["a dog", "the cat is on the mat"], ["goodbye"]]
    assert rouge_l_scores(predictions, references) == pytest.approx([5 / 6, 0.0])
    assert rouge_l(predictions, references) == pytest.approx(100 * (5 / 6) / 2)
    assert rouge_l([""], [["anything"]]) == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1"):
        rouge_l(predictions, references[:1])
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_l(["x"], [[]])


def _write_set(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_load_dialogue_set_reads_prompts_and_reference_lists(tmp_path):
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "hi", "prompt": "custom prompt\n"},
        {"instruction": "Fix it.", "input": "teh", "output": ["the", "The"]},
        {"instruction": "Third.", "input": "", "output": "3"},
    ]
    _write_set(tmp_path / "x.jsonl", rows)
    first, second = load_dialogue_set(tmp_path / "x.jsonl", limit=2)
    assert first.prompt == "custom prompt\n" and first.references == ("hi",)
    assert second.prompt == alpaca_prompt("Fix it.", "teh") and second.references == ("the", "The")


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture
def tiny_llama(tokenizer):
    """A random tiny `LlamaForCausalLM` (a kit student), in eval mode."""
    torch.manual_seed(0)
    return DenseStudent("llama-tiny", SMALL).build(vocab_size=len(tokenizer)).eval()


def test_left_padded_batches_generate_what_single_prompts_do(tiny_llama, tokenizer):
    prompts = ["law document 3: the court shall", "news"]
    kwargs = {"max_new_tokens": 6, "greedy": True, "no_repeat_ngram_size": 0}
    batched, truncated = generate_responses(tiny_llama, tokenizer, prompts, batch_size=2, **kwargs)
    alone = [generate_responses(tiny_llama, tokenizer, [p], batch_size=1, **kwargs)[0][0] for p in prompts]
    assert batched == alone and truncated == 0
    assert all(isinstance(text, str) and text == text.strip() for text in batched)


def test_long_prompts_are_truncated_and_counted(tiny_llama, tokenizer, monkeypatch):
    seen = []
    original = tiny_llama.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"][kwargs["attention_mask"].bool()].tolist())
        return original(**kwargs)

    monkeypatch.setattr(tiny_llama, "generate", spy)
    prompt = "court " * 30
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    _, truncated = generate_responses(tiny_llama, tokenizer, [prompt, "x"], max_new_tokens=1, max_prompt_length=8)
    assert truncated == 1 and seen[0][:8] == ids[:8]  # MiniLLM keeps the start
    generate_responses(tiny_llama, tokenizer, [prompt], 1, 8, prompt_truncation="middle")
    assert seen[1] == ids[:4] + ids[-4:]


# ---- evaluate_rouge on an exported model ---------------------------------------------------------------------------

ANSWERS = {  # instruction, input -> the response the tiny Llama is taught, so its answers score above 0
    ("Cite the court.", ""): "the court shall hear the appeal",
    ("Report.", "election"): "the minister said the election",
}
LAW, NEWS = "the court shall hear the appeal of the plaintiff", "the minister said the election was won"


@pytest.fixture(scope="module")
def exported_dir(tokenizer, tmp_path_factory) -> Path:
    """A tiny Llama taught (60 AdamW steps) to answer `ANSWERS`, written with `save_pretrained`."""
    torch.manual_seed(0)
    model = DenseStudent("llama-tiny", SMALL).build(vocab_size=len(tokenizer))
    eos = tokenizer.eos_token_id
    rows = [
        tokenizer(alpaca_prompt(*key) + answer, add_special_tokens=False)["input_ids"] + [eos]
        for key, answer in ANSWERS.items()
    ]
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [eos] * (width - len(row)) for row in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 0.6 s instead of 8 s on a shared 2-core machine
    try:
        for _ in range(60):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("rouge") / "hf"
    model.save_pretrained(out)
    return out


@pytest.fixture
def exported_llama(exported_dir):
    """The tiny Llama as a user has it: a plain `AutoModelForCausalLM.from_pretrained`."""
    return AutoModelForCausalLM.from_pretrained(exported_dir)


def _dialogue_file(tmp_path: Path) -> Path:
    (first, first_input), (second, second_input) = ANSWERS
    rows = [
        {"instruction": first, "input": first_input, "output": LAW},
        {"instruction": second, "input": second_input, "output": [LAW, NEWS]},
        {"instruction": "Not read (limit=2).", "input": "", "output": "x"},
    ]
    _write_set(tmp_path / "mine.jsonl", rows)
    return tmp_path / "mine.jsonl"


def test_evaluate_rouge_scores_a_plain_transformers_model(exported_llama, tokenizer, tmp_path):
    assert type(exported_llama).__name__ == "LlamaForCausalLM"
    exported_llama.train()
    rng = torch.random.get_rng_state()
    result = evaluate_rouge(
        exported_llama,
        tokenizer,
        sets=[],
        files={"mine": _dialogue_file(tmp_path)},
        limit=2,
        greedy=True,
        max_new_tokens=12,
        out_dir=tmp_path / "out",
    )
    assert exported_llama.training  # its mode is restored
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert isinstance(result, RougeResult) and list(result.sets) == ["mine"]
    mine = result.sets["mine"]
    generations = mine.generations["greedy"]
    assert len(generations) == 2 and mine.n == 2 and mine.truncated == 0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    by_hand = [
        scorer.score(LAW, generations[0])["rougeL"].fmeasure,
        max(scorer.score(ref, generations[1])["rougeL"].fmeasure for ref in (LAW, NEWS)),
    ]
    assert sum(by_hand) > 0  # the comparison below is not between two zeros
    assert mine.runs == {"greedy": pytest.approx(100 * sum(by_hand) / 2)}
    assert mine.mean == pytest.approx(100 * sum(by_hand) / 2) and mine.std == 0.0
    assert result.metrics == {"rougeL/mine": mine.mean, "rougeL/mine_std": 0.0}
    rows = [json.loads(line) for line in (tmp_path / "out" / "mine_greedy.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == generations
    assert [r["rougeL"] for r in rows] == pytest.approx([100 * s for s in by_hand])
    assert json.loads((tmp_path / "out" / "rougeL.json").read_text()) == result.summary()


def test_evaluate_rouge_samples_reproducibly_with_each_seed(exported_llama, tokenizer, tmp_path):
    kwargs = {"sets": [], "files": {"mine": _dialogue_file(tmp_path)}, "seeds": [3, 4], "max_new_tokens": 6}
    first, second = (evaluate_rouge(exported_llama, tokenizer, **kwargs) for _ in range(2))
    assert first == second and list(first.sets["mine"].runs) == ["seed3", "seed4"]
    assert first.sets["mine"].generations == second.sets["mine"].generations
    assert first.settings["seeds"] == [3, 4]
    assert not exported_llama.training  # eval mode stays eval mode


def test_evaluate_rouge_refuses_empty_sets_and_no_seeds(exported_llama, tokenizer, tmp_path):
    files = {"mine": _dialogue_file(tmp_path)}
    with pytest.raises(ValueError, match="'mine' has no examples"):
        evaluate_rouge(exported_llama, tokenizer, sets=[], files=files, limit=0, greedy=True)
    with pytest.raises(ValueError, match="seeds is empty"):
        evaluate_rouge(exported_llama, tokenizer, sets=[], files=files, seeds=[])
    with pytest.raises(FileNotFoundError, match=r"Rouge-L sets not found: nope: .*missing\.jsonl"):
        evaluate_rouge(exported_llama, tokenizer, sets=[], files={"nope": tmp_path / "missing.jsonl"})


def test_evaluation_package_imports_without_lightning():
    code = "import sys, xpert_pl.evaluation.rouge; assert 'lightning' not in sys.modules, 'lightning imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
