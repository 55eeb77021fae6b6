"""Evaluate a live Hugging Face causal LM with lm-eval (no copy to disk) and summarise the results as JSON."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xpert_pl.evaluation.answers import answer_shares
from xpert_pl.evaluation.lm_tasks import (
    LM_TASKS,
    STANDARD_TASKS,
    LMTask,
    Source,
    Split,
    resolve_tasks,
    task_manager,
)

if TYPE_CHECKING:
    from lm_eval.api.group import Group
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

log = logging.getLogger(__name__)


def seed_kwargs(seed: int) -> dict[str, int]:
    """The four seeds of `lm_eval.simple_evaluate`, all set to `seed`."""
    keys = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
    return dict.fromkeys(keys, seed)


def evaluate_lm(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str] = STANDARD_TASKS,
    limit: int | None = None,
    num_fewshot: Mapping[str, int] | None = None,
    batch_size: int | str = "auto",
    max_batch_size: int = 64,
    source: Source = "local",
    split: Split = "eval",
    data_root: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run lm-eval on `model` as it is in memory, through lm-eval's `HFLM` with `tokenizer`.

    The model is evaluated in eval mode and put back in its previous mode afterwards, also on error; the global
    random states (python, numpy, torch), which `simple_evaluate` reseeds, are restored too.

    Args:
        model: a Hugging Face causal LM (`PreTrainedModel`), on the device to evaluate on.
        tokenizer: its tokenizer (a `PreTrainedTokenizerBase`).
        tasks: names from `LM_TASKS`.
        limit: evaluate only the first N documents of each lm-eval task (MMLU: of each subject).
        num_fewshot: shots per task name, replacing the kit's (MMLU 5, others 0).
        batch_size: an int, or "auto" for the largest batch that fits (up to `max_batch_size`).
        max_batch_size: upper bound of the "auto" search.
        source: "local" (shipped YAMLs over the data root, offline) or "hub" (lm-eval's built-in tasks).
        split: "eval" while developing, "eval_final" only for a report's final numbers.
        data_root: the data root (None: $XPERT_DATA_ROOT, else ../shared/data).
        seed: every lm-eval seed (python, numpy, torch, few-shot sampling).

    Returns:
        The summary (see `summarise`): per task its metrics, stderrs, version, shots and sample counts, the
        skipped tasks with their reasons, and the settings.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    specs = resolve_tasks(tasks)
    manager = task_manager(source, data_root, split)
    settings = {
        "source": source,
        "split": split,
        "data_root": (manager.metadata or {}).get("data_root"),
        "limit": limit,
        "num_fewshot": dict(num_fewshot or {}),
        "batch_size": batch_size,
        "max_batch_size": max_batch_size,
        "seeds": seed_kwargs(seed),
        "lm_eval_version": lm_eval.__version__,
    }
    start = time.perf_counter()
    results = None
    was_training = model.training
    # Everything lm-eval touches stays inside: building tasks and even reading `Task.task_name` draw from
    # python's global RNG, and simple_evaluate reseeds all three.
    try:
        with _preserved_rng(model), _without_custom_dataset_hint():
            loaded, skipped = load_tasks(manager, specs, source, num_fewshot)
            if loaded:
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_batch_size=max_batch_size)
                results = lm_eval.simple_evaluate(
                    lm,
                    tasks=list(loaded.values()),
                    limit=limit,
                    log_samples=True,  # each document's pick: the report tells a constant answer from a skill
                    task_manager=manager,  # else it indexes all of lm-eval's tasks again (~10 s)
                    **seed_kwargs(seed),
                )
            return summarise(results, loaded, skipped, {**settings, "seconds": time.perf_counter() - start})
    finally:
        model.train(was_training)


def load_tasks(
    manager: TaskManager, specs: Sequence[LMTask], source: Source, num_fewshot: Mapping[str, int] | None = None
) -> tuple[dict[str, Task | Group], dict[str, str]]:
    """Build each task (or group, MMLU) with its shots; optional tasks without data are skipped with the reason.

    Returns:
        kit task name -> lm-eval Task or Group, and kit task name -> why it was skipped.
    """
    shots = dict(num_fewshot or {})
    unknown = sorted(set(shots) - {spec.name for spec in specs})
    if unknown:
        raise ValueError(f"num_fewshot names tasks that are not evaluated: {unknown}")
    loaded: dict[str, Task | Group] = {}
    skipped: dict[str, str] = {}
    for spec in specs:
        name = spec.name if source == "local" else spec.hub_name
        if name is None:
            skipped[spec.name] = f"no lm-eval task for source='{source}'. {spec.note}".strip()
            continue
        try:
            built = manager.load([name])
        except FileNotFoundError as err:  # DataRootError: the task's data are not under the data root
            if not spec.optional:
                raise
            skipped[spec.name] = f"no data: {err}. {spec.note}".strip()
            continue
        obj = built.get("groups", {}).get(name) or built["tasks"][name]
        for task in built["tasks"].values():
            task.set_config(key="num_fewshot", value=shots.get(spec.name, spec.num_fewshot))
        loaded[spec.name] = obj
    for name, reason in skipped.items():
        log.warning("lm-eval task '%s' skipped: %s", name, reason)
    return loaded, skipped


@contextlib.contextmanager
def _preserved_rng(model: Any) -> Iterator[None]:
    # simple_evaluate reseeds python, numpy and torch globally: training must not see that.
    device = getattr(model, "device", torch.device("cpu"))
    cuda = [device.index or 0] if device.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class _CustomDatasetHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


@contextlib.contextmanager
def _without_custom_dataset_hint() -> Iterator[None]:
    # lm-eval warns about `custom_dataset` kwargs for every task that has one: 62 times for MMLU alone here.
    task_log, hint = logging.getLogger("lm_eval.api.task"), _CustomDatasetHint()
    task_log.addFilter(hint)
    try:
        yield
    finally:
        task_log.removeFilter(hint)


def _metric_name(key: str) -> str | None:
    """'acc,none' -> 'acc', 'acc,filt' -> 'acc_filt'; None for stderrs and non-metric keys."""
    if "," not in key or "_stderr," in key:
        return None
    metric, filt = key.split(",", 1)
    return metric if filt == "none" else f"{metric}_{filt}"


def _metrics(entry: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float | None]]:
    values, stderrs = {}, {}
    for key, value in entry.items():
        name = _metric_name(key)
        if name is not None and isinstance(value, int | float):
            values[name] = float(value)
            stderr = entry.get(key.replace(",", "_stderr,", 1))
            stderrs[name] = float(stderr) if isinstance(stderr, int | float) else None
    return values, stderrs


def _is_group(obj: Task | Group) -> bool:
    return hasattr(obj, "get_all_tasks")  # lm_eval.api.group.Group, without importing lm-eval here


def _name(obj: Task | Group) -> str:
    return obj.name if _is_group(obj) else obj.task_name


def _leaves(obj: Task | Group) -> list[Task]:
    return obj.get_all_tasks() if _is_group(obj) else [obj]


def _node(obj: Task | Group, results: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics, stderrs and sample counts (summed over its tasks for a group) of a task or group."""
    values, stderrs = _metrics(results["results"][_name(obj)])
    counts = [results["n-samples"][task.task_name] for task in _leaves(obj)]
    return {
        "metrics": values,
        "stderr": stderrs,
        "samples": sum(int(c["effective"]) for c in counts),
        "samples_original": sum(int(c["original"]) for c in counts),
    }


