// The cortex web console: the fleet as the gateway sees it, kept current by the gateway's
// own event stream, with the operator's actions. No framework, no build step: it reads
// GET /fleet, /fleet/stats and the SSE stream /fleet/events, and acts through the same
// POST /fleet/… routes as `cortex load|unload|pin`, with the admin key typed in (if the
// gateway has keys). Every string from the fleet goes in as text, never as markup.
"use strict";

(() => {
  const KINDS = ["node_up", "node_down", "loading", "loaded", "load_failed", "waking",
    "evicting", "unloading", "unloaded", "sleeping", "progress"];
  const STAGES = ["placing", "evicting", "resolving", "checking", "loading", "ready"];
  const UNLOADABLE = new Set(["ready", "sleeping", "failed"]);
  const MAX_EVENTS = 200;
  const KEY_STORE = "cortex-admin-key";

  const $ = (id) => document.getElementById(id);
  const state = {
    fleet: null,
    stats: null,
    lastSeq: 0,
    freshConnection: true,
    progress: new Map(), // "model@node" → the last progress event of its load
    busy: new Set(), // actions sent and not yet answered
  };

  // --- small helpers ---------------------------------------------------------------

  // The API lives beside /ui/: relative, so a reverse proxy's path prefix stays.
  const url = (path) => new URL(`../${path}`, location.href).toString();

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name in node && name !== "role") node[name] = value;
      else node.setAttribute(name, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let i = 0;
    while (value >= 1024 && i < units.length - 1) {
      value /= 1024;
      i += 1;
    }
    return `${value >= 100 || i === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[i]}`;
  }

  function ago(ts) {
    if (!ts) return "never";
    const s = Date.now() / 1000 - ts;
    if (s < 2) return "just now";
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 129600) return `${Math.round(s / 3600)} h ago`;
    return new Date(ts * 1000).toLocaleString();
  }

  function seconds(v) {
    if (v === null || v === undefined) return "—";
    return v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`;
  }

  // A span whose text says how long ago `ts` was, kept current by the ticker.
  const since = (ts, prefix = "") => el("span", { dataset: { ts: ts || "", prefix } },
    prefix + ago(ts));

  function hue(text) {
    let h = 0;
    for (const c of text) h = (h * 31 + c.codePointAt(0)) % 360;
    return h;
  }

  function badge(word, title) {
    return el("span", { class: `badge ${word}`, title }, word);
  }

  // Put `rows` (each with data-key and data-sig) into `parent`, keeping the elements whose
  // signature did not change, so a re-render never swaps a button out under the pointer.
  function patch(parent, rows) {
    const old = new Map([...parent.children].map((row) => [row.dataset.key, row]));
    const next = rows.map((row) => {
      const kept = old.get(row.dataset.key);
      return kept && kept.dataset.sig === row.dataset.sig ? kept : row;
    });
    const same = next.length === parent.children.length
      && next.every((row, i) => parent.children[i] === row);
    if (!same) parent.replaceChildren(...next);
  }

  function keyed(node, key, sig) {
    node.dataset.key = key;
    node.dataset.sig = JSON.stringify(sig);
    return node;
  }

  let toastTimer = null;
  function toast(message, error = false) {
    const box = $("toast");
    box.textContent = message;
    box.className = error ? "error" : "";
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, error ? 10000 : 4000);
  }

  // --- reading the fleet -----------------------------------------------------------

  async function getJSON(path) {
    const response = await fetch(url(path), { headers: { accept: "application/json" },
      cache: "no-store" });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  async function refreshFleet() {
    try {
      state.fleet = await getJSON("fleet");
      render();
    } catch (err) {
      setLive("down", "gateway unreachable");
    }
  }

  async function refreshStats() {
    try {
      state.stats = await getJSON("fleet/stats");
      renderStats();
    } catch (err) {
      // the next round tries again; the fleet refresh reports an unreachable gateway
    }
  }

  let soon = null;
  function refreshSoon() {
    if (soon === null) soon = setTimeout(() => { soon = null; refreshFleet(); }, 60);
  }

  // --- nodes -------------------------------------------------------------------------

  function segment(kind, size, total, title, model) {
    const part = el("div", { class: `segment ${kind}`, title });
    part.style.width = `${Math.max(0, Math.min(100, (100 * size) / total))}%`;
    if (model) part.style.background = `hsl(${hue(model)} 55% 52%)`;
    return part;
  }

  function deviceView(device, records) {
    const label = device.kind === "cuda" ? `cuda:${device.index}` : "cpu";
    const total = Math.max(1, device.memory_total);
    const byModels = device.memory_used_by_models;
    const other = Math.max(0, device.memory_total - device.memory_free - byModels);
    const budget = device.memory_budget;
    const bar = el("div", { class: "bar", role: "img",
      "aria-label": `${label}: ${bytes(byModels)} used by models, ${bytes(other)} by others, `
        + `${bytes(device.memory_free)} free of ${bytes(device.memory_total)}` });
    let drawn = 0;
    for (const record of records) {
      const devices = record.devices || [];
      if (!devices.includes(label) || !record.memory_bytes) continue;
      const share = record.memory_bytes / devices.length;
      drawn += share;
      bar.append(segment("model", share, total, `${record.id}: ${bytes(share)}`, record.id));
    }
    if (byModels - drawn > total / 200) {
      bar.append(segment("model", byModels - drawn, total, `models: ${bytes(byModels - drawn)}`));
    }
    bar.append(segment("other", other, total, `other use: ${bytes(other)}`));
    if (budget && budget < device.memory_total) {
      const mark = el("div", { class: "budget", title: `budget ${bytes(budget)}` });
      mark.style.left = `${(100 * budget) / total}%`;
      bar.append(mark);
    }
    const figures = `${bytes(byModels)} models · ${bytes(device.memory_free)} free of `
      + `${bytes(device.memory_total)}${budget ? ` · budget ${bytes(budget)}` : ""}`;
    return el("div", { class: "device" },
      el("div", { class: "device-head" },
        el("span", {}, `${label} · ${device.name}`),
        el("span", { class: "muted figures" }, figures)),
      bar);
  }

  function nodeCard(node) {
    const about = [node.engine, node.version && `v${node.version}`].filter(Boolean).join(" · ");
    const card = el("article", { class: `card node ${node.up ? "up" : "down"}`,
      dataset: { node: node.name } },
    el("div", { class: "card-head" },
      el("h3", {}, node.name),
      badge(node.up ? "up" : "down"),
      el("span", { class: "muted small" }, about)),
    el("div", { class: "muted small endpoint" }, node.endpoint),
    node.error ? el("div", { class: "error small" }, node.error) : null,
    node.up ? null : el("div", { class: "muted small" }, since(node.last_seen, "last seen ")),
    node.devices.map((device) => deviceView(device, node.models)),
    node.up && !node.devices.length ? el("p", { class: "empty" }, "No devices reported.") : null);
    const sig = { ...node, last_seen: node.up ? null : node.last_seen,
      models: node.models.map((m) => [m.id, m.devices, m.memory_bytes]) };
    return keyed(card, node.name, sig);
  }

  // --- models ------------------------------------------------------------------------

  function actionButton(kind, label, body, title) {
    const key = `${kind}:${body.model}:${body.node || ""}`;
    const busy = state.busy.has(key);
    return el("button", { type: "button", class: `action ${kind}`, title, disabled: busy,
      dataset: { action: kind }, onclick: () => act(kind, body, `${label} ${body.model}`, key) },
    busy ? `${label}…` : label);
  }

  function pinButton(placement) {
    const pinned = placement ? placement.pinned : false;
    const model = placement ? placement.id : "";
    return actionButton("pin", pinned ? "Unpin" : "Pin", { model, pinned: !pinned },
      pinned ? "Pinned: never evicted, loaded again wherever it is lost" : "Pin it");
  }

  function modelRow(record, node, placement) {
    const pinned = placement ? placement.pinned : false;
    const queueTitle = record.queued ? `the oldest has waited ${seconds(record.queue_wait)}` : "";
    const unload = UNLOADABLE.has(record.state)
      ? actionButton("unload", "Unload", { model: record.id, node: node.name },
        `Unload ${record.id} from ${node.name}`)
      : null;
    const row = el("tr", { class: node.up ? "" : "stale",
      dataset: { model: record.id, node: node.name, state: record.state } },
      el("td", { class: "model" }, record.id,
        placement && placement.aliases.length
          ? el("span", { class: "muted small" }, ` = ${placement.aliases.join(", ")}`) : null),
      el("td", {}, node.name),
      el("td", {}, badge(record.state, record.error || ""),
        node.up ? null : el("span", { class: "muted small" }, " (node down)")),
      el("td", {}, record.engine || "—"),
      el("td", { class: "num" }, record.memory_bytes ? bytes(record.memory_bytes) : "—"),
      el("td", { class: "num running" }, record.in_flight),
      el("td", { class: "num waiting", title: queueTitle }, record.queued),
      el("td", {}, since(record.last_used_at)),
      el("td", {}, pinned ? badge("pinned") : el("span", { class: "muted" }, "—")),
      el("td", { class: "num" }, placement ? placement.priority : 0),
      el("td", { class: "actions" }, unload, pinButton(placement)));
    const sig = [record, node.up, pinned, placement && placement.priority, [...state.busy]];
    return keyed(row, `${record.id}@${node.name}`, sig);
  }

  function idleRow(placement) {
    const where = placement.placeable_on.length ? `may load on ${placement.placeable_on.join(", ")}`
      : "no node may load it";
    const choose = el("button", { type: "button", class: "action choose",
      dataset: { action: "choose" }, title: "Choose a node to load it on",
      onclick: () => {
        $("load-model").value = placement.id;
        fillLoadForm();
        $("load-node").focus();
      } }, "Load…");
    const row = el("tr", { class: "idle",
      dataset: { model: placement.id, node: "", state: placement.state } },
    el("td", { class: "model" }, placement.id),
    el("td", { class: "muted", title: where }, "—"),
    el("td", {}, badge(placement.state)),
    el("td", {}, "—"), el("td", { class: "num" }, "—"), el("td", { class: "num" }, "—"),
    el("td", { class: "num" }, "—"), el("td", {}, "—"),
    el("td", {}, placement.pinned ? badge("pinned") : el("span", { class: "muted" }, "—")),
    el("td", { class: "num" }, placement.priority),
    el("td", { class: "actions" }, choose, pinButton(placement)));
    return keyed(row, `${placement.id}@`, [placement, [...state.busy]]);
  }

  function setOptions(select, values) {
    const current = select.value;
    const same = select.options.length === values.length
      && values.every((value, i) => select.options[i].value === value);
    if (!same) {
      select.replaceChildren(...values.map((value) => el("option", { value }, value)));
      if (values.includes(current)) select.value = current;
    }
  }

  function fillLoadForm() {
    const fleet = state.fleet;
    if (!fleet) return;
    setOptions($("load-model"), fleet.models.map((p) => p.id));
    const chosen = fleet.models.find((p) => p.id === $("load-model").value);
    const up = fleet.nodes.filter((n) => n.up).map((n) => n.name);
    const allowed = chosen && chosen.placeable_on.length
      ? up.filter((n) => chosen.placeable_on.includes(n)) : up;
    setOptions($("load-node"), allowed);
    const busy = chosen && state.busy.has(`load:${chosen.id}:${$("load-node").value}`);
    $("load-button").disabled = !allowed.length || !chosen || busy;
    $("load-button").textContent = busy ? "Loading…" : "Load";
  }

  function renderModels(fleet) {
    const placements = new Map(fleet.models.map((p) => [p.id, p]));
    const rows = [];
    const shown = new Set();
    for (const node of fleet.nodes) {
      for (const record of node.models) {
        rows.push(modelRow(record, node, placements.get(record.id)));
        shown.add(record.id);
      }
    }
    for (const placement of fleet.models) {
      if (!shown.has(placement.id)) rows.push(idleRow(placement));
    }
    patch($("models").tBodies[0], rows);
    fillLoadForm();
  }

  // --- loads in progress -------------------------------------------------------------

  function renderLoads(fleet) {
    const items = fleet.loads.map((load) => {
      const last = state.progress.get(`${load.model}@${load.node}`);
      const stage = last ? last.stage : "placing";
      const bar = el("progress", { max: STAGES.length - 1,
        value: Math.max(0, STAGES.indexOf(stage)) });
      const item = el("li", { dataset: { model: load.model, node: load.node } },
        el("div", {}, el("strong", {}, load.model), ` on ${load.node} `,
          since(load.started_at, "started ")),
        load.evicting.length ? el("div", { class: "small" },
          `evicting ${load.evicting.join(", ")}`) : null,
        bar,
        el("div", { class: "small muted stage" }, last ? `${stage}: ${last.message}` : stage));
      return keyed(item, `${load.model}@${load.node}`, [load, last && last.seq]);
    });
    patch($("loads"), items);
    $("loads-empty").hidden = items.length > 0;
  }

  // --- traffic -----------------------------------------------------------------------

  function sparkline(series) {
    const ns = "http://www.w3.org/2000/svg";
    const width = 3 * series.length;
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} 20`);
    svg.setAttribute("class", "spark");
    const top = Math.max(1, ...series.map((b) => b.requests));
    series.forEach((b, i) => {
      if (!b.requests) return;
      const rect = document.createElementNS(ns, "rect");
      const h = Math.max(1, (20 * b.requests) / top);
      rect.setAttribute("x", String(3 * i));
      rect.setAttribute("y", String(20 - h));
      rect.setAttribute("width", "2");
      rect.setAttribute("height", String(h));
      if (b.errors) rect.setAttribute("class", "errors");
      const title = document.createElementNS(ns, "title");
      title.textContent = `${new Date(b.t * 1000).toLocaleTimeString()}: ${b.requests} requests`;
      rect.append(title);
      svg.append(rect);
    });
    return svg;
  }

  function renderStats() {
    const stats = state.stats;
    if (!stats) return;
    $("version").textContent = `v${stats.version}`;
    $("window").textContent = `last ${Math.round(stats.window_s / 60)} minutes`;
    $("key-label").classList.toggle("needed", stats.keys);
    const rows = Object.entries(stats.models).sort(([a], [b]) => a.localeCompare(b))
      .map(([model, f]) => el("tr", { dataset: { model } },
        el("td", { class: "model" }, model),
        el("td", { class: "num rpm" }, f.requests_per_min.toFixed(1)),
        el("td", { class: "num" }, seconds(f.ttft_p50)),
        el("td", { class: "num" }, seconds(f.ttft_p95)),
        el("td", { class: "num" }, f.tokens_per_s.toFixed(1)),
        el("td", { class: "num" }, f.errors),
        el("td", {}, sparkline(f.series))));
    $("traffic").tBodies[0].replaceChildren(...rows);
    $("traffic-empty").hidden = rows.length > 0;
  }

  // --- events ------------------------------------------------------------------------

  function setLive(word, title) {
    const live = $("live");
    live.textContent = word === "up" ? "live" : title;
    live.className = `badge ${word}`;
  }

  function onEvent(kind, event) {
    if (state.freshConnection && event.seq === 1 && state.lastSeq > 0) {
      state.lastSeq = 0; // the gateway restarted: its events count from 1 again
      addToFeed({ kind: "restart", message: "the gateway restarted", at: event.at });
    }
    state.freshConnection = false;
    if (event.seq <= state.lastSeq) return; // the backlog again, after a reconnection
    state.lastSeq = event.seq;
    if (kind === "progress") {
      state.progress.set(`${event.model}@${event.node}`, event);
      if (state.fleet) renderLoads(state.fleet);
    } else {
      if (kind !== "loading" && kind !== "waking") {
        state.progress.delete(`${event.model}@${event.node}`);
      }
      refreshSoon();
    }
    addToFeed(event);
  }

  function addToFeed(event) {
    const feed = $("events");
    const when = new Date(event.at * 1000);
    feed.prepend(el("li", { class: `event ${event.kind}`, dataset: { kind: event.kind } },
      el("time", { datetime: when.toISOString(), title: when.toLocaleString() },
        when.toLocaleTimeString()),
      el("span", { class: "kind" }, event.kind.replace("_", " ")),
      el("span", { class: "message" }, event.message)));
    while (feed.children.length > MAX_EVENTS) feed.lastElementChild.remove();
  }

  function listen() {
    const source = new EventSource(url("fleet/events"));
    source.onopen = () => {
      state.freshConnection = true;
      setLive("up");
      refreshFleet();
    };
    source.onerror = () => setLive("down", "reconnecting");
    for (const kind of KINDS) {
      source.addEventListener(kind, (message) => onEvent(kind, JSON.parse(message.data)));
    }
  }

  // --- actions -----------------------------------------------------------------------

  async function act(kind, body, label, key) {
    if (state.busy.has(key)) return;
    state.busy.add(key);
    render();
    try {
      const headers = { "content-type": "application/json", accept: "application/json" };
      const adminKey = $("admin-key").value.trim();
      if (adminKey) headers.authorization = `Bearer ${adminKey}`;
      const response = await fetch(url(`fleet/${kind}`), { method: "POST", headers,
        body: JSON.stringify(body) });
      const answer = await response.json().catch(() => null);
      if (response.ok) {
        const word = answer ? answer.message || answer.state : "done";
        toast(`${label}: ${word}`);
      } else {
        const why = answer && answer.error ? answer.error.message : `HTTP ${response.status}`;
        toast(`${label} failed: ${why}`, true);
        if (response.status === 401 || response.status === 403) $("admin-key").focus();
      }
    } catch (err) {
      toast(`${label} failed: ${err.message}`, true);
    } finally {
      state.busy.delete(key);
      await refreshFleet();
    }
  }

  // --- rendering ---------------------------------------------------------------------

  function render() {
    const fleet = state.fleet;
    if (!fleet) return;
    $("strategy").textContent = `eviction: ${fleet.strategy}`;
    const cards = fleet.nodes.map(nodeCard);
    if (cards.length) patch($("nodes"), cards);
    renderModels(fleet);
    renderLoads(fleet);
  }

  function tick() {
    for (const span of document.querySelectorAll("span[data-ts]")) {
      const ts = Number(span.dataset.ts) || null;
      span.textContent = span.dataset.prefix + ago(ts);
    }
  }

  function start() {
    const keyInput = $("admin-key");
    keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
    keyInput.addEventListener("input", () => sessionStorage.setItem(KEY_STORE, keyInput.value));
    $("key-form").addEventListener("submit", (submit) => submit.preventDefault());
    $("load-model").addEventListener("change", fillLoadForm);
    $("load-node").addEventListener("change", fillLoadForm);
    $("load-form").addEventListener("submit", (submit) => {
      submit.preventDefault();
      const model = $("load-model").value;
      const node = $("load-node").value;
      if (model && node) {
        act("load", { model, node }, `Load ${model} on ${node}`, `load:${model}:${node}`);
      }
    });
    listen();
    refreshFleet();
    refreshStats();
    setInterval(refreshFleet, 2000); // running/waiting and memory change between events
    setInterval(refreshStats, 5000);
    setInterval(tick, 5000);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
