"""``stitchplug steer``: steered and unsteered continuations of one prompt, side by side."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import click



def _columns(cols: list[tuple[str, str]], width: int) -> str:
    w = max(20, (width - 3 * (len(cols) - 1)) // len(cols))
    wrapped = [[h[:w], "-" * min(w, max(len(h), 8))] + textwrap.wrap(" ".join(t.split()) or "(empty)", w)
               for h, t in cols]
    rows = max(len(c) for c in wrapped)
    lines = []
    for i in range(rows):
        lines.append(" | ".join(f"{(c[i] if i < len(c) else ''):<{w}}" for c in wrapped).rstrip())
    return "\n".join(lines)


STATS_ROLE = "stats"
"""``artifacts/steering/stats`` of a run folder: the language statistics of both models."""


def run_folder_parts(run: str | Path):
    """``(stats folder, stitch file, SteeringConfig)`` of a steering run folder, all through
    :class:`RunFolder` (one-line StageError when something is missing)."""
    from ._core import RunFolder, StageError
    from .config import SteeringConfig

    rf = RunFolder.existing(run)
    stats = rf.artifact("steering", STATS_ROLE)
    if not ((stats / "stats_A.json").exists() and (stats / "stats_B.json").exists()):
        raise StageError(f"run folder {rf.root} has no steering statistics; run "
                         f"`stitchplug run --artifact steering --output-dir {rf.root}` first")
    rf.require("stitch", rf.stitch.relative_to(rf.root))
    section = (rf.config() if rf.config_file.exists() else {}).get("steering") or {}
    try:
        cfg = SteeringConfig.model_validate(section)
    except ValueError:
        raise StageError(f"the steering section of {rf.config_file} is invalid; re-run the steering stage") from None
    return stats, rf.stitch, cfg


def steer(run: str, model: str, prompt: str, lang: str, arms: list[str], max_new_tokens: int,
          z_mode: str | None, z_scale: float | None, intervention: str | None, exclude_massive: bool | None,
          seed: int, stitch_path: Path, cfg) -> list[tuple[str, str]]:
    from ._core import ConfigError, Stitch, load_model

    from .arms import Side, build_arms
    from .intervene import make_patch
    from .vector import LanguageStats

    folder = run_folder_parts(run)[0]
    stats = {k: LanguageStats.load(folder, f"stats_{k}") for k in ("A", "B")}
    key = {"A": "A", "B": "B", stats["A"].model: "A", stats["B"].model: "B"}.get(model)
    if key is None:
        raise ConfigError(f"--model {model!r} is neither A, B, {stats['A'].model!r} nor {stats['B'].model!r}")
    if lang not in stats[key].means:
        raise ConfigError(f"language {lang!r} was not in this run (have: "
                          f"{', '.join(k for k in stats[key].means if k != 'en')})")
    stitch = Stitch.load(stitch_path)
    sides = {k: Side(k, None, s.layer, s, list(s.massive_dims)) for k, s in stats.items()}
    all_arms = build_arms(sides, stitch, [lang], list(cfg.directions),
                          z_mode or cfg.z_mode, cfg.z_scale if z_scale is None else z_scale,
                          cfg.exclude_massive if exclude_massive is None else exclude_massive, seed)
    chosen = [a for a in all_arms if a.side == key and a.kind in arms]
    if not chosen:
        raise ConfigError(f"no {', '.join(arms)} arm for model {key} (directions in this run: {cfg.directions})")
    adapter = load_model(stats[key].model)
    kind = intervention or cfg.intervention
    cols = [(f"{adapter.name}: unsteered", adapter.generate(prompt, max_new_tokens=max_new_tokens, seed=seed))]
    for a in chosen:
        patch = {stats[key].layer: make_patch(kind, a.v, a.z, a.z_en)}
        text = adapter.generate(prompt, max_new_tokens=max_new_tokens, patches=patch, seed=seed)
        cols.append((f"{a.kind}{'-' + a.direction if a.direction else ''} ({kind} z={a.z:.3g})", text))
    return cols


@click.command("steer")
@click.option("--run", "run", required=True, type=click.Path(file_okay=False), help="A run folder with steering results.")
@click.option("--model", required=True, help="A or B (or the model's name).")
@click.option("--prompt", required=True, help="The prompt to continue.")
@click.option("--lang", default="fr", show_default=True, help="Target language.")
@click.option("--arm", "arms", multiple=True, type=click.Choice(["native", "transferred", "random"]),
              help="Steered arms to show (repeatable; default: native and transferred).")
@click.option("--max-new-tokens", default=40, show_default=True, type=click.IntRange(1, 4096))
@click.option("--z-mode", type=click.Choice(["literal", "offset"]), default=None, help="Override the run's z mode.")
@click.option("--z-scale", type=click.FloatRange(-100.0, 100.0), default=None, help="Override the run's z scale.")
@click.option("--intervention", type=click.Choice(["clamp", "add"]), default=None, help="Override the run's intervention.")
@click.option("--exclude-massive/--keep-massive", default=None, help="Override the run's massive-dims option.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
def steer_cmd(run, model, prompt, lang, arms, max_new_tokens, z_mode, z_scale, intervention, exclude_massive, seed):
    """Print unsteered and steered continuations of PROMPT side by side."""
    from stitchplug.api import lock_run_folder

    with lock_run_folder(run, "stitchplug steer"):  # reads a consistent folder: no run writes it meanwhile
        _, stitch_file, cfg = run_folder_parts(run)
        cols = steer(run, model, prompt, lang, list(arms) or ["native", "transferred"], max_new_tokens, z_mode,
                     z_scale, intervention, exclude_massive, seed, stitch_file, cfg)
    click.echo(f"prompt: {prompt}")
    click.echo(_columns(cols, shutil.get_terminal_size((160, 20)).columns))
