"""Evaluators of the ``steering`` kind.

``steering_language``: one pipeline arm (a :class:`~stitchplug_steering.artifact.SteeringVectors` on
one model): generate from the evaluation prompts with each language's vector clamped (or added) at
the context's layer, detect the language of each continuation, report the share with exact
intervals and the unsteered model's loss on the text. ``z`` comes from the context model's own
statistics (for a random artifact: of the vectors it borrows ``z`` from).

``language_langdetect`` / ``language_lingua``: the detectors alone, on a list of texts (or a dict
with ``texts`` and ``lang``), for anyone who wants the share of a language in some texts.
"""

from __future__ import annotations

from typing import Any

from ._core import ArtifactContext, Evaluator, StageError
from .detect import detect_all
from .stats import share


class SteeringLanguage(Evaluator):
    name = "steering_language"
    applies_to = {"steering"}

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        from .arms import Side, SteerArm
        from .config import SteeringConfig
        from .evaluate import evaluate_arms
        from .steering_run import context_stats, prompts_for, write_generations

        cfg = context.config or SteeringConfig()
        context.need("adapter", "layer", who="steering evaluation")
        st = context_stats(context, cfg)
        key = "A" if context.side == "source" else "B"
        side = Side(key, context.adapter, int(context.layer), st, list(context.massive_dims))
        role = getattr(artifact, "role", "none")
        kind, direction = (role.split("-", 1) + [None])[:2] if role.startswith("transferred") else (role, None)
        if kind not in cfg.arms:
            return {"arms": {}, "skipped": f"arm kind {kind!r} not in steering.arms"}
        arms = []
        if not artifact.vectors:
            arms.append(SteerArm(side=key, kind="none"))
        for L, v in sorted(artifact.vectors.items()):
            if L not in st.means:
                raise StageError(f"steering vector for {L!r} but the run's languages are {cfg.languages}")
            ref = (artifact.zref or {}).get(L, v)
            arm = SteerArm(side=key, kind=kind, lang=L, direction=direction, v=v,
                           z=st.z(ref, L, cfg.z_mode, cfg.z_scale), z_en=st.z(ref, "en", "literal", 1.0))
            arm.info = st.projections(ref, L) | {"z": arm.z}
            if kind != "native":
                native = st.native(L, list(context.massive_dims) if cfg.exclude_massive else [])
                arm.info["cos_with_native"] = float(v.double() @ native.double())
            if artifact.zref:
                arm.info["z_from"] = artifact.meta.get("like", "zref")
            arms.append(arm)
        prompts = prompts_for(cfg, context.seed)
        res = evaluate_arms({key: side}, arms, prompts, cfg.languages, intervention=cfg.intervention,
                            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=context.seed,
                            detector=cfg.detector, agreement_detector=cfg.agreement_detector,
                            fluency=cfg.fluency, log=lambda m: None)
        if context.folder is not None:
            write_generations(context.folder.artifact("steering", "generations"), res["generations"])
        res.pop("generations")
        # one pipeline arm holds one steering arm kind, so a gap needs the other arms' results:
        # merge_pipeline_results (report.md) computes the gaps over all of them
        res.pop("gaps", None)
        res["config"] = cfg.model_dump(mode="json")
        res["n_prompts"] = {src: sum(p["source"] == src for p in prompts)
                            for src in dict.fromkeys(p["source"] for p in prompts)}
        res["vector_tokens"] = {key: st.n_tokens}
        return res


class LanguageShare(Evaluator):
    applies_to: set[str] = set()  # a utility: not run automatically on steering arms

    def __init__(self, detector: str = "langdetect"):
        self.detector = detector
        self.name = f"language_{detector}"

    def evaluate(self, artifact: Any, context: ArtifactContext | None = None) -> dict:
        if isinstance(artifact, dict):
            texts, lang = artifact.get("texts"), artifact.get("lang")
        else:
            texts, lang = artifact, None
        if texts is None or isinstance(texts, str):
            raise StageError(f"evaluator {self.name} needs a list of texts")
        labels = detect_all(list(texts), self.detector)
        counts: dict[str, int] = {}
        for x in labels:
            counts[x] = counts.get(x, 0) + 1
        out = {"labels": labels, "counts": counts, "n": len(labels)}
        if lang:
            out["share"] = share(counts.get(lang, 0), len(labels))
        return out