def _task_summary(obj: Task | Group, spec: LMTask, results: Mapping[str, Any]) -> dict[str, Any]:
    name = _name(obj)
    node = _node(obj, results)
    summary = {
        "lm_eval_task": name,
        "metric": spec.metric,
        "score": node["metrics"].get(spec.metric),
        **node,
        "version": results["versions"].get(name),
        "num_fewshot": results["n-shot"].get(_leaves(obj)[0].task_name),
    }
    samples = results.get("samples") or {}
    summary["answers"] = answer_shares((task, samples.get(task.task_name, [])) for task in _leaves(obj))
    if _is_group(obj):  # MMLU: its categories and subjects
        members = [*obj.get_all_groups(), *obj.get_all_tasks()]
        summary["subtasks"] = {_name(member): _node(member, results) for member in members}
    return summary


def summarise(
    results: Mapping[str, Any] | None,
    loaded: Mapping[str, Task | Group],
    skipped: Mapping[str, str],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON-able summary of a `simple_evaluate` result: per kit task name, metrics and provenance."""
    tasks = {}
    for name, obj in loaded.items():
        tasks[name] = _task_summary(obj, LM_TASKS[name], results)
    config = (results or {}).get("config", {})
    return {
        "tasks": tasks,
        "skipped": dict(skipped),
        "settings": {**settings, "batch_sizes": config.get("batch_sizes", [])},
    }


def flat_metrics(summary: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """`<prefix>/<task>/<metric>` -> value for every evaluated task's metrics (what the callback logs)."""
    return {
        f"{prefix}/{task}/{metric}": value
        for task, entry in summary["tasks"].items()
        for metric, value in entry["metrics"].items()
    }
