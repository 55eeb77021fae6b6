"""The model card (`README.md`) of an exported model: how it was made, from what, how far it trained.

The facts sit twice in the card: in its YAML metadata under `xpert` (for programs: `ModelCard.load(path).data.xpert`)
and as a table in its text (for people).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPOSITORY = "xpert_pl"


def kit_version() -> str:
    """The installed xpert_pl version; the package's own `__version__` when it is not installed, else "unknown"."""
    import importlib.metadata

    try:
        return importlib.metadata.version("xpert_pl")
    except importlib.metadata.PackageNotFoundError:
        import xpert_pl

        return getattr(xpert_pl, "__version__", "unknown")


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running (`sys.argv`), shell-quoted so it can be pasted back into a shell."""
    return shlex.join(sys.argv if argv is None else argv)


def provenance(details: dict[str, Any]) -> tuple[str | None, str | None]:
    """The source model and knowledge bank an initializer read, from its report's details (None: it read none)."""
    source = details.get("source")
    if source is None and isinstance(details.get("source_weights"), dict):
        source = details["source_weights"].get("source")
    bank = details.get("bank")
    return (None if source is None else str(source)), (None if bank is None else str(bank))


def read_facts(directory: str | Path) -> dict[str, Any] | None:
    """The `xpert` facts of the model card in `directory`; None when it has no such card (or is no directory)."""
    path = Path(directory) / "README.md"
    if not path.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        facts = ModelCard.load(path).data.to_dict().get("xpert")
    except Exception:  # a hand-written or foreign README: no facts rather than a failed export
        return None
    return facts if isinstance(facts, dict) else None


def count_parameters(model: Any) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class ModelFacts:
    """What a model card states about an exported model."""

    method: str
    architecture: str
    parameters: int
    source: str | None = None
    bank: str | None = None
    source_method: str | None = None
    tokens_seen: int | None = None
    final_val_loss: float | None = None
    special_token_ids: dict[str, int | None] = field(default_factory=dict)
    kit_version: str = field(default_factory=kit_version)
    command: str = field(default_factory=command_line)

    @classmethod
    def of_model(cls, model: Any, method: str, parameters: int | None = None, **facts: Any) -> ModelFacts:
        """Facts of a Hugging Face model: its class, parameter count (unless given) and special token ids, plus
        `facts`."""
        ids = {key: getattr(model.config, key, None) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
        count = count_parameters(model) if parameters is None else parameters
        return cls(method, type(model).__name__, count, special_token_ids=ids, **facts)


def _table(facts: ModelFacts) -> str:
    ids = ", ".join(f"{key.removesuffix('_token_id')} {value}" for key, value in facts.special_token_ids.items())
    loss = "not measured" if facts.final_val_loss is None else f"{facts.final_val_loss:.4f} (`val/loss`, nats/token)"
    tokens = "unknown" if facts.tokens_seen is None else f"{facts.tokens_seen:,}"
    rows = [
        ("method (initializer)", f"`{facts.method}`"),
        ("architecture", f"`{facts.architecture}`, {facts.parameters:,} parameters"),
        ("source model", f"`{facts.source}`" if facts.source else "none"),
        ("source model's method", f"`{facts.source_method}`" if facts.source_method else "unknown"),
        ("knowledge bank", f"`{facts.bank}`" if facts.bank else "none"),
        ("tokens seen", tokens),
        ("final validation loss", loss),
        ("special token ids", ids or "unknown"),
        ("xpert_pl version", facts.kit_version),
    ]
    return "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def _text(facts: ModelFacts) -> str:
    eos = facts.special_token_ids.get("eos_token_id")
    stops = (
        f"`generate()` stops at the tokenizer's EOS (id {eos})."
        if eos is not None
        else "Its configuration names no EOS id: pass `eos_token_id` to `generate()`."
    )
    return f"""# {facts.architecture} ({facts.method})

A causal language model made with {REPOSITORY} (XPERT: a Mixture-of-Experts' common experts transferred into
dense students). It loads with plain `transformers`; {stops}

{_table(facts)}

Made by:

```bash
{facts.command}
```

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")
model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")
out = model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=32)
print(tokenizer.decode(out[0]))
```
"""


def write_model_card(directory: str | Path, facts: ModelFacts) -> Path:
    """Write `<directory>/README.md`, a Hugging Face model card stating `facts`; returns its path."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=[REPOSITORY],
        xpert=asdict(facts),
    )
    path = Path(directory) / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_text(facts)}").save(path)
    return path
