// runner board: a run's predictions (the run page's lower half) and the sweep view.
// Uses el(), fmt(), getJSON() and COLORS from the page's main script.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function titled(e, text) { e.append(svgEl("title", {}, text)); return e; }
const enc = encodeURIComponent;
const pstate = { from: 0, score: 0.25, cls: "", cell: null, curve: "roc", overlay: "pred", opacity: 0.6 };

// A line chart of [x, y, hover text] series over [0, 1] x [0, 1] (ROC, precision / recall).
function unitChart(id, lines, xlabel, ylabel) {
  const W = 420, H = 360, L = 48, R = 12, T = 12, B = 40;
  const svg = svgEl("svg", { id, width: W, height: H, class: "chart" });
  const X = x => L + x * (W - L - R), Y = y => T + (1 - y) * (H - T - B);
  svg.append(svgEl("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#999" }));
  for (let i = 0; i <= 4; i++) {
    svg.append(svgEl("text", { x: X(i / 4), y: H - B + 14, "text-anchor": "middle", "font-size": 11 }, i / 4));
    svg.append(svgEl("text", { x: L - 4, y: Y(i / 4) + 4, "text-anchor": "end", "font-size": 11 }, i / 4));
  }
  svg.append(svgEl("text", { x: (L + W) / 2, y: H - 6, "text-anchor": "middle", "font-size": 12 }, xlabel));
  svg.append(svgEl("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", "font-size": 12, transform: `rotate(-90 12 ${(T + H - B) / 2})` }, ylabel));
  lines.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    svg.append(svgEl("polyline", { class: "curve", "data-class": line.name, fill: "none", stroke: color, "stroke-width": 2,
      points: line.pts.map(([x, y]) => `${X(x)},${Y(y)}`).join(" ") }));
    // At most 100 hover points a curve: enough to read thresholds off, light for 10k samples.
    const every = Math.max(1, Math.ceil(line.pts.length / 100));
    line.pts.forEach(([x, y, text], j) => {
      if (j % every && j !== line.pts.length - 1) return;
      svg.append(titled(svgEl("circle", { cx: X(x), cy: Y(y), r: 3, fill: color, "fill-opacity": 0.5 }), `${line.name}: ${text}`));
    });
  });
  const legend = el("div", { class: "legend" }, ...lines.map((l, i) => el("span", { style: `color:${COLORS[i % COLORS.length]}` }, `■ ${l.name}` + (l.note ? ` (${l.note})` : ""))));
  return el("div", { class: "panel" }, svg, legend);
}

// A confusion matrix `m[true][pred]` as a table, cells shaded by their share of the row;
// `onpick(t, p)`: a cell was clicked.
function confusionTable(m, names, onpick) {
  const head = el("tr", {}, el("th", {}, "true \\ predicted"), ...names.map(n => el("th", {}, n)));
  const rows = m.map((row, t) => {
    const sum = row.reduce((a, b) => a + b, 0) || 1;
    return el("tr", {}, el("th", {}, names[t]), ...row.map((v, p) => {
      const share = v / sum;
      const bg = t === p ? `rgba(46,125,50,${share})` : `rgba(198,40,40,${share})`;
      const picked = pstate.cell && pstate.cell[0] === t && pstate.cell[1] === p;
      return el("td", { class: "num cell" + (picked ? " picked" : ""), "data-cell": `${t},${p}`, style: `background:${bg};color:${share > 0.5 ? "#fff" : "#222"}`,
        title: `${names[t]} predicted as ${names[p]}: ${v} (${(100 * share).toFixed(1)}% of the row)`, onclick: onpick ? () => onpick(t, p) : null }, v);
    }));
  });
  return el("table", { id: "confusion", class: "confusion" }, head, ...rows);
}

function imageUrl(key, sample, mask) {
  return `/api/image?run=${enc(key)}&sample=${sample}` + (mask ? "&mask=1" : "");
}

