"""Eq. 6: an SAE on A becomes an SAE on B through a stitch, plus the random same-shape baseline.

A SAELens SAE computes (row vectors)::

    f(x)   = act((norm(x) - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)
    SAE(x) = f(x) @ W_dec + b_dec

TopK SAEs with ``rescale_acts_by_decoder_norm`` additionally scale the pre-activation by the decoder
row norms and divide them back out before decoding; :func:`canonical_weights` folds that into
``W_enc``/``b_enc``/``W_dec`` so every supported SAE reads ``act(x @ W_e + b_e) @ W_d + b_d`` with
``b_e = b_enc - b_dec @ W_enc`` when the input bias is applied. The transferred SAE
``T_up o SAE_A o T_down`` then has (paper Eq. 6 with the input bias folded in)::

    W_e' = P_down @ W_e            b_e' = (b_down - b_dec * apply_b_dec_to_input) @ W_enc + b_enc
    W_d' = W_d @ P_up              b_d' = b_d @ P_up + b_up

and ``apply_b_dec_to_input = False``. Thresholds (JumpReLU) and ``k`` (TopK) are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import SAE

from ..errors import StageError
from ..hooks import hook_layer, resid_hook

SUPPORTED = ("standard", "topk", "jumprelu")


def _maps(stitch: Any, direction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P_in, b_in, P_out, b_out): the map into the SAE's space and the map out of it."""
    try:
        P_up, b_up, P_down, b_down = (getattr(stitch, n).detach() for n in ("P_up", "b_up", "P_down", "b_down"))
    except AttributeError as exc:
        raise StageError(f"the stitch object has no tensor {exc.name!r} (need P_up, b_up, P_down, b_down)") from None
    if direction == "up":
        return P_down, b_down, P_up, b_up
    if direction == "down":
        return P_up, b_up, P_down, b_down
    raise StageError(f"transfer direction must be 'up' or 'down', not {direction!r}")


def architecture(sae: SAE) -> str:
    return sae.cfg.architecture()


def check_supported(sae: SAE) -> None:
    """Refuse SAEs that Eq. 6 cannot map exactly (other architectures, per-token normalisation)."""
    arch = architecture(sae)
    if arch not in SUPPORTED:
        raise StageError(f"cannot transfer a {arch!r} SAE (supported architectures: {', '.join(SUPPORTED)})")
    norm = sae.cfg.normalize_activations
    if norm != "none":
        raise StageError(f"cannot transfer an SAE with normalize_activations={norm!r}: fold the normalisation "
                         "into its weights first (e.g. sae.fold_activation_norm_scaling_factor)")
    if sae.cfg.reshape_activations != "none":
        raise StageError(f"cannot transfer an SAE with reshape_activations={sae.cfg.reshape_activations!r}: "
                         "a stitch maps residual-stream activations")


@torch.no_grad()
def canonical_weights(sae: SAE) -> dict[str, torch.Tensor]:
    """``W_enc, b_enc, W_dec, b_dec`` (float64) with TopK decoder-norm rescaling folded in, plus the
    input-bias-free encoder bias ``b_e = b_enc - b_dec @ W_enc`` (when the SAE subtracts b_dec)."""
    check_supported(sae)
    W_enc = sae.W_enc.detach().double().cpu()
    b_enc = sae.b_enc.detach().double().cpu()
    W_dec = sae.W_dec.detach().double().cpu()
    b_dec = sae.b_dec.detach().double().cpu()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        norms = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    b_e = b_enc - b_dec @ W_enc if sae.cfg.apply_b_dec_to_input else b_enc.clone()
    return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "b_e": b_e}


_layer_of = hook_layer


def check_compatible(sae: SAE, stitch: Any, direction: str = "up", check_model: bool = True) -> None:
    """One-line :class:`StageError` unless ``sae`` fits the input side of ``stitch``.

    Checks the width (``d_in`` against ``dA`` for ``up``), and, when both sides record them, the
    model name and the layer of the SAE's ``blocks.{l}.hook_resid_pre`` hook against the stitch's
    metadata (``stitch.meta``: ``source_model``/``source_layer`` for ``up``, ``target_*`` for ``down``).
    """
    P_in, _, _, _ = _maps(stitch, direction)
    side = "source" if direction == "up" else "target"
    d_side = int(P_in.shape[1])
    if int(sae.cfg.d_in) != d_side:
        raise StageError(f"SAE width mismatch: the SAE reads d_in={sae.cfg.d_in} but the stitch's {side} "
                         f"side has width {d_side}")
    meta = getattr(stitch, "meta", None) or {}
    md = sae.cfg.metadata
    want_model = meta.get(f"{side}_model")
    if check_model and want_model and md.get("model_name") and md.get("model_name") != want_model:
        raise StageError(f"the SAE was trained on model {md.get('model_name')!r} but the stitch's {side} "
                         f"model is {want_model!r}")
    want_layer = meta.get(f"{side}_layer")
    hook = md.get("hook_name")
    if want_layer is not None and hook:
        layer = _layer_of(hook)
        if layer is None:
            raise StageError(f"the SAE reads hook {hook!r} but the stitch maps {resid_hook(int(want_layer))}")
        if layer != int(want_layer):
            raise StageError(f"the SAE reads layer {layer} ({hook}) but the stitch's {side} layer is {want_layer}")


