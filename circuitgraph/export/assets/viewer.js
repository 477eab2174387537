// circuitgraph viewer: draws the circuit data that circuitgraph.export.html embeds.
// Every node and edge carries k, the circuit size (top k ranked edges) at which it joins the
// pruned circuit; the size slider shows the elements with k <= size.
(function () {
  "use strict";

  const D = JSON.parse(document.getElementById("circuit-data").textContent);
  const M = D.meta;
  const $ = (id) => document.getElementById(id);
  const KIND_NAMES = {
    input: "embeddings", logits: "logits", head: "attention head", q: "query input",
    k: "key input", v: "value input", mlp: "MLP", neuron: "MLP neuron",
  };

  // ---- numbers and words --------------------------------------------------------------
  function num(x, signed) {
    if (x === null || x === undefined) return "—";
    const a = Math.abs(x);
    let s = a !== 0 && (a >= 1e4 || a < 1e-3) ? x.toExponential(2) : String(Number(x.toPrecision(4)));
    if (signed && x >= 0) s = "+" + s;
    return s;
  }
  const plural = (n, word, many) => `${n} ${n === 1 ? word : many || word + "s"}`;
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

  // ---- header -------------------------------------------------------------------------
  function header() {
    const parts = [];
    if (M.model) parts.push(`model <b>${esc(M.model)}</b>`);
    if (M.task || M.data) parts.push(`${M.task ? "task" : "data"} <b>${esc(M.task || M.data)}</b>`);
    if (M.metric) parts.push(`metric <b>${esc(M.metric)}</b>`);
    if (M.n_pairs) parts.push(plural(M.n_pairs, "prompt pair"));
    if (M.edge_method) parts.push(`edges by <b>${esc(M.edge_method)}</b>`);
    if (M.node_method) parts.push(`nodes by <b>${esc(M.node_method)}</b>`);
    if (M.n_edges !== null && M.n_edges !== undefined) {
      let c = `circuit <b>${plural(M.n_nodes, "node")}, ${plural(M.n_edges, "edge")}</b>`;
      if (M.faithfulness !== null) c += `, faithfulness <b>${num(M.faithfulness)}</b>`;
      parts.push(c);
    }
    if (D.mib) parts.push(`MIB <b>CPR ${num(D.mib.cpr)}</b> (↑) · <b>CMD ${num(D.mib.cmd)}</b> (↓)`);
    $("summary").innerHTML = parts.join(" · ");
    $("warnings").innerHTML = M.warnings.map((w) => `<li>${esc(w)}</li>`).join("");
  }

  // ---- the graph ----------------------------------------------------------------------
  const nodeById = new Map(D.nodes.map((n) => [n.id, n]));
  const topScore = Math.max(0, ...D.edges.filter((e) => !e.i).map((e) => Math.abs(e.sc || 0)));
  const big = D.edges.length > 1500;

  function nodeWidth(n) {
    const ellipse = n.kind === "q" || n.kind === "k" || n.kind === "v";
    return Math.max(ellipse ? 30 : 40, n.label.length * (ellipse ? 6.5 : 7.2) + (ellipse ? 14 : 16));
  }

  // verified: the exact effect was measured (exact activation or edge patching)
  function verified(x) { return x.ex !== null && x.ex !== undefined; }

  function elements() {
    const out = [];
    for (const r of D.rows) {
      out.push({ group: "nodes", data: { id: "row:" + r.row, label: r.label, row: r.row },
        position: { x: r.x, y: r.y }, classes: "rowlabel", selectable: false, grabbable: false });
    }
    for (const n of D.nodes) {
      out.push({ group: "nodes", position: { x: n.x, y: n.y }, classes: "n " + n.kind + (verified(n) ? " verified" : ""),
        data: { id: n.id, label: n.label, fill: D.colors.nodes[n.kind] || "#ccc", w: nodeWidth(n), k: n.k, row: n.row } });
    }
    D.edges.forEach((e, i) => {
      const color = e.i ? D.colors.edges.internal : (e.sg < 0 ? D.colors.edges.negative : D.colors.edges.positive);
      const width = e.i ? 1.2 : 0.8 + 6.2 * (topScore > 0 ? Math.abs(e.sc || 0) / topScore : 0);
      out.push({ group: "edges", classes: e.i ? "internal" : "scored " + (verified(e) ? "verified" : "estimate"),
        data: { id: "e" + i, source: e.s, target: e.t, k: e.k, color: color, width: width, idx: i } });
    });
    return out;
  }

  const style = [
    { selector: "node.n", style: {
      "label": "data(label)", "text-valign": "center", "text-halign": "center",
      "font-family": "Helvetica, Arial, sans-serif", "font-size": 12, "color": "#111",
      "background-color": "data(fill)", "border-width": 1, "border-color": "#555",
      "shape": "round-rectangle", "width": "data(w)", "height": 24, "min-zoomed-font-size": 6 } },
    { selector: "node.q, node.k, node.v", style: { "shape": "ellipse", "font-size": 11, "height": 20 } },
    { selector: "node.input, node.logits", style: { "border-width": 2, "font-weight": "bold" } },
    { selector: "node.rowlabel", style: {
      "label": "data(label)", "width": 1, "height": 1, "background-opacity": 0, "border-width": 0,
      "text-halign": "left", "text-valign": "center", "color": "#888", "font-size": 12, "events": "no" } },
    { selector: "edge", style: {
      "width": "data(width)", "line-color": "data(color)", "target-arrow-color": "data(color)",
      "target-arrow-shape": "triangle", "arrow-scale": 0.8, "curve-style": "straight", "opacity": 0.75 } },
    { selector: "edge.internal", style: { "line-style": "dashed", "target-arrow-shape": "none", "opacity": 0.9 } },
    { selector: "node.verified", style: { "border-width": 4, "border-style": "double", "border-color": "#222" } },
    { selector: "edge.estimate", style: { "line-style": "dashed" } },
    // many edges: haystack lines (no arrowheads; the layout runs input -> logits, top to
    // bottom) draw several times faster than straight edges with arrows
    ...(big ? [{ selector: "edge", style: { "curve-style": "haystack", "haystack-radius": 0 } }] : []),
    { selector: ".hidden", style: { "display": "none" } },
    { selector: ".faded", style: { "opacity": 0.15 } },
    { selector: "node.hl", style: { "border-width": 3, "border-color": "#111" } },
    { selector: "edge.hl", style: { "opacity": 1, "z-index": 10 } },
    { selector: "node.focus", style: { "border-width": 4, "border-color": "#e09000" } },
  ];

  const cy = cytoscape({
    container: $("cy"), elements: elements(), style: style, layout: { name: "preset" },
    minZoom: 0.03, maxZoom: 5, boxSelectionEnabled: false, autoungrabify: true,
    textureOnViewport: big, hideEdgesOnViewport: big,
  });

  // ---- the size slider: show exactly the elements with k <= size ----------------------
  const ordered = cy.elements().not(".rowlabel").toArray().sort((a, b) => a.data("k") - b.data("k"));
  const rowCount = new Map();
  const counts = { nodes: 0, edges: 0, internal: 0 };
  let shown = 0; // elements ordered[0 .. shown) are visible
  let size = 0;

  function reveal(el, on) {
    if (on) el.removeClass("hidden"); else el.addClass("hidden");
    const d = on ? 1 : -1;
    if (el.isNode()) {
      counts.nodes += d;
      rowCount.set(el.data("row"), (rowCount.get(el.data("row")) || 0) + d);
    } else if (el.hasClass("internal")) counts.internal += d;
    else counts.edges += d;
  }

  function setSize(n) {
    n = Math.max(0, Math.min(M.n_ranked, Math.round(n)));
    cy.batch(() => {
      while (shown < ordered.length && ordered[shown].data("k") <= n) reveal(ordered[shown++], true);
      while (shown > 0 && ordered[shown - 1].data("k") > n) reveal(ordered[--shown], false);
      cy.nodes(".rowlabel").forEach((r) => {
        if ((rowCount.get(r.data("row")) || 0) > 0) r.removeClass("hidden"); else r.addClass("hidden");
      });
    });
    size = n;
    $("size").value = String(n);
    const st = $("status");
    st.dataset.size = String(n);
    st.dataset.nodes = String(counts.nodes);
    st.dataset.edges = String(counts.edges);
    st.dataset.internal = String(counts.internal);
    const on = n === M.initial && M.n_edges !== null && M.n_edges !== undefined ? " (the circuit as discovered)" : "";
    const cap = M.n_ranked_total > M.n_ranked ? ` shown (${M.n_ranked_total} ranked in all)` : "";
    st.innerHTML = `top <b>${n}</b> of ${plural(M.n_ranked, "ranked edge")}${cap}${on} → ` +
      `<b>${plural(counts.edges, "edge")}</b> (+${counts.internal} internal) and ` +
      `<b>${plural(counts.nodes, "node")}</b> on input → logits paths`;
    drawChart();
    if (focused && focused.hasClass("hidden")) clearFocus();
  }

  // ---- tooltips -----------------------------------------------------------------------
  const tip = $("tip");
  function rowsTable(rows) {
    return "<table>" + rows.map(([k, v]) => `<tr><td>${k}</td><td class="num">${v}</td></tr>`).join("") + "</table>";
  }
  function nodeTip(n) {
    const where = n.layer === null || n.layer === undefined ? "" : `, layer ${n.layer}`;
    const rows = [["joins at", plural(n.k, "edge")]];
    if (n.r) rows.push(["rank", `${n.r} by ${esc(M.node_ranked_by)}`]);
    rows.push(["score (ranks)", num(n.sc)], ["signed estimate", num(n.sg, true)]);
    rows.push(["exact effect", n.ex === null ? "not verified" : num(n.ex, true)]);
    return `<div class="id">${esc(n.id)}</div><div>${KIND_NAMES[n.kind] || n.kind}${where}</div>` + rowsTable(rows);
  }
  function edgeTip(e) {
    const head = `<div class="id">${esc(e.s)} → ${esc(e.t)}</div>`;
    if (e.i) return head + "<div>internal: an input feeds its own head or MLP (no score)</div>";
    return head + rowsTable([
      ["rank", `${e.r} of ${M.n_ranked_total} by |score|`], ["joins at", plural(e.k, "edge")],
      ["|score|", num(e.sc)], ["signed estimate", num(e.sg, true)],
      ["exact effect", e.ex === null ? "not verified" : num(e.ex, true)],
    ]);
  }
  cy.on("mouseover", "node.n, edge", (ev) => {
    const t = ev.target;
    tip.innerHTML = t.isNode() ? nodeTip(nodeById.get(t.id())) : edgeTip(D.edges[t.data("idx")]);
    tip.style.display = "block";
    moveTip(ev.originalEvent);
  });
  cy.on("mousemove", (ev) => { if (tip.style.display === "block") moveTip(ev.originalEvent); });
  cy.on("mouseout", "node.n, edge", () => { tip.style.display = "none"; });
  function moveTip(e) {
    if (!e) return;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.min(e.clientX + 14, window.innerWidth - w - 4) + "px";
    tip.style.top = Math.min(e.clientY + 14, window.innerHeight - h - 4) + "px";
  }

  // ---- click to highlight a node's in- and out-edges ----------------------------------
  let focused = null;
  function focus(node) {
    focused = node;
    cy.batch(() => {
      cy.elements().removeClass("hl focus").addClass("faded");
      node.closedNeighborhood().filter((el) => !el.hasClass("hidden")).removeClass("faded").addClass("hl");
      node.addClass("focus");
      cy.nodes(".rowlabel").removeClass("faded");
    });
    details(node);
  }
  function clearFocus() {
    focused = null;
    cy.elements().removeClass("faded hl focus");
    $("details").innerHTML = '<div class="note">Click a node to list its edges.</div>';
  }
  function edgeList(edges, other) {
    const rows = edges.map((el) => D.edges[el.data("idx")])
      .sort((a, b) => (b.sc || 0) - (a.sc || 0))
      .map((e) => `<tr><td><span class="edge-link mono" data-node="${esc(e[other])}">${esc(e[other])}</span></td>` +
        `<td class="num">${e.i ? "internal" : num(e.sg, true)}</td><td class="num">${e.ex === null || e.ex === undefined ? "" : num(e.ex, true)}</td></tr>`);
    return rows.length ? `<table><tr><td></td><td class="num note">estimate</td><td class="num note">exact</td></tr>${rows.join("")}</table>` : '<div class="note">none</div>';
  }
  function details(node) {
    const n = nodeById.get(node.id());
    const ins = node.incomers("edge").filter((e) => !e.hasClass("hidden"));
    const outs = node.outgoers("edge").filter((e) => !e.hasClass("hidden"));
    $("details").innerHTML = nodeTip(n) +
      `<h3>${plural(ins.length, "in-edge")}</h3>` + edgeList(ins, "s") +
      `<h3>${plural(outs.length, "out-edge")}</h3>` + edgeList(outs, "t");
  }
  $("details").addEventListener("click", (ev) => {
    const id = ev.target && ev.target.dataset ? ev.target.dataset.node : null;
    if (id) find(id);
  });
  cy.on("tap", "node.n", (ev) => focus(ev.target));
  cy.on("tap", (ev) => { if (ev.target === cy) clearFocus(); });

  // ---- search -------------------------------------------------------------------------
  $("node-ids").innerHTML = D.nodes.map((n) => `<option value="${esc(n.id)}">`).join("");
  function find(text) {
    const q = text.trim();
    const note = $("search-note");
    if (!q) { note.textContent = ""; return; }
    const n = nodeById.get(q) || D.nodes.find((x) => x.id.includes(q));
    if (!n) { note.textContent = `no node matches “${q}”`; return; }
    if (n.k > size) {
      note.innerHTML = `<code>${esc(n.id)}</code> joins the circuit at ${plural(n.k, "edge")}: ` +
        `<a href="#" id="grow">grow to ${n.k}</a>`;
      $("grow").addEventListener("click", (e) => { e.preventDefault(); setSize(n.k); find(n.id); });
      return;
    }
    note.textContent = "";
    const node = cy.getElementById(n.id);
    focus(node);
    // centre on it; zoom in only when the labels would be too small to read
    cy.animate(cy.zoom() < 0.6 ? { center: { eles: node }, zoom: 1.0 } : { center: { eles: node } }, { duration: 250 });
  }
  $("search").addEventListener("change", (e) => find(e.target.value));
  $("search").addEventListener("keydown", (e) => { if (e.key === "Enter") find(e.target.value); });

  // ---- the faithfulness curve, with the current size marked ---------------------------
  const svgNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }
  const curve = D.curve.filter((p) => p[0] > 0 && p[1] !== null);
  const cprCurve = D.mib ? D.mib.sizes.map((n, i) => [n, D.mib.cpr_curve[i]]).filter((p) => p[0] > 0 && p[1] !== null) : [];
  function fAt(n) {
    // F at size n, linear in log(n) between measured points (exact where measured)
    if (!curve.length) return null;
    const exact = curve.find((p) => p[0] === n);
    if (exact) return { f: exact[1], measured: true };
    if (n < curve[0][0] || n > curve[curve.length - 1][0]) return null;
    for (let i = 1; i < curve.length; i++) {
      const [n1, f1] = curve[i - 1], [n2, f2] = curve[i];
      if (n <= n2) {
        const t = (Math.log(n) - Math.log(n1)) / (Math.log(n2) - Math.log(n1));
        return { f: f1 + t * (f2 - f1), measured: false };
      }
    }
    return null;
  }
  function drawChart() {
    const el = $("chart");
    while (el.firstChild) el.removeChild(el.firstChild);
    const W = +el.getAttribute("width"), H = +el.getAttribute("height");
    const L = 38, R = 10, T = 10, B = 30;
    const all = curve.concat(cprCurve);
    if (!all.length) {
      el.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no faithfulness curve recorded"));
      $("chart-note").textContent = "";
      return;
    }
    const xs = all.map((p) => p[0]).concat([Math.max(1, size), Math.max(1, M.n_ranked)]);
    const x0 = Math.max(1, Math.min(...xs)), x1 = Math.max(x0 * 2, ...xs);
    const fs = all.map((p) => p[1]);
    const y0 = Math.min(0, ...fs), y1 = Math.max(1.05, ...fs);
    const X = (n) => L + (Math.log(Math.max(n, x0)) - Math.log(x0)) / (Math.log(x1) - Math.log(x0)) * (W - L - R);
    const Y = (f) => T + (y1 - f) / (y1 - y0) * (H - T - B);
    for (const f of [0, 0.5, 1]) {
      el.appendChild(svg("line", { x1: L, x2: W - R, y1: Y(f), y2: Y(f), class: f === 0.5 ? "grid" : "axis" }));
      el.appendChild(svg("text", { x: L - 4, y: Y(f) + 3, "text-anchor": "end" }, String(f)));
    }
    for (let p = Math.ceil(Math.log10(x0)); p <= Math.floor(Math.log10(x1)); p++) {
      const n = Math.pow(10, p);
      el.appendChild(svg("line", { x1: X(n), x2: X(n), y1: T, y2: H - B, class: "grid" }));
      el.appendChild(svg("text", { x: X(n), y: H - B + 12, "text-anchor": "middle" }, n >= 1000 ? n / 1000 + "k" : String(n)));
    }
    el.appendChild(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "edges (top n by |score|, log scale)"));
    el.appendChild(svg("text", { x: 10, y: T + 8, "text-anchor": "start" }, "F"));
    if (M.n_ranked < x1) {
      el.appendChild(svg("line", { x1: X(M.n_ranked), x2: X(M.n_ranked), y1: T, y2: H - B, class: "end" }));
    }
    const series = [[curve, D.colors.edges.positive, "", "by |score|"]];
    if (cprCurve.length) series.push([cprCurve, "#d07020", "5 3", "by signed contribution (CPR)"]);
    for (const [pts, color, dash, name] of series) {
      if (!pts.length) continue;
      el.appendChild(svg("polyline", { class: "curve", stroke: color, "stroke-dasharray": dash,
        points: pts.map((p) => `${X(p[0])},${Y(p[1])}`).join(" ") }));
      for (const [n, f] of pts) {
        const c = svg("circle", { cx: X(n), cy: Y(f), r: 3.2, fill: color });
        const share = D.mib ? ` (${(100 * n / D.mib.n_edges).toPrecision(2)}% of the model's edges)` : "";
        c.appendChild(svg("title", {}, `${plural(n, "edge")}${share}: F = ${num(f)} ${name}`));
        if (n <= M.n_ranked) c.addEventListener("click", () => setSize(n));
        el.appendChild(c);
      }
    }
    if (size > 0) {
      el.appendChild(svg("line", { x1: X(size), x2: X(size), y1: T, y2: H - B, class: "marker" }));
      const at = fAt(size);
      if (at) el.appendChild(svg("circle", { cx: X(size), cy: Y(at.f), r: 4.5, fill: "none", stroke: "#d03030", "stroke-width": 2 }));
      $("chart-note").innerHTML = `size <b>${size}</b>: ` + (at ? `F ${at.measured ? "=" : "≈"} <b>${num(at.f)}</b>${at.measured ? " (measured)" : " (interpolated)"}` : "F not measured near this size") +
        (cprCurve.length ? " · dashed: ranking by signed contribution (CPR)" : "") +
        (M.n_ranked < x1 ? " · dotted: end of the ranked edges" : "");
    }
  }

  // ---- legend -------------------------------------------------------------------------
  function legend() {
    const kinds = new Set(D.nodes.map((n) => n.kind));
    const rows = Object.keys(KIND_NAMES).filter((k) => kinds.has(k)).map((k) =>
      `<tr><td><span class="swatch" style="background:${D.colors.nodes[k]}">${k === "head" ? "a3.h5" : k === "mlp" ? "m2" : k}</span></td><td>${KIND_NAMES[k]}</td></tr>`);
    const line = (color, dash) => `<span class="line" style="border-top:3px ${dash ? "dashed" : "solid"} ${color}"></span>`;
    rows.push(`<tr><td>${line(D.colors.edges.positive)}</td><td>positive signed score</td></tr>`);
    rows.push(`<tr><td>${line(D.colors.edges.negative)}</td><td>negative signed score</td></tr>`);
    rows.push(`<tr><td>${line(D.colors.edges.internal, true)}</td><td>internal: q/k/v → head, MLP → neuron</td></tr>`);
    rows.push(`<tr><td><span class="swatch" style="border:4px double #222">node</span></td><td>verified: exact effect measured</td></tr>`);
    rows.push(`<tr><td>${line("#888", false)} / ${line("#888", true)}</td><td>edge verified exactly / estimate only</td></tr>`);
    $("legend").innerHTML = `<div class="caption">Legend</div><table>${rows.join("")}</table>` +
      `<div class="note">edge width ∝ |score| (max ${num(topScore)}); drawn with ${esc(D.library)}</div>`;
  }

  // ---- start --------------------------------------------------------------------------
  header();
  legend();
  cy.elements().not(".rowlabel").addClass("hidden");
  cy.nodes(".rowlabel").addClass("hidden");
  const slider = $("size");
  slider.max = String(Math.max(1, M.n_ranked));
  slider.min = M.n_ranked ? "1" : "0";
  slider.addEventListener("input", () => setSize(+slider.value));
  setSize(M.initial);
  cy.fit(cy.elements(":visible"), 30);
  $("fit").addEventListener("click", () => cy.fit(cy.elements(":visible"), 30));
  window.circuitViewer = { cy: cy, data: D, setSize: setSize, counts: () => Object.assign({ size: size }, counts) };
  document.body.dataset.ready = "1";
})();
