"""The browser's pages in a real browser: Debian's headless Chromium through Selenium, from file://.

Under CI (``CI`` set) a missing browser fails the test; elsewhere it skips with the reason.
``BROWSE_SCREENSHOT=docs/browse.png`` keeps the latent page's screenshot there (docs/browse.md shows it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def drv():
    from stitchplug_browse.shot import driver, missing

    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test cannot run under CI: {why}")
        pytest.skip(why)
    d = driver()
    yield d
    d.quit()


def _cells(drv, col: int) -> list[str]:
    return [td.text for td in drv.find_elements("css selector", f"#latents tbody tr td:nth-child({col})")]


def test_index_sorts_filters_and_a_latent_page_shows_both_models(drv, browsed_run, tmp_path):
    from stitchplug_browse.shot import full_page, wait_ready

    site = (browsed_run / "browse").resolve()
    rows = json.loads((site / "data" / "index.json").read_text())["rows"]
    drv.get(site.as_uri() + "/index.html")
    wait_ready(drv, "index")
    assert drv.current_url.startswith("file://")
    live = [r for r in rows if r["live"]]
    assert len(drv.find_elements("css selector", "#latents tbody tr")) == len(live)
    # sort by r (descending on the first click, ascending on the second; latents without r last)
    r_of = {r["i"]: r["r"] for r in live}
    scored = sum(v is not None for v in r_of.values())
    assert scored > 10
    for _ in ("desc", "asc"):
        drv.find_element("css selector", "th[data-key='r']").click()
        shown = [r_of[int(x)] for x in _cells(drv, 1)]
        assert all(v is None for v in shown[scored:]) and None not in shown[:scored]
        assert shown[:scored] == sorted(shown[:scored], reverse=_ == "desc")
    want = [r["i"] for r in sorted((r for r in live if r["r"] is not None), key=lambda r: -r["r"])]
    # search by token text: only latents whose tokens contain it
    token = next(t for r in live for t in r["tokens_a"] if t.strip())
    box = drv.find_element("id", "search")
    box.send_keys(token.strip())
    hits = {int(x) for x in _cells(drv, 1)}
    q = token.strip().lower()
    assert hits == {r["i"] for r in live if any(q in t.lower() for t in r["tokens_a"] + r["tokens_b"] + r["logits_a"]
                                                   + r["logits_b"])}
    box.clear()
    box.send_keys("\u2603no such token\u2603")
    assert _cells(drv, 1) == []
    box.clear()
    box.send_keys(" ")  # back to the full list (a blank query matches everything)
    # follow the link of the latent with the highest r
    drv.find_element("css selector", "th[data-key='r']").click()
    link = drv.find_element("css selector", f"#latents tbody tr[data-latent='{want[0]}'] a.latent-link")
    link.click()
    wait_ready(drv, "latent")
    assert drv.current_url.endswith(f"latent.html?i={want[0]}")
    assert drv.find_element("id", "title").text.startswith(f"Latent {want[0]}")
    for side in ("a", "b"):
        hl = drv.find_elements("css selector", f".ctx-{side} .tok.hl")
        assert hl, f"no highlighted token on side {side}"
        assert all(h.value_of_css_property("background-color").startswith(("rgba(255, 120, 0", "rgb(255, 120, 0"))
                   for h in hl)
        plain = drv.find_elements("css selector", f".ctx-{side} .tok:not(.hl)")
        assert plain and all(p.value_of_css_property("background-color") == "rgba(0, 0, 0, 0)" for p in plain[:20])
        assert drv.find_elements("css selector", f".side-{side} svg.hist rect")
    # each context is shown in its model's own tokenization: the token spans are that model's tokens there
    docs = json.loads((site / "data" / "docs.json").read_text())
    for side in ("a", "b"):
        ctxs = drv.find_elements("css selector", f".ctx.ctx-{side}")
        assert ctxs
        for c in ctxs:
            doc, start = int(c.get_attribute("data-doc")), int(c.get_attribute("data-start"))
            toks = [t.get_attribute("textContent") for t in c.find_elements("css selector", ".tok")]
            assert toks == [x.replace("\n", "\u21b5\n") for x in docs[side][doc][start:start + len(toks)]]
    neighbours = drv.find_elements("css selector", "a.neighbour")
    assert neighbours
    out = Path(os.environ.get("BROWSE_SCREENSHOT") or tmp_path / "browse.png")
    full_page(drv, out, max_height=2600)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    neighbours[0].click()
    wait_ready(drv, "latent")
    assert "latent.html?i=" in drv.current_url


def test_vectors_page(drv, browsed_run):
    from stitchplug_browse.shot import wait_ready

    drv.get((browsed_run / "browse").resolve().as_uri() + "/vectors.html")
    wait_ready(drv, "vectors")
    text = drv.find_element("id", "body").text
    assert "wiki-topic:People" in text and "native_on_A/fr" in text and "est belle" in text
    assert len(drv.find_elements("css selector", "table.logits")) >= 6