def _build(like: SAE, d_in: int, tensors: dict[str, torch.Tensor], *, apply_b_dec_to_input: bool,
           rescale: bool | None, metadata: dict[str, Any]) -> SAE:
    """A new SAE of ``like``'s inference class and config with new width, tensors and metadata."""
    cfg = like.cfg.to_dict()
    cfg.update(d_in=int(d_in), apply_b_dec_to_input=apply_b_dec_to_input, device="cpu")
    if rescale is not None and "rescale_acts_by_decoder_norm" in cfg:
        cfg["rescale_acts_by_decoder_norm"] = rescale
    meta = dict(cfg.get("metadata") or {})
    meta.update(metadata)
    cfg["metadata"] = meta
    new = SAE.from_dict(cfg)
    state = {k: v.detach().clone().cpu() for k, v in like.state_dict().items()}
    dtype = like.dtype
    for name, value in tensors.items():
        state[name] = value.to(dtype).contiguous()
    new.load_state_dict(state)
    return new.to(like.device)


@torch.no_grad()
def transfer_sae(sae: SAE, stitch: Any, direction: str = "up", *, target_model: str | None = None,
                 target_hook: str | None = None, check_model: bool = True) -> SAE:
    """The SAE ``T_out o SAE o T_in`` for the other model (Eq. 6, exact up to float rounding).

    ``direction="up"`` maps an SAE on A to B (``T_in = T_down``, ``T_out = T_up``); ``"down"`` the
    reverse. The result has the source's class, ``k`` and thresholds, ``d_in`` of the other model,
    ``apply_b_dec_to_input=False`` and (TopK) ``rescale_acts_by_decoder_norm=False``; its metadata
    names ``target_model``/``target_hook`` (default: taken from ``stitch.meta``) and records the source.
    """
    check_compatible(sae, stitch, direction, check_model=check_model)
    P_in, b_in, P_out, b_out = (t.double().cpu() for t in _maps(stitch, direction))
    w = canonical_weights(sae)
    new_w = {
        "W_enc": P_in @ w["W_enc"],
        "b_enc": b_in @ w["W_enc"] + w["b_e"],
        "W_dec": w["W_dec"] @ P_out,
        "b_dec": w["b_dec"] @ P_out + b_out,
    }
    meta = getattr(stitch, "meta", None) or {}
    other = "target" if direction == "up" else "source"
    if target_model is None:
        target_model = meta.get(f"{other}_model")
    if target_hook is None and meta.get(f"{other}_layer") is not None:
        target_hook = resid_hook(int(meta[f"{other}_layer"]))
    md = sae.cfg.metadata
    return _build(sae, P_out.shape[1], new_w, apply_b_dec_to_input=False, rescale=False, metadata={
        "model_name": target_model, "hook_name": target_hook,
        "stitchplug_transferred_from": {"model_name": md.get("model_name"), "hook_name": md.get("hook_name"),
                                        "direction": direction},
    })


@torch.no_grad()
def random_sae_like(sae: SAE, b_dec: torch.Tensor | None = None, seed: int = 0) -> SAE:
    """A random SAE of ``sae``'s architecture and shape: the baseline on the target model.

    Decoder rows are random unit directions ``u_i`` scaled by ``sae``'s own decoder row norms ``s_i``
    (in order); encoder columns are ``u_i / s_i`` (the decoder transpose, rescaled so a latent reads
    ``<x - b_dec, u_i> / s_i`` and writes back ``<x - b_dec, u_i> u_i``). ``b_enc = 0``,
    ``apply_b_dec_to_input=True`` and ``b_dec`` is the given vector (the caller should pass the mean of
    the target's activations) or else ``sae``'s own ``b_dec``. TopK keeps ``k`` and selects by
    ``<x - b_dec, u_i>`` (decoder-norm rescaling on); JumpReLU keeps ``sae``'s thresholds.
    """
    check_supported(sae)
    w = canonical_weights(sae)
    gen = torch.Generator().manual_seed(seed)
    d_sae, d_in = w["W_dec"].shape
    u = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    s = w["W_dec"].norm(dim=-1).clamp_min(1e-8)
    tensors = {
        "W_dec": u * s[:, None],
        "W_enc": (u / s[:, None]).T.contiguous(),
        "b_enc": torch.zeros(d_sae, dtype=torch.float64),
        "b_dec": (b_dec.detach().double().cpu() if b_dec is not None else w["b_dec"]).reshape(d_in),
    }
    rescale = True if architecture(sae) == "topk" else None
    return _build(sae, d_in, tensors, apply_b_dec_to_input=True, rescale=rescale,
                  metadata={"stitchplug_random_baseline": {"seed": seed}})
