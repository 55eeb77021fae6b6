"""The shipped task YAMLs over local files give what lm-eval's own built-in tasks give over the hub's rows.

lm-eval's built-in configs are loaded from its package unchanged, except that their data come from the same
synthetic rows (in the hub schema) instead of a download; the kit's tasks read those rows converted to the data
root's schema. Every request (context, continuation), every log-likelihood and every metric must agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm_eval_rows import MMLU_SUBJECTS, mmlu_rows, raw_rows, write_data_root

from xpert_pl.evaluation import LM_TASKS, task_manager
from xpert_pl.models import DenseStudent
from xpert_pl.tokenizer import load_tokenizer

# lm-eval's config files (under lm_eval/tasks/) of the tasks the kit mirrors.
BUILTIN = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "medmcqa": "medmcqa/medmcqa.yaml",
    **{f"mmlu_{subject}": f"mmlu/default/mmlu_{subject}.yaml" for subject in MMLU_SUBJECTS},
}
SEEDS = {"random_seed": 0, "numpy_random_seed": 0, "torch_random_seed": 0, "fewshot_random_seed": 0}


def _lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _builtin_config(name: str, splits: dict[str, list[dict]]) -> dict:
    """lm-eval's config for `name`, reading `splits` instead of downloading its dataset."""
    import datasets
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(_lm_eval_tasks_dir() / BUILTIN[name])
    for key in ("dataset_path", "dataset_name", "dataset_kwargs", "tag"):
        cfg.pop(key, None)
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict(
        {split: datasets.Dataset.from_list(rows) for split, rows in splits.items()}
    )
    if name.startswith("mmlu_"):
        cfg["num_fewshot"] = LM_TASKS["mmlu"].num_fewshot  # lm-eval's MMLU is 0-shot unless told
    return cfg


def _builtin_configs() -> list[dict]:
    configs = [_builtin_config(task, {"train": rows, "validation": rows}) for task, rows in raw_rows().items()]
    test, dev = mmlu_rows(list(MMLU_SUBJECTS))
    for subject in MMLU_SUBJECTS:
        splits = {
            "test": [r for r in test if r["subject"] == subject],
            "dev": [r for r in dev if r["subject"] == subject],
        }
        configs.append(_builtin_config(f"mmlu_{subject}", splits))
    return configs


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Two OpenMP threads competing with other processes on a small machine slow tiny forwards 50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shipped_tasks_match_lm_eval_builtin_tasks(tmp_path, tiny_tokenizer_dir):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    root = write_data_root(tmp_path / "data", list(MMLU_SUBJECTS))
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}
    lm = HFLM(pretrained=DenseStudent("llama-tiny", small).build(len(tokenizer)), tokenizer=tokenizer, batch_size=8)

    def run(tasks: list, manager: TaskManager) -> dict:
        return lm_eval.simple_evaluate(lm, tasks=tasks, limit=20, task_manager=manager, log_samples=True, **SEEDS)

    ours = run(list(BUILTIN), task_manager("local", root, "eval"))
    theirs = run(_builtin_configs(), TaskManager(include_defaults=False))
    for task in BUILTIN:
        mine, ref = ours["samples"][task], theirs["samples"][task]
        assert len(mine) == len(ref) == 20, task
        for a, b in zip(mine, ref, strict=True):
            assert a["arguments"] == b["arguments"], task  # the same prompts and continuations
            assert a["resps"] == b["resps"], task  # the same log-likelihoods
            assert a["target"] == b["target"], task
        assert ours["results"][task] == theirs["results"][task]
        assert ours["versions"][task] == theirs["versions"][task]
        assert ours["n-shot"][task] == theirs["n-shot"][task] == (5 if task.startswith("mmlu") else 0)
    # The few-shot MMLU prompt opens with lm-eval's description and holds the subject's first five dev questions.
    prompt = ours["samples"]["mmlu_anatomy"][0]["arguments"][0][0]
    assert prompt.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert prompt.count("\nAnswer:") == 6


def test_hub_names_are_lm_eval_tasks():
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks_dir = _lm_eval_tasks_dir()
    for spec in LM_TASKS.values():
        if spec.hub_name == "mmlu":
            assert load_yaml(tasks_dir / "mmlu/default/_mmlu.yaml")["group"] == "mmlu"
        elif spec.hub_name is not None:
            assert load_yaml(tasks_dir / BUILTIN[spec.name], resolve_func=False)["task"] == spec.hub_name
    assert LM_TASKS["casehold"].hub_name is None  # lm-eval has no CaseHOLD task
