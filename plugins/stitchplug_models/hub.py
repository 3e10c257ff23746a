"""TransformerLens official models loaded from the Hugging Face hub (``gpt2``, ``tl:<official name>``, ...).

Before anything is downloaded the loader decides quickly whether the hub can be used: with
``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, or when a ~3 s TCP connect to the hub host (or the
HTTPS proxy) fails, it only accepts models already in the local HF cache and otherwise raises a
one-line :class:`~stitchplug.errors.ModelLoadError` naming the offline models.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import urlparse

from stitchplug.api import TLAdapter
from stitchplug.api import ModelLoadError

from ._common import OFFLINE_MODELS, hf_offline, model_on, torch_dtype

PROBE_TIMEOUT_S = 3.0

SHORT_NAMES: dict[str, tuple[str, str]] = {
    "gpt2": ("gpt2", "GPT-2 small: d_model 768, 12 layers"),
    "gpt2-medium": ("gpt2-medium", "GPT-2 medium: d_model 1024, 24 layers"),
    "pythia-70m-deduped": ("EleutherAI/pythia-70m-deduped", "Pythia-70M deduped: d_model 512, 6 layers"),
    "pythia-160m-deduped": ("EleutherAI/pythia-160m-deduped", "Pythia-160M deduped: d_model 768, 12 layers"),
    "gemma-2-2b": ("google/gemma-2-2b", "Gemma-2-2B: d_model 2304, 26 layers"),
    "gemma-2-9b": ("google/gemma-2-9b", "Gemma-2-9B: d_model 3584, 42 layers"),
}
"""Short names for the paper's model pairs -> (TransformerLens official name, description)."""

_probe_cache: dict[tuple[str, int], tuple[float, bool]] = {}


def official_names() -> list[str]:
    """Every model name TransformerLens supports officially (no network).

    Read from ``transformer_lens/supported_models.py`` alone (a plain list, no imports) when that file
    exists: importing the ``transformer_lens`` package takes seconds, and registering models (every
    CLI call, ``--help`` included) must not pay it. Other TransformerLens layouts fall back to the import.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("transformer_lens")  # locates the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "supported_models.py"
        if path.is_file():
            try:
                sub = importlib.util.spec_from_file_location("_stitchplug_tl_supported_models", path)
                mod = importlib.util.module_from_spec(sub)
                sub.loader.exec_module(mod)
                return list(mod.OFFICIAL_MODEL_NAMES)
            except Exception:  # noqa: BLE001 - a changed layout: the package import below decides
                break
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    return list(OFFICIAL_MODEL_NAMES)


def _env_true(key: str) -> bool:
    return os.environ.get(key, "").strip().lower() in ("1", "true", "yes", "on")


def forced_offline() -> bool:
    """True when the user switched the hub off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _probe_target() -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the hub host (or HTTPS proxy) within ``timeout`` s; cached for 30 s.

    Name resolution runs in a daemon thread so a hanging DNS lookup cannot exceed the timeout.
    """
    target = _probe_target()
    hit = _probe_cache.get(target)
    if hit is not None and time.monotonic() - hit[0] < 30:
        return hit[1]
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(target, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    ok = bool(result and result[0])
    _probe_cache[target] = (time.monotonic(), ok)
    return ok


def in_local_cache(official: str) -> bool:
    """True when the model's ``config.json`` is already in the local Hugging Face cache."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    found = try_to_load_from_cache(official, "config.json", cache_dir=constants.HF_HUB_CACHE)
    return isinstance(found, str)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load(name: str, official: str, device: str = "cpu", dtype: str = "float32",
         cache_dir: str | None = None, **kwargs: object) -> TLAdapter:
    """Factory for a hub model: ``HookedTransformer.from_pretrained_no_processing(official)``.

    ``cache_dir`` (the stitchplug cache) is not used: hub weights live in the HF cache.
    """
    from transformer_lens import HookedTransformer

    tdtype = torch_dtype(dtype)
    offline = forced_offline() or not hub_reachable()
    if offline and not in_local_cache(official):
        why = "offline mode is set (HF_HUB_OFFLINE)" if forced_offline() else "the Hugging Face hub is unreachable"
        raise ModelLoadError(
            f"cannot load model {name!r} ({official}): {why} and it is not in the local HF cache; "
            f"models that work offline: {', '.join(OFFLINE_MODELS)}")
    try:
        if offline:
            with hf_offline():
                model = HookedTransformer.from_pretrained_no_processing(official, device="cpu", dtype=tdtype, **kwargs)
        else:
            model = HookedTransformer.from_pretrained_no_processing(official, device="cpu", dtype=tdtype, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # hub errors (gated repo, 404, network drop) come in many types
        raise ModelLoadError(f"cannot load model {name!r} ({official}) from the hub: {_one_line(exc)}") from exc
    model = model_on(model, device, tdtype)
    tok = model.tokenizer
    bos = getattr(tok, "bos_token_id", None)
    adapter = TLAdapter(name, model, tok, prepend_bos=bool(model.cfg.default_prepend_bos and bos is not None),
                        bos_id=bos)
    adapter.source = f"hub (TransformerLens official name {official})"
    return adapter
