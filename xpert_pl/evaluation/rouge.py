"""Rouge-L on the dialogue sets of MiniLLM (DollyEval, SelfInst, VicunaEval, S-NI, UnNI), as MiniLLM scores it.

MiniLLM (`minillm/evaluate_main.py`, `rouge_metric.py`, `scripts/*/eval/*.sh`): responses are sampled with
`do_sample=True, top_p=1.0, top_k=0, temperature=1.0, no_repeat_ngram_size=6`, prompts of at most 256 tokens
(longer ones keep their first 256) and at most 512 tokens in all (256 new ones); the response is decoded without
special tokens and stripped; per example the score is the best `RougeScorer(["rougeL"], use_stemmer=True)` F1
over its references, the set score is 100 x the mean; each set is run with seeds 10, 20, 30, 40, 50 and the
seeds averaged. Differences: prompts are tokenised by the student's tokenizer (MiniLLM used GPT-2's), and the
score is kept unrounded (MiniLLM prints 4 decimals).

`evaluate_rouge` runs the protocol on any Hugging Face causal LM; `xpert_pl.callbacks.RougeLCallback` runs it
during training. Lightning is not imported here; torch and rouge-score only when a function needs them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xpert_pl.evaluation.lm_tasks import Split

log = logging.getLogger(__name__)

# The paper's five dialogue sets: folders under eval/ (and eval_final/) of the data root, each with test.jsonl.
DIALOGUE_SETS = ("dollyeval", "selfinst", "vicunaeval", "sni", "unni")
MINILLM_SEEDS = (10, 20, 30, 40, 50)
MINILLM_MAX_NEW_TOKENS = 256  # 512 tokens in all - 256 of prompt
MINILLM_MAX_PROMPT_LENGTH = 256
MINILLM_NO_REPEAT_NGRAM_SIZE = 6
MINILLM_SAMPLING: Mapping[str, Any] = {"do_sample": True, "top_p": 1.0, "top_k": 0, "temperature": 1.0}

PromptTruncation = Literal["start", "middle"]


@functools.cache
def _rouge_l_scorer() -> Any:
    # Built once: construction is not free and logs a line each time.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per example, the best Rouge-L F1 (0-1) of the prediction over its references (rouge-score, stemmed).

    Raises:
        ValueError: the lists differ in length or an example has no reference.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("every example needs at least one reference")
    scorer = _rouge_l_scorer()
    pairs = zip(predictions, references, strict=True)
    return [max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs) for pred, refs in pairs]


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """MiniLLM's set score: 100 x the mean over examples of the best Rouge-L F1 over each example's references."""
    scores = rouge_l_scores(predictions, references)
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


# ---- dialogue sets -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DialogueExample:
    """A prompt (MiniLLM's, or built with the Alpaca template) and its reference responses."""

    prompt: str
    references: tuple[str, ...]


def load_dialogue_set(path: str | Path, limit: int | None = None) -> list[DialogueExample]:
    """Rows `{prompt?, instruction, input, output: str | list[str]}` of a MiniLLM-format jsonl (first `limit`)."""
    from xpert_pl.data.prompts import alpaca_prompt, read_jsonl

    examples = []
    for row in read_jsonl(path)[:limit]:
        prompt = row.get("prompt") or alpaca_prompt(row["instruction"], row.get("input", ""))
        output = row["output"]
        examples.append(DialogueExample(prompt, tuple(output) if isinstance(output, list) else (output,)))
    return examples


def dialogue_set_files(
    sets: Sequence[str] | None = None,
    split: Split = "eval",
    files: Mapping[str, str | Path] | None = None,
    data_root: str | Path | None = None,
) -> dict[str, Path]:
    """Set name -> jsonl: `<data_root>/<split>/<set>/test.jsonl` for each of `sets` (default the five), then `files`.

    Raises:
        FileNotFoundError: naming every set whose file is missing.
    """
    from xpert_pl.paths import data_root as resolve_data_root

    names = list(sets) if sets is not None else list(DIALOGUE_SETS)
    # The data root is resolved only when a set lives under it: `files` alone need none.
    root = resolve_data_root(data_root) if names else None
    paths = {name: root / split / name / "test.jsonl" for name in names}
    paths.update({name: Path(path) for name, path in (files or {}).items()})
    missing = [f"{name}: {path}" for name, path in paths.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"Rouge-L sets not found: {'; '.join(missing)}")
    return paths


# ---- generation ----------------------------------------------------------------------------------------------------


def _prompt_ids(tokenizer: Any, prompts: Sequence[str], limit: int, how: PromptTruncation) -> tuple[list, int]:
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    truncated = sum(len(x) > limit for x in ids)
    if how == "start":  # MiniLLM: `prompt_ids[:max_prompt_length]`
        return [x[:limit] for x in ids], truncated
    from xpert_pl.data.sft_encoding import truncate_middle

    return [truncate_middle(x, limit) for x in ids], truncated


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = MINILLM_MAX_NEW_TOKENS,
    max_prompt_length: int = MINILLM_MAX_PROMPT_LENGTH,
    batch_size: int = 16,
    greedy: bool = False,
    no_repeat_ngram_size: int = MINILLM_NO_REPEAT_NGRAM_SIZE,
    prompt_truncation: PromptTruncation = "start",
) -> tuple[list[str], int]:
    """Responses of `model` to `prompts`, batched with left padding, decoded without special tokens and stripped.

    Sampling uses the global torch RNG: seed it (in a `torch.random.fork_rng`) for a reproducible run.

    Returns:
        The responses, in order, and how many prompts were longer than `max_prompt_length` (and truncated).
    """
    import torch

    ids, truncated = _prompt_ids(tokenizer, prompts, max_prompt_length, prompt_truncation)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": False} if greedy else dict(MINILLM_SAMPLING)
    responses = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        width = max(len(x) for x in chunk)
        input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in chunk], device=model.device)
        attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=model.device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram_size,
            # The model's own config may name other ids (a fresh Llama config says eos=2): use the tokenizer's.
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_id,
            **sampling,
        )
        decoded = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        responses += [text.strip() for text in decoded]
    return responses, truncated


