"""``stitchplug model-info NAME...``: load models and print their stitch-relevant facts."""

from __future__ import annotations

import json
import time

import click

from stitchplug.api import hookimpl


def model_facts(adapter, load_s: float | None = None) -> dict:
    """What a stitch needs to know about a loaded adapter (JSON-serialisable)."""
    tok = adapter.tokenizer
    facts = {
        "name": adapter.name,
        "source": getattr(adapter, "source", ""),
        "d_model": adapter.d_model,
        "n_layers": adapter.n_layers,
        "resid_hooks": f"{adapter.hook_name(0)} .. {adapter.hook_name(adapter.n_layers - 1)}",
        "vocab_size": len(tok),
        "prepend_bos": bool(getattr(adapter, "prepend_bos", False)),
        "bos_id": getattr(adapter, "bos_id", None),
        "special_ids": sorted(adapter.special_ids),
        "tokenizer_fingerprint": adapter.tokenizer_fingerprint(),
    }
    if load_s is not None:
        facts["load_s"] = round(load_s, 2)
    return facts


@hookimpl
def register_commands(cli):
    @cli.command("model-info")
    @click.argument("names", nargs=-1, required=True)
    @click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
    @click.option("--dtype", default="float32", show_default=True, help="float32, bfloat16 or float16.")
    @click.option("--cache-dir", default=None, help="Model cache folder (default $STITCHPLUG_CACHE or ~/.cache/stitchplug).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object per model.")
    def model_info(names, device, dtype, cache_dir, as_json):
        """Load each model NAME and print d_model, layers, hooks, BOS and special tokens."""
        from stitchplug.api import load_model

        for name in names:
            start = time.perf_counter()
            adapter = load_model(name, device=device, dtype=dtype, cache_dir=cache_dir)
            facts = model_facts(adapter, time.perf_counter() - start)
            if as_json:
                click.echo(json.dumps(facts))
            else:
                click.echo(name)
                for key, value in facts.items():
                    if key != "name":
                        click.echo(f"  {key}: {value}")
