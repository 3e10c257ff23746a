"""Transferred SAE as initialisation: trainer, data order, crossings/savings, power-law fit, end to end."""

import json
import math

import numpy as np
import pytest
import torch

from stitchplug.errors import StageError
from stitchplug_sae_init import scaling
from stitchplug_sae_init.synthetic import make_synthetic, transferred_init
from stitchplug_sae_init.experiment import (InitExperimentConfig, TopKSAE, fold_decoder_norms, run_init_experiment,
                                            run_width, selection_agreement)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(d=32, n_latents=64, k=3, n_train=6000, n_eval=800, offset_scale=1.0, seed=0)


def small_cfg(**kw):
    base = dict(steps=240, batch_size=64, lr=1e-2, eval_every=10, ma_window=3,
                thresholds=[0.5, 0.6, 0.7, 0.8], scratch_b_dec="mean")
    base.update(kw)
    return InitExperimentConfig(**base)


# --------------------------------------------------------------------------- the SAE itself


def test_fold_decoder_norms_keeps_function_when_norms_equal():
    g = torch.Generator().manual_seed(0)
    w = {"W_enc": torch.randn(16, 48, generator=g), "b_enc": torch.randn(48, generator=g),
         "W_dec": torch.randn(48, 16, generator=g), "b_dec": torch.randn(16, generator=g), "k": 5}
    unit = w["W_dec"] / w["W_dec"].norm(dim=1, keepdim=True)
    w["W_dec"] = 3.0 * unit  # all rows norm 3: TopK order is unchanged by the fold
    a, b = TopKSAE.from_weights(w), TopKSAE.from_weights(w)
    norms = fold_decoder_norms(b)
    x = torch.randn(200, 16, generator=g)
    assert torch.allclose(norms, torch.full((48,), 3.0))
    assert torch.allclose(b.W_dec.norm(dim=1), torch.ones(48))
    assert selection_agreement(a, b, x) == 1.0
    assert torch.allclose(a(x)[0], b(x)[0], atol=1e-4)


def test_fold_decoder_norms_preserves_each_selected_contribution():
    """With unequal norms the selection may change, but for a fixed selection the output is identical."""
    g = torch.Generator().manual_seed(1)
    w = {"W_enc": torch.randn(16, 48, generator=g), "b_enc": torch.randn(48, generator=g),
         "W_dec": torch.randn(48, 16, generator=g) * torch.rand(48, 1, generator=g) * 3,
         "b_dec": torch.randn(16, generator=g), "k": 5}
    a, b = TopKSAE.from_weights(w), TopKSAE.from_weights(w)
    fold_decoder_norms(b)
    x = torch.randn(300, 16, generator=g)
    idx = a.pre(x).topk(5, dim=-1).indices

    def decode_with(sae, idx):
        pre = sae.pre(x)
        z = torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())
        return z @ sae.W_dec + sae.b_dec

    assert torch.allclose(decode_with(a, idx), decode_with(b, idx), atol=1e-4)
    agree = selection_agreement(a, b, x)
    assert 0.0 < agree < 1.0  # the documented, measured side effect


@pytest.mark.parametrize("src_flag", [False, True])
@pytest.mark.parametrize("dst_flag", [False, True])
def test_b_dec_to_input_reparametrisation_is_exact(src_flag, dst_flag):
    g = torch.Generator().manual_seed(2)
    w = {"W_enc": torch.randn(12, 40, generator=g), "b_enc": torch.randn(40, generator=g),
         "W_dec": torch.randn(40, 12, generator=g), "b_dec": torch.randn(12, generator=g), "k": 4,
         "apply_b_dec_to_input": src_flag}
    x = torch.randn(50, 12, generator=g)
    pre_ref = (x - w["b_dec"] * src_flag) @ w["W_enc"] + w["b_enc"]
    sae = TopKSAE.from_weights(w, apply_b_dec_to_input=dst_flag)
    assert torch.allclose(sae.pre(x), pre_ref, atol=1e-4)


