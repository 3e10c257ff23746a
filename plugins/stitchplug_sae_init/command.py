"""``stitchplug experiment init``: the transferred-SAE-as-initialisation experiment on a run folder.

Reuses the run folder's cache, stitch and transferred SAE(s) (their default paths come from
:class:`stitchplug.api.RunFolder`); writes the ``init_experiment`` section of ``metrics.json`` and of
``report.md`` through it, and PNG plots.
"""

from __future__ import annotations

from pathlib import Path

import click

from stitchplug.api import ConfigError, RunFolder, StageError, hook_layer, lock_run_folder

from .weights import load_transferred_weights  # noqa: F401  (re-exported)


def run_on_folder(run: Path, cache_path: Path, stitch_path: Path, sae_dirs: list[Path], cfg, epochs: int, eval_tokens: int, stitch_flops: int | None = None,
                  target_layer: int | None = None, log=click.echo) -> dict:
    """Load the run folder's pieces, run :func:`run_init_experiment`, write metrics, plots and report."""
    import torch

    from stitchplug.api import open_cache

    from .experiment import run_init_experiment
    from .ledger import read_stitch_flops, read_stitch_meta
    from .report import markdown, plot

    for p in (cache_path, stitch_path, *sae_dirs):
        if not p.exists():
            raise StageError(f"missing stage output: {p} (run the earlier stages first or pass its path)")
    meta = read_stitch_meta(stitch_path)
    s_flops = int(stitch_flops) if stitch_flops is not None else read_stitch_flops(stitch_path, meta)
    loaded = [load_transferred_weights(d) for d in sae_dirs]
    layers = {hook_layer(side.get("hook_name")) for _, side in loaded} - {None}
    lB = target_layer if target_layer is not None else (meta.get("target_layer") if meta.get("target_layer") is not None
                                                       else (layers.pop() if len(layers) == 1 else None))
    if lB is None:
        raise StageError("cannot tell the target layer: the stitch sidecar has no target_layer; pass --target-layer")
    if cfg.source_sae_flops is None:
        for _, side in loaded:
            for key in ("source_sae_flops", "train_flops", "flops"):
                if isinstance(side.get(key), (int, float)):
                    cfg.source_sae_flops = int(side[key])
                    break
    cache = open_cache(cache_path)
    try:
        x_eval = torch.from_numpy(cache.array("target", int(lB), split="eval")[:eval_tokens]).float()
        if x_eval.shape[0] < 16:
            raise StageError(f"the cache's eval split has only {x_eval.shape[0]} target rows at layer {lB}")

        def train_iter():
            for (xb,) in cache.batches(keys=[("target", int(lB))], batch_size=cfg.batch_size, split="train",
                                       seed=cfg.seed, shuffle=True, epochs=epochs, drop_last=True):
                yield xb

        log(f"init experiment: widths {[w['W_dec'].shape[0] for w, _ in loaded]}, target layer {lB}, "
            f"{cfg.steps} steps x {cfg.batch_size} tokens per arm, stitch FLOPs {s_flops:.3g}")
        result = run_init_experiment(train_iter, x_eval, [w for w, _ in loaded], s_flops, cfg)
        n_train = int(len(cache.rows("train")))
    finally:
        cache.close()
    steps = max(int(w["data_order"]["steps"]) for w in result["widths"].values())
    result.update({"target_layer": int(lB), "cache": str(cache_path), "stitch": str(stitch_path),
                   "sae_dirs": [str(d) for d in sae_dirs], "synthetic": False, "epochs": int(epochs),
                   "n_train_tokens": n_train, "passes": steps * cfg.batch_size / max(n_train, 1),
                   "single_epoch": int(epochs) == 1})
    rf = RunFolder(run)
    plots = plot(result, rf.path("plots"))
    result["plots"] = [str(p) for p in plots]
    rf.add_metrics("init_experiment", result)
    rf.add_report_section("init_experiment", markdown(result))
    if rf.root.joinpath("stages").is_dir():  # marked like a stage: a later run that redoes its inputs drops it
        rf.record_results("init_experiment", f"stitchplug experiment init --run {rf.root}",
                          {"widths": list(result.get("widths", {}))}, 0.0,
                          {"cache": cache_path, "stitch": stitch_path} | {f"sae{i}": d for i, d in enumerate(sae_dirs)},
                          metrics=["init_experiment"], report=["init_experiment"])
    return result


def default_paths(run: Path) -> tuple[Path, Path, Path]:
    """The cache, stitch and transferred-SAE folder of a run folder (the layout `stitchplug run` writes)."""
    rf = RunFolder(run)
    return rf.cache, rf.stitch, rf.artifact("sae", "transferred")


def _ints(name: str, text: str) -> list[int]:
    try:
        return [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"invalid --{name} {text!r}: expected comma-separated integers") from None


SWEEP_EXCLUDE = ("recipe", "steps", "warm_start", "source_sae_flops")
"""Config fields with no ``init-sweep`` flag: ``--recipe`` is the command's own, the budgets set the
steps, ``--warm-starts`` the arms, and the sweep trains (and reports) its own source SAE."""


