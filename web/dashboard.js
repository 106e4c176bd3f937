// The operator dashboard: a live view of the service's websocket snapshots (/ws).

import { forgetToken, token } from "./common.js";
import { PALETTE, drawChart, escapeHtml, legendHtml } from "./plot.js";

const WINDOW_S = 300; // the charts' span; the service keeps as much history (HISTORY_SECONDS)
const FORGET_ENDED_S = 30; // a session missing from snapshots stays (greyed) this long
const STAGES = ["track", "render", "infer", "compose", "sink"];
const STAGE_COLORS = { track: "#5aa9e6", render: "#b38ce6", infer: "#e8b339", compose: "#4fd1c5", sink: "#f08bb5" };

const $ = (id) => document.getElementById(id);
forgetToken(); // the service answered this address with a cookie for the token

const dash = {
  socket: null,
  attempt: 0,
  last: null, // the latest snapshot
  sessions: new Map(), // id -> {card, history: [{t, ...}], color, lastSeen}
  load: [], // [{t, cpu, gpu}]
  backlog: new Map(), // session id -> history from the service, until its card exists
  prevTotals: null,
};
window.dashboard = dash; // for tests and the console

const fmt = {
  ms: (v) => (v == null ? "–" : `${v.toFixed(v < 10 ? 1 : 0)} ms`),
  pair: (p, none) => (p ? `${p.p50.toFixed(0)} / ${p.p99.toFixed(0)} ms` : none),
  fps: (v) => (v == null ? "–" : v.toFixed(1)),
  int: (v) => (v == null ? "–" : Math.round(v).toLocaleString("en-US")),
  pct: (v) => (v == null ? "–" : `${v.toFixed(0)} %`),
  mb: (v) => (v == null ? "–" : v >= 1024 ? `${(v / 1024).toFixed(2)} GB` : `${v.toFixed(0)} MB`),
  duration(s) {
    if (s == null) return "–";
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = Math.floor(s % 60);
    return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  },
};

function setValue(node, value, text) {
  node.dataset.value = value ?? "";
  node.textContent = text;
}

// ---- the feed ----

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  const socket = new WebSocket(`${scheme}://${location.host}/ws${query}`);
  dash.socket = socket;
  setFeed("connecting", "connecting…");
  socket.onopen = () => {
    dash.attempt = 0;
    setFeed("live", "live");
  };
  socket.onmessage = (e) => {
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return;
    }
    if (msg.type !== "snapshot") return;
    if (msg.history) replay(msg.history); // the first snapshot carries the service's kept history
    render(msg);
  };
  socket.onclose = () => {
    if (dash.socket !== socket) return;
    dash.attempt += 1;
    const wait = Math.min(8, 2 ** (dash.attempt - 1));
    setFeed("reconnecting", `feed lost: retrying in ${wait} s`);
    setTimeout(connect, wait * 1000);
  };
}

function setFeed(state, text) {
  const feed = $("feed");
  feed.dataset.state = state;
  feed.textContent = text;
}

function control(session, action, value) {
  if (dash.socket?.readyState !== WebSocket.OPEN) return;
  const message = { type: "control", action, session };
  if (value !== undefined) message.value = value;
  dash.socket.send(JSON.stringify(message));
}

// ---- the service's history: what happened before this page was opened ----

function sample(s, t) {
  return {
    t,
    fps: s.fps,
    e2e: s.e2e_ms?.p50 ?? null,
    glass: s.glass_ms?.p50 ?? null,
    stages: Object.fromEntries(STAGES.map((k) => [k, s.stages_ms?.[k]?.p50 ?? null])),
  };
}

function replay(samples) {
  dash.load = [];
  dash.backlog = new Map();
  for (const snap of samples) {
    const gpu = snap.system.gpu;
    dash.load.push({ t: snap.time, cpu: snap.system.cpu_percent, gpu: gpu?.util_percent ?? null });
    for (const s of snap.sessions) {
      if (!dash.backlog.has(s.id)) dash.backlog.set(s.id, []);
      dash.backlog.get(s.id).push(sample(s, snap.time));
    }
  }
  window.dashboardHistory = samples.length; // for tests: how many samples the page was given
}

// ---- rendering one snapshot ----

function render(snap) {
  dash.last = snap;
  const t = snap.time;
  $("uptime").textContent = fmt.duration(snap.uptime_s);
  renderTotals(snap, t);
  renderSystem(snap.system, t);

  const seen = new Set();
  for (const s of snap.sessions) {
    seen.add(s.id);
    let entry = dash.sessions.get(s.id);
    if (!entry) {
      const history = dash.backlog.get(s.id) ?? [];
      dash.backlog.delete(s.id);
      entry = { card: makeCard(s.id), history, color: PALETTE[dash.sessions.size % PALETTE.length], lastSeen: t };
      dash.sessions.set(s.id, entry);
      $("sessions").append(entry.card);
    }
    entry.lastSeen = t;
    entry.history.push(sample(s, t));
    trim(entry.history, t);
    updateCard(entry, s, t);
  }
  for (const [id, entry] of dash.sessions) {
    if (seen.has(id)) continue;
    entry.card.classList.add("ended");
    entry.card.querySelector("[data-field=state]").textContent = "gone";
    if (t - entry.lastSeen > FORGET_ENDED_S) {
      entry.card.remove();
      dash.sessions.delete(id);
    }
  }
  $("no-sessions").hidden = dash.sessions.size > 0;
  renderLatencyChart(t);
}