def test_silent_eval_counts_latents_that_fire_on_no_held_out_row():
    from stitchplug_sae_init.experiment import evaluate

    torch.manual_seed(0)
    sae = TopKSAE.random(8, 10, 3, generator=torch.Generator().manual_seed(1))
    x = torch.randn(200, 8)
    assert evaluate(sae, x, [])["silent_eval"] == 0.0  # 200 rows, k 3 of 10: every latent wins somewhere
    with torch.no_grad():  # two latents can never win the TopK (and a third never passes the ReLU)
        sae.b_enc[[2, 7]] = -1e6
    with torch.no_grad():
        sae.W_enc[:, 4] = 0.0
        sae.b_enc[4] = -1.0
    r = evaluate(sae, x, [], chunk=64)  # the share is taken over all chunks
    assert r["silent_eval"] == pytest.approx(0.3)
    s = evaluate(sae, x, [], chunk=64, sparse=True)  # the k-row decode: the same numbers
    assert s["silent_eval"] == r["silent_eval"]
    assert all(s[m] == pytest.approx(r[m], rel=1e-5) for m in ("mse", "fvu", "ev"))


def test_missing_weights_and_bad_k_are_stage_errors():
    with pytest.raises(StageError, match="lack"):
        TopKSAE.from_weights({"W_enc": torch.zeros(2, 3)})
    with pytest.raises(StageError, match="k=9"):
        TopKSAE(torch.zeros(2, 3), torch.zeros(3), torch.zeros(3, 2), torch.zeros(2), 9)


# --------------------------------------------------------------------------- curve analysis


def test_moving_average_and_first_crossing_on_hand_made_curve():
    flops = [0, 10, 20, 30, 40, 50]
    ev = [0.0, 0.9, 0.5, 0.8, 0.9, 0.95]
    assert np.allclose(scaling.moving_average(ev, 2), [0.0, 0.45, 0.7, 0.65, 0.85, 0.925])
    assert scaling.first_crossing(flops, ev, 0.85, window=1) == 10  # raw: the spike counts
    assert scaling.first_crossing(flops, ev, 0.85, window=2) == 40  # smoothed: the spike does not
    assert scaling.first_crossing(flops, ev, 0.99, window=2) is None


def test_savings_table_including_never_crossed():
    scratch = {"0.70": 100.0, "0.80": 400.0, "0.90": None}
    stitched = {"0.70": 150.0, "0.80": 200.0, "0.90": 900.0}
    t = scaling.savings_table(scratch, stitched, [0.7, 0.8, 0.9])
    assert t["0.70"]["savings"] == pytest.approx(-0.5)  # stitched cost more (stitch overhead)
    assert t["0.80"]["savings"] == pytest.approx(0.5)
    assert t["0.90"]["savings"] is None and t["0.90"]["stitched_flops"] == 900.0
    assert scaling.savings(None, 3.0) is None and scaling.savings(10.0, None) is None
    bounded = scaling.savings_table(scratch, stitched, [0.8, 0.9], scratch_budget=1000.0)
    assert bounded["0.90"]["savings"] is None and bounded["0.90"]["savings_at_least"] == pytest.approx(0.1)
    assert bounded["0.80"]["savings_at_least"] is None  # both crossed: the exact value is given instead
    # the stitch's FLOPs (inside the stitched arm's) left out, and their share of scratch's cost
    bare = scaling.savings_table(scratch, stitched, [0.7, 0.8, 0.9], scratch_budget=1000.0, offset=50.0)
    assert bare["0.70"]["savings_excl_offset"] == pytest.approx(0.0) and bare["0.70"]["offset_share"] == 0.5
    assert bare["0.80"]["savings_excl_offset"] == pytest.approx(0.625) and bare["0.80"]["savings"] == pytest.approx(0.5)
    assert bare["0.90"]["savings_excl_offset"] is None and bare["0.90"]["offset_share"] is None
    assert bare["0.90"]["savings_at_least_excl_offset"] == pytest.approx(0.15)
    assert "savings_excl_offset" not in t["0.70"]  # without an offset the table is as before


def test_power_law_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    C = np.geomspace(1e9, 1e15, 60)
    a, beta = 37.0, 0.17
    L = a * C ** -beta * np.exp(rng.normal(0, 0.01, C.size))
    fit = scaling.fit_power_law(C, L)
    assert fit["beta"] == pytest.approx(beta, abs=0.005)
    assert fit["a"] == pytest.approx(a, rel=0.15)
    assert fit["r2"] > 0.99 and fit["n_points"] == 60
    assert scaling.fit_power_law([1.0], [2.0])["a"] is None


