// unifiedq dashboard: polls /api/queues and /api/queues/N/dead, draws plain SVG charts.
// Every value from a queue (URLs, job ids, payload previews, errors) is set as text, never
// as HTML: job contents are untrusted.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const state = { config: null, token: sessionStorage.getItem("unifiedq-token") || "",
                busy: false, cards: new Map() };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const k of kids) if (k) e.append(k);
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

async function api(path, opts) {
  const o = Object.assign({}, opts || {});
  o.headers = headers(opts && opts.headers);
  const r = await fetch(path, o);
  if (r.status === 401) { showLogin(); throw new Error("token needed"); }
  let body = null;
  try { body = await r.json(); } catch (e) { body = { error: r.statusText }; }
  if (!r.ok) throw new Error(body && body.error ? body.error : r.statusText);
  return body;
}

function showLogin() {
  const f = document.getElementById("login");
  f.hidden = false;
  document.getElementById("status").textContent = "a token is needed";
}

function fmt(v, unit) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (unit === "s") {
    if (v < 1) return v.toFixed(2) + " s";
    if (v < 120) return v.toFixed(1) + " s";
    if (v < 7200) return (v / 60).toFixed(1) + " min";
    return (v / 3600).toFixed(1) + " h";
  }
  if (unit === "/s") return (Math.abs(v) < 10 ? v.toFixed(2) : v.toFixed(0)) + "/s";
  if (unit === "%") return (v * 100).toFixed(0) + "%";
  return String(v);
}

const STATS = [
  ["depth", "depth (waiting)"], ["pending", "ready"], ["scheduled", "delayed"],
  ["retry", "retrying"], ["active", "leased"], ["dead", "dead"], ["oldest_age", "oldest age", "s"],
];

function stat(name, label, value, unit, title) {
  return el("div", { class: "stat", "data-field": name, title: title || "" },
            el("div", { class: "v", text: fmt(value, unit) }), el("div", { class: "k", text: label }));
}

function chart(series, keys, title) {
  const W = 500, H = 120, P = 26;
  const s = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none",
                         role: "img", "aria-label": title });
  const pts = series.filter(p => keys.some(k => p[k] !== null && p[k] !== undefined));
  if (pts.length < 2) {
    const t = svg("text", { x: 8, y: H / 2 }); t.textContent = "collecting readings…";
    s.append(t); return s;
  }
  const t0 = pts[0].t, t1 = pts[pts.length - 1].t;
  let lo = 0, hi = 0;
  for (const p of pts) for (const k of keys) if (p[k] !== null && p[k] !== undefined) {
    lo = Math.min(lo, p[k]); hi = Math.max(hi, p[k]);
  }
  if (hi === lo) hi = lo + 1;
  const x = t => P + (W - P - 4) * (t - t0) / Math.max(1e-9, t1 - t0);
  const y = v => 6 + (H - 18) * (1 - (v - lo) / (hi - lo));
  const axis = svg("line", { x1: P, x2: W - 4, y1: y(0), y2: y(0), stroke: "#cbd2d9" });
  s.append(axis);
  for (const [v, yy] of [[hi, y(hi) + 8], [lo, y(lo)]]) {
    const tx = svg("text", { x: 2, y: yy }); tx.textContent = String(Number(v.toPrecision(3)));
    s.append(tx);
  }
  const span = svg("text", { x: W - 60, y: H - 2 }); span.textContent = `last ${Math.round(t1 - t0)} s`;
  s.append(span);
  const colors = { enqueue: "#2f6fd6", settle: "#1f9d55", net: "#b7791f", depth: "#6b46c1" };
  for (const k of keys) {
    let d = "", pen = "M";
    for (const p of pts) {
      if (p[k] === null || p[k] === undefined) { pen = "M"; continue; }
      d += `${pen}${x(p.t).toFixed(1)},${y(p[k]).toFixed(1)} `; pen = "L";
    }
    if (d) s.append(svg("path", { d, fill: "none", stroke: colors[k], "stroke-width": 1.6,
                                  "vector-effect": "non-scaling-stroke", "data-series": k }));
  }
  return s;
}

function legend(keys, names) {
  return el("div", { class: "legend" }, ...keys.map(k => el("span", {}, el("i", { class: "l-" + k }),
                                                         document.createTextNode(names[k]))));
}

function shareBar(expected, observed) {
  const s = svg("svg", { viewBox: "0 0 100 10", width: 100, height: 10, class: "share" });
  s.append(svg("rect", { x: 0, y: 2, width: 100, height: 6, rx: 3, fill: "#e2e8f0" }));
  if (observed !== null && observed !== undefined)
    s.append(svg("rect", { x: 0, y: 2, width: (observed * 100).toFixed(1), height: 6, rx: 3, fill: "#1f9d55" }));
  if (expected !== null && expected !== undefined)
    s.append(svg("rect", { x: Math.min(99, expected * 100).toFixed(1), y: 0, width: 1.5, height: 10, fill: "#1d232b" }));
  return s;
}

function tenantsTable(rows) {
  const head = el("tr", {}, ...["tenant", "weight", "depth", "leased", "oldest", "expected share",
                                "observed share", ""].map(h => el("th", { text: h })));
  const t = el("table", { class: "tenants" }, head);
  for (const r of rows) {
    t.append(el("tr", { "data-tenant": r.tenant },
      el("td", { text: r.tenant }), el("td", { class: "num", text: fmt(r.weight) }),
      el("td", { class: "num", text: fmt(r.depth) }), el("td", { class: "num", text: fmt(r.active) }),
      el("td", { class: "num", text: fmt(r.oldest_age, "s") }),
      el("td", { class: "num", text: r.backlogged ? fmt(r.expected_share, "%") : "idle",
                 title: "weight / sum of the weights of tenants with backlog" }),
      el("td", { class: "num", text: fmt(r.observed_share, "%"),
                 title: "share of attempts settled in the last readings (where the driver counts them)" }),
      el("td", {}, shareBar(r.expected_share, r.observed_share))));
  }
  return t;
}

