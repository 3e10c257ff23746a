"""Two control SAEs on B that define "random" by measurement (issue 25), beside the SAE run's random SAE.

- :func:`random_unit_sae` (arm ``random_unit_B``): a TopK SAE whose encoder rows are i.i.d. uniformly
  random unit directions ``u_i`` of B's space, ``b_enc = 0``, reading ``x - mean`` (``mean``: the mean
  of B's activations); latent ``i`` is ``<x - mean, u_i>`` when it is among the ``k`` largest. Width
  and ``k`` are the native SAE's. It has no trained weight at all.
- :func:`shuffled_sae` (arm ``shuffled_B``): the native SAE on B with every latent's encoder column
  and decoder row permuted across the input dimensions, by one random permutation per latent (the
  same one for its encoder and decoder). Each latent keeps its weight values, norms and biases
  (``b_enc``, ``b_dec``, ``k`` unchanged); only which dimension each weight reads and writes is
  scrambled. It keeps everything of training except the alignment with B's directions.
"""

from __future__ import annotations

import torch


def _topk_from(like, tensors: dict[str, torch.Tensor], *, d_in: int, width: int, k: int, meta: dict):
    from sae_lens import SAE

    cfg = like.cfg.to_dict() if like is not None else {}
    if like is None or like.cfg.architecture() != "topk":
        from sae_lens import TopKSAEConfig

        cfg = TopKSAEConfig(d_in=d_in, d_sae=width, k=k).to_dict()
    cfg.update(d_in=int(d_in), d_sae=int(width), k=int(k), apply_b_dec_to_input=True, device="cpu",
               normalize_activations="none")
    if "rescale_acts_by_decoder_norm" in cfg:
        cfg["rescale_acts_by_decoder_norm"] = False
    md = dict(cfg.get("metadata") or {})
    md.update(meta)
    cfg["metadata"] = md
    sae = SAE.from_dict(cfg)
    state = sae.state_dict()
    state.update({n: t.to(state[n].dtype).contiguous() for n, t in tensors.items()})
    sae.load_state_dict(state)
    return sae


@torch.no_grad()
def random_unit_sae(d_in: int, width: int, k: int, mean: torch.Tensor, seed: int = 0, like=None):
    """TopK SAE with random unit encoder rows reading ``x - mean`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(width, d_in, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    return _topk_from(like, {"W_enc": u.T, "b_enc": torch.zeros(width, dtype=torch.float64), "W_dec": u,
                             "b_dec": mean.detach().double().cpu().reshape(d_in)},
                      d_in=d_in, width=width, k=k, meta={"stitchplug_control": {"kind": "random_unit", "seed": seed}})


@torch.no_grad()
def shuffled_sae(sae, seed: int = 0):
    """``sae`` (a TopK SAE) with each latent's weights permuted across input dimensions (module docstring)."""
    if sae.cfg.architecture() != "topk":
        from stitchplug.api import StageError

        raise StageError(f"the shuffled control needs a TopK SAE, not {sae.cfg.architecture()!r}")
    W_enc, W_dec = sae.W_enc.detach().double().cpu(), sae.W_dec.detach().double().cpu()
    d_in, width = W_enc.shape
    gen = torch.Generator().manual_seed(seed)
    perm = torch.rand(width, d_in, generator=gen).argsort(dim=1)  # one permutation of d_in per latent
    enc = W_enc.T.gather(1, perm)
    dec = W_dec.gather(1, perm)
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):  # fold it in: the copy reads plain pre-activations
        n = W_dec.norm(dim=1)
        enc, dec = enc * n[:, None], dec / n[:, None]
        b_enc = sae.b_enc.detach().double().cpu() * n
    else:
        b_enc = sae.b_enc.detach().double().cpu()
    b_dec = sae.b_dec.detach().double().cpu()
    if not sae.cfg.apply_b_dec_to_input:  # the copy subtracts b_dec; keep b_enc's meaning for a zero shift
        b_enc = b_enc + b_dec @ enc.T
    return _topk_from(sae, {"W_enc": enc.T, "b_enc": b_enc, "W_dec": dec, "b_dec": b_dec}, d_in=d_in,
                      width=width, k=int(sae.cfg.k), meta={"stitchplug_control": {"kind": "shuffled", "seed": seed}})
