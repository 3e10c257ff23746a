"""Probe plugin internals without models: loaders' error paths, probe fitting against a plain numpy
reference, affine transfer of dense probes, intervals, determinism."""

import json

import numpy as np
import pytest

from stitchplug.api import StitchplugError
from stitchplug_probe import probes, stats, tasks
from stitchplug_probe.arms import run_task, split


def _write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


# ---------------------------------------------------------------- loaders
def test_file_task_balanced_and_deterministic(tmp_path):
    rows = [f"text number {i},{int(i % 3 == 0)}" for i in range(90)]
    p = _write_csv(tmp_path / "t.csv", rows)
    t1 = tasks.load_task(f"file:{p}", max_examples=40, seed=3)
    t2 = tasks.load_task(f"file:{p}", max_examples=40, seed=3)
    t3 = tasks.load_task(f"file:{p}", max_examples=40, seed=4)
    assert t1.counts() == (20, 20) and t1.texts == t2.texts and t1.texts != t3.texts
    assert all(int(s.split()[-1]) % 3 == 0 for s, l in zip(t1.texts, t1.labels) if l == 1)


def test_file_task_parquet_and_bool_labels(tmp_path):
    import pandas as pd

    p = tmp_path / "t.parquet"
    pd.DataFrame({"sentence": [f"s{i}" for i in range(40)], "label": [bool(i % 2) for i in range(40)]}).to_parquet(p)
    assert tasks.load_task(f"file:{p}").counts() == (20, 20)


def test_file_task_jsonl_prompt_target(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"p{i}", "target": i % 2}) for i in range(40)))
    t = tasks.load_task(f"file:{p}")
    assert t.counts() == (20, 20)


@pytest.mark.parametrize("spec,needle", [
    ("nonsense", "must look like"),
    ("bogus:x", "unknown task source 'bogus'"),
    ("wiki-topic:Astrology", "unknown wiki topic 'Astrology'"),
    ("file:/no/such/file.csv", "task file not found"),
])
def test_bad_specs_one_line(spec, needle):
    with pytest.raises(StitchplugError) as e:
        tasks.load_task(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_file_errors(tmp_path):
    cases = {
        "cols.csv": ("words,y", [f"a{i},{i % 2}" for i in range(40)], "no a text column"),
        "nolabel.csv": ("text,y", [f"a{i},{i % 2}" for i in range(40)], "no a label column"),
        "single.csv": ("text,label", [f"a{i},1" for i in range(40)], "single class"),
        "few.csv": ("text,label", [f"a{i},{i % 2}" for i in range(12)], "too few examples: 6 per class"),
        "multi.csv": ("text,label", [f"a{i},{i % 3}" for i in range(40)], "must hold 0/1 labels"),
    }
    for name, (header, rows, needle) in cases.items():
        p = _write_csv(tmp_path / name, rows, header)
        with pytest.raises(StitchplugError) as e:
            tasks.load_task(f"file:{p}")
        assert needle in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(StitchplugError, match="must end in"):
        tasks.load_task(f"file:{tmp_path / 'x.txt'}")


def test_wiki_topic_one_vs_rest_balanced_negatives():
    t = tasks.load_task("wiki-topic:Mathematics", max_examples=200, seed=0)
    assert t.counts() == (100, 100) and t.name == "wiki-topic:Mathematics"
    t2 = tasks.load_task("wiki-topic:biology", max_examples=40, seed=0)
    assert t2.name == "wiki-topic:Biology and health sciences"


def test_wiki_topic_negatives_spread_over_other_topics():
    from stitchplug_corpora import wiki_corpus

    topic_of = {d["text"]: d["topic"] for d in wiki_corpus("en")}
    t = tasks.load_task("wiki-topic:People", max_examples=200, seed=1)
    neg = [topic_of[s] for s, l in zip(t.texts, t.labels) if l == 0]
    counts = {x: neg.count(x) for x in set(neg)}
    assert "People" not in counts and len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 1


def test_sae_probes_task_and_bad_name():
    if not (tasks.sae_probes_dir()).is_dir():
        pytest.fail("sae-probes is a declared setup dependency but its data folder is missing")
    t = tasks.load_task("sae-probes:87_glue_cola", max_examples=100, seed=0)
    assert t.counts() == (50, 50) and all(isinstance(s, str) and s for s in t.texts)
    with pytest.raises(StitchplugError, match="unknown sae-probes dataset '87_glue_colaa'; did you mean 87_glue_cola"):
        tasks.load_task("sae-probes:87_glue_colaa")


# ---------------------------------------------------------------- probes
def _reference_logreg(X, y, C=1.0, iters=50):
    """Plain numpy Newton's method for sum(log-loss) + ||w||^2 / (2C), intercept unpenalised, on
    standardised features (the same objective as scikit-learn's L2 LogisticRegression)."""
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1.0
    Z = np.hstack([(X - mu) / sd, np.ones((len(X), 1))])
    theta = np.zeros(Z.shape[1])
    reg = np.eye(Z.shape[1]) / C
    reg[-1, -1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-Z @ theta))
        grad = Z.T @ (p - y) + reg @ theta
        H = Z.T @ (Z * (p * (1 - p))[:, None]) + reg
        theta -= np.linalg.solve(H, grad)
    w = theta[:-1] / sd
    return w, theta[-1] - (theta[:-1] * mu / sd).sum()