async function act(q, job, what) {
  const verb = what === "retry" ? "Retry" : "Delete for good";
  if (!window.confirm(`${verb} dead job ${job.id} of ${q.label}?`)) return;
  try {
    await api(`api/queues/${q.id}/dead/${encodeURIComponent(job.id)}/${what}`,
              { method: "POST", headers: { "X-Unifiedq-Confirm": "yes" } });
    document.getElementById("status").textContent = `${what}: ${job.id} done`;
  } catch (e) {
    document.getElementById("status").textContent = `${what} ${job.id} failed: ${e.message}`;
  }
  refresh();
}

function deadTable(q, dead) {
  const box = el("div", { class: "dead", "data-dead": q.id });
  if (dead === null) return box;
  if (dead.error) { box.append(el("div", { class: "error", text: "dead letters: " + dead.error })); return box; }
  if (!dead.supported) {
    box.append(el("div", { class: "muted", text: "this driver keeps no dead letters the dashboard can read" }));
    return box;
  }
  if (!dead.jobs.length) { box.append(el("div", { class: "muted", text: "no dead jobs" })); return box; }
  const cols = ["id", "type", "error", "attempts", "died", "payload"];
  if (state.config.actions) cols.push("");
  const t = el("table", {}, el("tr", {}, ...cols.map(c => el("th", { text: c }))));
  for (const j of dead.jobs) {
    const tr = el("tr", { "data-job": j.id },
      el("td", { class: "id", title: j.id, text: j.id.length > 12 ? j.id.slice(0, 8) + "…" : j.id }),
      el("td", { text: j.type || "—" }),
      el("td", { class: "wrap", text: j.error || "—" }), el("td", { class: "num", text: fmt(j.attempts) }),
      el("td", { text: j.died_at ? new Date(j.died_at * 1000).toLocaleString() : "—" }),
      el("td", { class: "wrap", text: `${j.preview} (${j.size} B)` }));
    if (state.config.actions) {
      const r = el("button", { "data-action": "retry", text: "Retry" });
      r.addEventListener("click", () => act(q, j, "retry"));
      const d = el("button", { "data-action": "delete", class: "danger", text: "Delete" });
      d.addEventListener("click", () => act(q, j, "delete"));
      tr.append(el("td", {}, r, d));
    }
    t.append(tr);
  }
  box.append(t);
  return box;
}

function card(q, dead) {
  const f = q.fields || {};
  const c = el("section", { class: "card", "data-queue": q.id });
  c.append(el("div", { class: "card-head" }, el("h2", { text: q.label }),
                el("span", { class: "badge", text: q.driver })));
  if (q.error) c.append(el("div", { class: "error", "data-error": q.id, text: q.error }));
  const stats = el("div", { class: "stats" });
  for (const [k, label, unit] of STATS) stats.append(stat(k, label, f[k], unit,
      f[k] === null || f[k] === undefined ? "not known for this driver" : ""));
  const r = q.rates || {};
  stats.append(stat("enqueue_rate", "enqueued", r.enqueue, "/s", "by conservation: growth + acked"));
  stats.append(stat("settle_rate", "settled", r.settle, "/s", "attempts acked or failed (backend counter)"));
  if (f.server_dead !== undefined) stats.append(stat("server_dead", "dead (server-wide)", f.server_dead));
  c.append(stats);
  const rateKeys = q.series.some(p => p.settle !== null) ? ["enqueue", "settle"] : ["net"];
  const names = { enqueue: "enqueued/s", settle: "settled/s", net: "net flow/s (depth change)", depth: "depth" };
  c.append(el("h3", { text: "rates" }), chart(q.series, rateKeys, "rates"), legend(rateKeys, names));
  c.append(el("h3", { text: "depth" }), chart(q.series, ["depth"], "depth"), legend(["depth"], names));
  if (q.tenants) c.append(el("h3", { text: "tenants" }), tenantsTable(q.tenants));
  if (q.kind !== "fair") c.append(el("h3", { text: "dead letters" }), deadTable(q, dead));
  return c;
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    if (!state.config) {
      state.config = await api("api/config");
      const m = document.getElementById("mode");
      m.textContent = state.config.actions ? "actions allowed" : "read-only";
      if (state.config.actions) m.classList.add("rw");
    }
    const data = await api("api/queues");
    const deads = await Promise.all(data.queues.map(q => q.kind === "fair" ? null :
      api(`api/queues/${q.id}/dead`).catch(e => ({ error: e.message }))));
    const main = document.getElementById("queues");
    main.replaceChildren(...data.queues.map((q, i) => card(q, deads[i])));
    document.getElementById("status").textContent =
      "updated " + new Date(data.now * 1000).toLocaleTimeString();
    document.body.dataset.updated = String(data.now);
  } catch (e) {
    document.getElementById("status").textContent = "error: " + e.message;
  } finally {
    state.busy = false;
  }
}

document.getElementById("login").addEventListener("submit", ev => {
  ev.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("unifiedq-token", state.token);
  document.getElementById("login").hidden = true;
  state.config = null;
  refresh();
});

refresh();
setInterval(refresh, 1500);
