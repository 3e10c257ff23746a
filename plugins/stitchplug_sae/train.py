"""Train a TopK SAE with sae-lens's ``SAETrainer`` on any stream of ``[batch, d_in]`` activations.

Activations are used unnormalised (``normalize_activations="none"``), as in the paper. ``b_dec`` starts
at the mean of the first batches (the residual stream's massive dimensions have a large mean, so a
zero ``b_dec`` wastes the first steps on learning it). Training is deterministic for a given seed and
batch order. Returns an *inference* ``TopKSAE`` (decoder rows folded to unit norm) plus a summary of
the training curve.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Iterator

import torch
from sae_lens import SAE, LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig

from stitchplug.api import StageError


def rebatch(batches: Iterable[torch.Tensor], batch_size: int, d_in: int, max_tokens: int | None = None,
            restart: bool = True) -> Iterator[torch.Tensor]:
    """Yield float32 ``[batch_size, d_in]`` tensors from batches of any size.

    If ``batches`` is re-iterable (not a one-shot iterator) and ``restart`` is true it is walked again
    when exhausted (another epoch); a one-shot iterator simply ends. Stops after ``max_tokens``.
    """
    one_shot = iter(batches) is batches
    buf: list[torch.Tensor] = []
    have = 0
    sent = 0
    while True:
        got_any = False
        for b in batches:
            b = torch.as_tensor(b).reshape(-1, b.shape[-1])
            if b.shape[-1] != d_in:
                raise StageError(f"activation batch has width {b.shape[-1]}, the SAE expects d_in={d_in}")
            got_any = True
            buf.append(b.float())
            have += b.shape[0]
            while have >= batch_size:
                cat = torch.cat(buf)
                out, rest = cat[:batch_size], cat[batch_size:]
                buf, have = ([rest] if rest.shape[0] else []), rest.shape[0]
                yield out
                sent += batch_size
                if max_tokens is not None and sent >= max_tokens:
                    return
        if one_shot or not restart or not got_any:
            return


def _mean_of(batches: list[torch.Tensor]) -> torch.Tensor:
    x = torch.cat(batches).double()
    return x.mean(0).float()


def to_inference(sae: SAE) -> SAE:
    """The inference SAE of a sae-lens training SAE (decoder norms folded as sae-lens saves it)."""
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(state)
    cfg = sae.cfg.get_inference_sae_cfg_dict()
    new = SAE.from_dict(cfg)
    new.load_state_dict(state)
    return new


def train_topk_sae(batches: Iterable[torch.Tensor], d_in: int, *, width: int, k: int, lr: float,
                   train_tokens: int, batch_size: int, seed: int = 0, device: str = "cpu",
                   model_name: str | None = None, hook_name: str | None = None,
                   aux_loss_coefficient: float = 0.0, b_dec_init_batches: int = 8,
                   curve_points: int = 50, progress: bool = True) -> tuple[SAE, dict[str, Any]]:
    """Train a TopK SAE (width latents, k active) on ``batches`` of A's activations.

    ``batches`` yields ``[n, d_in]`` tensors of any ``n``; a re-iterable (e.g. a list, or an object
    whose ``__iter__`` starts a new epoch) is cycled until ``train_tokens`` tokens were seen. The
    paper's settings: constant lr, decoder rows kept unit-norm (sae-lens's
    ``rescale_acts_by_decoder_norm``), no auxiliary loss (``aux_loss_coefficient=0``).

    Returns ``(sae, summary)``: an inference ``TopKSAE`` with metadata ``model_name``/``hook_name`` and a
    JSON-serialisable summary (steps, tokens, seconds, first/final MSE and explained variance, a
    subsampled curve, L0 and dead latents seen by the trainer).
    """
    if train_tokens < batch_size:
        raise StageError(f"SAE train_tokens ({train_tokens}) is smaller than one batch ({batch_size})")
    if not 0 < k <= width:
        raise StageError(f"SAE k={k} must be between 1 and the width {width}")
    torch.manual_seed(seed)
    stream = rebatch(batches, batch_size, d_in, max_tokens=train_tokens)
    head = []
    for _ in range(max(1, b_dec_init_batches)):
        try:
            head.append(next(stream))
        except StopIteration:
            break
    if not head:
        raise StageError("no activations to train the SAE on (the activation stream is empty)")

    cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=width, k=k, device=device, dtype="float32",
                                apply_b_dec_to_input=True, normalize_activations="none",
                                aux_loss_coefficient=aux_loss_coefficient)
    cfg.metadata.model_name = model_name
    cfg.metadata.hook_name = hook_name
    sae = TopKTrainingSAE(cfg)
    with torch.no_grad():
        sae.b_dec.copy_(_mean_of(head).to(sae.b_dec.device))

    def provider() -> Iterator[torch.Tensor]:
        yield from head
        yield from stream

    it = provider()
    tcfg = SAETrainerConfig(total_training_samples=train_tokens, train_batch_size_samples=batch_size, lr=lr, lr_end=lr,
                            device=device, logger=LoggingConfig(log_to_wandb=False),
                            dead_feature_window=max(1, min(1000, train_tokens // batch_size // 2)))
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=it)
    mse, ev = [], []
    t0 = time.perf_counter()
    total_steps = tcfg.total_training_steps
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, desc="source SAE", leave=False)
    while trainer.n_training_steps < total_steps:
        try:
            batch = next(it)
        except StopIteration:
            break
        trainer.maybe_reset_sparsity()
        out = trainer.step(batch)
        trainer.n_training_steps += 1
        with torch.no_grad():
            x = out.sae_in.double()
            err = (out.sae_out.double() - x).pow(2).sum(-1).mean()
            var = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
            mse.append(float(err) / d_in)
            ev.append(1.0 - float(err / var))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mse=f"{mse[-1]:.4g}", ev=f"{ev[-1]:.3f}")
    if bar is not None:
        bar.close()
    trainer.set_final_sae_metadata()
    seconds = time.perf_counter() - t0
    steps = len(mse)
    if steps == 0:
        raise StageError("the activation stream ended before one full SAE training batch")
    tail = max(1, steps // 20)
    stride = max(1, math.ceil(steps / curve_points))
    summary = {
        "steps": steps,
        "tokens": steps * batch_size,
        "seconds": round(seconds, 3),
        "width": width, "k": k, "lr": lr, "batch_size": batch_size, "seed": seed,
        "aux_loss_coefficient": aux_loss_coefficient,
        "mse_first": sum(mse[:tail]) / tail,
        "mse_final": sum(mse[-tail:]) / tail,
        "explained_variance_first": sum(ev[:tail]) / tail,
        "explained_variance_final": sum(ev[-tail:]) / tail,
        "curve": {"step": list(range(0, steps, stride)), "mse": mse[::stride], "explained_variance": ev[::stride]},
        "l0_train": sae.cfg.metadata.get("l0"),
        "dead_latents_train": sae.cfg.metadata.get("num_dead_features"),
        "stopped_early": steps < total_steps,
    }
    inf = to_inference(sae)
    inf.cfg.metadata.stitchplug_training = {k_: v for k_, v in summary.items() if k_ != "curve"}
    return inf, summary