def test_fit_matches_numpy_reference():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 40)) * rng.uniform(0.1, 50, size=40) + rng.normal(size=40) * 10
    y = (X[:, 3] / 50 - X[:, 7] / 20 + rng.normal(size=300) > 0).astype(int)
    # top-k by mean difference: the reference is a plain loop
    diffs = [X[y == 1, j].mean() - X[y == 0, j].mean() for j in range(40)]
    ref_idx = sorted(range(40), key=lambda j: -abs(diffs[j]))[:5]  # absolute difference (SAEBench)
    sel = probes.top_k(X, y, 5)
    assert probes.top_k(X, y, 5, "signed").tolist() == sorted(range(40), key=lambda j: -diffs[j])[:5]
    assert sel.tolist() == ref_idx
    p = probes.fit(X, y, sel)
    w, b = _reference_logreg(X[:, sel], y)
    np.testing.assert_allclose(p.coef, w, rtol=1e-3, atol=1e-6)
    assert abs(p.intercept - b) < 1e-3 * max(1, abs(b))
    # the folded probe scores raw features exactly as the reference does
    np.testing.assert_allclose(p.score(X), X[:, sel] @ w + b, rtol=1e-3, atol=1e-3)


def test_dense_probe_through_affine_is_exact():
    rng = np.random.default_rng(1)
    hB = rng.normal(size=(50, 12))
    P, b = rng.normal(size=(12, 8)), rng.normal(size=8)
    probe = probes.LinearProbe(rng.normal(size=8), 0.3)
    moved = probes.through_affine(probe, P, b)
    np.testing.assert_allclose(moved.score(hB), probe.score(hB @ P + b), rtol=1e-10)
    roundtrip = probes.LinearProbe.from_dict(json.loads(json.dumps(moved.to_dict())))
    np.testing.assert_allclose(roundtrip.score(hB), moved.score(hB))


def test_wilson_and_bootstrap():
    lo, hi = stats.wilson(80, 100)
    assert lo < 0.8 < hi and 0.70 < lo < 0.72 and 0.86 < hi < 0.88  # textbook Wilson: [0.711, 0.867]
    rng = np.random.default_rng(0)
    c = [rng.random(200) < 0.9, rng.random(200) < 0.6]
    m = stats.bootstrap_mean(c, seed=0)
    assert m["ci"][0] < m["mean"] < m["ci"][1] and abs(m["mean"] - np.mean([x.mean() for x in c])) < 1e-12
    assert stats.bootstrap_mean(c, seed=0) == m
    gap = stats.bootstrap_mean(c, baseline=c)
    assert gap["mean"] == 0 and gap["ci"] == [0.0, 0.0]