def test_frontier_is_lower_envelope_over_widths():
    small = ([1, 10, 100, 1000], [0.5, 0.3, 0.25, 0.24])   # fast start, plateaus
    large = ([2, 20, 200, 2000], [0.9, 0.4, 0.1, 0.05])    # slow start, goes lower
    grid, env = scaling.frontier([small, large], n_grid=30)
    assert grid[0] == 1 and grid[-1] == 2000
    for c, v in zip(grid, env):
        s = scaling.best_so_far(*small, np.array([c]))[0]
        l_ = scaling.best_so_far(*large, np.array([c]))[0]
        assert v == pytest.approx(np.nanmin([s, l_]))
    assert env[-1] == pytest.approx(0.05) and env[0] == pytest.approx(0.5)
    assert np.all(np.diff(env) <= 1e-12)  # best-so-far frontier never rises


# --------------------------------------------------------------------------- the experiment


def test_both_arms_consume_identical_data_order(synth):
    seen = []

    def factory():
        def gen():
            for xb in synth.batches(64, seed=3)():
                seen.append(float(xb.sum()))
                yield xb
        return gen()

    w = transferred_init(synth, k=3, noise=0.3)
    cfg = small_cfg(steps=30, eval_every=10)
    res = run_width(factory, synth.eval, w, 0, cfg, exclude=[])
    n = res["data_order"]["steps"]
    assert n == 30 and res["data_order"]["identical"]
    # scratch arm first, then the stitched arm: the same sums in the same order (plus one read for the mean)
    assert len(seen) == 1 + 2 * n
    assert seen[1:1 + n] == seen[1 + n:]


def test_different_data_order_is_refused(synth):
    calls = {"n": 0}

    def factory():
        calls["n"] += 1
        return synth.batches(64, seed=calls["n"])()

    with pytest.raises(StageError, match="different training batches"):
        run_width(factory, synth.eval, transferred_init(synth, k=3), 0, small_cfg(steps=5, eval_every=5), exclude=[])


def test_end_to_end_true_dictionary_init_saves_flops(synth, tmp_path):
    w = transferred_init(synth, k=3, noise=0.3)
    stitch_flops = 10**6
    res = run_init_experiment(synth.batches(64, epochs=4), synth.eval, w, stitch_flops, small_cfg())
    W = res["widths"]["64"]
    assert W["ledger"]["counted_over_analytic"] == pytest.approx(1.0, abs=0.1)
    st, sc = W["arms"]["stitched"], W["arms"]["scratch"]
    assert st["curve"][0]["flops"] == stitch_flops and sc["curve"][0]["flops"] == 0
    assert st["ledger"]["sae_flops"] == sc["ledger"]["sae_flops"]  # same steps, same step cost
    assert st["curve"][0]["ev"] > sc["curve"][0]["ev"]
    sav = W["savings"]["fvu"]
    crossed = [t for t, v in sav.items() if v["savings"] is not None]
    assert crossed, sav
    assert all(sav[t]["savings"] > 0 for t in crossed)
    assert all(sav[t]["stitched_flops"] < sav[t]["scratch_flops"] for t in crossed)
    # fits exist for both arms and the result is JSON-ready
    assert res["fits"]["fvu"]["stitched"]["beta"] is not None
    json.dumps(res)

    from stitchplug_sae_init.report import markdown, plot

    md = markdown(res)
    assert "| 0.50 |" in md and "Table 4" in md and "a=41.2" in md
    paths = plot(res, tmp_path)
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)


def test_width_sweep_fits_frontier_over_widths(synth):
    ws = [transferred_init(synth, k=3, noise=0.3, seed=s) for s in (0, 1)]
    ws[1] = {**ws[1], "W_enc": ws[1]["W_enc"][:, :32], "b_enc": ws[1]["b_enc"][:32],
             "W_dec": ws[1]["W_dec"][:32]}
    res = run_init_experiment(synth.batches(64, epochs=2), synth.eval, ws, 10**5,
                              small_cfg(steps=60, eval_every=20))
    assert list(res["widths"]) == ["32", "64"]
    assert res["data_order_identical_across_widths"]
    step32 = res["widths"]["32"]["ledger"]["sae_step_flops_counted"]
    step64 = res["widths"]["64"]["ledger"]["sae_step_flops_counted"]
    assert step64 == 2 * step32
    front = res["fits"]["fvu"]["scratch"]["frontier"]
    assert math.isclose(front["flops"][-1], max(p["flops"] for w in res["widths"].values()
                                                  for p in w["arms"]["scratch"]["curve"]))


