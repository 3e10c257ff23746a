"""bench/probe.py's copy of a run folder: probe stages and results dropped, the cache linked, not copied."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_probe", ROOT / "bench" / "probe.py")
bp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bp)


def _run_folder(root: Path) -> Path:
    src = root / "src"
    for rel, text in {"config.yaml": "seed: 0\n", "cache.h5": "entry", "cache.h5.shards/shard_00000.h5": "rows",
                      "stitch/stitch.safetensors": "P", "stages/cache.json": "{}", "stages/sae.source.json": "{}",
                      "stages/probe.source.json": "{}", "artifacts/sae/source/cfg.json": "{}",
                      "artifacts/probe/source/probes.json": "{}", "report.md": "# old",
                      "plots/probe_transfer.png": "png"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return src


def test_the_copy_links_the_cache_and_drops_the_probe_stages(tmp_path):
    src = _run_folder(tmp_path)
    out = tmp_path / "bench" / "run"
    out.mkdir(parents=True)
    (out / "leftover").write_text("from an earlier bench")
    bp.copy_run(src, out)
    assert (out / "cache.h5").is_symlink() and (out / "cache.h5.shards").is_symlink()
    assert (out / "cache.h5.shards" / "shard_00000.h5").read_text() == "rows"
    assert (out / "cache.h5").resolve() == (src / "cache.h5").resolve()
    assert not (out / "stitch").is_symlink() and (out / "stitch" / "stitch.safetensors").read_text() == "P"
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["cache.json", "sae.source.json"]
    assert not (out / "artifacts" / "probe").exists() and (out / "artifacts" / "sae" / "source").is_dir()
    assert not (out / "report.md").exists() and not (out / "plots" / "probe_transfer.png").exists()
    assert not (out / "leftover").exists()
    assert (src / "stages" / "probe.source.json").exists() and (src / "report.md").exists()  # the source is untouched
