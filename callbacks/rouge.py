"""Rouge-L on the dialogue sets of MiniLLM (DollyEval, SelfInst, VicunaEval, S-NI, UnNI), as MiniLLM scores it.

MiniLLM (`minillm/evaluate_main.py`, `rouge_metric.py`, `scripts/*/eval/*.sh`): responses are sampled with
`do_sample=True, top_p=1.0, top_k=0, temperature=1.0, no_repeat_ngram_size=6`, prompts of at most 256 tokens
(longer ones keep their first 256) and at most 512 tokens in all (256 new ones); the response is decoded without
special tokens and stripped; per example the score is the best `RougeScorer(["rougeL"], use_stemmer=True)` F1
over its references, the set score is 100 x the mean; each set is run with seeds 10, 20, 30, 40, 50 and the
seeds averaged. Differences: prompts are tokenised by the student's tokenizer (MiniLLM used GPT-2's), and the
score is logged unrounded (MiniLLM prints 4 decimals).
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from xpert_pl.artifacts import atomic_path, write_json
from xpert_pl.callbacks.scheduled import ScheduledEvaluation
from xpert_pl.data.prompts import alpaca_prompt, read_jsonl
from xpert_pl.data.sft_encoding import truncate_middle

log = logging.getLogger(__name__)

# The paper's five dialogue sets: folders under eval/ (and eval_final/) of the data root, each with test.jsonl.
DIALOGUE_SETS = ("dollyeval", "selfinst", "vicunaeval", "sni", "unni")
MINILLM_SEEDS = (10, 20, 30, 40, 50)


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


@dataclass(frozen=True)
class DialogueExample:
    """A prompt (MiniLLM's, or built with the Alpaca template) and its reference responses."""

    prompt: str
    references: tuple[str, ...]


def load_dialogue_set(path: str | Path, limit: int | None = None) -> list[DialogueExample]:
    """Rows `{prompt?, instruction, input, output: str | list[str]}` of a MiniLLM-format jsonl (first `limit`)."""
    examples = []
    for row in read_jsonl(path)[:limit]:
        prompt = row.get("prompt") or alpaca_prompt(row["instruction"], row.get("input", ""))
        output = row["output"]
        examples.append(DialogueExample(prompt, tuple(output) if isinstance(output, list) else (output,)))
    return examples


PromptTruncation = Literal["start", "middle"]


def _prompt_ids(tokenizer: Any, prompts: Sequence[str], limit: int, how: PromptTruncation) -> tuple[list, int]:
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    truncated = sum(len(x) > limit for x in ids)
    if how == "start":  # MiniLLM: `prompt_ids[:max_prompt_length]`
        return [x[:limit] for x in ids], truncated
    return [truncate_middle(x, limit) for x in ids], truncated


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 256,
    max_prompt_length: int = 256,
    batch_size: int = 16,
    greedy: bool = False,
    no_repeat_ngram_size: int = 6,
    prompt_truncation: PromptTruncation = "start",
) -> tuple[list[str], int]:
    """Responses of `model` to `prompts`, batched with left padding, decoded without special tokens and stripped.

    Sampling uses the global torch RNG: seed it (in a `torch.random.fork_rng`) for a reproducible run.

    Returns:
        The responses, in order, and how many prompts were longer than `max_prompt_length` (and truncated).
    """
    ids, truncated = _prompt_ids(tokenizer, prompts, max_prompt_length, prompt_truncation)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "top_p": 1.0, "top_k": 0, "temperature": 1.0}
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