def add_sweep_command(group: click.Group) -> None:
    """``stitchplug experiment init-sweep``: widths x budgets x warm starts, resumable.

    Its settings' flags are generated from :class:`~.config.InitExperimentConfig` as ``init``'s are
    (less :data:`SWEEP_EXCLUDE`); the sweep's own options (widths, budgets, warm starts, k, paths) are
    the command's."""
    from stitchplug.api import WARM_STARTS, config_options

    from .config import InitExperimentConfig

    @group.command("init-sweep")
    @click.option("--run", "run_dir", type=click.Path(file_okay=False), default="runs/default", show_default=True,
                  help="Run folder whose cache and stitch are used; arms are stored under RUN/init_sweep/.")
    @click.option("--cache", "cache_path", default=None, help="Activation cache [default: RUN/cache.h5].")
    @click.option("--stitch", "stitch_path", default=None, help="Stitch file [default: RUN/stitch/stitch.safetensors].")
    @click.option("--sweep-dir", default=None, help="Where finished arms are stored [default: RUN/init_sweep].")
    @click.option("--widths", default="2304,4608,9216,18432", show_default=True, help="Comma-separated SAE widths.")
    @click.option("--budgets", default="500000,1800000", show_default=True,
                  help="Comma-separated token budgets per arm (smaller ones are read from the largest run's prefix).")
    @click.option("--warm-starts", default="fold,rescale", show_default=True,
                  help=f"Comma-separated warm-start arms ({', '.join(WARM_STARTS)}).")
    @click.option("--k", type=int, default=None, help="TopK k [default: the recipe's].")
    @click.option("--recipe", type=click.Choice(["paper", "tuned"]), default="paper", show_default=True,
                  help="paper: k 64, lr 1e-4, no AuxK, scratch b_dec zeros; tuned: k 32, lr 4e-4, scratch b_dec mean "
                       "(both unnormalised, dense-decode FLOPs; k applies where an SAE is trained from scratch). "
                       "A flag or --config value overrides the recipe's, and the label says so.")
    @click.option("--eval-tokens", type=click.IntRange(min=1), default=8192, show_default=True, help="Held-out tokens evaluated.")
    @click.option("--section", default="init_experiment", show_default=True,
                  help="metrics.json / report section written (another name keeps a second sweep beside the first).")
    @config_options(InitExperimentConfig, with_preset=False, exclude=SWEEP_EXCLUDE, defaults={"epochs": 1},
                    aliases={"apply_b_dec_to_input": "--b-dec-in"})
    def sweep_cmd(cfg, run_dir, cache_path, stitch_path, sweep_dir, widths, budgets, warm_starts, k, recipe,
                  eval_tokens, section):
        """Source SAE on A, transfer, scratch and warm-start arms on B, per width; savings per budget."""
        from pydantic import ValidationError

        from .config import RECIPES
        from .sweep import SweepConfig, run_sweep
        from .sweep_report import plot_curves, plot_sweep, sweep_markdown

        run = Path(run_dir)
        for name, instead in (("warm_start", "--warm-starts"), ("source_sae_flops", "the sweep's own source SAE")):
            if name in cfg.model_fields_set:  # only a --config file can set them: no flag
                raise ConfigError(f"invalid config: {name}: not a setting of init-sweep (it uses {instead})")
        cfg = _with_recipe(cfg, recipe)  # `steps` comes from the budgets (run_sweep sets it)
        if cfg.epochs is None:  # `epochs: null` in a --config file: single-epoch, as the flag's default
            cfg = cfg.model_copy(update={"epochs": 1})
        k_recipe = RECIPES[recipe]["k"]
        if k is not None and k != k_recipe:
            cfg = cfg.model_copy(update={"recipe": cfg.recipe + (", " if " + " in cfg.recipe else " + ") + f"k={k}"})
        try:
            sweep = SweepConfig(widths=_ints("widths", widths), budgets=_ints("budgets", budgets),
                                warm_starts=[w.strip() for w in warm_starts.split(",") if w.strip()],
                                k=k_recipe if k is None else k, epochs=cfg.epochs)
        except ValidationError as exc:
            e = exc.errors()[0]
            raise ConfigError(f"invalid option --{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}") from None
        d_cache, d_stitch, _ = default_paths(run)
        rf = RunFolder(run)
        with rf.writing("stitchplug experiment init-sweep"):
            result = run_sweep(run, sweep, cfg, cache_path=Path(cache_path) if cache_path else d_cache,
                               stitch_path=Path(stitch_path) if stitch_path else d_stitch, eval_tokens=eval_tokens,
                               sweep_dir=Path(sweep_dir) if sweep_dir else None, log=click.echo)
            result["plots"] = [str(p) for p in (*plot_sweep(result, rf.path("plots")),
                                                plot_curves(result, rf.path("plots")))]
            if section != "init_experiment":
                result["plots"] = [str(p.rename(p.with_name(p.stem + f"_{section}.png"))) for p in map(Path, result["plots"])]
            rf.add_metrics(section, result)
            rf.add_report_section(section, sweep_markdown(result))
        for b, bb in result["budgets"].items():
            for w, row in bb["widths"].items():
                cells = ", ".join(f"{ws}: " + ("n/a" if row["savings"][ws]["fvu"]["0.90"]["savings"] is None
                                               else f"{100 * row['savings'][ws]['fvu']['0.90']['savings']:+.0f}%")
                                  for ws in sweep.warm_starts if "0.90" in row["savings"][ws]["fvu"])
                click.echo(f"budget {b} width {w} saving at EV 0.90: {cells or 'n/a (0.90 not among --thresholds)'}")
        click.echo(f"wrote the {section} sections of {run / 'report.md'} and {run / 'metrics.json'}")