def test_config_validation():
    with pytest.raises(ValueError):
        InitExperimentConfig(thresholds=[0.5, 1.2])
    with pytest.raises(Exception):
        run_init_experiment(lambda: iter([]), torch.zeros(4, 2), {}, 0, {"steps": 1, "bogus": 2})


# --------------------------------------------------------------------------- the command on a run folder


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A tiny run folder: paired cache of two random-init models, lstsq stitch, source SAE, transferred SAE."""
    from stitchplug.adapter import load_model
    from stitchplug.cache.reader import open_cache
    from stitchplug.cache.writer import build_cache
    from stitchplug.config import StitchConfig
    from stitchplug.stitch import api
    from stitchplug.stitch.model import Stitch
    from stitchplug.sae.io import save_sae
    from stitchplug.sae.trainer import train_topk_sae
    from stitchplug.sae.transfer import transfer_sae

    run = tmp_path_factory.mktemp("initrun")
    a, b = load_model("tiny-llama-a"), load_model("tiny-gemma3")  # widths 32 and 40, different tokenizers
    cache_path = build_cache(run / "cache.h5", a, b, tokens=3000, context_size=48,
                             source_layers=[1], target_layers=[1], progress=False, log=lambda m: None)
    cache = open_cache(cache_path)
    api.train(cache, StitchConfig(solver="lstsq", target_layer=1), run / "stitch" / "stitch.safetensors")
    src = [t[0] for t in cache.batches(keys=[("source", 1)], batch_size=256, split="train", seed=0)]
    sae, _ = train_topk_sae(src, 32, width=64, k=4, lr=1e-3, train_tokens=3000, batch_size=256, progress=False,
                            model_name="tiny-llama-a", hook_name="blocks.1.hook_resid_pre")
    cache.close()
    stitch = Stitch.load(run / "stitch" / "stitch.safetensors")
    save_sae(transfer_sae(sae, stitch, "up", target_model="tiny-gemma3", target_hook="blocks.1.hook_resid_pre"),
             run / "artifacts" / "sae" / "transferred")
    from stitchplug.api import RunFolder

    RunFolder(run).add_report_section("run", "# Report\n\nearlier sections", order=0)
    return run


def test_experiment_command_on_run_folder(run_folder, capsys):
    from stitchplug.cli import main

    args = ["experiment", "init", "--run", str(run_folder), "--steps", "30", "--batch-size", "64",
            "--eval-every", "10", "--eval-tokens", "256", "--thresholds", "0.5,0.9"]
    main(args)
    metrics = json.loads((run_folder / "metrics.json").read_text())["init_experiment"]
    w = metrics["widths"]["64"]
    assert metrics["target_layer"] == 1 and w["d"] == 40
    stitch_meta = json.loads((run_folder / "stitch" / "stitch.safetensors.json").read_text())
    assert metrics["stitch_flops"] == stitch_meta["flops"] > 0
    assert w["arms"]["stitched"]["curve"][0]["flops"] == stitch_meta["flops"]
    # the source SAE's training FLOPs (FlopCounterMode, recorded by the trainer) reach the total line
    assert metrics["source_sae_flops"] == 11 * 12 * 256 * 32 * 64
    assert set(w["savings"]["fvu"]) == {"0.50", "0.90"}
    # theta' as loaded by the experiment is the saved SAELens SAE: same EV on the same held-out rows
    from stitchplug.cache.reader import open_cache
    from stitchplug.metrics import recon_metrics
    from stitchplug.sae.io import load_sae_folder

    with open_cache(run_folder / "cache.h5") as cache:
        x = torch.from_numpy(cache.array("target", 1, split="eval")[:256]).float()
    sae = load_sae_folder(run_folder / "artifacts" / "sae" / "transferred")
    with torch.no_grad():
        ev_saelens = 1 - recon_metrics(x, sae(x))["fvu"]
    assert w["init_renorm"]["ev_before_fold"] == pytest.approx(ev_saelens, abs=1e-4)
    report = (run_folder / "report.md").read_text()
    assert report.startswith("# Report") and report.count("## Transferred SAE as initialisation") == 1
    main(args)  # a re-run replaces the section instead of appending a second one
    assert (run_folder / "report.md").read_text().count("## Transferred SAE as initialisation") == 1
    assert all((run_folder / "plots" / n).exists() for n in ("init_savings.png", "init_fvu_vs_flops.png"))
    assert "savings at EV thresholds" in capsys.readouterr().out


def test_experiment_command_errors_are_one_line(tmp_path, capsys, run_folder):
    from stitchplug.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["experiment", "init", "--run", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1 and err[0].startswith("Error: missing stage output")
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "init", "--run", str(run_folder), "--thresholds", "0.5,1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "threshold" in err[0]


def test_run_folder_default_paths(tmp_path):
    from stitchplug_sae_init.command import default_paths

    assert default_paths(tmp_path) == (tmp_path / "cache.h5", tmp_path / "stitch" / "stitch.safetensors",
                                       tmp_path / "artifacts" / "sae" / "transferred")


def test_aux_k_coef_reaches_the_trainer_and_the_ledger(synth):
    """`--aux-k-coef` (InitExperimentConfig.aux_k_coef) turns AuxK on in both arms: steps with dead
    latents are charged the AuxK step's FLOPs; 0 (the default) never runs it."""
    w = transferred_init(synth, k=3, noise=0.3)
    off = run_width(lambda: synth.batches(64, seed=3)(), synth.eval, w, 0,
                    small_cfg(steps=40, eval_every=10, dead_window=2), exclude=[])
    on = run_width(lambda: synth.batches(64, seed=3)(), synth.eval, w, 0,
                   small_cfg(steps=40, eval_every=10, dead_window=2, aux_k_coef=1 / 32), exclude=[])
    assert all(off["arms"][a]["ledger"]["aux_steps"] == 0 for a in ("scratch", "stitched"))
    aux = {a: on["arms"][a]["ledger"]["aux_steps"] for a in ("scratch", "stitched")}
    assert max(aux.values()) > 0, aux
    for arm in (a for a, n in aux.items() if n):  # AuxK steps cost more than plain ones
        assert on["arms"][arm]["ledger"]["total_flops"] > off["arms"][arm]["ledger"]["total_flops"]
    # the loss changed: the arm with AuxK steps ends with different weights, so a different curve
    arm = max(aux, key=aux.get)
    assert on["arms"][arm]["curve"][-1]["fvu"] != off["arms"][arm]["curve"][-1]["fvu"]


