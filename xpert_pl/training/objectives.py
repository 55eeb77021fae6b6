"""Training objectives: what a training step minimises, chosen by `class_path` (`model.objective` in a run's YAML).

`NextTokenObjective` (the default) is next-token cross-entropy; `DistillationObjective` mixes it with a KL term to
a frozen teacher (the source MoE). Validation always reports plain next-token cross-entropy, so validation losses
compare across objectives.
"""

from __future__ import annotations

import abc
import logging
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xpert_pl.errors import ConfigError, raise_if_problems
from xpert_pl.layout import Artifact
from xpert_pl.training.flops import forward_flops_per_token

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
TEACHER_DTYPES = ("float32", "bfloat16", "float16")
KL_KINDS = ("forward_kl", "reverse_kl")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over labels != -100, and the number of tokens it averages."""
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[:, 1:].reshape(-1)
    n_tokens = (shift_labels != IGNORE_INDEX).sum()
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / n_tokens.clamp(min=1), n_tokens


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "forward_kl",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean per-token KL between temperature-softened teacher and student next-token distributions.

    Positions are aligned as in `causal_lm_loss`: the logits at t predict label t + 1, and positions whose label is
    -100 (padding, prompts) are left out of the mean.

    Args:
        student_logits: (B x T x V) logits of the student.
        teacher_logits: (B x T x V) logits of the teacher on the same inputs.
        labels: (B x T) next-token labels, -100 where ignored.
        kind: `forward_kl` = KL(teacher || student) (mean-seeking), `reverse_kl` = KL(student || teacher)
            (mode-seeking).
        temperature: both distributions are softmax(logits / temperature).
    """
    keep = labels[:, 1:] != IGNORE_INDEX
    # Select kept positions before the float32 copy: padded batches then cost less memory.
    log_q = F.log_softmax(student_logits[:, :-1][keep].float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits[:, :-1][keep].float() / temperature, dim=-1)
    if kind == "forward_kl":
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif kind == "reverse_kl":
        per_token = (log_q.exp() * (log_q - log_p)).sum(-1)
    else:
        raise ValueError(f"unknown kind '{kind}'; choose one of: {', '.join(KL_KINDS)}")
    return per_token.sum() / keep.sum().clamp(min=1)


