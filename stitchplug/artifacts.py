"""Core protocols for transferable artifacts (SAE, probe, steering vector) and their evaluators.

An artifact plugin registers a factory returning an :class:`ArtifactKind`; an evaluator plugin
registers a factory returning an :class:`Evaluator`. Both receive an :class:`ArtifactContext`, a
small bag of what a stage knows about one model at one layer: the adapter, where the activations
come from, held-out token windows, the massive-activation dimensions, device and seed. Fields a
given artifact or evaluator does not need may stay ``None``; whoever needs a missing field raises
:class:`~stitchplug.errors.StageError` naming it (see :meth:`ArtifactContext.need`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from .errors import StageError

ActivationSource = Callable[..., Iterator[torch.Tensor]]
"""``source(batch_size=..., seed=...) -> iterator of [batch, d] float tensors``."""


@dataclass
class ArtifactContext:
    """What a stage knows about one model at one layer.

    ``train_activations(batch_size, seed)`` yields training batches ``[batch, d]`` (it may be
    endless; the consumer stops); ``eval_activations()`` yields a *fresh, finite* pass over held-out
    activation batches each time it is called. ``eval_windows`` are held-out token windows, either a
    list of 1-D ``LongTensor`` (possibly of different lengths) or one ``[n, T]`` tensor, tokenised
    for ``adapter``; special tokens in them are recognised through ``adapter.special_ids``.
    """

    model_name: str = ""
    layer: int | None = None
    adapter: Any = None
    train_activations: ActivationSource | None = None
    eval_activations: Callable[[], Iterable[torch.Tensor]] | None = None
    eval_windows: Sequence[torch.Tensor] | torch.Tensor | None = None
    massive_dims: list[int] = field(default_factory=list)
    device: str = "cpu"
    seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def hook_name(self) -> str:
        """TransformerLens hook of this context's layer (``blocks.{layer}.hook_resid_pre``)."""
        if self.adapter is not None and self.layer is not None:
            return self.adapter.hook_name(self.layer)
        if self.layer is None:
            raise StageError(f"context for model {self.model_name!r} has no layer")
        return f"blocks.{self.layer}.hook_resid_pre"

    def need(self, *names: str, who: str = "this stage") -> None:
        """Raise a one-line :class:`StageError` if any of the named fields is ``None``."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise StageError(f"{who} needs {', '.join(missing)} for model {self.model_name!r}, "
                             "but the run did not provide it")


class ArtifactKind(ABC):
    """One kind of transferable artifact: how to get it on A, move it to B, and persist it."""

    name: str = ""

    @abstractmethod
    def obtain(self, context: ArtifactContext, cfg: Any) -> Any:
        """Train or load the source artifact on model A (``cfg`` is the artifact's config section)."""

    @abstractmethod
    def transfer(self, artifact: Any, stitch: Any, direction: str = "up", **target: Any) -> Any:
        """Map ``artifact`` through ``stitch`` (``"up"``: A -> B, ``"down"``: B -> A).

        ``stitch`` is any object with tensors ``P_up [dA, dB]``, ``b_up``, ``P_down [dB, dA]``,
        ``b_down``. ``target`` may name the target model and layer for the saved metadata.
        """

    @abstractmethod
    def save(self, artifact: Any, folder: str | Path, sidecar: dict | None = None) -> Path:
        """Write ``artifact`` into ``folder`` plus a JSON sidecar with provenance; return the folder."""

    @abstractmethod
    def load(self, folder: str | Path) -> Any:
        """Read an artifact written by :meth:`save` (or the library's native format)."""

    def baseline(self, like: Any, context: ArtifactContext) -> Any:
        """A random artifact of the same shape on the target model (optional)."""
        raise NotImplementedError(f"artifact {self.name!r} has no random baseline")


class Evaluator(ABC):
    """Computes metrics of an artifact on one model: ``evaluate(artifact, context) -> dict``."""

    name: str = ""
    applies_to: set[str] = set()

    @abstractmethod
    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        """Return a JSON-serialisable dict of metrics (floats, ints, lists)."""