def _with_recipe(cfg, recipe: str):
    """``cfg`` with the arm settings of ``recipe`` where no flag or ``--config`` file gave them; the
    label names any field given that differs from the recipe."""
    from .config import RECIPES

    base = {key: v for key, v in RECIPES[recipe].items() if key in type(cfg).model_fields}
    given = cfg.model_fields_set
    over = {key: getattr(cfg, key) for key in base if key in given and getattr(cfg, key) != base[key]}
    label = recipe if not over else f"{recipe} + " + ", ".join(f"{key}={v}" for key, v in over.items())
    return cfg.model_copy(update={**{key: v for key, v in base.items() if key not in given}, "recipe": label})


EXPERIMENT_HELP = "Experiments that reuse a run folder (paper §3.1 and beyond)."


def add_init_command(cli):
    """Add ``stitchplug experiment init`` to the CLI (called by the plugin's ``register_commands``).

    Its settings' flags are generated from :class:`~.config.InitExperimentConfig` (names, types, help,
    defaults); the run-folder paths and ``--recipe`` are the command's own."""
    from stitchplug.api import command_group, config_options

    from .config import InitExperimentConfig

    group = command_group(cli, "experiment", EXPERIMENT_HELP)
    if "init" in group.commands:
        return

    @group.command("init")
    @click.option("--run", "run_dir", type=click.Path(file_okay=False), default="runs/default", show_default=True,
                  help="Run folder whose cache, stitch and transferred SAE are reused.")
    @click.option("--cache", "cache_path", default=None, help="Activation cache [default: RUN/cache.h5].")
    @click.option("--stitch", "stitch_path", default=None, help="Stitch file [default: RUN/stitch/stitch.safetensors].")
    @click.option("--sae-target", "sae_dirs", multiple=True,
                  help="Transferred SAE folder(s), SAELens format; repeat for a width sweep [default: RUN/artifacts/sae/transferred].")
    @click.option("--recipe", type=click.Choice(["paper", "tuned"]), default="paper", show_default=True,
                  help="paper: lr 1e-4, no AuxK, scratch b_dec zeros; tuned: lr 4e-4, scratch b_dec mean (both "
                       "unnormalised, dense-decode FLOPs). A flag or --config value overrides the recipe's, "
                       "and the label says so.")
    @click.option("--eval-tokens", type=click.IntRange(min=1), default=8192, show_default=True, help="Held-out tokens evaluated.")
    @click.option("--stitch-flops", type=click.IntRange(min=0), default=None, help="Override the stitch sidecar's 'flops'.")
    @click.option("--target-layer", type=click.IntRange(min=0), default=None, help="Target layer (default: from the stitch sidecar).")
    @config_options(InitExperimentConfig, with_preset=False, exclude=("recipe",), defaults={"epochs": 1},
                    aliases={"apply_b_dec_to_input": "--b-dec-in"})
    def init_cmd(cfg, run_dir, cache_path, stitch_path, sae_dirs, recipe, eval_tokens, stitch_flops, target_layer):
        """Train an SAE on model B from the transferred SAE and from scratch; report FLOPs savings."""
        run = Path(run_dir)
        cfg = _with_recipe(cfg, recipe)
        if cfg.epochs is None:  # `epochs: null` in a --config file: single-epoch, as the flag's default
            cfg = cfg.model_copy(update={"epochs": 1})
        epochs = cfg.epochs
        d_cache, d_stitch, d_sae = default_paths(run)
        with lock_run_folder(run, "stitchplug experiment init"):  # one writer per run folder
            RunFolder(run).check_readable()
            result = run_on_folder(run, Path(cache_path) if cache_path else d_cache,
                                   Path(stitch_path) if stitch_path else d_stitch,
                                   [Path(d) for d in sae_dirs] or [d_sae], cfg, epochs, eval_tokens, stitch_flops,
                                   target_layer)
        for width, w in result["widths"].items():
            row = ", ".join(f"{t}: " + ("n/a" if v["savings"] is None else f"{100 * v['savings']:+.0f}%")
                            for t, v in w["savings"]["fvu"].items())
            click.echo(f"width {width} savings at EV thresholds: {row}")
        click.echo(f"wrote the init_experiment sections of {run / 'report.md'} and {run / 'metrics.json'}")

    add_sweep_command(group)
