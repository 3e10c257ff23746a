"""The plain TopK SAE reference recipe of issue 9 (~40 lines of torch), used by tests and bench/sae.py.

Adam at a constant lr, loss sum_d (x_hat - x)^2 averaged over rows, decoder rows unit-norm after every
step, W_enc = W_dec^T at init, b_enc = 0, b_dec = the training mean, no auxiliary loss, the encoder
reading x - b_dec. Deliberately independent of stitchplug.sae.trainer: it is what that trainer is
measured against.
"""

import torch


def train_reference(batches, d, width, k, lr=4e-4, seed=0, b_dec_mean=None):
    """Train on ``batches`` (a list of ``[B, d]`` tensors, one step each). ``b_dec_mean`` defaults to
    the mean of all the batches. Returns ``(W_enc, b_enc, W_dec, b_dec)``."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(width, d, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.T.clone().requires_grad_()
    W_dec.requires_grad_()
    b_enc = torch.zeros(width, requires_grad=True)
    mean = torch.cat(batches).double().mean(0).float() if b_dec_mean is None else b_dec_mean
    b_dec = mean.clone().requires_grad_()
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)
    for x in batches:
        x_hat = reference_forward(x, W_enc, b_enc, W_dec, b_dec, k)
        loss = (x_hat - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
    return W_enc.detach(), b_enc.detach(), W_dec.detach(), b_dec.detach()


def reference_forward(x, W_enc, b_enc, W_dec, b_dec, k):
    pre = (x - b_dec) @ W_enc + b_enc
    vals, idx = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    return z @ W_dec + b_dec


@torch.no_grad()
def reference_codes(x, W_enc, b_enc, W_dec, b_dec, k):
    pre = (x - b_dec) @ W_enc + b_enc
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


def train_reference_from(batches, W_enc, b_enc, W_dec, b_dec, k, lr=1e-4, mode="preserve"):
    """The stitched arm, written plainly (issue 22): start from given weights of an SAE whose encoder
    reads ``x`` (as the transferred SAE theta' does: ``pre = x @ W_enc + b_enc``), Adam at a constant lr,
    one step per batch. ``mode="fold"``: decoder rows made unit norm at step 0 with their norms
    multiplied into the encoder columns and bias, then unit norm after every step; ``"preserve"``: rows
    renormalised to their step-0 norms after every step; ``"rescale"``: the trained decoder rows are
    unit norm (made so at step 0 and after every step) and the decode multiplies each by its fixed
    step-0 norm; ``"fold-rank"``: ``fold``, with TopK ranking ``pre / n`` (``n`` the step-0 norms);
    ``"unit"``: ``rescale`` with the encoder columns and bias divided by the columns' step-0 norms ``c``,
    TopK ranking ``c * pre`` and the decode multiplying each row by ``n * c``.
    Returns the trained weights as a plain TopK SAE computing the same function (rows times their
    scale; under ``fold-rank`` the ranking scale divided out of the encoder and into the rows)."""
    W_enc, b_enc, W_dec, b_dec = (t.detach().float().clone() for t in (W_enc, b_enc, W_dec, b_dec))
    norms = W_dec.norm(dim=1)
    scale = torch.ones_like(norms)
    rank = torch.ones_like(norms) if mode != "fold-rank" else norms.clone()
    if mode in ("fold", "fold-rank"):
        W_dec, W_enc, b_enc, norms = W_dec / norms[:, None], W_enc * norms, b_enc * norms, torch.ones_like(norms)
    elif mode == "rescale":
        W_dec, scale, norms = W_dec / norms[:, None], norms, torch.ones_like(norms)
    elif mode == "unit":
        c = W_enc.norm(dim=0)
        W_dec, W_enc, b_enc = W_dec / norms[:, None], W_enc / c, b_enc / c
        scale, rank, norms = norms * c, 1.0 / c, torch.ones_like(norms)
    params = [p.requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]
    opt = torch.optim.Adam(params, lr=lr)
    for x in batches:
        pre = x @ W_enc + b_enc
        idx = (pre / rank).topk(k, dim=-1).indices
        vals = pre.gather(-1, idx)
        x_hat = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ (W_dec * scale[:, None]) + b_dec
        loss = (x_hat - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec *= (norms / W_dec.norm(dim=1))[:, None]
    # as a plain TopK SAE (ranks pre, decodes z @ W_dec): the ranking scale out of the encoder, into the rows
    return (W_enc / rank).detach(), (b_enc / rank).detach(), (W_dec * (scale * rank)[:, None]).detach(), b_dec.detach()


def reference_ev_x(x, W_enc, b_enc, W_dec, b_dec, k):
    """Explained variance of an SAE whose encoder reads ``x`` on rows ``x``."""
    with torch.no_grad():
        pre = x @ W_enc + b_enc
        vals, idx = pre.topk(k, dim=-1)
        x_hat = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ W_dec + b_dec
        return float(1 - (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