@pytest.mark.parametrize("mode", ["preserve", "rescale", "fold-rank", "unit"])
def test_preserve_warm_start_starts_from_the_transferred_sae_on_the_tiny_pair(run_folder, mode):
    """Issue 22 acceptance on the tiny pair: with ``--warm-start preserve`` (or ``rescale``) the stitched
    arm's step-0 EV equals the saved transferred SAE's EV on the same held-out rows within 1e-3, every
    TopK selection is kept, and the run is single-epoch by default and says so."""
    from stitchplug.cli import main

    main(["experiment", "init", "--run", str(run_folder), "--steps", "20", "--batch-size", "64", "--eval-every", "10",
          "--eval-tokens", "256", "--thresholds", "0.5,0.9", "--warm-start", mode, "--decode", "sparse"])
    m = json.loads((run_folder / "metrics.json").read_text())["init_experiment"]
    ren = m["widths"]["64"]["init_renorm"]
    assert ren["warm_start"] == mode and ren["topk_selection_agreement"] == 1.0
    assert ren["ev_step0"] == pytest.approx(ren["ev_transferred"], abs=1e-3)
    assert m["widths"]["64"]["arms"]["stitched"]["curve"][0]["ev"] == pytest.approx(ren["ev_transferred"], abs=1e-3)
    assert m["single_epoch"] and m["epochs"] == 1 and m["passes"] <= 1.0 and m["config"]["recipe"] == "paper"
    report = (run_folder / "report.md").read_text()
    assert "**Single-epoch**" in report and f"warm start **{mode}**" in report
    main(["experiment", "init", "--run", str(run_folder), "--steps", "20", "--batch-size", "64", "--eval-every", "10",
          "--eval-tokens", "256", "--thresholds", "0.5", "--epochs", "3", "--recipe", "tuned"])
    m = json.loads((run_folder / "metrics.json").read_text())["init_experiment"]
    assert not m["single_epoch"] and m["config"]["recipe"] == "tuned" and m["config"]["lr"] == 4e-4
    assert "**Multi-epoch** (up to 3 passes)" in (run_folder / "report.md").read_text()