// Classification: the confusion matrix (a click lists that cell's images with their top
// five), ROC or precision / recall per class (from the logged ROC table and the labels).
function classifyView(key, p, redraw) {
  // Without the run's class names (its config did not load), the indices.
  const k = p.classes.length || Math.max(0, ...p.label, ...p.pred) + 1;
  const names = p.classes.length ? p.classes : Array.from({ length: k }, (_, c) => String(c));
  const m = Array.from({ length: k }, () => new Array(k).fill(0));
  p.label.forEach((l, i) => { if (l >= 0 && l < k && p.pred[i] >= 0 && p.pred[i] < k) m[l][p.pred[i]]++; });
  const parts = [el("h3", {}, "confusion matrix (test; click a cell for its images)"),
    confusionTable(m, names, (t, q) => { pstate.cell = [t, q]; redraw(false); })];
  const rocClasses = Object.keys(p.roc || {});
  if (rocClasses.length) {
    const positives = Object.fromEntries(names.map((n, c) => [n, p.label.filter(l => l === c).length]));
    const total = p.label.length;
    const sel = el("select", { id: "curve-kind", onchange: e => { pstate.curve = e.target.value; redraw(false); } },
      el("option", { value: "roc" }, "ROC"), el("option", { value: "pr" }, "precision / recall"));
    sel.value = pstate.curve;
    const lines = rocClasses.map(c => {
      const r = p.roc[c];
      const P = positives[c] ?? 0, N = total - P;
      const pts = r.fpr.map((f, j) => {
        const t = r.tpr[j], thr = r.threshold[j];
        if (pstate.curve === "roc") return [f, t, `threshold ${fmt(thr)}: FPR ${fmt(f)}, TPR ${fmt(t)}`];
        const tp = t * P, fp = f * N;
        const prec = tp + fp > 0 ? tp / (tp + fp) : 1;
        return [t, prec, `threshold ${fmt(thr)}: recall ${fmt(t)}, precision ${fmt(prec)}`];
      });
      let auc = 0;
      for (let j = 1; j < r.fpr.length; j++) auc += (r.fpr[j] - r.fpr[j - 1]) * (r.tpr[j] + r.tpr[j - 1]) / 2;
      return { name: c, pts, note: pstate.curve === "roc" ? `AUC ${fmt(Math.abs(auc))}` : "" };
    });
    parts.push(el("h3", {}, "curves (test, one class against the rest; hover for thresholds) ", sel),
      pstate.curve === "roc" ? unitChart("roc", lines, "false positive rate", "true positive rate") : unitChart("pr", lines, "recall", "precision"));
  }
  // The picked cell's images, else the first mistakes.
  let idx = p.label.map((_, i) => i);
  let what;
  if (pstate.cell) {
    const [t, q] = pstate.cell;
    idx = idx.filter(i => p.label[i] === t && p.pred[i] === q);
    what = `${names[t]} predicted as ${names[q]}: ${idx.length} images`;
  } else if (idx.some(i => p.label[i] !== p.pred[i])) {
    idx = idx.filter(i => p.label[i] !== p.pred[i]);
    what = `mistakes: ${idx.length} images`;
  } else {
    what = `no mistakes: all ${idx.length} images`;
  }
  const shown = idx.slice(0, 48);
  parts.push(el("h3", {}, what + (idx.length > shown.length ? ` (first ${shown.length})` : "")));
  if (p.maps && p.maps.length) parts.push(el("p", { class: "note", id: "maps" }, "test, latest epoch: " + p.maps.map(([n, v]) => `${n} ${fmt(v)}`).join(" · ")));
  if (!p.images) parts.push(el("p", { class: "note" }, `no images: ${p.images_error}`));
  parts.push(el("div", { class: "samples" }, ...shown.map(i => {
    const top = [];
    for (let j = 0; j < p.top[i].length; j += 2) top.push(el("li", { class: p.top[i][j] === p.label[i] ? "right" : "" }, `${names[p.top[i][j]] ?? p.top[i][j]} ${(100 * p.top[i][j + 1]).toFixed(1)}%`));
    return el("div", { class: "sample cls", "data-sample": p.sample[i] },
      p.images ? el("img", { src: imageUrl(key, p.sample[i]), alt: `sample ${p.sample[i]}`, loading: "lazy" }) : "",
      el("div", {}, `#${p.sample[i]} true: ${names[p.label[i]] ?? p.label[i]}`), el("ol", {}, ...top));
  })));
  return parts;
}

