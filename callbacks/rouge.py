"""Rouge-L on MiniLLM's dialogue sets during or after training: a Lightning wrapper of `evaluate_rouge`.

The protocol (generation, scoring, the set files) lives in `xpert_pl.evaluation.rouge`, which also scores an
exported model without Lightning (`xpert_pl.evaluation.evaluate_rouge`); this module schedules it, runs it on
global rank 0 with the live model (`pl_module.model`) and the data module's tokenizer, and logs the metrics.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import lightning as L

from xpert_pl.callbacks.scheduled import ScheduledEvaluation
from xpert_pl.evaluation.rouge import DIALOGUE_SETS, MINILLM_SEEDS, PromptTruncation, evaluate_rouge


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

    # ---- evaluation ----------------------------------------------------------------------------------------------

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Rank 0 evaluates, every rank receives the metrics (the collectives are reached by all ranks)."""
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        metrics = None
        if trainer.is_global_zero:
            out_dir = Path(log_dir or ".") / self.dirname
            metrics = self.evaluate(pl_module, self._tokenizer(trainer), out_dir, self.global_step(trainer), trainer)
        return trainer.strategy.broadcast(metrics, src=0)

    def evaluate(
        self, model: Any, tokenizer: Any, out_dir: str | Path, step: int = 0, trainer: L.Trainer | None = None
    ) -> dict[str, float]:
        """Score every set with every seed, write the generations and the summary; returns the metrics.

        Args:
            model: a Hugging Face causal LM, or a LightningModule, which stands for its `.model`.
            tokenizer: the model's tokenizer.
            out_dir: where the generations and `rougeL_step<step>.json` go.
            step: the training step, in the file names and the summary.
            trainer: supplies the precision context (e.g. bf16 autocast) and the data module's data root.
        """
        # Only a LightningModule is unwrapped: a Hugging Face causal LM has a `.model` too (its decoder stack).
        if isinstance(model, L.LightningModule) and getattr(model, "model", None) is not None:
            model = model.model
        context = trainer.precision_plugin.predict_step_context() if trainer is not None else contextlib.nullcontext()
        with context:
            result = evaluate_rouge(
                model, tokenizer, **self._protocol(), data_root=self._data_root(trainer), out_dir=out_dir, step=step
            )
        self.last_summary = result.summary()
        return result.metrics

    def _protocol(self) -> dict[str, Any]:
        keys = ("sets", "split", "files", "limit", "seeds", "greedy", "max_new_tokens", "max_prompt_length")
        return {k: getattr(self, k) for k in (*keys, "prompt_truncation", "no_repeat_ngram_size", "batch_size")}

    def _data_root(self, trainer: L.Trainer | None) -> str | None:
        if self.data_root is not None or trainer is None or trainer.datamodule is None:
            return self.data_root
        return getattr(trainer.datamodule, "hparams", {}).get("data_root")

    @staticmethod
    def _tokenizer(trainer: L.Trainer) -> Any:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("RougeLCallback needs the data module's `tokenizer` (e.g. SFTDataModule)")
        return tokenizer
