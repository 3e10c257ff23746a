"""The artifact contract: what a plugin fills to make ``stitchplug run --artifact NAME`` work.

An artifact plugin registers a factory returning an :class:`ArtifactKind`; an evaluator plugin
registers a factory returning an :class:`Evaluator`. Both receive an :class:`ArtifactContext`: what
a stage knows about one model at one layer (adapter, activations, documents, held-out windows,
the stitch, the other side's context, the run folder, the kind's config). Fields a given artifact
or evaluator does not need may stay ``None``; whoever needs a missing field calls
:meth:`ArtifactContext.need`, which raises a one-line :class:`~stitchplug.errors.StageError`.

Every optional capability of a kind is declared here with a default, so the pipeline asks and never
probes: ``check`` (no-op), ``supports_baseline``/``baseline`` (off), ``extra_arms`` (none),
``diagnose`` (None: skipped), ``aggregate`` (None: no step across arms), ``report_markdown`` (None:
no section), ``summary`` (no lines).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Sequence

import torch

from .errors import StageError
from .hooks import resid_hook

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

    from .runfolder import RunFolder

ActivationSource = Callable[..., Iterator[torch.Tensor]]
"""``source(batch_size=..., seed=...) -> iterator of [batch, d] float tensors``."""


@dataclass
class Example:
    """One labelled text: what a probing task trains and evaluates on."""

    text: str
    label: Any
    doc_id: Any = None


@dataclass
class ArtifactContext:
    """What a stage knows about one model (``side``: ``"source"`` = A or ``"target"`` = B) at one layer.

    Activations: ``train_activations(batch_size, seed)`` yields cached training batches ``[batch, d]``
    (it may be endless; the consumer stops; under torchrun, in a ``data_parallel`` kind's ``obtain``,
    this rank's share of each global batch, see :attr:`ArtifactKind.data_parallel`); ``eval_activations()`` yields a *fresh, finite* pass over
    the cache's held-out batches each call. ``activations_of(texts)`` runs arbitrary texts through the
    model (see the method).

    Text: ``documents(split)`` yields the corpus documents of the cache's ``"train"`` or ``"eval"``
    split as dicts (``text``, ``doc_id`` and the corpus's other fields such as ``topic``), so labels
    follow the same document split as the activations; :mod:`stitchplug.examples` turns them (or a
    CSV/JSONL file) into :class:`Example` lists. ``eval_windows`` are held-out token windows (documents
    after the cached slice), a list of 1-D ``LongTensor`` or one ``[n, T]`` tensor, tokenised for
    ``adapter``.

    The run: ``stitch`` (A -> B; ``stitch.up``/``stitch.down``), ``other`` (the context of the other
    model at its stitch layer, so a kind can move an artifact in both directions), ``folder`` (the
    :class:`~stitchplug.runfolder.RunFolder`), ``config`` (the kind's validated config section).

    ``inputs`` holds the artifacts of the kinds this kind builds on (:attr:`ArtifactKind.requires`),
    by kind and role: ``inputs["sae"]["source"]`` (on A), ``["transferred"]``, ``["random"]`` and
    ``["native"]`` (on B, when asked for); the pipeline fills it on both contexts before ``obtain``.

    ``memo`` is scratch space evaluators share within one run (e.g. one activation pass per artifact);
    it is not configuration.
    """

    model_name: str = ""
    layer: int | None = None
    adapter: Any = None
    side: str | None = None
    train_activations: ActivationSource | None = None
    eval_activations: Callable[[], Iterable[torch.Tensor]] | None = None
    eval_windows: Sequence[torch.Tensor] | torch.Tensor | None = None
    documents: Callable[[str], Iterator[dict]] | None = None
    massive_dims: list[int] = field(default_factory=list)
    stitch: Any = None
    other: "ArtifactContext | None" = field(default=None, repr=False)
    folder: "RunFolder | None" = None
    config: "BaseModel | None" = None
    device: str = "cpu"
    seed: int = 0
    loss_batch_size: int = 4
    progress: bool = True
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def hook_name(self) -> str:
        """TransformerLens hook of this context's layer (see :mod:`stitchplug.hooks`)."""
        if self.adapter is not None and self.layer is not None:
            return self.adapter.hook_name(self.layer)
        if self.layer is None:
            raise StageError(f"context for model {self.model_name!r} has no layer")
        return resid_hook(self.layer)

    def need(self, *names: str, who: str = "this stage") -> None:
        """Raise a one-line :class:`StageError` if any of the named fields is ``None``."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise StageError(f"{who} needs {', '.join(missing)} for model {self.model_name!r}, "
                             "but the run did not provide it")

    def activations_of(self, texts: Sequence[str], max_tokens: int | None = None) -> list[torch.Tensor]:
        """Residual activations ``[n_tokens, d]`` of each text at this context's layer (special
        tokens such as BOS dropped), one forward pass per text, truncated to ``max_tokens``."""
        self.need("adapter", "layer", who="activations_of")
        out = []
        for text in texts:
            enc = self.adapter.encode(text)
            ids = enc.ids if max_tokens is None else enc.ids[:max_tokens]
            keep = ~enc.special[: ids.shape[0]]
            act = self.adapter.capture(ids[None], [self.layer])[self.layer][0]
            out.append(act[keep.to(act.device)].float().cpu())
        return out

    def generate(self, prompt: str, patch: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 max_new_tokens: int = 32, temperature: float = 0.0, seed: int | None = None) -> str:
        """Continue ``prompt`` with this context's model, applying ``patch(resid) -> resid`` at this
        context's layer's ``hook_resid_pre`` on every forward pass (e.g. adding a steering vector)."""
        self.need("adapter", who="generation")
        patches = {self.layer: patch} if patch is not None else None
        if patch is not None:
            self.need("layer", who="patched generation")
        return self.adapter.generate(prompt, max_new_tokens=max_new_tokens, patches=patches,
                                     temperature=temperature, seed=self.seed if seed is None else seed)


@dataclass
class Arm:
    """One artifact evaluated on one model: evaluators run on ``artifact`` with ``context``."""

    artifact: Any
    context: ArtifactContext


class ArtifactKind(ABC):
    """One kind of transferable artifact: how to get it on A, move it to B, persist and judge it.

    Required: :meth:`obtain`, :meth:`transfer`, :meth:`save`, :meth:`load`. Declared with defaults:
    ``config_class`` (None: the kind takes no config section), ``presets`` (per ``--preset`` name, the
    values of the kind's section), ``requires`` with :meth:`required_roles` (kinds this one builds
    on), ``supports_baseline`` with :meth:`baseline`, ``supports_native`` with :meth:`native`,
    :meth:`check`, :meth:`extra_arms`, :meth:`diagnose`, :meth:`report_markdown`, :meth:`summary`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar["type[BaseModel] | None"] = None
    """Pydantic model of the kind's config section (``RUN_CONFIG[name]``, flags ``--<name>-<field>``)."""
    presets: ClassVar[dict[str, dict]] = {}
    """``{preset name: {field: value}}`` merged into the kind's section by ``--preset``."""
    supports_baseline: ClassVar[bool] = False
    """Whether :meth:`baseline` builds a random artifact on B (then the ``random`` arm is evaluated)."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Kinds this kind builds on (e.g. ``("sae",)``): before this kind's ``obtain`` the pipeline runs
    their ``source``, ``transfer`` and ``baseline`` stages (and ``native`` when asked for, see
    :meth:`required_roles`) under their own names and config sections, once per run folder, and puts
    their artifacts in ``context.inputs[kind][role]``. A plugin never imports another plugin."""
    supports_native: ClassVar[bool] = False
    """Whether :meth:`native` builds the kind's artifact on B at a given artifact's budget (the
    ``native`` role a dependent kind may ask for)."""
    layout: ClassVar[int] = 0
    """Version of what the kind's stages write (bump it when their outputs change meaning): a run
    folder whose stages of this kind were finished under another layout is refused with a one-line
    error naming the stages to delete, never mixed with the new outputs. 0: never changed."""
    data_parallel: ClassVar[bool] = False
    """Whether :meth:`obtain` runs on every rank under torchrun (``stitchplug run`` launched with
    ``torchrun --nproc-per-node N``). Then, during ``obtain`` only, ``context.train_activations(batch_size)``
    yields on each rank its share (rows ``rank::N``) of every global batch of ``batch_size`` rows, and
    ``obtain`` must make the ranks agree (e.g. ``DistributedDataParallel``); rank 0's artifact is saved.
    False: ``obtain`` runs on rank 0 alone, like every other stage of a kind."""

    @abstractmethod
    def obtain(self, context: ArtifactContext, cfg: Any) -> Any:
        """Train or load the source artifact on model A (``cfg`` is the kind's config section;
        ``context.other`` is B's context, ``context.stitch`` the stitch)."""

    @abstractmethod
    def transfer(self, artifact: Any, stitch: Any, direction: str = "up", **target: Any) -> Any:
        """Map ``artifact`` through ``stitch`` (``"up"``: A -> B, ``"down"``: B -> A).

        ``stitch`` is any object with tensors ``P_up [dA, dB]``, ``b_up``, ``P_down [dB, dA]``,
        ``b_down``. ``target`` may name the target model and layer (``target_model``, ``target_hook``).
        """

    @abstractmethod
    def save(self, artifact: Any, folder: str | Path, sidecar: dict | None = None) -> Path:
        """Write ``artifact`` into ``folder`` plus a JSON sidecar with provenance; return the folder."""

    @abstractmethod
    def load(self, folder: str | Path) -> Any:
        """Read an artifact written by :meth:`save` (or the library's native format)."""

    # -- optional capabilities, declared with their defaults -------------------------------
    def preflight(self, cfg: Any) -> None:
        """Check the kind's inputs (task files, prompt files: columns, classes) from its validated config
        section, before the run folder is created or any stage runs; raise a one-line error. The core
        has already checked that every ``file:`` input exists and is non-empty text. Default: accept."""

    def check_required(self, cfg: Any, required: dict[str, Any]) -> None:
        """Cross-section rules between the kind's config section ``cfg`` and the sections of the kinds it
        builds on (``required``: name -> validated section), checked with :meth:`preflight`; raise
        ``ConfigError("invalid config: <section>: why")``. Default: accept."""

    def check(self, artifact: Any, stitch: Any, direction: str = "up") -> None:
        """Validate before transferring (widths, models, layers); raise a one-line StageError. Default: accept."""

    def baseline(self, like: Any, context: ArtifactContext) -> Any:
        """A random artifact shaped like ``like`` on ``context``'s model; only called when
        ``supports_baseline`` is true."""
        raise StageError(f"artifact kind {self.name!r} has no random baseline")

    def required_roles(self, cfg: Any) -> tuple[str, ...]:
        """Roles of each required kind's artifacts this kind reads, from ``source``, ``transferred``,
        ``random`` (kinds with a baseline) and ``native`` (kinds with ``supports_native``; trained on B,
        so ask only when needed). ``cfg`` is this kind's config section. Default: the first three."""
        return ("source", "transferred", "random")

    def native(self, like: Any, context: ArtifactContext, cfg: Any) -> Any:
        """The kind's artifact obtained on ``context``'s model (B) at the budget of ``like`` (the
        source artifact), as the native reference; only called when ``supports_native`` is true."""
        raise StageError(f"artifact kind {self.name!r} has no native artifact")

    def extra_arms(self, source: Any, transferred: Any, source_context: ArtifactContext,
                   target_context: ArtifactContext) -> dict[str, Arm]:
        """Further arms the evaluators should judge, by label (e.g. a native artifact trained on B,
        a transfer B -> A). Called once inside the ``evaluate`` stage (so a re-run reuses the
        results); save anything worth keeping under ``context.folder.artifact(self.name, role)``.
        Default: none."""
        return {}

    def diagnose(self, source: Any, transferred: Any, stitch: Any, target: ArtifactContext,
                 source_context: ArtifactContext | None = None) -> dict | None:
        """Kind-specific diagnostics stored under ``diagnostics`` in the kind's metrics (None: none)."""
        return None

    def aggregate(self, results: dict, cfg: Any) -> dict | None:
        """The step across arms: from ``results`` (``{arm label: {evaluator: metrics}}``, the
        evaluate stage's), the means, intervals and gaps to the native and random arms the report
        shows (:mod:`stitchplug.arms` has the statistics). Stored as ``aggregate`` in the kind's
        metrics; None: no such entry."""
        return None

    def report_markdown(self, metrics: dict, folder: "RunFolder") -> str | None:
        """The kind's ``report.md`` section from the whole ``metrics.json`` (the kind's results are
        ``metrics[self.name]``); write plots to ``folder.plot(name)``. None: no section."""
        return None

    def summary(self, results: dict) -> list[str]:
        """Lines ``stitchplug run`` prints at the end, from the kind's metrics section. Default: none."""
        return []


class Evaluator(ABC):
    """Computes metrics of an artifact on one model: ``evaluate(artifact, context) -> dict``."""

    name: str = ""
    applies_to: set[str] = set()
    """Artifact kind names this evaluator judges."""

    @abstractmethod
    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        """Return a JSON-serialisable dict of metrics (floats, ints, lists)."""

    def evaluate_arms(self, arms: dict[str, Arm], log: Callable[[str], None] | None = None) -> dict[str, dict]:
        """``{label: metrics}`` for every arm of a run; what the pipeline's evaluate stage calls.

        Default: :meth:`evaluate` on each arm in turn. Override it when the arms share work (one
        pass over the same texts for all of them); the result per arm must equal :meth:`evaluate`'s."""
        out = {}
        for label, arm in arms.items():
            if log is not None:
                log(f"  {self.name} on {label}")
            out[label] = self.evaluate(arm.artifact, arm.context)
        return out
