// aevlp review site: the pages' behaviour, written for aevlp; no libraries, no network.
"use strict";
(function () {
  const params = new URLSearchParams(window.location.search);
  const store = (key, value) => { try { if (value === undefined) return localStorage.getItem(key); localStorage.setItem(key, value); } catch (e) { return null; } };

  function thetaOf(k, fallback) {  // the query (?theta.K=), else what was set on the class page, else the cache's
    const q = params.get("theta." + k);
    if (q !== null && !isNaN(parseFloat(q))) return parseFloat(q);
    const s = store(REVIEW.key + "-theta-" + k);
    return s !== null ? parseFloat(s) : fallback;
  }

  function counts(c, theta) {  // every training row of class c at θ: what stage two would select, and P/R
    let pos = 0, neg = 0, unk = 0, obs = 0, tp = 0, truePos = 0;
    for (let i = 0; i < c.score.length; i++) {
      if (c.obs[i] >= 2) continue;  // an image stage one could not read
      if (c.obs[i] === 1) { obs++; continue; }
      const picked = c.score[i] >= theta && c.rank[i] < REVIEW.top_k;
      if (picked) pos++; else if (c.neg[i]) neg++; else unk++;
      if (c.truth) { if (c.truth[i] === 1) { truePos++; if (picked) tp++; } }
    }
    const out = { observed: obs, positive: pos, negative: neg, unknown: unk };
    if (c.truth) {
      const p = pos ? tp / pos : 0, r = truePos ? tp / truePos : 0;
      out.precision = 100 * p; out.recall = 100 * r; out.f1 = p + r ? 200 * p * r / (p + r) : 0;
    }
    return out;
  }

  function summaryCounts(sm, theta) {  // the same counts from a class's summary (the overview reads no rows)
    if (!sm.decoded) Object.assign(sm, { u16: new Uint16Array(bytes(sm.score).buffer), negs: bytes(sm.neg), truths: sm.truth !== null ? bytes(sm.truth) : null, decoded: true });
    let pos = 0, neg = sm.negOther, tp = 0;
    for (let i = 0; i < sm.u16.length; i++) {
      if (Math.fround(sm.u16[i] / 65535) >= theta) { pos++; if (sm.truths && sm.truths[i] === 1) tp++; }  // as a Float32Array holds it
      else if (sm.negs[i]) neg++;
    }
    const out = { observed: sm.observed, positive: pos, negative: neg, unknown: sm.rest - pos - neg };
    if (sm.truths) {
      const p = pos ? tp / pos : 0, r = sm.truePos ? tp / sm.truePos : 0;
      out.precision = 100 * p; out.recall = 100 * r; out.f1 = p + r ? 200 * p * r / (p + r) : 0;
    }
    return out;
  }

  function status(c, i, theta) {
    if (c.obs[i] === 1) return "observed";
    if (c.score[i] >= theta && c.rank[i] < REVIEW.top_k) return "positive";
    return c.neg[i] ? "negative" : "unknown";
  }

  function bytes(b64) { const s = atob(b64), a = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return a; }

  function decode(raw) {  // a class's rows: scores as 16-bit fractions, the rest as bytes (see aevlp/tools/review.py)
    const u16 = new Uint16Array(bytes(raw.score).buffer), score = new Float32Array(u16.length);
    for (let i = 0; i < u16.length; i++) score[i] = u16[i] / 65535;
    return { ...raw, score, obs: bytes(raw.obs), rank: bytes(raw.rank), neg: bytes(raw.neg), truth: raw.truth ? bytes(raw.truth) : null };
  }

  function classData(k) {
    const all = window.AEVLP_CLASSES || {};
    if (!all[k]) return null;
    if (!all[k].decoded) all[k] = { ...decode(all[k]), decoded: true };
    return all[k];
  }

  function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(1)) : (v === undefined ? "—" : v); }

  function renderClass() {
    const c = classData(window.CLASS_INDEX), slider = document.getElementById("theta"), label = document.getElementById("theta-value");
    let theta = thetaOf(c.index, c.theta);
    slider.value = theta;
    function update() {
      theta = parseFloat(slider.value);
      label.textContent = theta.toFixed(3);
      const n = counts(c, theta);
      for (const key of ["observed", "positive", "negative", "unknown", "precision", "recall", "f1"]) {
        const el = document.getElementById("count-" + key);
        if (el) el.textContent = fmt(n[key]);
      }
      for (const card of document.querySelectorAll(".card[data-row]")) {
        const i = parseInt(card.dataset.row, 10), s = status(c, i, theta);
        card.className = "card " + s;
        card.dataset.status = s;
        card.querySelector(".status").textContent = s;
      }
    }
    slider.addEventListener("input", update);
    document.getElementById("save").addEventListener("click", () => {
      store(REVIEW.key + "-theta-" + c.index, String(theta));
      document.getElementById("saved").textContent = "θ = " + theta.toFixed(3) + " kept for the thresholds download";
    });
    window.setTheta = (t) => { slider.value = t; update(); };
    update();
  }

  function thresholdsCSV() {
    return "class,threshold\n" + REVIEW.classes.map((c, k) => '"' + c.name.replace(/"/g, '""') + '",' + thetaOf(k, c.theta).toFixed(6)).join("\n") + "\n";
  }

  function renderOverview() {
    for (const row of document.querySelectorAll("tr[data-class]")) {
      const k = parseInt(row.dataset.class, 10), c = REVIEW.classes[k], theta = thetaOf(k, c.theta);
      const n = summaryCounts(window.REVIEW_SUMMARIES[k], theta);
      row.querySelector(".theta").textContent = theta.toFixed(3);
      for (const key of ["positive", "negative", "unknown", "precision", "recall", "f1"]) {
        const cell = row.querySelector("." + key);
        if (cell) cell.textContent = fmt(n[key]);
      }
    }
    const csv = thresholdsCSV();
    document.getElementById("download").addEventListener("click", () => {
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
      a.download = "thresholds.csv";
      a.click();
    });
    if (params.get("export") === "1") document.getElementById("thresholds-csv").textContent = csv;
    window.thresholdsCSV = thresholdsCSV;
  }

  document.addEventListener("DOMContentLoaded", () => (window.CLASS_INDEX !== undefined ? renderClass() : renderOverview()));
})();