# ---- results -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RougeSetScore:
    """One set's Rouge-L (0-100): mean and sample standard deviation over runs (0 for one run), per run score.

    `runs` and `generations` are keyed `seed<k>`, or `greedy` for a greedy run.
    """

    mean: float
    std: float
    runs: dict[str, float]
    n: int
    truncated: int
    generations: dict[str, list[str]] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary entry (generations are in the per-run jsonl files, not here)."""
        return {"mean": self.mean, "std": self.std, "runs": dict(self.runs), "n": self.n, "truncated": self.truncated}


@dataclass(frozen=True)
class RougeResult:
    """Rouge-L of every set, the settings that produced it, and the training step it was taken at (if any)."""

    sets: dict[str, RougeSetScore]
    settings: dict[str, Any]
    step: int | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """`rougeL/<set>` (mean over runs) and `rougeL/<set>_std`, as RougeLCallback logs them."""
        metrics = {}
        for name, score in self.sets.items():
            metrics[f"rougeL/{name}"], metrics[f"rougeL/{name}_std"] = score.mean, score.std
        return metrics

    def summary(self) -> dict[str, Any]:
        """What `rougeL[_step<n>].json` holds: the step (when there is one), the settings and every set's scores."""
        head = {} if self.step is None else {"step": self.step}
        return {**head, "settings": dict(self.settings), "sets": {k: s.to_dict() for k, s in self.sets.items()}}


# ---- evaluation ----------------------------------------------------------------------------------------------------


