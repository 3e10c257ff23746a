"""Diff the numbers of two ``metrics.json`` files, ignoring wall times and throughputs.

    python bench/diff_metrics.py BASE/metrics.json NEW/metrics.json [--rtol 0] [--atol 0] [--section probe ...]
                                 [--exclude config ...]

Every leaf of both files is compared by its dotted path. Ignored: keys that measure time or speed
(``*seconds*``, ``*_s``, ``*per_second*``, ``*per_s``, ``stage_seconds``, ``timing``, ``wall*``,
``elapsed*``) and string leaves that name files or folders of the run (paths differ between run folders;
``--strings`` compares the other strings). Numbers match when ``|a - b| <= atol + rtol * |b|``
(default: exactly). Prints the differences, then one JSON line
``{"compared": N, "differ": N, "only_base": N, "only_new": N, "identical": bool}``; exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

TIME_KEY = re.compile(r"(seconds|_s$|per_second|per_s$|^timing$|^wall|elapsed|stage_times)")
PATHLIKE = re.compile(r"(^/|^artifacts/|\.(h5|safetensors|json|png|md|yaml)$|/)")


def flatten(obj, prefix: str = "") -> dict:
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if TIME_KEY.search(str(k)):
                continue
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = obj
    return out


def same(a, b, rtol: float, atol: float, strings: bool) -> bool | None:
    """True/False for a compared pair; None for a pair that is not compared (path strings)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= atol + rtol * abs(b)
    if isinstance(a, str) and isinstance(b, str):
        if not strings and (PATHLIKE.search(a) or PATHLIKE.search(b)):
            return None
        return a == b
    return a == b


def diff(base: dict, new: dict, rtol: float = 0.0, atol: float = 0.0, strings: bool = False,
         sections: list[str] | None = None, exclude: list[str] | None = None) -> tuple[list[str], dict]:
    if exclude:
        base = {k: v for k, v in base.items() if k not in exclude}
        new = {k: v for k, v in new.items() if k not in exclude}
    if sections:
        base = {k: v for k, v in base.items() if k in sections}
        new = {k: v for k, v in new.items() if k in sections}
    fa, fb = flatten(base), flatten(new)
    lines, n, differ = [], 0, 0
    for key in sorted(set(fa) & set(fb)):
        ok = same(fa[key], fb[key], rtol, atol, strings)
        if ok is None:
            continue
        n += 1
        if not ok:
            differ += 1
            lines.append(f"differ   {key}: {fa[key]!r} -> {fb[key]!r}")
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    lines += [f"only base {k}: {fa[k]!r}" for k in only_a] + [f"only new  {k}: {fb[k]!r}" for k in only_b]
    summary = {"compared": n, "differ": differ, "only_base": len(only_a), "only_new": len(only_b),
               "identical": differ == 0 and not only_a and not only_b}
    return lines, summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rtol", type=float, default=0.0)
    ap.add_argument("--atol", type=float, default=0.0)
    ap.add_argument("--strings", action="store_true", help="also compare path-like strings")
    ap.add_argument("--section", action="append", help="compare only these top-level sections (repeatable)")
    ap.add_argument("--exclude", action="append", help="leave these top-level sections out (repeatable; e.g. config)")
    a = ap.parse_args(argv)
    try:
        base, new = (json.loads(p.read_text()) for p in (a.base, a.new))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read metrics: {exc}", file=sys.stderr)
        return 2
    lines, summary = diff(base, new, a.rtol, a.atol, a.strings, a.section, a.exclude)
    for line in lines:
        print(line)
    print(json.dumps(summary))
    return 0 if summary["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