function trim(history, now) {
  while (history.length && history[0].t < now - WINDOW_S - 1) history.shift();
}

function renderTotals(snap, t) {
  const totals = snap.totals;
  setValue($("total-sessions"), totals.sessions, fmt.int(totals.sessions));
  const running = snap.sessions.filter((s) => s.state === "running").length;
  $("sessions-sub").textContent = `${running} running, ${snap.sessions.length - running} paused or ended`;
  setValue($("total-frames"), totals.frames, fmt.int(totals.frames));
  setValue($("total-dropped"), totals.dropped, fmt.int(totals.dropped));
  const prev = dash.prevTotals;
  if (prev && t > prev.t) {
    $("frames-rate").textContent = `${((totals.frames - prev.frames) / (t - prev.t)).toFixed(1)} frames/s out`;
  }
  const share = totals.frames + totals.dropped > 0 ? (100 * totals.dropped) / (totals.frames + totals.dropped) : 0;
  $("dropped-share").textContent = `${share.toFixed(1)} % of frames`;
  dash.prevTotals = { t, frames: totals.frames };
}

function renderSystem(system, t) {
  setValue($("cpu"), system.cpu_percent, fmt.pct(system.cpu_percent));
  setValue($("rss"), system.rss_mb, `${fmt.mb(system.rss_mb)} resident`);
  const gpu = system.gpu;
  if (gpu) {
    setValue($("gpu"), gpu.util_percent, gpu.util_percent == null ? "?" : fmt.pct(gpu.util_percent));
    $("gpu-sub").textContent = `${gpu.name}, ${fmt.mb(gpu.mem_mb)}`;
  } else {
    setValue($("gpu"), null, "none");
    $("gpu-sub").textContent = "running on the CPU";
  }
  dash.load.push({ t, cpu: system.cpu_percent, gpu: gpu?.util_percent ?? null });
  trim(dash.load, t);
  const series = [{ label: "CPU", color: "#5aa9e6", points: dash.load.map((p) => [p.t, p.cpu]) }];
  if (gpu) series.push({ label: "GPU", color: "#3ec27a", points: dash.load.map((p) => [p.t, p.gpu]) });
  // psutil's process CPU can exceed 100 % (one per core); the axis follows it.
  drawChart($("chart-load"), { series, now: t, windowS: WINDOW_S, unit: "%", floor: 100 });
  $("legend-load").innerHTML = legendHtml(
    series.map((s) => ({ ...s, value: fmt.pct(s.points.at(-1)?.[1] ?? null) })),
  );
}

function renderLatencyChart(t) {
  const series = [];
  const legend = [];
  for (const [id, entry] of dash.sessions) {
    const short = id.replace(/^peer-/, "").slice(0, 8);
    series.push({ label: `${short} e2e`, color: entry.color, points: entry.history.map((h) => [h.t, h.e2e]) });
    series.push({ label: `${short} glass`, color: entry.color, dash: [5, 4], points: entry.history.map((h) => [h.t, h.glass]) });
    const last = entry.history.at(-1);
    legend.push({ label: `${short} e2e`, color: entry.color, value: fmt.ms(last?.e2e) });
    legend.push({ label: `${short} glass`, color: entry.color, dash: true, value: fmt.ms(last?.glass) });
  }
  drawChart($("chart-e2e"), { series, now: t, windowS: WINDOW_S });
  $("legend-e2e").innerHTML = legend.length ? legendHtml(legend) : "";
}

// ---- one card per session ----

