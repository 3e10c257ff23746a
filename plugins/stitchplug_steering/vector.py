"""Language directions: residual statistics per language, difference-of-means vectors, z, transfer.

Everything is linear in the residuals, so one pass per model keeps the mean residual per language
(and the English covariance, to express offsets in English standard deviations): for any unit
vector ``v`` in that model, ``z_L = <mean_L, v>`` is the mean of ``<h, v>`` over language-L tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ._core import StageError, write_json_atomic


def normalise(v: torch.Tensor, what: str = "vector") -> torch.Tensor:
    v = v.double()
    n = v.norm()
    if not torch.isfinite(n) or n <= 0:
        raise StageError(f"cannot normalise the {what}: its norm is {float(n)}")
    return (v / n).float()


def drop_dims(v: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``v`` with ``dims`` set to zero (not renormalised)."""
    v = v.clone()
    if len(dims):
        v[list(dims)] = 0
    return v


@dataclass
class LanguageStats:
    """Mean residual per language at one layer of one model, plus the English covariance."""

    model: str
    layer: int
    means: dict[str, torch.Tensor]
    n_tokens: dict[str, int]
    en_cov: torch.Tensor | None = None
    massive_dims: list[int] = field(default_factory=list)
    texts_key: str = ""

    def z(self, v: torch.Tensor, lang: str, mode: str = "literal", scale: float = 1.0) -> float:
        """The clamp value for ``v``: literal ``scale * z_lang`` or offset ``z_en + scale (z_lang - z_en)``."""
        v = v.double()
        z_t = float(self.means[lang].double() @ v)
        if mode == "literal":
            return scale * z_t
        if mode == "offset":
            z_e = float(self.means["en"].double() @ v)
            return z_e + scale * (z_t - z_e)
        raise StageError(f"unknown z mode {mode!r} (literal, offset)")

    def projections(self, v: torch.Tensor, lang: str) -> dict:
        """``z_lang``, ``z_en`` and their offset in English standard deviations along ``v``."""
        v = v.double()
        z_t = float(self.means[lang].double() @ v)
        z_e = float(self.means["en"].double() @ v)
        out = {"z_target": z_t, "z_en": z_e}
        if self.en_cov is not None:
            sd = float((v @ self.en_cov.double() @ v).clamp_min(0).sqrt())
            out["en_sd"] = sd
            out["offset_in_en_sd"] = (z_t - z_e) / sd if sd > 0 else float("nan")
        return out

    def native(self, lang: str, exclude: Sequence[int] = ()) -> torch.Tensor:
        """Unit difference of means ``mean_lang - mean_en`` (massive ``exclude`` dims zeroed first)."""
        diff = self.means[lang].double() - self.means["en"].double()
        return normalise(drop_dims(diff, exclude), f"{lang}-en difference of means in {self.model}")

    def save(self, folder: str | Path, name: str) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"mean_{k}": v.float().contiguous() for k, v in self.means.items()}
        if self.en_cov is not None:
            tensors["en_cov"] = self.en_cov.double().contiguous()
        save_file(tensors, str(folder / f"{name}.safetensors"))
        meta = {"model": self.model, "layer": self.layer, "n_tokens": self.n_tokens,
                "massive_dims": list(self.massive_dims), "texts_key": self.texts_key}
        write_json_atomic(folder / f"{name}.json", meta)

    @classmethod
    def load(cls, folder: str | Path, name: str) -> "LanguageStats":
        from safetensors.torch import load_file

        folder = Path(folder)
        path = folder / f"{name}.safetensors"
        if not path.exists():
            raise StageError(f"language statistics {path} are missing")
        t = load_file(str(path))
        meta = json.loads((folder / f"{name}.json").read_text())
        means = {k[5:]: v for k, v in t.items() if k.startswith("mean_")}
        return cls(meta["model"], int(meta["layer"]), means, meta["n_tokens"], t.get("en_cov"),
                   meta.get("massive_dims", []), meta.get("texts_key", ""))


@torch.no_grad()
def language_stats(adapter, layer: int, texts: dict[str, Iterable[str]], max_tokens: int = 64,
                   massive_dims: Sequence[int] = (), progress: bool = False) -> LanguageStats:
    """Mean residual before ``layer`` over the non-special tokens of each language's texts
    (at most ``max_tokens`` tokens of each, BOS included in the forward pass)."""
    texts = {k: list(v) for k, v in texts.items()}
    means, counts, cov = {}, {}, None
    for lang, docs in texts.items():
        s, s2, n = None, None, 0
        for text in docs:
            enc = adapter.encode(text)
            ids, special = enc.ids[:max_tokens], enc.special[:max_tokens]
            h = adapter.capture(ids[None], [layer])[layer][0].double().cpu()
            h = h[~special]
            if h.shape[0] == 0:
                continue
            s = h.sum(0) if s is None else s + h.sum(0)
            if lang == "en":
                s2 = h.T @ h if s2 is None else s2 + h.T @ h
            n += h.shape[0]
        if n == 0:
            raise StageError(f"no {lang} tokens to take the mean residual of in {adapter.name}")
        means[lang] = (s / n).float()
        counts[lang] = n
        if lang == "en" and n > 1:
            mu = s / n
            cov = (s2 - n * torch.outer(mu, mu)) / (n - 1)
    if "en" not in means:
        raise StageError("language statistics need English texts ('en')")
    return LanguageStats(adapter.name, layer, means, counts, cov, list(massive_dims), texts_key(texts, max_tokens))


def texts_key(texts: dict[str, Iterable[str]], max_tokens: int) -> str:
    """A fingerprint of the texts and token budget statistics were computed from."""
    import hashlib

    h = hashlib.sha256(str(max_tokens).encode())
    for lang in sorted(texts):
        h.update(lang.encode())
        for t in texts[lang]:
            h.update(b"\0" + t.encode())
    return h.hexdigest()[:16]


def transfer_vector(v: torch.Tensor, P: torch.Tensor, exclude_source: Sequence[int] = (),
                    exclude_target: Sequence[int] = ()) -> torch.Tensor:
    """The paper's transfer: ``normalise(v @ P)``, no bias (a direction maps by the linear part).

    ``P`` is ``P_up [dA, dB]`` for A -> B or ``P_down [dB, dA]`` for B -> A. Massive dims given
    in ``exclude_source``/``exclude_target`` are zeroed before/after mapping.
    """
    if v.shape[-1] != P.shape[0]:
        raise StageError(f"cannot transfer a vector of width {v.shape[-1]} through a map from width {P.shape[0]}")
    w = drop_dims(v.detach().double(), exclude_source) @ P.detach().double()
    return normalise(drop_dims(w, exclude_target), "transferred vector")


def random_unit(d: int, seed: int, exclude: Sequence[int] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return normalise(drop_dims(torch.randn(d, generator=g, dtype=torch.float64), exclude), "random vector")