class RougeLCallback(ScheduledEvaluation):
    """Generates answers to the dialogue sets, scores Rouge-L as MiniLLM does, logs and writes them.

    Logs `rougeL/<set>` (mean over seeds) and `rougeL/<set>_std` (sample standard deviation over seeds, 0 for one
    run), and writes `<log_dir>/<dirname>/<set>_seed<k>_step<step>.jsonl` (prompt, references, generation,
    rougeL per row; `greedy` instead of `seed<k>` for greedy runs) and `rougeL_step<step>.json` (every score and
    setting). Only global rank 0 generates (the others wait for the scores, which are broadcast so every rank logs
    the same values), so it suits single-device and DDP runs, not sharded (FSDP) models.
    """

    def __init__(
        self,
        sets: list[str] | None = None,
        split: Literal["eval", "eval_final"] = "eval",
        files: dict[str, str] | None = None,
        data_root: str | None = None,
        limit: int | None = None,
        seeds: list[int] | None = None,
        greedy: bool = False,
        max_new_tokens: int = 256,
        max_prompt_length: int = 256,
        prompt_truncation: PromptTruncation = "start",
        no_repeat_ngram_size: int = 6,
        batch_size: int = 16,
        when: Literal["validation", "fit_end"] = "fit_end",
        every_n_validations: int = 1,
        dirname: str = "generations",
    ):
        """
        Args:
            sets: names of folders under `<data_root>/<split>/` holding `test.jsonl` (default: the five sets
                dollyeval, selfinst, vicunaeval, sni, unni).
            split: `eval` while developing; `eval_final` only for a report's final numbers.
            files: more sets, name -> jsonl path (MiniLLM rows, or instruction/input/output rows).
            data_root: data root (default: the data module's, else $XPERT_DATA_ROOT, else ../shared/data).
            limit: score only the first N examples of each set (None: all).
            seeds: sampling seeds, one run each (default MiniLLM's 10, 20, 30, 40, 50).
            greedy: greedy decoding instead of sampling (one run; seeds unused).
            max_new_tokens: most generated tokens (MiniLLM: 512 in all - 256 prompt = 256).
            max_prompt_length: most prompt tokens (MiniLLM: 256).
            prompt_truncation: a longer prompt keeps its "start" (MiniLLM) or its head and tail ("middle", as
                the SFT data does, which keeps the `### Response:` marker).
            no_repeat_ngram_size: MiniLLM's test-time n-gram blocking (0: off).
            batch_size: prompts per `generate` call.
            when: "fit_end": once when training ends (model still on its device); "validation": after
                validation (not the sanity check), every `every_n_validations`-th time, logged so that
                `ModelCheckpoint(monitor="rougeL/dollyeval", mode="max")` can select by it, as MiniLLM does.
            every_n_validations: with `when="validation"`, run on every N-th validation.
            dirname: sub-directory of the run's log dir for the generations and the summary.
        """
        super().__init__(when, every_n_validations, dirname)
        self.sets = list(sets) if sets is not None else list(DIALOGUE_SETS)
        self.split = split
        self.files = dict(files or {})
        self.data_root = data_root
        self.limit = limit
        self.seeds = list(seeds) if seeds is not None else list(MINILLM_SEEDS)
        self.greedy = greedy
        self.max_new_tokens = max_new_tokens
        self.max_prompt_length = max_prompt_length
        self.prompt_truncation = prompt_truncation
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.batch_size = batch_size
        self.last_summary: dict[str, Any] | None = None

    # ---- hooks ---------------------------------------------------------------------------------------------------

    # ---- evaluation ----------------------------------------------------------------------------------------------

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Rank 0 evaluates, every rank receives the metrics (the collectives are reached by all ranks)."""
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        metrics = None
        if trainer.is_global_zero:
            out_dir = Path(log_dir or ".") / self.dirname
            metrics = self.evaluate(pl_module, self._tokenizer(trainer), out_dir, trainer.global_step, trainer)
        return trainer.strategy.broadcast(metrics, src=0)

    def evaluate(
        self, pl_module: Any, tokenizer: Any, out_dir: str | Path, step: int = 0, trainer: L.Trainer | None = None
    ) -> dict[str, float]:
        """Score every set with every seed, write the generations and the summary; returns the metrics."""
        model = pl_module.model if getattr(pl_module, "model", None) is not None else pl_module
        was_training = model.training
        model.eval()
        context = trainer.precision_plugin.predict_step_context() if trainer is not None else torch.no_grad()
        summary: dict[str, Any] = {"step": step, "settings": self._settings(), "sets": {}}
        try:
            with context, torch.no_grad():
                for name, path in self._set_files(trainer).items():
                    examples = load_dialogue_set(path, self.limit)
                    summary["sets"][name] = self._score_set(model, tokenizer, name, examples, Path(out_dir), step)
        finally:
            model.train(was_training)
        write_json(Path(out_dir) / f"rougeL_step{step}.json", summary)
        self.last_summary = summary
        metrics = {}
        for name, result in summary["sets"].items():
            metrics[f"rougeL/{name}"], metrics[f"rougeL/{name}_std"] = result["mean"], result["std"]
        log.info("Rouge-L at step %d: %s", step, {k: round(v, 2) for k, v in metrics.items()})
        return metrics

    def _score_set(
        self, model: Any, tokenizer: Any, name: str, examples: list[DialogueExample], out_dir: Path, step: int
    ) -> dict[str, Any]:
        if not examples:
            raise ValueError(f"Rouge-L set '{name}' has no examples (limit={self.limit})")
        runs = {}
        truncated = 0
        for seed in [None] if self.greedy else self.seeds:
            tag = "greedy" if seed is None else f"seed{seed}"
            with torch.random.fork_rng(devices=_cuda_devices(model)):  # training's RNG stream is left untouched
                torch.manual_seed(seed if seed is not None else 0)
                generations, truncated = generate_responses(
                    model,
                    tokenizer,
                    [e.prompt for e in examples],
                    self.max_new_tokens,
                    self.max_prompt_length,
                    self.batch_size,
                    self.greedy,
                    self.no_repeat_ngram_size,
                    self.prompt_truncation,
                )
            scores = rouge_l_scores(generations, [e.references for e in examples])
            _write_generations(out_dir / f"{name}_{tag}_step{step}.jsonl", examples, generations, scores)
            runs[tag] = 100.0 * sum(scores) / len(scores)
        values = list(runs.values())
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.fmean(values), "std": std, "runs": runs, "n": len(examples), "truncated": truncated}

    def _set_files(self, trainer: L.Trainer | None) -> dict[str, Path]:
        from xpert_pl.paths import data_root as resolve_data_root

        root = self.data_root
        if root is None and trainer is not None and trainer.datamodule is not None:
            root = getattr(trainer.datamodule, "hparams", {}).get("data_root")
        files = {name: resolve_data_root(root) / self.split / name / "test.jsonl" for name in self.sets}
        files.update({name: Path(path) for name, path in self.files.items()})
        missing = [f"{name}: {path}" for name, path in files.items() if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"Rouge-L sets not found: {'; '.join(missing)}")
        return files

    @staticmethod
    def _tokenizer(trainer: L.Trainer) -> Any:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("RougeLCallback needs the data module's `tokenizer` (e.g. SFTDataModule)")
        return tokenizer

    def _settings(self) -> dict[str, Any]:
        keys = ("split", "limit", "seeds", "greedy", "max_new_tokens", "max_prompt_length", "prompt_truncation")
        return {k: getattr(self, k) for k in (*keys, "no_repeat_ngram_size")}


def _cuda_devices(model: Any) -> list[int]:
    device = getattr(model, "device", torch.device("cpu"))
    return [device.index or 0] if device.type == "cuda" else []


def _write_generations(
    path: Path, examples: list[DialogueExample], generations: list[str], scores: list[float]
) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for example, generation, score in zip(examples, generations, scores, strict=True):
            row = {"prompt": example.prompt, "references": list(example.references), "generation": generation}
            fh.write(json.dumps({**row, "rougeL": 100.0 * score}, ensure_ascii=False) + "\n")
