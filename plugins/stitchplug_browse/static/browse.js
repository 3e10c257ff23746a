/* stitchplug browse: the pages of RUN/browse/, vanilla JavaScript, no network. Data arrive as
   site-data/<name>.js files calling BROWSE.put(name, object) (browsers refuse fetch() from file://). */
var BROWSE = (function () {
  "use strict";
  var store = {}, waiting = {}, requested = {};

  function put(name, obj) {
    store[name] = obj;
    (waiting[name] || []).forEach(function (f) { f(obj); });
    delete waiting[name];
  }
  function load(name, cb) {
    if (store[name]) { cb(store[name]); return; }
    (waiting[name] = waiting[name] || []).push(cb);
    if (requested[name]) return;
    requested[name] = true;
    var s = document.createElement("script");
    s.src = "site-data/" + name + ".js";
    s.onerror = function () { fail("cannot read site-data/" + name + ".js (run `stitchplug browse` again)"); };
    document.head.appendChild(s);
  }
  function loadAll(names, cb) {
    var got = {}, left = names.length;
    names.forEach(function (n) { load(n, function (o) { got[n] = o; if (--left === 0) cb(got); }); });
  }
  function fail(msg) {
    var e = document.createElement("p"); e.className = "err"; e.textContent = msg; document.body.appendChild(e);
  }
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k]; else if (k === "cls") e.className = attrs[k]; else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) return "";
    if (typeof v !== "number") return Array.isArray(v) ? v.map(show).join(" | ") : String(v);
    if (v !== 0 && Math.abs(v) < 0.001) return v.toExponential(1);
    return v.toFixed(digits === undefined ? 3 : digits);
  }
  function show(t) { return String(t).replace(/\n/g, "\u21b5").replace(/ /g, "\u00b7"); }  // token lists: visible spaces
  function showTok(t) { return String(t).replace(/\n/g, "\u21b5\n"); }  // running text: spaces as spaces
  function param(name) {
    var m = new RegExp("[?&]" + name + "=([^&#]*)").exec(window.location.search);
    return m ? decodeURIComponent(m[1]) : null;
  }
  function metaLine(meta) {
    return "A: " + meta.models.a + " layer " + meta.layers.a + " \u2192 B: " + meta.models.b + " layer " + meta.layers.b +
      " \u00b7 " + meta.n_latents + " latents \u00b7 " + meta.n_docs + " held-out documents (" + meta.n_tokens.a +
      " tokens on A, " + meta.n_tokens.b + " on B)";
  }

  // ---------------------------------------------------------------- index
  var COLS = ["i", "freq_a", "freq_b", "mean_a", "mean_b", "r", "r_random", "class", "entropy", "attention",
              "tokens_a", "tokens_b", "logits_a", "logits_b"];
  function indexPage() {
    load("index", function (data) {
      document.getElementById("meta").textContent = metaLine(data.meta) +
        (data.meta.analysis_parts.length ? " \u00b7 analysed: " + data.meta.analysis_parts.join(", ") : " \u00b7 no `stitchplug analyze` results");
      var rows = data.rows, sortKey = "i", desc = false, shown = 500;
      var body = document.querySelector("#latents tbody");
      function matches(r) {
        var q = document.getElementById("search").value.trim().toLowerCase();
        var cls = document.getElementById("class").value;
        var minR = parseFloat(document.getElementById("min-r").value);
        if (document.getElementById("live-only").checked && !r.live) return false;
        if (document.getElementById("entropy-only").checked && !r.entropy) return false;
        if (document.getElementById("attention-only").checked && !r.attention) return false;
        if (cls && r["class"] !== cls) return false;
        if (!isNaN(minR) && !(r.r !== null && r.r >= minR)) return false;
        if (q) {
          var text = [].concat(r.tokens_a, r.tokens_b, r.logits_a, r.logits_b).join("\u0000").toLowerCase();
          if (text.indexOf(q) < 0) return false;
        }
        return true;
      }
      function value(r, k) { var v = r[k]; return Array.isArray(v) ? v.join(" ") : v; }
      function render() {
        var list = rows.filter(matches);
        list.sort(function (x, y) {
          var a = value(x, sortKey), b = value(y, sortKey);
          if (a === null || a === undefined || a === "") return 1;
          if (b === null || b === undefined || b === "") return -1;
          var c = typeof a === "number" ? a - b : String(a).localeCompare(String(b));
          return desc ? -c : c;
        });
        document.getElementById("count").textContent = list.length + " of " + rows.length + " latents";
        body.innerHTML = "";
        list.slice(0, shown).forEach(function (r) {
          var tr = el("tr", {"data-latent": r.i});
          COLS.forEach(function (k) {
            var td = el("td", {cls: typeof r[k] === "number" || k === "i" ? "" : "txt"});
            if (k === "i") td.appendChild(el("a", {href: "latent.html?i=" + r.i, cls: "latent-link", text: String(r.i)}));
            else td.textContent = fmt(r[k], k.indexOf("freq") === 0 ? 4 : 3);
            tr.appendChild(td);
          });
          body.appendChild(tr);
        });
        document.getElementById("more").style.display = list.length > shown ? "" : "none";
      }
      document.querySelectorAll("#latents th").forEach(function (th) {
        th.addEventListener("click", function () {
          var k = th.getAttribute("data-key");
          desc = sortKey === k ? !desc : (k !== "i" && k.indexOf("tokens") && k.indexOf("logits") && k !== "class");
          sortKey = k;
          document.querySelectorAll("#latents th").forEach(function (h) { h.className = h.className.replace(/ ?sorted-\w+/g, ""); });
          th.className += desc ? " sorted-desc" : " sorted-asc";
          render();
        });
      });
      ["search", "class", "min-r", "live-only", "entropy-only", "attention-only"].forEach(function (id) {
        document.getElementById(id).addEventListener("input", function () { shown = 500; render(); });
      });
      document.getElementById("more").addEventListener("click", function () { shown += 500; render(); });
      render();
      document.body.setAttribute("data-ready", "index");
    });
  }

  // ---------------------------------------------------------------- latent
  function tokens(toks, acts, start, scale, cls, doc) {
    var div = el("div", {cls: "ctx " + cls, "data-doc": doc, "data-start": start});
    var m = Math.max.apply(null, acts.concat([0]));
    div.appendChild(el("span", {cls: "val", text: fmt(m, 2)}));
    acts.forEach(function (a, n) {
      var t = toks[start + n];
      if (t === undefined) return;
      var s = el("span", {cls: "tok" + (a > 0 ? " hl" : "") + (/^<.*>$/.test(t) ? " special" : ""), title: fmt(a, 3), text: showTok(t)});
      if (a > 0) s.style.background = "rgba(255,120,0," + Math.min(1, 0.12 + 0.88 * a / (scale || 1)).toFixed(3) + ")";
      div.appendChild(s);
    });
    return div;
  }
  function histogram(h, edges, label) {
    var W = 300, H = 80, n = h.counts.length;
    var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "hist"); svg.setAttribute("width", W); svg.setAttribute("height", H + 16);
    if (!n) { var t0 = document.createElementNS(svg.namespaceURI, "text"); t0.setAttribute("y", 20); t0.textContent = "never fires"; svg.appendChild(t0); return svg; }
    var top = Math.max.apply(null, h.counts), bw = W / n;
    h.counts.forEach(function (c, k) {
      var r = document.createElementNS(svg.namespaceURI, "rect");
      var bh = c ? Math.max(1, H * c / top) : 0;
      r.setAttribute("x", (k * bw).toFixed(1)); r.setAttribute("width", Math.max(1, bw - 1).toFixed(1));
      r.setAttribute("y", (H - bh).toFixed(1)); r.setAttribute("height", bh.toFixed(1));
      var tt = document.createElementNS(svg.namespaceURI, "title");
      tt.textContent = fmt(edges[h.lo + k], 3) + " \u2013 " + fmt(edges[h.lo + k + 1], 3) + ": " + c;
      r.appendChild(tt); svg.appendChild(r);
    });
    [[0, edges[h.lo]], [W - 40, edges[h.lo + n]]].forEach(function (p) {
      var t = document.createElementNS(svg.namespaceURI, "text");
      t.setAttribute("x", p[0]); t.setAttribute("y", H + 12); t.textContent = fmt(p[1], 3); svg.appendChild(t);
    });
    var l = document.createElementNS(svg.namespaceURI, "text");
    l.setAttribute("x", W / 2 - 50); l.setAttribute("y", H + 12); l.textContent = label; svg.appendChild(l);
    return svg;
  }
  function logitTable(s) {
    var t = el("table", {cls: "logits"});
    t.appendChild(el("tr", {}, [el("th", {cls: "txt", text: "promoted"}), el("th", {text: ""}), el("th", {cls: "txt", text: "suppressed"}), el("th", {text: ""})]));
    for (var n = 0; n < Math.max(s.pos.length, s.neg.length); n++) {
      var p = s.pos[n] || ["", null], q = s.neg[n] || ["", null];
      t.appendChild(el("tr", {}, [el("td", {cls: "txt pos", text: show(p[0])}), el("td", {cls: "pos", text: fmt(p[1], 2)}),
                                  el("td", {cls: "txt neg", text: show(q[0])}), el("td", {cls: "neg", text: fmt(q[1], 2)})]));
    }
    return t;
  }
  function neighbourLinks(list) {
    var p = el("p", {});
    list.forEach(function (x) { p.appendChild(el("a", {href: "latent.html?i=" + x[0], cls: "neighbour", text: x[0] + " (" + fmt(x[1], 2) + ")"})); p.appendChild(document.createTextNode(" ")); });
    return p;
  }
  function sideColumn(rec, side, meta, docs, row) {
    var s = rec[side], name = side === "a" ? "A: " + meta.models.a + " (source SAE)" : "B: " + meta.models.b + " (transferred SAE)";
    var col = el("div", {cls: "side-" + side}, [el("h2", {text: name})]);
    col.appendChild(el("p", {text: "frequency " + fmt(row["freq_" + side], 4) + " held-out cache tokens, " + fmt(s.freq_docs, 4) +
      " on the browsed documents; mean when firing " + fmt(s.mean_docs, 3) + ", max " + fmt(s.max, 3)}));
    col.appendChild(histogram(s.hist, meta.hist_edges, "activation (log scale)"));
    col.appendChild(el("h3", {text: "Next tokens through " + (side === "a" ? "A" : "B") + "'s unembedding"}));
    col.appendChild(logitTable(s));
    col.appendChild(el("h3", {text: "Top-activating contexts on " + (side === "a" ? "A" : "B") + " (" + s.top.length + ")"}));
    var box = el("div", {cls: "contexts ctx-" + side});
    s.top.forEach(function (c) { box.appendChild(tokens(docs[side][c.doc], c.acts, c.start, s.max, "ctx-" + side, c.doc)); });
    if (!s.top.length) box.appendChild(el("p", {text: "never fires on the browsed documents"}));
    col.appendChild(box);
    col.appendChild(el("h3", {text: "Neighbours by decoder cosine"}));
    col.appendChild(neighbourLinks(rec["neighbours_" + side] || []));
    return col;
  }
  function latentPage() {
    var i = parseInt(param("i"), 10);
    load("index", function (index) {
      var meta = index.meta;
      if (isNaN(i) || i < 0 || i >= meta.n_latents) { fail("no latent " + param("i") + " (0.." + (meta.n_latents - 1) + ")"); return; }
      var shard = ("000" + Math.floor(i / meta.shard)).slice(-4);
      loadAll(["latents/" + shard, "docs"], function (got) {
        var recs = got["latents/" + shard].latents, rec = recs[i - got["latents/" + shard].first], docs = got.docs, row = index.rows[i];
        document.title = "latent " + i + " \u00b7 stitchplug browse";
        document.getElementById("title").textContent = "Latent " + i + (rec.live ? "" : " (dead on A)");
        document.getElementById("meta").textContent = metaLine(meta);
        var nav = document.getElementById("nav");
        if (i > 0) nav.appendChild(el("a", {href: "latent.html?i=" + (i - 1), text: "\u2190 " + (i - 1)}));
        nav.appendChild(document.createTextNode(" "));
        if (i + 1 < meta.n_latents) nav.appendChild(el("a", {href: "latent.html?i=" + (i + 1), text: (i + 1) + " \u2192"}));
        var body = document.getElementById("body");
        var nums = el("table", {cls: "nums"});
        [["transferability r (Eq. 10)", rec.r], ["random SAE's r", rec.r_random], ["class", rec["class"]],
         ["entropy feature", rec.entropy], ["attention deactivation", rec.attention]].forEach(function (p) {
          nums.appendChild(el("tr", {}, [el("td", {text: p[0]}), el("td", {text: p[1] === null || p[1] === undefined ? "not computed" : p[1] === "" ? "no" : fmt(p[1])})]));
        });
        body.appendChild(nums);
        body.appendChild(el("div", {cls: "cols"}, [sideColumn(rec, "a", meta, docs, row), sideColumn(rec, "b", meta, docs, row)]));
        body.appendChild(el("h2", {text: "The same text on both models: A's top contexts, and the transferred latent on B over the same characters"}));
        var t = el("table", {cls: "same"});
        t.appendChild(el("tr", {}, [el("th", {cls: "txt", text: "A (" + meta.models.a + ")"}), el("th", {cls: "txt", text: "B (" + meta.models.b + ")"})]));
        var scaleB = Math.max(rec.b.max || 0, 1e-9);
        rec.a.top.forEach(function (c, n) {
          var o = rec.b.on_a[n];
          t.appendChild(el("tr", {}, [el("td", {}, [tokens(docs.a[c.doc], c.acts, c.start, rec.a.max, "ctx-a", c.doc)]),
            el("td", {}, [o ? tokens(docs.b[o.doc], o.acts, o.start, scaleB, "ctx-b", o.doc) : el("span", {text: "no B tokens"})])]));
        });
        body.appendChild(t);
        document.body.setAttribute("data-ready", "latent");
      });
    });
  }

  // ---------------------------------------------------------------- vectors
  function vectorsPage() {
    loadAll(["index", "vectors"], function (got) {
      var meta = got.index.meta, v = got.vectors, body = document.getElementById("body");
      document.getElementById("meta").textContent = metaLine(meta);
      function both(tokensBySide) {
        return el("div", {cls: "cols"}, ["a", "b"].map(function (s) {
          return el("div", {cls: "side-" + s}, [el("h3", {text: "through " + (s === "a" ? "A" : "B") + "'s unembedding (" + meta.models[s] + ")"}),
                                              tokensBySide[s] ? logitTable(tokensBySide[s]) : el("p", {text: "n/a"})]);
        }));
      }
      body.appendChild(el("h2", {text: "Probes (" + v.probes.length + " tasks)"}));
      if (!v.probes.length) body.appendChild(el("p", {text: "no probe artifact in this run"}));
      v.probes.forEach(function (p) {
        body.appendChild(el("h3", {text: p.task}));
        Object.keys(p.dense).forEach(function (side) {
          body.appendChild(el("p", {text: "dense probe " + (side === "a" ? "on A" : "transferred, reading B") + ":"}));
          body.appendChild(both(p.dense[side]));
        });
        Object.keys(p.sparse).forEach(function (k) {
          var line = el("p", {text: "sparse probe, k=" + k + ": "});
          p.sparse[k].forEach(function (x) { line.appendChild(el("a", {href: "latent.html?i=" + x[0], text: x[0] + " (" + fmt(x[1], 2) + ")"})); line.appendChild(document.createTextNode(" ")); });
          body.appendChild(line);
        });
      });
      body.appendChild(el("h2", {text: "Steering vectors (" + v.steering.length + ")"}));
      if (!v.steering.length) body.appendChild(el("p", {text: "no steering artifact in this run"}));
      v.steering.forEach(function (s) {
        body.appendChild(el("h3", {text: s.folder + " / " + s.name + " (on " + s.model + ", layer " + s.layer + ")"}));
        body.appendChild(both(s.tokens));
      });
      var arms = Object.keys(v.generations);
      if (arms.length) body.appendChild(el("h2", {text: "Example generations per arm"}));
      arms.forEach(function (arm) {
        body.appendChild(el("h3", {text: arm}));
        v.generations[arm].forEach(function (g) {
          body.appendChild(el("div", {cls: "ctx"}, [el("span", {cls: "val", text: (g.lang || "") + (g.loss != null ? " " + fmt(g.loss, 2) : "")}),
                                                     el("b", {text: g.prompt || ""}), document.createTextNode(g.text || "")]));
        });
      });
      document.body.setAttribute("data-ready", "vectors");
    });
  }

  return {put: put, load: load, indexPage: indexPage, latentPage: latentPage, vectorsPage: vectorsPage};
})();
