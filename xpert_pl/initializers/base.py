"""The initializer interface: set (some of) a freshly built model's weights and report what was set."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from transformers import PreTrainedModel

from xpert_pl.layout import Artifact


@dataclass
class InitReport:
    """What an initializer did: its name, the parameter names it set, and method-specific details."""

    initializer: str
    set_parameters: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


class Initializer(abc.ABC):
    """Initialises a freshly built Hugging Face model in place."""

    artifacts: ClassVar[dict[str, Artifact]] = {}
    """Arguments that name a pipeline artifact, and its kind: `xpert bench run` sets each to the runs folder's
    file (`RunLayout.path`), so a method YAML works in any experiment."""

    def preflight(self) -> None:
        """Check the files this initializer will read (existence, manifests, provenance) and raise a user error
        if one is unusable; cheap, and run before any data is tokenised. Default: nothing to check."""
        return None

    @abc.abstractmethod
    def initialize(self, model: PreTrainedModel) -> InitReport:
        """Set the model's weights in place and report which parameters were set."""
