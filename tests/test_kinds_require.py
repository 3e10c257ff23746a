"""Kinds that build on kinds (``requires``): the pipeline's stage plan, its refusals, and the
fingerprint rule for fields added later (no run folder is written)."""

from __future__ import annotations

import pytest

from stitchplug.api import ArtifactKind, PluginError
from stitchplug.config import build_config, run_config_class
from stitchplug.plugins import Entry, registry
from stitchplug.run.pipeline import Pipeline


class _Kind(ArtifactKind):
    name = "fake"
    requires: tuple = ()
    roles = ("source", "transferred", "random")

    def required_roles(self, cfg):
        return self.roles

    def obtain(self, context, cfg):
        return {}

    def transfer(self, artifact, stitch, direction="up", **target):
        return artifact

    def save(self, artifact, folder, sidecar=None):
        return folder

    def load(self, folder):
        return {}


def _register(monkeypatch, name, **attrs):
    cls = type(f"K_{name}", (_Kind,), {"name": name, **attrs})
    monkeypatch.setitem(registry().entries["artifacts"], name, Entry("artifacts", name, cls, plugin="test"))


def _pipeline(tmp_path, artifact, **overrides):
    cfg = build_config(cls=run_config_class(), overrides={"artifact": artifact, "output_dir": str(tmp_path / "r"),
                                                          **overrides})
    return Pipeline(cfg, log=lambda m: None)


def test_a_dependent_kind_runs_the_required_kinds_stages_with_that_kinds_own_fingerprint(tmp_path, monkeypatch):
    _register(monkeypatch, "onsae", requires=("sae",), roles=("source", "transferred", "random", "native"))
    dep = _pipeline(tmp_path, "onsae")
    stages = dep.stage_deps()
    assert list(stages)[:7] == ["cache", "stitch", "stitch_ce", "sae.source", "sae.transfer", "sae.baseline",
                                "sae.native"]
    assert [s for s in stages if s.startswith("onsae.")] == ["onsae.source", "onsae.transfer", "onsae.evaluate"]
    # an SAE run on the same config fingerprints its stages identically: either run reuses the other's
    sae = _pipeline(tmp_path, "sae").stage_deps()
    for s in ("sae.source", "sae.transfer", "sae.baseline"):
        assert stages[s] == sae[s], s
    assert stages["onsae.source"]["sae"] == stages["sae.source"]["sae"]  # the dependent kind depends on it too
    assert dep.stage_outputs()["sae.native"] == {"native": dep.rf.artifact("sae", "native")}


def test_refusals_are_one_line_plugin_errors(tmp_path, monkeypatch):
    _register(monkeypatch, "selfish", requires=("selfish",))
    with pytest.raises(PluginError, match="requires 'selfish' twice or itself"):
        _pipeline(tmp_path, "selfish")
    _register(monkeypatch, "base")
    _register(monkeypatch, "mid", requires=("base",))
    _register(monkeypatch, "top", requires=("mid",))
    with pytest.raises(PluginError, match="one level of kinds"):
        _pipeline(tmp_path, "top")
    _register(monkeypatch, "wantsnative", requires=("base",), roles=("source", "native"))
    with pytest.raises(PluginError, match="has no native"):
        _pipeline(tmp_path, "wantsnative").stage_deps()
    _register(monkeypatch, "parallel", requires=("base",), data_parallel=True)
    with pytest.raises(PluginError, match="data_parallel"):
        _pipeline(tmp_path, "parallel")


def test_fields_added_later_leave_the_fingerprint_while_at_their_default(tmp_path):
    plain = _pipeline(tmp_path, "sae").stage_deps()
    assert "aligner" not in plain["cache"]["cache"]
    assert not {"b_dec_init", "b_dec_init_batches", "apply_b_dec_to_input", "clip_grad_norm"} & set(plain["sae.source"]["sae"])
    moved = _pipeline(tmp_path, "sae", **{"cache.aligner": "identity", "sae.b_dec_init": "zeros"}).stage_deps()
    assert moved["cache"]["cache"]["aligner"] == "identity" and moved["sae.source"]["sae"]["b_dec_init"] == "zeros"