function pager(p, redraw) {
  const last = Math.max(0, Math.ceil(p.total / p.page) - 1) * p.page;
  const prev = el("button", { id: "prev", onclick: () => { pstate.from = Math.max(0, p.from - p.page); redraw(); } }, "◀");
  const next = el("button", { id: "next", onclick: () => { pstate.from = Math.min(last, p.from + p.page); redraw(); } }, "▶");
  prev.disabled = p.from <= 0;
  next.disabled = p.from >= last;
  const what = p.total ? ` images ${p.from + 1}-${Math.min(p.from + p.page, p.total)} of ${p.total} ` : " no images ";
  return el("span", { class: "pager" }, prev, what, next);
}
const score2 = v => typeof v === "number" ? v.toFixed(2) : "NaN";

// Detection and localization: the page's images with their true boxes (white, dashed)
// and the predicted ones above the score slider, per class colour; the PR curves.
function boxesView(key, p, redraw) {
  const names = p.classes;
  const colour = c => COLORS[Math.max(0, names.indexOf(c)) % COLORS.length];
  const count = el("span", { id: "shown" });
  const grid = el("div", { class: "samples" });
  const apply = () => {
    let n = 0;
    grid.querySelectorAll("rect.pred").forEach(r => {
      const on = Number(r.dataset.score) >= pstate.score && (!pstate.cls || r.dataset.class === pstate.cls);
      r.style.display = on ? "" : "none";
      r.nextSibling.style.display = on ? "" : "none";
      if (on) n++;
    });
    grid.querySelectorAll("rect.truth").forEach(r => { r.style.display = !pstate.cls || r.dataset.class === pstate.cls ? "" : "none"; });
    count.textContent = `${n} boxes shown`;
    value.textContent = pstate.score.toFixed(2);
  };
  const value = el("span", { id: "score-value" });
  const slider = el("input", { id: "score", type: "range", min: 0, max: 1, step: 0.01, value: pstate.score, oninput: e => { pstate.score = Number(e.target.value); apply(); } });
  const cls = el("select", { id: "class", onchange: e => { pstate.cls = e.target.value; apply(); } }, el("option", { value: "" }, "all classes"), ...names.map(n => el("option", { value: n }, n)));
  cls.value = pstate.cls;
  const parts = [el("h3", {}, p.task === "detect" ? "detections (test)" : "localizations (test)"),
    el("div", { class: "controls" }, el("label", {}, "score ≥ ", slider, " ", value), cls, count, pager(p, redraw),
      el("span", { class: "note" }, "white dashed: ground truth")) ];
  if (!p.images) parts.push(el("p", { class: "note" }, `no images: ${p.images_error}`));
  grid.append(...p.pages.map(img => {
    const svg = svgEl("svg", { class: "overlay", preserveAspectRatio: "none" });
    for (const t of img.truth) {
      const [x0, y0, x1, y1] = t.box;
      svg.append(titled(svgEl("rect", { class: "truth", "data-class": t.class, x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none", stroke: "#fff", "stroke-dasharray": "3,2", "vector-effect": "non-scaling-stroke" }), `truth: ${t.class}` + (t.difficult ? " (difficult)" : "")));
    }
    for (const b of img.boxes) {
      const [x0, y0, x1, y1] = b.box;
      svg.append(titled(svgEl("rect", { class: "pred", "data-score": b.score, "data-class": b.class, x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none", stroke: colour(b.class), "stroke-width": 2, "vector-effect": "non-scaling-stroke" }),
        `${b.class} ${fmt(b.score)}` + (b.label ? ` (true class ${b.label})` : "")));
      svg.append(svgEl("text", { x: Math.max(0, x0), y: Math.max(0, y0), dy: "1em", fill: colour(b.class), class: "boxlabel" }, `${b.class} ${score2(b.score)}`));
    }
    const image = p.images ? el("img", { src: imageUrl(key, img.sample), alt: img.image || `sample ${img.sample}`, loading: "lazy" }) : el("div", { class: "blank" });
    // The boxes are in the image's pixels: the overlay takes its size once it loads, and
    // the labels a size that reads the same on small and large images.
    const size = (w, h) => {
      svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
      svg.querySelectorAll("text").forEach(t => { t.setAttribute("font-size", w * 0.055); t.setAttribute("stroke-width", w * 0.008); });
    };
    if (p.images) image.addEventListener("load", () => size(image.naturalWidth, image.naturalHeight));
    else { const ext = Math.max(1, ...img.truth.concat(img.boxes).flatMap(b => [b.box[2], b.box[3]])); size(ext, ext); }
    return el("div", { class: "sample det", "data-sample": img.sample }, el("div", { class: "frame" }, image, svg),
      el("div", {}, `#${img.sample} ${img.image || ""}: ${img.truth.length} objects`));
  }));
  parts.push(grid);
  const prs = Object.entries(p.pr || {});
  if (prs.length) {
    const lines = prs.map(([c, v]) => ({ name: c, note: `AP ${fmt(v.ap)}`, pts: v.recall.map((r, j) => [r, v.precision[j], `rank ${j + 1}: recall ${fmt(r)}, precision ${fmt(v.precision[j])}`]) }));
    parts.push(el("h3", {}, "precision / recall at IoU 0.5 (test; hover for values)"), unitChart("pr", lines, "recall", "precision"));
  }
  apply();
  return parts;
}

// Segmentation: the pixel confusion matrix and the page's images with their true or
// predicted masks over them (black, the background, blends away).
function segmentView(key, p, redraw) {
  const parts = [el("h3", {}, "pixel confusion matrix (test)"), confusionTable(p.confusion, p.confusion_classes, null)];
  const which = el("select", { id: "overlay", onchange: e => { pstate.overlay = e.target.value; redraw(false); } },
    el("option", { value: "pred" }, "predicted masks"), el("option", { value: "truth" }, "true masks"), el("option", { value: "none" }, "no masks"));
  which.value = pstate.overlay;
  const opacity = el("input", { id: "opacity", type: "range", min: 0, max: 1, step: 0.05, value: pstate.opacity, oninput: e => {
    pstate.opacity = Number(e.target.value);
    document.querySelectorAll("img.mask").forEach(m => { m.style.opacity = pstate.opacity; });
  } });
  parts.push(el("h3", {}, "masks (test)"), el("div", { class: "controls" }, which, el("label", {}, "opacity ", opacity), pager(p, redraw),
    el("span", { class: "note" }, `the run keeps predicted masks of its first ${p.masked} test images`)));
  if (!p.images) parts.push(el("p", { class: "note" }, `no images: ${p.images_error}`));
  parts.push(el("div", { class: "samples" }, ...p.pages.map(img => {
    // The masks come with their background transparent (a tRNS chunk the server adds).
    const overlay = `/api/overlay?run=${enc(key)}&`;
    const src = pstate.overlay === "pred" ? (img.mask ? overlay + `name=${enc(img.mask)}` : null) : pstate.overlay === "truth" && p.images ? overlay + `sample=${img.sample}` : null;
    return el("div", { class: "sample seg", "data-sample": img.sample },
      el("div", { class: "frame" }, p.images ? el("img", { src: imageUrl(key, img.sample), alt: img.image, loading: "lazy" }) : el("div", { class: "blank" }),
        src ? el("img", { class: "mask", src, alt: `${pstate.overlay} mask`, style: `opacity:${pstate.opacity}`, loading: "lazy" }) : ""),
      el("div", {}, `#${img.sample} ${img.image}: pixel accuracy ${fmt(img.pixel_accuracy)}`));
  })));
  return parts;
}

// The run page's predictions section, redrawn in place by its controls.
async function predictionsSection(key) {
  const box = el("section", { id: "predictions" });
  // `fetch`: ask the server again (a new page); else redraw what was fetched (a picked
  // cell, another curve or overlay).
  let p = null;
  const redraw = async (fetch = true) => {
    if (fetch || !p) p = await getJSON(`/api/predictions?run=${enc(key)}&from=${pstate.from}`).catch(e => ({ error: e.message }));
    let parts;
    try {
      if (p.error) parts = [el("p", { class: "error" }, p.error)];
      else if (p.task === "classify") parts = classifyView(key, p, redraw);
      else if (p.task === "detect" || p.task === "localize") parts = boxesView(key, p, redraw);
      else if (p.task === "segment") parts = segmentView(key, p, redraw);
      else parts = [];
    } catch (e) {
      parts = [el("p", { class: "error" }, `the predictions could not be drawn: ${e.message}`)];
    }
    box.replaceChildren(...(parts.length ? [el("h2", {}, "predictions"), ...parts] : []));
  };
  await redraw();
  return box;
}

// The sweep view: one sweep's points as a scatter of a parameter against a final metric
// (hover for the run, click to open it); the runs table above lists them.
function sweepPanel(runs) {
  const sweeps = [...new Set(runs.map(r => r.sweep_id).filter(Boolean))].sort();
  if (!sweeps.length) return el("div");
  if (!sweeps.includes(state.sweep)) state.sweep = sweeps[sweeps.length - 1];
  const points = runs.filter(r => r.sweep_id === state.sweep && !r.error);
  const keys = differing(points);
  const metrics = [...new Set(points.flatMap(r => Object.keys(r.finals || {})))].sort();
  if (!keys.includes(state.sx)) state.sx = keys[0] || "";
  if (!metrics.includes(state.sy)) state.sy = metrics.find(m => m === "test.accuracy" || m === "test.map") || metrics.find(m => m === "test.map50" || m === "test.miou") || metrics[0] || "";
  const select = (id, values, value, set) => {
    const s = el("select", { id, onchange: e => { set(e.target.value); document.getElementById("sweep").replaceChildren(sweepPanel(state.runs)); } }, ...values.map(v => el("option", { value: v }, v)));
    s.value = value;
    return s;
  };
  const W = 560, H = 320, L = 64, R = 16, T = 16, B = 44;
  const svg = svgEl("svg", { id: "sweep-chart", width: W, height: H, class: "chart" });
  const xs = points.map(r => (r.params || {})[state.sx]);
  const numeric = xs.every(v => v !== undefined && v !== "" && !isNaN(Number(v)));
  const cats = [...new Set(xs.map(String))].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const positive = numeric && xs.every(v => Number(v) > 0);
  const xv = numeric ? xs.map(Number).map(v => positive ? Math.log10(v) : v) : xs.map(v => cats.indexOf(String(v)));
  const yv = points.map(r => (r.finals || {})[state.sy]);
  const ok = yv.map((y, i) => typeof y === "number" && isFinite(y) && isFinite(xv[i]));
  const fx = xv.filter((_, i) => ok[i]), fy = yv.filter((_, i) => ok[i]);
  if (!fy.length) svg.append(svgEl("text", { x: L, y: H / 2 }, "no values"));
  else {
    let [x0, x1] = [Math.min(...fx), Math.max(...fx)], [y0, y1] = [Math.min(...fy), Math.max(...fy)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    const pad = (x1 - x0) * 0.05;
    x0 -= pad; x1 += pad;
    const X = x => L + (x - x0) / (x1 - x0) * (W - L - R), Y = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    svg.append(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }), svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" }));
    for (let i = 0; i <= 4; i++) svg.append(svgEl("text", { x: L - 4, y: Y(y0 + (y1 - y0) * i / 4) + 4, "text-anchor": "end", "font-size": 11 }, fmt(y0 + (y1 - y0) * i / 4)));
    const ticks = numeric ? [...new Set(fx)].sort((a, b) => a - b) : cats.map((_, i) => i);
    for (const t of ticks) svg.append(svgEl("text", { x: X(t), y: H - B + 14, "text-anchor": "middle", "font-size": 11 }, numeric ? fmt(positive ? 10 ** t : t) : cats[t]));
    svg.append(svgEl("text", { x: (L + W) / 2, y: H - 8, "text-anchor": "middle", "font-size": 12 }, state.sx + (positive ? " (log scale)" : "")));
    points.forEach((r, i) => {
      if (!ok[i]) return;
      const c = titled(svgEl("circle", { class: "sweep-point", "data-key": r.key, cx: X(xv[i]), cy: Y(yv[i]), r: 6, fill: COLORS[0], "fill-opacity": 0.7 }),
        `${r.key}: ${state.sx} = ${xs[i]}, ${state.sy} = ${yv[i]}`);
      c.addEventListener("click", () => { location.hash = "run=" + enc(r.key); });
      svg.append(c);
    });
  }
  return el("section", {}, el("h3", {}, "sweep"), el("div", { class: "controls" },
    select("sweep-id", sweeps, state.sweep, v => { state.sweep = v; renderTable(); }), "x:", select("sweep-x", keys, state.sx, v => { state.sx = v; }),
    "y:", select("sweep-y", metrics, state.sy, v => { state.sy = v; }), el("span", { class: "note" }, `${points.length} points; click one to open its run`)), svg);
}
