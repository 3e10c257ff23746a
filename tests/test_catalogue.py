"""The bad-input catalogue: every case ends in exit code 2 (config) or 1, exactly one line on stderr,
no traceback, and nothing written (the run folder is not even created).

Cases run the real CLI entry point (``stitchplug.cli.main``) in-process, so the catalogue stays fast.
"""

from __future__ import annotations

import pytest

from stitchplug.cli import main

BAD_VALUES = [
    (["--cache-eval-fraction", "0"], "cache.eval_fraction"),
    (["--cache-eval-fraction", "1.5"], "cache.eval_fraction"),
    (["--cache-context-size", "0"], "cache.context_size"),
    (["--cache-context-size", "1"], "cache.context_size"),
    (["--cache-batch-size", "0"], "cache.batch_size"),
    (["--cache-doc-start", "-5"], "cache.doc_start"),
    (["--cache-max-docs", "0"], "cache.max_docs"),
    (["--cache-tokens", "0"], "cache.tokens"),
    (["--cache-tokens", "-10"], "cache.tokens"),
    (["--seed", "-1"], "seed"),
    (["--stitch-ridge", "-0.1"], "stitch.ridge"),
    (["--stitch-batch-size", "0"], "stitch.batch_size"),
    (["--stitch-epochs", "0"], "stitch.epochs"),
    (["--stitch-lr", "0"], "stitch.lr"),
    (["--stitch-alpha", "-1"], "stitch.alpha"),
    (["--stitch-refine-iters", "-3"], "stitch.refine_iters"),
    (["--stitch-svcca-tokens", "0"], "stitch.svcca_tokens"),
    (["--stitch-source-layer", "-1"], "stitch.source_layer"),
    (["--eval-docs", "0"], "eval.docs"),
    (["--eval-max-windows", "0"], "eval.max_windows"),
    (["--eval-loss-batch-size", "0"], "eval.loss_batch_size"),
]


def run_main(args, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exc.value.code, [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Warning:")]


@pytest.mark.parametrize("flags,field", BAD_VALUES, ids=[f"{f[0]}={f[1]}" for f, _ in BAD_VALUES])
def test_bad_value_is_refused_before_anything_runs(flags, field, tmp_path, capsys):
    out = tmp_path / "run"
    code, lines = run_main(["run", "--output-dir", str(out), *flags], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("Error: invalid config: ") and f" {field}: " in lines[0]
    assert not out.exists()  # refused before the run folder (or config.yaml) is written


def test_bad_value_in_a_config_file_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("cache:\n  eval_fraction: 0\n")
    code, lines = run_main(["run", "--output-dir", str(tmp_path / "run"), "--config", str(cfg)], capsys)
    assert code == 2 and len(lines) == 1 and "cache.eval_fraction" in lines[0]


@pytest.mark.parametrize("name,content,says", [
    ("latin1.yaml", "cache:\n  corpus: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("broken.yaml", b"cache: [unclosed\n", "cannot parse config file"),
    ("broken.toml", b"[cache\n", "cannot parse config file"),
    ("list.yaml", b"- 1\n- 2\n", "mapping at the top level"),
    ("run.ini", b"[cache]\n", "must end in .yaml"),
], ids=lambda v: v if isinstance(v, str) and "." in v else None)
def test_unreadable_config_file_is_one_line(name, content, says, tmp_path, capsys):
    cfg = tmp_path / name
    cfg.write_bytes(content)
    out = tmp_path / "run"
    code, lines = run_main(["run", "--output-dir", str(out), "--config", str(cfg)], capsys)
    assert code == 2 and len(lines) == 1 and says in lines[0]
    assert not out.exists()