def evaluate_rouge(
    model: Any,
    tokenizer: Any,
    sets: Sequence[str] | None = None,
    split: Split = "eval",
    files: Mapping[str, str | Path] | None = None,
    data_root: str | Path | None = None,
    limit: int | None = None,
    seeds: Sequence[int] | None = None,
    greedy: bool = False,
    max_new_tokens: int = MINILLM_MAX_NEW_TOKENS,
    max_prompt_length: int = MINILLM_MAX_PROMPT_LENGTH,
    prompt_truncation: PromptTruncation = "start",
    no_repeat_ngram_size: int = MINILLM_NO_REPEAT_NGRAM_SIZE,
    batch_size: int = 16,
    out_dir: str | Path | None = None,
    step: int | None = None,
) -> RougeResult:
    """Generate answers to the dialogue sets with `model` and score Rouge-L as MiniLLM does.

    The model is evaluated in eval mode without gradients and put back in its previous mode afterwards, also on
    error; every run samples inside `torch.random.fork_rng`, so the caller's RNG stream is left untouched.

    Args:
        model: any Hugging Face causal LM (`AutoModelForCausalLM`, a kit student), on the device to run on.
        tokenizer: its tokenizer; its EOS ends a response and pads the left of a batch (unless it has a pad).
        sets: folders under `<data_root>/<split>/` holding `test.jsonl` (default the five dialogue sets).
        split: "eval" while developing; "eval_final" only for a report's final numbers.
        files: more sets, name -> jsonl path (MiniLLM rows, or instruction/input/output rows).
        data_root: the data root (None: $XPERT_DATA_ROOT, else ../shared/data); not needed when `sets=[]`.
        limit: score only the first N examples of each set (None: all).
        seeds: sampling seeds, one run each (default MiniLLM's 10, 20, 30, 40, 50).
        greedy: greedy decoding instead of sampling (one run; seeds unused).
        max_new_tokens: most generated tokens.
        max_prompt_length: most prompt tokens.
        prompt_truncation: a longer prompt keeps its "start" (MiniLLM) or its head and tail ("middle").
        no_repeat_ngram_size: MiniLLM's test-time n-gram blocking (0: off).
        batch_size: prompts per `generate` call.
        out_dir: when given, `<set>_<run>[_step<n>].jsonl` (prompt, references, generation, rougeL per row) and
            `rougeL[_step<n>].json` (`RougeResult.summary()`) are written there.
        step: the training step, recorded and added to the file names.

    Raises:
        FileNotFoundError: a set's file is missing (all such sets are named).
        ValueError: a set has no examples (after `limit`), or sampling is asked for without seeds.
    """
    seeds = list(seeds) if seeds is not None else list(MINILLM_SEEDS)
    if not greedy and not seeds:
        raise ValueError("seeds is empty: give at least one sampling seed, or greedy=True")
    paths = dialogue_set_files(sets, split, files, data_root)
    generation = {
        "max_new_tokens": max_new_tokens,
        "max_prompt_length": max_prompt_length,
        "prompt_truncation": prompt_truncation,
        "no_repeat_ngram_size": no_repeat_ngram_size,
    }
    settings = {"split": split, "limit": limit, "seeds": seeds, "greedy": greedy, **generation}
    writer = _GenerationWriter(Path(out_dir), step) if out_dir is not None else None
    runs: list[int | None] = [None] if greedy else list(seeds)
    generate = {**generation, "greedy": greedy, "batch_size": batch_size}
    scores = {}
    with _eval_mode(model):
        for name, path in paths.items():
            examples = load_dialogue_set(path, limit)
            if not examples:
                raise ValueError(f"Rouge-L set '{name}' has no examples (limit={limit}): {path}")
            scores[name] = _score_set(model, tokenizer, name, examples, runs, generate, writer)
    result = RougeResult(scores, settings, step)
    if writer is not None:
        writer.summary(result)
    where = "" if step is None else f" at step {step}"
    log.info("Rouge-L%s: %s", where, {k: round(v, 2) for k, v in result.metrics.items()})
    return result


def _score_set(
    model: Any,
    tokenizer: Any,
    name: str,
    examples: Sequence[DialogueExample],
    runs: Sequence[int | None],
    generate: Mapping[str, Any],
    writer: _GenerationWriter | None,
) -> RougeSetScore:
    """One run per seed (`None`: greedy) over `examples`, each written as soon as it is scored."""
    import torch

    prompts, references = [e.prompt for e in examples], [e.references for e in examples]
    by_run, generations, truncated = {}, {}, 0
    for seed in runs:
        tag = "greedy" if seed is None else f"seed{seed}"
        # A run of its own RNG stream: the caller's (training's) is left untouched.
        with torch.random.fork_rng(devices=_cuda_devices(model)), torch.no_grad():
            torch.manual_seed(seed if seed is not None else 0)
            generations[tag], truncated = generate_responses(model, tokenizer, prompts, **generate)
        scores = rouge_l_scores(generations[tag], references)
        if writer is not None:
            writer.generations(f"{name}_{tag}", examples, generations[tag], scores)
        by_run[tag] = 100.0 * sum(scores) / len(scores)
    values = list(by_run.values())
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return RougeSetScore(statistics.fmean(values), std, by_run, len(examples), truncated, generations)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Eval mode inside; the model's previous train/eval mode afterwards, also on error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _cuda_devices(model: Any) -> list[int]:
    import torch

    device = getattr(model, "device", torch.device("cpu"))
    return [device.index or 0] if device.type == "cuda" else []


@dataclass(frozen=True)
class _GenerationWriter:
    """Writes under `out_dir`, every file name suffixed `_step<n>` when there is a step."""

    out_dir: Path
    step: int | None

    def _path(self, stem: str, ext: str) -> Path:
        return self.out_dir / (f"{stem}{ext}" if self.step is None else f"{stem}_step{self.step}{ext}")

    def generations(
        self, stem: str, examples: Sequence[DialogueExample], generations: Sequence[str], scores: Sequence[float]
    ) -> None:
        from xpert_pl.artifacts import atomic_path

        with atomic_path(self._path(stem, ".jsonl")) as tmp, tmp.open("w", encoding="utf-8") as fh:
            for example, generation, score in zip(examples, generations, scores, strict=True):
                row = {"prompt": example.prompt, "references": list(example.references), "generation": generation}
                fh.write(json.dumps({**row, "rougeL": 100.0 * score}, ensure_ascii=False) + "\n")

    def summary(self, result: RougeResult) -> None:
        from xpert_pl.artifacts import write_json

        write_json(self._path("rougeL", ".json"), result.summary())
