"""First-party model adapters: the two offline default models, TransformerLens hub names, tiny test models.

Registered names:

- ``smollm2-135m``, ``gemma-3-270m``: real models from pip packages (GGUF, dequantised once and
  cached), see :mod:`stitchplug_models.gguf_models` (also documents the BOS choice).
- ``gpt2``, ``gpt2-medium``, ``pythia-70m-deduped``, ``pythia-160m-deduped``, ``gemma-2-2b``,
  ``gemma-2-9b`` and ``tl:<official name>`` for every TransformerLens official model: from the hub,
  see :mod:`stitchplug_models.hub`.
- ``tiny-llama-a``, ``tiny-llama-b``, ``tiny-gemma3``, ``tiny-gpt2``: random-init models for tests,
  see :mod:`stitchplug_models.tiny`.

Every factory has the signature ``factory(device="cpu", dtype="float32", cache_dir=None, **kwargs)``
and returns a :class:`stitchplug.adapter.TLAdapter`; heavy imports happen inside the factories.
``stitchplug model-info NAME...`` (:mod:`stitchplug_models.cli`) loads models and prints their facts.
"""

from __future__ import annotations

import functools

from stitchplug.api import hookimpl

from . import gguf_models, hub, tiny
from .cli import register_commands  # noqa: F401  (stitchplug model-info)


@hookimpl
def register_models(register):
    for name, spec in gguf_models.SPECS.items():
        register(name, functools.partial(gguf_models.load, name), description=spec.description,
                 source=f"offline package {spec.dist}")
    for short, (official, desc) in hub.SHORT_NAMES.items():
        register(short, functools.partial(hub.load, short, official), description=desc,
                 source=f"hub (TransformerLens official name {official})")
    for official in hub.official_names():
        name = f"tl:{official}"
        register(name, functools.partial(hub.load, name, official),
                 description=f"TransformerLens official model {official}",
                 source="hub (TransformerLens official name)")
    for name in tiny.CONFIGS:
        register(name, functools.partial(tiny.load, name), description=tiny.describe(name),
                 source="random init (tests)")
