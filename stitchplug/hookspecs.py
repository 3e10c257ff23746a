"""Hook specifications: one ``register_*`` hook per extension point.

Every hook receives a ``register`` callable with the signature
``register(name, factory, description="", source="")``. ``factory`` is called lazily,
only when the registered thing is used, so listing plugins never loads a model.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("stitchplug")
hookimpl = HookimplMarker("stitchplug")


@hookspec
def register_models(register):
    """Register model adapters.

    ``factory(device="cpu", dtype="float32", cache_dir=None, **kwargs)`` returns a
    :class:`stitchplug.adapter.ModelAdapter` (usually a ``TLAdapter`` wrapping a
    TransformerLens ``HookedTransformer``).
    """


@hookspec
def register_corpora(register):
    """Register text sources.

    ``factory(**kwargs)`` returns an iterable of dicts with at least ``text`` and ``doc_id``
    (extra fields such as ``title`` or ``topic`` are kept for probing tasks).
    """


@hookspec
def register_artifacts(register):
    """Register transferable artifacts (SAE, probe, steering vector).

    ``factory()`` returns an object implementing :class:`stitchplug.artifacts.ArtifactKind`:
    how to obtain the source artifact, transfer it through a stitch, and save/load it.
    """


@hookspec
def register_evaluators(register):
    """Register evaluators.

    ``factory()`` returns an object implementing :class:`stitchplug.artifacts.Evaluator`:
    ``applies_to`` (artifact kinds) and ``evaluate(artifact, context) -> dict`` of metrics.
    """


@hookspec
def register_aligners(register):
    """Register token aligners for pairs of tokenizers.

    ``factory()`` returns a callable ``align(ends_a, ends_b) -> (idx_a, idx_b)`` taking the
    character end offsets of two tokenisations of the same text (``-1`` for special tokens)
    and returning the index pairs kept.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``stitchplug`` click group (``cli`` is the group)."""
