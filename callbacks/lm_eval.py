"""lm-eval on the live model during or after training: BoolQ, HellaSwag, MMLU (5-shot), PIQA, WinoGrande, ...

The model in memory (`pl_module.model`, a Hugging Face causal LM) is wrapped in lm-eval's `HFLM` with the run's
tokenizer and evaluated with `lm_eval.simple_evaluate` on the kit's task YAMLs (`xpert_pl/evaluation/tasks/`),
which read the data root's local files (offline), or on lm-eval's built-in tasks (`source="hub"`, online).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L

from xpert_pl.artifacts import write_json
from xpert_pl.callbacks.scheduled import ScheduledEvaluation
from xpert_pl.evaluation.harness import evaluate_lm, flat_metrics
from xpert_pl.evaluation.lm_tasks import SPLITS, STANDARD_TASKS, Source, Split, resolve_tasks

log = logging.getLogger(__name__)


class LMEvalCallback(ScheduledEvaluation):
    """Evaluates the live model with lm-eval, logs `eval/<task>/<metric>` and writes a results JSON.

    Writes `<log_dir>/<dirname>/lm_eval_step<step>.json`: per task its metrics and stderrs, lm-eval task version,
    shots and sample counts (after `limit`), the skipped tasks with the reason (e.g. CaseHOLD without data), the
    seeds, the batch size lm-eval used and the lm-eval version. Only global rank 0 evaluates (the others wait
    for the metrics, which are broadcast so every rank logs the same values), so it suits single-device and
    DDP runs, not sharded (FSDP) models; under DDP a long evaluation must fit the process-group timeout.
    The model is put back in its previous train/eval mode afterwards, also when the evaluation fails.
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        limit: int | None = None,
        num_fewshot: dict[str, int] | None = None,
        batch_size: int | str = "auto",
        max_batch_size: int = 64,
        source: Source = "local",
        split: Split = "eval",
        data_root: str | None = None,
        tokenizer: str | None = None,
        seed: int = 0,
        when: Literal["validation", "fit_end"] = "fit_end",
        every_n_validations: int = 1,
        dirname: str = "lm_eval",
    ):
        """
        Args:
            tasks: task names (default the five standard ones: boolq, hellaswag, mmlu, piqa, winogrande; also
                medmcqa, and casehold, which is skipped with the reason where its data are missing).
            limit: evaluate only the first N documents of each lm-eval task (MMLU: of each subject); None: all.
            num_fewshot: shots per task name, replacing the kit's (MMLU 5 from its dev split, others 0).
            batch_size: an int, or "auto": the largest batch (up to `max_batch_size`) that fits.
            max_batch_size: upper bound of the "auto" search.
            source: "local": the shipped YAMLs over the data root (offline); "hub": lm-eval's built-in tasks,
                which download their data (online).
            split: `eval` while developing; `eval_final` only for a report's final numbers.
            data_root: data root (default: the data module's, else $XPERT_DATA_ROOT, else ../shared/data).
            tokenizer: Hugging Face tokenizer directory (default: the data module's `tokenizer`).
            seed: lm-eval's python, numpy, torch and few-shot seeds.
            when: "fit_end": once when training ends; "validation": after validation (not the sanity check),
                every `every_n_validations`-th time.
            every_n_validations: with `when="validation"`, run on every N-th validation.
            dirname: sub-directory of the run's log dir for the results JSON.
        """
        resolve_tasks(list(tasks) if tasks is not None else list(STANDARD_TASKS))  # fail at config time
        checks = {  # the base class checks when/every_n_validations too; here they are reported with the rest
            "when must be 'validation' or 'fit_end'": when in ("validation", "fit_end"),
            "every_n_validations must be >= 1": every_n_validations >= 1,
            "limit must be None or >= 1": limit is None or limit >= 1,
            f"split must be one of {SPLITS}": split in SPLITS,
            "source must be 'local' or 'hub'": source in ("local", "hub"),
        }
        problems = [message for message, ok in checks.items() if not ok]
        if problems:
            raise ValueError("LMEvalCallback: " + "; ".join(problems))
        super().__init__(when, every_n_validations, dirname)
        self.tasks = list(tasks) if tasks is not None else list(STANDARD_TASKS)
        self.limit = limit
        self.num_fewshot = dict(num_fewshot or {})
        self.batch_size = batch_size
        self.max_batch_size = max_batch_size
        self.source = source
        self.split = split
        self.data_root = data_root
        self.tokenizer = tokenizer
        self.seed = seed
        self.last_summary: dict[str, Any] | None = None
        self._tokenizer_obj: Any = None

    # ---- hooks ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        if isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy):
            raise ValueError(
                "LMEvalCallback evaluates the model on rank 0 alone, which a sharded model cannot do; export it "
                "(callbacks.HFExport) and run xpert_pl.evaluation.evaluate_lm on the export instead."
            )

    # ---- evaluation ----------------------------------------------------------------------------------------------

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Rank 0 evaluates, every rank receives the metrics (the collectives are reached by all ranks)."""
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        metrics = None
        if trainer.is_global_zero:
            out_dir = Path(log_dir or ".") / self.dirname
            with trainer.precision_plugin.predict_step_context():
                metrics = self.evaluate(
                    pl_module.model, self._resolve_tokenizer(trainer), out_dir, self.global_step(trainer), trainer
                )
        return trainer.strategy.broadcast(metrics, src=0)

    def evaluate(
        self, model: Any, tokenizer: Any, out_dir: str | Path, step: int = 0, trainer: L.Trainer | None = None
    ) -> dict[str, float]:
        """Evaluate `model`, write `<out_dir>/lm_eval_step<step>.json`; returns `eval/<task>/<metric>` values."""
        summary = evaluate_lm(
            model,
            tokenizer,
            tasks=self.tasks,
            limit=self.limit,
            num_fewshot=self.num_fewshot,
            batch_size=self.batch_size,
            max_batch_size=self.max_batch_size,
            source=self.source,
            split=self.split,
            data_root=self._resolve_data_root(trainer),
            seed=self.seed,
        )
        summary = {"step": step, **summary}
        write_json(Path(out_dir) / f"lm_eval_step{step}.json", summary)
        self.last_summary = summary
        metrics = flat_metrics(summary)
        log.info("lm-eval at step %d: %s", step, {k: round(v, 4) for k, v in metrics.items()})
        return metrics

    def _resolve_data_root(self, trainer: L.Trainer | None) -> str | None:
        if self.data_root is not None or trainer is None or trainer.datamodule is None:
            return self.data_root
        return getattr(trainer.datamodule, "hparams", {}).get("data_root")

    def _resolve_tokenizer(self, trainer: L.Trainer) -> Any:
        if self.tokenizer is not None:
            if self._tokenizer_obj is None:
                from xpert_pl.tokenizer import load_tokenizer

                self._tokenizer_obj = load_tokenizer(self.tokenizer)
            return self._tokenizer_obj
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("LMEvalCallback needs `tokenizer` or a data module with a `tokenizer` attribute")
        return tokenizer