def test_run_task_deterministic_and_planted():
    """Synthetic features: latent 0 of A's SAE carries the label; B's transferred latents are A's
    (an exact stitch); the random SAE's latents are noise."""
    rng = np.random.default_rng(0)
    n, w = 400, 30
    y = rng.integers(0, 2, n)
    src = np.abs(rng.normal(size=(n, w)))
    src[:, 0] += 2.0 * y
    hA = rng.normal(size=(n, 6))
    hA[:, 0] += 1.5 * y
    M = rng.normal(size=(6, 9))
    hB = hA @ M
    feats = {"A": {"dense": hA, "source": src},
             "B": {"dense": hB, "transferred": src.copy(), "random": np.abs(rng.normal(size=(n, w)))}}
    res = run_task(feats, y, P_down=np.linalg.pinv(M), b_down=np.zeros(6), ks=(1, 5), seed=0)
    s = res["sparse"]
    assert s["source_A"]["1"]["accuracy"] > 0.8
    assert s["transfer_noretrain"]["1"]["accuracy"] == s["source_A"]["1"]["accuracy"]
    assert abs(s["random_B"]["1"]["accuracy"] - 0.5) < 0.12 and "native_B" not in s
    d = res["dense"]
    assert abs(d["dense_Tdown_noretrain"]["accuracy"] - d["dense_A"]["accuracy"]) < 1e-12
    again = run_task(feats, y, P_down=np.linalg.pinv(M), b_down=np.zeros(6), ks=(1, 5), seed=0)
    assert again["sparse"]["random_B"]["5"]["auc"] == s["random_B"]["5"]["auc"]
    tr, te = split(y, 0.3, 0)
    assert len(set(tr) & set(te)) == 0 and len(te) == 120


def test_aggregate_report_and_plot(tmp_path):
    from stitchplug_probe.combine import means, strip_correct
    from stitchplug_probe.report import markdown, plot

    rng = np.random.default_rng(2)
    results, per_task = {}, {}
    for t in range(3):
        n, w = 200, 12
        y = rng.integers(0, 2, n)
        src = np.abs(rng.normal(size=(n, w)))
        src[:, t] += y * (1 + t)
        feats = {"A": {"dense": src[:, :5], "source": src},
                 "B": {"dense": src[:, :5] @ np.eye(5), "transferred": src, "native": src,
                       "random": np.abs(rng.normal(size=(n, w)))}}
        r = run_task(feats, y, P_down=np.eye(5), b_down=np.zeros(5), ks=(1, 5, 20), seed=0)
        results[f"t{t}"] = r
        per_task[f"t{t}"] = strip_correct(r) | {"n_examples": n}
    agg = means(results, (1, 5, 20), n_boot=200)
    # k=20 exceeds the 12 latents: skipped, not faked
    assert "20" not in agg["sparse"]["source_A"] and "5" in agg["sparse"]["source_A"]
    accs = [results[t]["sparse"]["transfer_retrain"]["5"]["accuracy"] for t in results]
    assert abs(agg["sparse"]["transfer_retrain"]["5"]["mean"] - np.mean(accs)) < 1e-12
    assert agg["gap_vs_native"]["transfer_reselect"]["1"]["mean"] == 0.0  # same features as native here
    res = {"tasks": per_task, **agg,
           "timing": {"examples": 600, "feature_seconds": 2.0, "probe_seconds": 1.0, "examples_per_second": 300.0,
                      "passes": [{"pass": "A, training examples", "examples": 420, "feature_seconds": 1.0}]}}
    md = markdown(res)
    assert "| t2 | 200 |" in md and "transferred, no retrain" in md and "k=20" in md
    assert "A, training examples: 420 in 1 s" in md
    out = plot(res, tmp_path / "p.png")
    assert out.stat().st_size > 1000


def test_config_checks_task_specs_before_running():
    from pydantic import ValidationError

    from stitchplug_probe.config import PRESETS, ProbeConfig

    ProbeConfig(**PRESETS["quick"])
    ProbeConfig()  # the default preset's 19 tasks all resolve
    for bad, needle in (["wiki-topic:Astrology"], "unknown wiki topic"), (["sae-probes:nope_x"], "unknown sae-probes"):
        with pytest.raises(ValidationError, match=needle):
            ProbeConfig(tasks=bad)
    with pytest.raises(ValidationError, match="listed twice"):
        ProbeConfig(tasks=["wiki-topic:Arts", "wiki-topic:Arts"])
