"""The ``probe`` artifact kind: linear probes on A's SAE latents and residual, moved to B.

The artifact is a JSON-able *probe set* ``{"arm", "side", "reads", "tasks": {task: {"sparse": {k: probe},
"dense": probe}}, "fit"}`` (:class:`~stitchplug_probe.probes.LinearProbe` dicts; ``arm`` a key of
:data:`~stitchplug_probe.arms.ARMS`, which says what the probes read). On B, a sparse probe keeps its
latent indices and weights and reads the *transferred SAE's* latents; a dense probe is pushed through
``T_down`` (``w' = P_down @ w``, ``b' = b_down @ w + b``), exactly A's probe applied to ``T_down(h_B)``.

Stages: the probe builds on the ``sae`` kind (``requires``): the pipeline runs the SAE stages first and
hands over the SAEs (:mod:`~stitchplug_probe.saes`). ``probe.source`` fits A's probes on every task's
training examples; ``probe.transfer`` moves them to B; in ``probe.evaluate``, :meth:`extra_arms` fits
the arms on B's training examples (retrained, re-selected, residual, native, random and the controls),
the ``probe_accuracy`` evaluator scores every arm on the test examples
(:mod:`~stitchplug_probe.evaluator`), and :meth:`aggregate` is the step across arms
(:mod:`~stitchplug_probe.combine`). ``report.md`` gets a table and ``probe_transfer.png`` (accuracy vs
k, cf. paper Fig. 3a).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stitchplug.api import Arm, ArtifactContext, ArtifactKind, StageError, write_json_atomic

from . import config
from .experiment import settings_from, transfer_probes

PROBES_FILE = "probes.json"
PLOT = "probe_transfer.png"


class ProbeArtifact(ArtifactKind):
    name = "probe"
    config_class = config.ProbeConfig
    presets = config.PRESETS
    supports_baseline = False
    requires = ("sae",)
    layout = 2
    """2: probe scoring is the ``probe_accuracy`` evaluator, the B-fitted arms are ``extra_arms`` and the
    step across arms is ``aggregate`` (before: one pass inside ``probe.source``, results in
    ``artifacts/probe/results``); a folder of the earlier layout is refused, naming the stages to redo."""

    def required_roles(self, cfg: Any) -> tuple[str, ...]:
        return ("source", "transferred", "random") + (("native",) if cfg.native_sae else ())

    def preflight(self, cfg: Any) -> None:
        """Every ``file:`` task reads as a task (text and label columns, two classes with enough
        examples) before any stage runs; the other sources are checked by the config."""
        from .tasks import load_task

        for spec in cfg.tasks:
            if spec.startswith("file:"):
                load_task(spec, max_examples=cfg.max_examples, seed=0)

    def check_required(self, cfg: Any, required: dict[str, Any]) -> None:
        """Every probe k selects at most the SAE's width latents."""
        from stitchplug.api import ConfigError

        width = getattr(required.get("sae"), "width", None)
        if width is not None and max(cfg.ks) > width:
            raise ConfigError(f"invalid config: probe: ks ({max(cfg.ks)}) must be at most sae.width ({width})")

    def obtain(self, context: ArtifactContext, cfg: Any) -> dict:
        from . import saes as saes_mod
        from .experiment import fit_source

        context.need("other", "stitch", "folder", "adapter", who="the probe kind")
        saes, origin = saes_mod.resolve(context, context.other, cfg, log=print)
        s = settings_from(cfg, context)
        res = fit_source(context.adapter, context.layer, context.other.adapter, saes, s, log=print,
                         progress=context.progress)
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()}
        return {"arm": "source_on_A", "side": "A", "model": context.model_name, "layer": context.layer,
                "reads": {"sparse": f"source SAE ({origin['source']})", "dense": "residual"},
                "tasks": res["tasks"], "fit": res["fit"], "saes": origin, "settings": settings}

    def transfer(self, artifact: dict, stitch: Any, direction: str = "up", **target: Any) -> dict:
        if direction != "up":
            raise StageError("probe transfer is implemented A -> B ('up') only")
        return transfer_probes(artifact, stitch, **target)

    def extra_arms(self, source: dict, transferred: dict, source_context: ArtifactContext,
                   target_context: ArtifactContext) -> dict[str, Arm]:
        """The arms fitted on B's training examples (:data:`~stitchplug_probe.arms.B_FITTED`), each
        saved under ``artifacts/probe/<arm>``."""
        from . import saes as saes_mod
        from .experiment import fit_on_b

        a, b = source_context, target_context
        cfg = a.config
        saes, _ = saes_mod.resolve(a, b, cfg, log=lambda m: None)
        s = settings_from(cfg, a)
        fitted = fit_on_b(a.adapter, b.adapter, b.layer, source, saes, a.stitch, s, progress=a.progress)
        out = {}
        for label, art in fitted.items():
            art = {"arm": label, "side": "B", "model": b.model_name, "layer": b.layer} | art
            self.save(art, a.folder.artifact(self.name, label), {"stage": "evaluate", "fitted_on": "B, training examples"})
            out[label] = Arm(art, b)
        return out

    def check(self, artifact: dict, stitch: Any, direction: str = "up") -> None:
        d_a = int(stitch.P_down.shape[1])
        for t, v in artifact.get("tasks", {}).items():
            if len(v["dense"]["coef"]) != d_a:
                raise StageError(f"the dense probe of task {t!r} reads {len(v['dense']['coef'])} dims, "
                                 f"the stitch's source side has {d_a}")

    def save(self, artifact: dict, folder: str | Path, sidecar: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / PROBES_FILE, artifact)
        write_json_atomic(folder / "stitchplug.json", sidecar or {})
        return folder

    def load(self, folder: str | Path) -> dict:
        from .arms import ARMS

        path = Path(folder) / PROBES_FILE
        if not path.is_file():
            raise StageError(f"probe folder {folder} has no {PROBES_FILE}")
        try:
            art = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StageError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(art, dict) or art.get("arm") not in ARMS or not isinstance(art.get("tasks"), dict):
            raise StageError(f"{path} is not a probe set (it needs 'arm', one of {', '.join(ARMS)}, and 'tasks')")
        return art

    def aggregate(self, results: dict, cfg: Any) -> dict | None:
        """The step across arms (:func:`~stitchplug_probe.combine.combine`): per-task tables, means
        over tasks with bootstrap intervals, gaps to the native and random arms, recovery, failures."""
        from .combine import combine, has_results

        return combine(results, cfg.ks, cfg.n_boot) if has_results(results) else None

    def diagnose(self, source, transferred, stitch, target: ArtifactContext,
                 source_context: ArtifactContext | None = None) -> dict | None:
        """Where the SAEs came from and the settings the passes used."""
        return {"saes": source.get("saes", {}), "settings": source.get("settings", {})}

    def report_markdown(self, metrics: dict, folder) -> str | None:
        from .report import markdown, plot

        res = metrics.get(self.name) or {}
        agg = res.get("aggregate")
        if not agg:
            return None
        plot(agg, folder.plot(PLOT))
        return markdown(agg, PLOT)

    def summary(self, results: dict) -> list[str]:
        agg = (results.get("aggregate") or {}).get("sparse", {})
        lines = []
        for arm in ("source_A", "transfer_noretrain", "transfer_retrain", "native_B", "random_B"):
            r = agg.get(arm, {}).get("5")
            if r:
                lines.append(f"probe {arm} k=5: {r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
        return lines