class TrainingObjective(abc.ABC):
    """What a training step minimises, given the student's outputs on a batch.

    The module calls `setup` once the student is built and on its device (at fit start, on every rank), then `loss`
    in every training step. An objective is a plain object, not an `nn.Module`: whatever it holds (a teacher) stays
    out of the module's state_dict, checkpoints, optimizer and DDP wrapper.
    """

    router_aux_loss_coef: float = 0.0

    def setup(self, student: nn.Module, device: torch.device) -> None:
        """Load and place what the objective needs beside `student`; must be safe to call again."""
        config = getattr(student, "config", None)
        self.router_aux_loss_coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)

    def preflight(self, vocab_size: int | None) -> None:
        """Check what the objective will load (e.g. a teacher's config) against the run's vocabulary, before any
        data work; raises a user error. Default: nothing to check."""
        return None

    @abc.abstractmethod
    def loss(self, student_outputs: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss to back-propagate, and detached metrics the module logs as `train/<name>`.

        The metrics hold at least `loss` (the objective before the router auxiliary loss) and `ppl` (exp of the
        next-token cross-entropy), so those two curves exist for every objective.
        """

    @property
    def teacher_flops_per_token(self) -> int:
        """Forward FLOPs per training token spent outside the student (0 without a teacher); valid after setup."""
        return 0

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for run directories and reports."""
        public = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"class": type(self).__name__, **public, "teacher_flops_per_token": self.teacher_flops_per_token}

    def _add_router_aux(
        self, loss: torch.Tensor, student_outputs: Any, metrics: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        # An MoE student (e.g. training the source) keeps its load-balancing loss whatever the main objective.
        aux = getattr(student_outputs, "aux_loss", None)
        if aux is None:
            return loss, metrics
        return loss + self.router_aux_loss_coef * aux, {**metrics, "aux_loss": aux.detach()}


class NextTokenObjective(TrainingObjective):
    """Next-token cross-entropy on the labels (plus an MoE's router auxiliary loss): plain pre-training."""

    def loss(self, student_outputs: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        ce, _ = causal_lm_loss(student_outputs.logits, batch.get("labels", batch["input_ids"]))
        metrics = {"loss": ce.detach(), "ppl": torch.exp(ce.detach())}
        return self._add_router_aux(ce, student_outputs, metrics)


class DistillationObjective(TrainingObjective):
    """Knowledge distillation from a frozen teacher (the source MoE) mixed with next-token cross-entropy.

    loss = (1 - alpha) * CE(labels) + alpha * temperature^2 * KL, the KL averaged over the next-token positions
    whose label is not -100 (see `distillation_kl`); temperature^2 keeps the KL's gradient scale independent of the
    temperature. The teacher is loaded at fit start on every rank, kept in eval mode with no gradients and run
    under `torch.no_grad()`; it is never a submodule of the LightningModule, so it is not checkpointed, optimised
    or wrapped by DDP. Its forward FLOPs are counted in `train/teacher_flops`.
    """

    artifacts: ClassVar[dict[str, Artifact]] = {"teacher": Artifact.SOURCE}

    def __init__(
        self,
        teacher: str,
        kind: Literal["forward_kl", "reverse_kl"] = "forward_kl",
        temperature: float = 1.0,
        alpha: float = 0.5,
        teacher_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        trust_remote_code: bool = False,
    ):
        """
        Args:
            teacher: the teacher's Hugging Face model directory (`save_pretrained` output, e.g. the source MoE's
                `runs/source/<size>/hf`) or hub id; it must share the student's tokenizer.
            kind: `forward_kl` = KL(teacher || student), the classic KD loss (mean-seeking); `reverse_kl` =
                KL(student || teacher) (mode-seeking).
            temperature: softmax temperature of both distributions in the KL term (> 0); the term is scaled by
                temperature^2.
            alpha: weight of the KL term in [0, 1]; 1 - alpha weighs next-token cross-entropy on the labels.
            teacher_dtype: dtype the teacher is loaded in (`float32`, `bfloat16`, `float16`); lower precision
                halves its memory and time.
            trust_remote_code: allow the teacher checkpoint's own Python code to run; off unless you trust it.
        """
        problems = []
        if kind not in KL_KINDS:
            problems.append(f"kind '{kind}' is unknown; choose one of: {', '.join(KL_KINDS)}")
        if not temperature > 0:
            problems.append(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            problems.append(f"alpha (the KL weight) must be in [0, 1], got {alpha}")
        if teacher_dtype not in TEACHER_DTYPES:
            problems.append(f"teacher_dtype '{teacher_dtype}' is unknown; choose one of: {', '.join(TEACHER_DTYPES)}")
        raise_if_problems(problems)
        self.teacher = teacher
        self.kind = kind
        self.temperature = temperature
        self.alpha = alpha
        self.teacher_dtype = teacher_dtype
        self.trust_remote_code = trust_remote_code
        self._teacher: nn.Module | None = None
        self._teacher_flops_per_token = 0

    @property
    def teacher_flops_per_token(self) -> int:
        return self._teacher_flops_per_token

    def preflight(self, vocab_size: int | None) -> None:
        """The teacher's config.json must exist and share the student's vocabulary (read without its weights)."""
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(self.teacher, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as err:
            raise ConfigError([f"teacher '{self.teacher}': cannot read its config.json ({err})"]) from None
        if vocab_size is not None and config.vocab_size != vocab_size:
            raise ConfigError(
                [
                    f"teacher '{self.teacher}' has vocab_size {config.vocab_size} but the student's tokenizer has "
                    f"{vocab_size}: distillation compares next-token distributions, so train the student with the "
                    "teacher's tokenizer"
                ]
            )

    def setup(self, student: nn.Module, device: torch.device) -> None:
        """Load the teacher once (frozen, eval mode), check its vocabulary, and move it to `device`."""
        super().setup(student, device)
        if self._teacher is None:
            self._teacher = self._load_teacher()
            self._teacher_flops_per_token = forward_flops_per_token(self._teacher)
        student_vocab, teacher_vocab = student.config.vocab_size, self._teacher.config.vocab_size
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"teacher '{self.teacher}' has vocab_size {teacher_vocab} but the student has {student_vocab}: "
                "distillation compares next-token distributions, so train the student with the teacher's tokenizer."
            )
        self._teacher.to(device)

    def _load_teacher(self) -> nn.Module:
        from xpert_pl.models import load_causal_lm

        teacher = load_causal_lm(
            self.teacher, trust_remote_code=self.trust_remote_code, dtype=getattr(torch, self.teacher_dtype)
        )
        if hasattr(teacher.config, "output_router_logits"):
            teacher.config.output_router_logits = False  # the teacher's load-balancing loss is never used
        teacher.eval().requires_grad_(False)
        log.info("distillation teacher %s: %s forward FLOPs per token", self.teacher, forward_flops_per_token(teacher))
        return teacher

    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's logits on `batch` (no graph); the teacher follows the batch's device if it moved."""
        if self._teacher is None:
            raise RuntimeError("call DistillationObjective.setup(student, device) first (the module does at fit start)")
        device = batch["input_ids"].device
        if next(self._teacher.parameters()).device != device:
            self._teacher.to(device)
        # no_grad rather than inference_mode: inference tensors cannot be saved for the student's backward.
        with torch.no_grad():
            ids, mask = batch["input_ids"], batch.get("attention_mask")
            return self._teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def loss(self, student_outputs: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        labels = batch.get("labels", batch["input_ids"])
        ce, _ = causal_lm_loss(student_outputs.logits, labels)
        kd = distillation_kl(student_outputs.logits, self.teacher_logits(batch), labels, self.kind, self.temperature)
        loss = (1.0 - self.alpha) * ce + self.alpha * self.temperature**2 * kd
        metrics = {
            "loss": loss.detach(),
            "ppl": torch.exp(ce.detach()),
            "ce_loss": ce.detach(),
            "kd_loss": kd.detach(),
        }
        return self._add_router_aux(loss, student_outputs, metrics)
