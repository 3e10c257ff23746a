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
    (["--stitch-fit-tokens", "0"], "stitch.fit_tokens"),
    (["--stitch-source-layer", "-1"], "stitch.source_layer"),
    (["--eval-docs", "0"], "eval.docs"),
    (["--eval-max-windows", "0"], "eval.max_windows"),
    (["--eval-loss-batch-size", "0"], "eval.loss_batch_size"),
    (["--sae-width", "0"], "sae.width"),
    (["--sae-k", "0"], "sae.k"),
    (["--sae-k", "100", "--sae-width", "64"], "sae"),
    (["--sae-lr", "0"], "sae.lr"),
    (["--sae-train-tokens", "0"], "sae.train_tokens"),
    (["--sae-batch-size", "0"], "sae.batch_size"),
    # issue 28: non-finite floats, empty lists, cross-field rules (every field: tests/test_schema.py)
    (["--sae-lr", "inf"], "sae.lr"),
    (["--stitch-lr", "nan"], "stitch.lr"),
    (["--steering-z-scale", "-inf"], "steering.z_scale"),
    (["--probe-ks", ""], "probe.ks"),
    (["--steering-languages", ""], "steering.languages"),
    (["--artifact", "probe", "--probe-ks", "1,5000", "--sae-width", "64"], "probe"),
    (["--cache-source-layers", ""], "cache.source_layers"),
]


def run_main(args, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exc.value.code, [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("Warning:", "loading "))]


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


def test_ctrl_c_says_what_is_kept_and_exits_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "stitchplug.cli", "run", "--models-source", "tiny-llama-a",
                             "--models-target", "tiny-gemma3", "--output-dir", str(out), "--cache-tokens", "200000",
                             "--cache-context-size", "64", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background (`cmd &` in a script) inherits SIGINT
                            # ignored, and Python then installs no KeyboardInterrupt handler: restore it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600  # the SVCCA probe runs first; a loaded CI machine is slow
    while time.time() < deadline and not (out / "cache.h5.shards").exists():
        time.sleep(0.2)  # interrupt while the cache stage is writing shards
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=600)  # under heavy load the last shard write can take minutes
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Warning:")]
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err[-3000:])
    assert lines[-1] == "Interrupted; finished stages are kept and a re-run resumes."
    assert not (out / "stages" / "cache.json").exists()  # the interrupted stage is not marked finished


TINY_PAIR = ["--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3"]
UNKNOWN_NAMES = [
    (["--models-source", "nope"], 1, "unknown model 'nope'"),
    (["--models-target", "tiny-llama-a-typo"], 1, "unknown model 'tiny-llama-a-typo'"),
    (["--artifact", "nope", *TINY_PAIR], 1, "unknown artifact 'nope'"),
    (["--cache-corpus", "nope", *TINY_PAIR], 1, "unknown corpus 'nope'"),
    (["--cache-corpus", "file:/nonexistent/docs.jsonl", *TINY_PAIR], 1, "corpus file /nonexistent/docs.jsonl does not exist"),
    (["--device", "cuda", *TINY_PAIR], 2, "device 'cuda'"),
]


@pytest.mark.parametrize("flags,code,says", UNKNOWN_NAMES, ids=[c[2] for c in UNKNOWN_NAMES])
def test_unknown_names_are_refused_before_the_run_folder_exists(flags, code, says, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same case on a GPU machine
    out = tmp_path / "run"
    got, lines = run_main(["run", "--output-dir", str(out), *flags], capsys)
    assert got == code and len(lines) == 1 and says in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("errno_name", ["EROFS", "ENOSPC", "EACCES"])
def test_environment_failures_are_one_line(errno_name, tmp_path, capsys, monkeypatch):
    """A read-only file system, a full disk or a permission error while writing: one line, exit 1."""
    import errno
    import os

    from pathlib import Path

    code = getattr(errno, errno_name)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr(Path, "mkdir", fail)
    got, lines = run_main(["run", "--output-dir", str(tmp_path / "run"), *TINY_PAIR], capsys)
    assert got == 1 and len(lines) == 1 and os.strerror(code) in lines[0] and "config.yaml" in lines[0]


def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    got, lines = run_main(["run", "--output-dir", str(blocker / "run"), *TINY_PAIR], capsys)
    assert got == 1 and len(lines) == 1 and "Not a directory" in lines[0]
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("flags,says", [
    (["--steps", "0"], "steps"), (["--lr", "-1"], "lr"), (["--eval-every", "0"], "eval_every"),
    (["--epochs", "0"], "epochs"), (["--batch-size", "0"], "batch_size"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_init_experiment_bad_values_are_one_line(flags, says, tmp_path, capsys):
    got, lines = run_main(["experiment", "init", "--run", str(tmp_path / "run"), *flags], capsys)
    assert got == 2 and len(lines) == 1 and lines[0].startswith(f"Error: invalid config: {says}: ")
    assert not (tmp_path / "run").exists()
