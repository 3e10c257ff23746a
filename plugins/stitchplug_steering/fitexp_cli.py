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


OWN_FLAGS = ("fitting", "sizes", "run_overrides")
"""Fields the command declares itself: ``--fitting`` is repeated (a mix holds commas), ``--sizes`` takes
``quick`` and ``24k``/``1m``, and ``run_overrides`` is built from ``--set``, ``--source``, ``--target``
and ``--device``. Every other field of :class:`SteeringFitConfig` is a generated flag."""
ALIASES = {"n_prompts": "--prompts", "agreement_detector": "--second-detector"}
"""The earlier spellings of two generated flags, kept working."""


def add_command(cli: click.Group) -> None:
    from stitchplug.api import command_group, config_options

    from .fitexp_config import SteeringFitConfig

    group = command_group(cli, "experiment", "Experiments that reuse a run folder (paper §3.1 and beyond).")
    if "steering-fit" in group.commands:
        return

    @group.command("steering-fit")
    @click.option("--run-root", required=True, type=click.Path(file_okay=False),
                  help="Experiment folder: one stitch folder per fitting text and size under fits/, results here.")
    @click.option("--fitting", "fitting", multiple=True,
                  help="A fitting text (cache corpus: wiki-en, or mix:wiki-en=0.8,wiki-fr=0.1,wiki-es=0.1); repeat. "
                       "[config: fitting; default: wiki-en and mixes with 10% and 20% of each target language]")
    @click.option("--sizes", default=None,
                  help="Cache budgets in tokens, comma-separated (quick = 24,000; 24k, 1m accepted). "
                       "[config: sizes; default: quick,1000000]")
    @click.option("--source", default=None, help="Model A [default: the run config's].")
    @click.option("--target", default=None, help="Model B [default: the run config's].")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                  help="Run-config key for every stitch folder (e.g. stitch.svcca_tokens=500); repeatable.")
    @click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
    @config_options(SteeringFitConfig, with_preset=False, exclude=OWN_FLAGS, aliases=ALIASES)
    def steering_fit_cmd(cfg, run_root, fitting, sizes, source, target, sets, device):
        """Steering transfer (both directions) as a function of the stitch's fitting text and size.

        Fits one stitch per fitting text and size (cache and stitch stages of `stitchplug run`, reused
        when finished), draws vectors, prompts and FVU texts outside every fit's training documents,
        evaluates native, none and transferred arms (and the swaps) with two detectors, and writes the
        steering_fit sections of RUN_ROOT/metrics.json and report.md. Re-running resumes. Flags
        override a --config file (YAML or TOML with SteeringFitConfig's fields).
        """
        from pydantic import ValidationError

        from ._core import ConfigError
        from .fitexp import run_experiment
        from .fitexp_config import parse_sizes

        over = _overrides(sets)
        over |= {"device": device} | ({"models.source": source} if source else {}) | ({"models.target": target} if target else {})
        try:
            if fitting:
                cfg.fitting = list(fitting)
            if sizes is not None:
                cfg.sizes = parse_sizes(sizes)
            cfg.run_overrides = cfg.run_overrides | over
        except ValidationError as exc:
            e = exc.errors()[0]
            raise ConfigError(f"invalid config: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
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