function makeCard(id) {
  const card = document.createElement("article");
  card.className = "panel session";
  card.dataset.session = id;
  const cell = (field, label) => `<div><span class="k">${label}</span><span class="v" data-field="${field}">–</span></div>`;
  card.innerHTML = `
    <h2><span class="state-dot"></span><span class="num">${escapeHtml(id)}</span>
      <span class="muted small" data-field="state">–</span>
      <span class="muted small" data-field="route"></span></h2>
    <div class="nums">
      ${cell("fps", "fps")}${cell("e2e", "e2e p50 / p99")}${cell("glass", "glass p50 / p99")}${cell("face", "face")}
      ${cell("frames", "frames")}${cell("dropped", "dropped")}${cell("avatar", "avatar")}${cell("sinks", "sinks")}
      ${cell("watermark", "watermark")}${cell("handoff", "engine → sink p50 / p99")}
    </div>
    <div class="nums split" title="The page's split of glass-to-glass (medians of its recent frames, ms): capture → server receive (uplink), server receive → send (the pipeline), send → displayed (downlink); and the browser's own per-frame means from getStats.">
      ${cell("split", "glass = uplink + server + downlink")}${cell("split-server", "server: queue / track / render / infer / compose / handoff")}
      ${cell("split-page", "browser: encode / jitter buffer / decode")}
    </div>
    <table class="stages">
      <thead><tr><th>stage</th><th>p50</th><th>p99</th><th class="bar"></th></tr></thead>
      <tbody>${STAGES.map((k) => `<tr data-stage="${k}"><td>${k}</td><td class="p50">–</td><td class="p99">–</td><td class="bar"><span style="background:${STAGE_COLORS[k]}"></span></td></tr>`).join("")}</tbody>
    </table>
    <canvas class="chart" style="height:130px"></canvas>
    <div class="legend"></div>
    <div class="controls" style="margin-top:8px">
      <button type="button" data-action="pause">Pause</button>
      <button type="button" data-action="calibrate">Calibrate neutral</button>
    </div>`;
  card.querySelector("[data-action=pause]").addEventListener("click", (e) => {
    control(id, e.target.dataset.paused === "true" ? "resume" : "pause");
  });
  card.querySelector("[data-action=calibrate]").addEventListener("click", () => control(id, "calibrate"));
  return card;
}

function updateCard(entry, s, t) {
  const card = entry.card;
  const field = (name) => card.querySelector(`[data-field=${name}]`);
  card.classList.toggle("ended", s.state === "ended");
  card.querySelector(".state-dot").className = `state-dot ${s.state}`;
  field("state").textContent = s.state;
  field("route").textContent = `${s.source} → ${(s.sinks ?? []).join(", ")}`;
  setValue(field("fps"), s.fps, fmt.fps(s.fps));
  setValue(field("e2e"), s.e2e_ms?.p50, fmt.pair(s.e2e_ms, "–"));
  setValue(field("glass"), s.glass_ms?.p50, fmt.pair(s.glass_ms, "n/a"));
  setValue(field("handoff"), s.handoff_ms?.p50, fmt.pair(s.handoff_ms, "–"));
  const sp = s.split_ms;
  const n = (v) => (v == null ? "–" : v.toFixed(0));
  setValue(field("split"), sp?.glass, sp ? `${n(sp.glass)} = ${n(sp.uplink)} + ${n(sp.server)} + ${n(sp.downlink)} ms` : "n/a");
  const parts = ["queue", "track", "render", "infer", "compose", "handoff"];
  setValue(field("split-server"), sp?.server, sp ? parts.map((k) => n(sp[k])).join(" / ") : "n/a");
  setValue(field("split-page"), sp?.jitter_buffer, sp ? [sp.encode, sp.jitter_buffer, sp.decode].map(n).join(" / ") : "n/a");
  setValue(field("face"), s.face_found, s.face_found == null ? "–" : s.face_found ? "found" : "lost");
  setValue(field("frames"), s.frames, fmt.int(s.frames));
  setValue(field("dropped"), s.dropped, fmt.int(s.dropped));
  field("avatar").textContent = s.avatar ?? "–";
  field("sinks").textContent = (s.sinks ?? []).length;
  setValue(field("watermark"), s.watermark, s.watermark == null ? "–" : s.watermark ? "on" : "off");
  const pause = card.querySelector("[data-action=pause]");
  pause.dataset.paused = String(s.state === "paused");
  pause.textContent = s.state === "paused" ? "Resume" : "Pause";

  const p50s = STAGES.map((k) => s.stages_ms?.[k]?.p50 ?? 0);
  const widest = Math.max(1, ...p50s);
  for (const k of STAGES) {
    const row = card.querySelector(`tr[data-stage=${k}]`);
    const st = s.stages_ms?.[k];
    setValue(row.querySelector(".p50"), st?.p50, fmt.ms(st?.p50));
    setValue(row.querySelector(".p99"), st?.p99, fmt.ms(st?.p99));
    row.querySelector(".bar span").style.width = `${(100 * (st?.p50 ?? 0)) / widest}%`;
  }

  const series = STAGES.map((k) => ({ label: k, color: STAGE_COLORS[k], points: entry.history.map((h) => [h.t, h.stages[k]]) }));
  series.push({ label: "e2e", color: "#e6e9ed", points: entry.history.map((h) => [h.t, h.e2e]) });
  drawChart(card.querySelector("canvas"), { series, now: t, windowS: WINDOW_S });
  card.querySelector(".legend").innerHTML = legendHtml(
    series.map((x) => ({ ...x, value: fmt.ms(x.points.at(-1)?.[1] ?? null) })),
  );
}

connect();

