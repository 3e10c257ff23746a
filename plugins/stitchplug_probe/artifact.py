"""The ``probe`` artifact kind: linear probes on A's SAE latents and residual, moved to B.

The artifact is a JSON-able probe set ``{"side", "reads", "tasks": {task: {"sparse": {k: probe},
"dense": probe}}}`` (:class:`~stitchplug_probe.probes.LinearProbe` dicts). On B, a sparse probe keeps
its latent indices and weights and reads the *transferred SAE's* latents; a dense probe is pushed
through ``T_down`` (``w' = P_down @ w``, ``b' = b_down @ w + b``), exactly A's probe applied to
``T_down(h_B)``.

Stages: the probe builds on the ``sae`` kind (``requires``): the pipeline runs the SAE stages first
and hands over the four SAEs (:mod:`~stitchplug_probe.saes`); ``probe.source`` runs every task
through both models once and fits and scores every arm (:func:`~stitchplug_probe.experiment.run_probes`;
one pass over the texts serves all arms, so the B-side scoring happens here too), keeping the full
results in ``artifacts/probe/results/results.json``; it returns A's probes. ``probe.transfer`` moves
them to B. ``probe.evaluate`` reports the results as the kind's diagnostics (no random-artifact
stage: the random arm is the random SAE on B inside the results). ``report.md`` gets a table and
``probe_transfer.png`` (accuracy vs k, cf. paper Fig. 3a).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stitchplug.api import ArtifactContext, ArtifactKind, StageError, write_json_atomic

from . import config
from .probes import LinearProbe, through_affine

PROBES_FILE = "probes.json"
RESULTS_ROLE = "results"
PLOT = "probe_transfer.png"


def settings_from(cfg: config.ProbeConfig, ctx: ArtifactContext):
    from .experiment import ProbeSettings

    context_size = cfg.context_size
    if context_size is None:
        try:
            context_size = int(ctx.folder.config()["cache"]["context_size"])
        except Exception:
            context_size = 128
    from .tasks import expand_specs

    return ProbeSettings(tasks=expand_specs(list(cfg.tasks)), max_examples=cfg.max_examples, ks=tuple(cfg.ks), pooling=cfg.pooling,
                         context_size=context_size, test_fraction=cfg.test_fraction, C=cfg.C,
                         batch_size=cfg.batch_size, n_boot=cfg.n_boot, seed=ctx.seed,
                         selection=cfg.selection, extra={"task_specs": list(cfg.tasks)})


class ProbeArtifact(ArtifactKind):
    name = "probe"
    config_class = config.ProbeConfig
    presets = config.PRESETS
    supports_baseline = False
    requires = ("sae",)

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
        from .experiment import run_probes

        context.need("other", "stitch", "folder", "adapter", who="the probe kind")
        other = context.other
        log = print
        saes, origin = saes_mod.resolve(context, other, cfg, log=log)
        s = settings_from(cfg, context)
        res = run_probes(context.adapter, context.layer, other.adapter, other.layer, context.stitch, saes, s,
                         log=log, progress=context.progress)
        res["saes"] = origin
        res["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()}
        out = context.folder.artifact(self.name, RESULTS_ROLE)
        out.mkdir(parents=True, exist_ok=True)
        probes_a = res.pop("probes_A")
        write_json_atomic(out / "results.json", res)
        tasks = {t: {"sparse": {str(k): p for k, p in v["sparse"].items()}, "dense": v["dense"]}
                 for t, v in probes_a.items()}
        return {"side": "A", "model": context.model_name, "layer": context.layer,
                "reads": {"sparse": f"source SAE ({origin['source']})", "dense": "residual"}, "tasks": tasks}

    def transfer(self, artifact: dict, stitch: Any, direction: str = "up", **target: Any) -> dict:
        if direction != "up":
            raise StageError("probe transfer is implemented A -> B ('up') only")
        P = stitch.P_down.detach().double().cpu().numpy()
        b = stitch.b_down.detach().double().cpu().numpy()
        tasks = {}
        for t, v in artifact["tasks"].items():
            dense = through_affine(LinearProbe.from_dict(v["dense"]), P, b).to_dict()
            tasks[t] = {"sparse": v["sparse"], "dense": dense}
        return {"side": "B", "model": target.get("target_model"), "hook": target.get("target_hook"),
                "reads": {"sparse": "transferred SAE (Eq. 6) latents, A's indices and weights",
                          "dense": "residual of B (A's probe composed with T_down)"}, "tasks": tasks}

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
        path = Path(folder) / PROBES_FILE
        if not path.is_file():
            raise StageError(f"probe folder {folder} has no {PROBES_FILE}")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StageError(f"{path} is not valid JSON: {exc}") from None

    def diagnose(self, source, transferred, stitch, target: ArtifactContext,
                 source_context: ArtifactContext | None = None) -> dict | None:
        folder = (source_context or target).folder
        path = folder.artifact(self.name, RESULTS_ROLE) / "results.json"
        if not path.is_file():
            raise StageError(f"probe results are missing ({path}); delete stages/probe.source.json and re-run")
        return json.loads(path.read_text())

    def report_markdown(self, metrics: dict, folder) -> str | None:
        from .report import markdown, plot

        res = (metrics.get(self.name) or {}).get("diagnostics")
        if not res:
            return None
        plot(res, folder.plot(PLOT))
        return markdown(res, PLOT)

    def summary(self, results: dict) -> list[str]:
        agg = (results.get("diagnostics") or {}).get("aggregate", {}).get("sparse", {})
        lines = []
        for arm in ("source_A", "transfer_noretrain", "transfer_retrain", "native_B", "random_B"):
            r = agg.get(arm, {}).get("5")
            if r:
                lines.append(f"probe {arm} k=5: {r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
        return lines
