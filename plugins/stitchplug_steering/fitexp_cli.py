"""``stitchplug experiment steering-fit``: the command line of :mod:`stitchplug_steering.fitexp`."""

from __future__ import annotations

import click


def _overrides(items: tuple[str, ...]) -> dict:
    import yaml

    from ._core import ConfigError

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (a dotted run-config key, e.g. stitch.svcca_tokens=500)")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def add_command(cli: click.Group) -> None:
    from stitchplug.api import command_group

    from .fitexp_config import SteeringFitConfig

    def default(name: str):  # the config's default: one place for the command line and the API
        return SteeringFitConfig.model_fields[name].default

    group = command_group(cli, "experiment", "Experiments that reuse a run folder (paper §3.1 and beyond).")
    if "steering-fit" in group.commands:
        return

    @group.command("steering-fit")
    @click.option("--run-root", required=True, type=click.Path(file_okay=False),
                  help="Experiment folder: one stitch folder per fitting text and size under fits/, results here.")
    @click.option("--fitting", "fitting", multiple=True,
                  help="A fitting text (cache corpus: wiki-en, or mix:wiki-en=0.8,wiki-fr=0.1,wiki-es=0.1); repeat. "
                       "[default: wiki-en and mixes with 10% and 20% of each target language]")
    @click.option("--sizes", default="quick,1000000", show_default=True,
                  help="Cache budgets in tokens, comma-separated (quick = 24,000; 24k, 1m accepted).")
    @click.option("--preset", default=default("preset"), show_default=True, help="Run preset of every stitch folder.")
    @click.option("--source", default=None, help="Model A [default: the run config's].")
    @click.option("--target", default=None, help="Model B [default: the run config's].")
    @click.option("--languages", default=",".join(default("languages")), show_default=True, help="Target languages, comma-separated.")
    @click.option("--prompts", "n_prompts", type=click.IntRange(1), default=default("n_prompts"), show_default=True,
                  help="Held-out English prompts per arm.")
    @click.option("--max-new-tokens", type=click.IntRange(1), default=default("max_new_tokens"), show_default=True)
    @click.option("--vector-docs", type=click.IntRange(1), default=default("vector_docs"), show_default=True,
                  help="Vector pairs per language (outside every fit's training documents).")
    @click.option("--vector-tokens", type=click.IntRange(2), default=default("vector_tokens"), show_default=True)
    @click.option("--fvu-docs", type=click.IntRange(1), default=default("fvu_docs"), show_default=True,
                  help="Held-out documents per language for each stitch's FVU.")
    @click.option("--diagnose/--no-diagnose", default=default("diagnose"), show_default=True,
                  help="Evaluate the massive-dims and z swaps (two more arms per stitch, language and direction).")
    @click.option("--detector", type=click.Choice(["langdetect", "lingua", "lingua-fast"]), default=default("detector"),
                  show_default=True)
    @click.option("--second-detector", type=click.Choice(["none", "langdetect", "lingua", "lingua-fast"]),
                  default=default("agreement_detector"), show_default=True)
    @click.option("--no-fluency", is_flag=True, help="Skip the unsteered model's loss on each continuation.")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                  help="Run-config key for every stitch folder (e.g. stitch.svcca_tokens=500); repeatable.")
    @click.option("--seed", type=click.IntRange(0), default=default("seed"), show_default=True)
    @click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
    def steering_fit_cmd(run_root, fitting, sizes, preset, source, target, languages, n_prompts, max_new_tokens,
                         vector_docs, vector_tokens, fvu_docs, diagnose, detector, second_detector, no_fluency,
                         sets, seed, device):
        """Steering transfer (both directions) as a function of the stitch's fitting text and size.

        Fits one stitch per fitting text and size (cache and stitch stages of `stitchplug run`, reused
        when finished), draws vectors, prompts and FVU texts outside every fit's training documents,
        evaluates native, none and transferred arms (and the swaps) with two detectors, and writes the
        steering_fit sections of RUN_ROOT/metrics.json and report.md. Re-running resumes.
        """
        from pydantic import ValidationError

        from ._core import ConfigError
        from .fitexp import run_experiment
        from .fitexp_config import DEFAULT_FITTING, parse_sizes

        over = _overrides(sets)
        over |= {"device": device} | ({"models.source": source} if source else {}) | ({"models.target": target} if target else {})
        try:
            cfg = SteeringFitConfig(
                fitting=list(fitting) or DEFAULT_FITTING, sizes=parse_sizes(sizes), preset=preset, run_overrides=over,
                languages=[x.strip() for x in languages.split(",") if x.strip()], vector_docs=vector_docs,
                vector_tokens=vector_tokens, n_prompts=n_prompts, max_new_tokens=max_new_tokens, fvu_docs=fvu_docs,
                diagnose=diagnose, detector=detector, agreement_detector=second_detector, fluency=not no_fluency,
                seed=seed)
        except ValidationError as exc:
            e = exc.errors()[0]
            raise ConfigError(f"invalid {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
        except ValueError as exc:
            raise ConfigError(f"invalid --sizes {sizes!r}: {exc}") from None
        if len(set(cfg.fitting)) != len(cfg.fitting):
            raise ConfigError("a fitting text is given twice")
        from .heldout import components

        for corpus in cfg.fitting:
            components(corpus)  # a bad mix: one line, before any model loads
        res = run_experiment(run_root, cfg, log=lambda m: click.echo(m, err=True), device=device)
        for c in res["cells"]:
            t = c["transferred"]
            click.echo(f"{c['fit']} {c['direction']} {c['lang']}: transferred {t['k']}/{t['n']} "
                       f"[{t['ci_low']:.2f}, {t['ci_high']:.2f}], none {c['none']['k']}/{c['none']['n']}, "
                       f"native {c['native']['k']}/{c['native']['n']}"
                       + ("" if c["fvu"] is None else f", FVU {c['fvu']['fvu']:.3f}")
                       + (f"; fails ({', '.join(c['accounts']) or 'no swap accounts for it'})" if c["failed"] else ""))
        click.echo(f"{run_root}/report.md")
