// The avatarcam page: camera in, avatar out over WebRTC, with live stats and glass-to-glass latency.
//
// In `--source webrtc` mode the camera is drawn through a canvas that paints a frame id
// (stamp.js) into each frame before it is sent; the service echoes the id onto the avatar frame
// it returns, and the page times camera frame -> displayed avatar frame. In shared-source mode
// (e.g. `avatarcam demo`) the page only receives the shared avatar stream.
//
// In room mode (a gateway's room link: ?room=N&role=driver|viewer&room_token=T) the page joins
// through the gateway's rooms API and talks to Janus (janus.js, through the gateway's same-origin
// /janus): a driver publishes its stamped camera and subscribes to the avatar, a viewer only
// subscribes. Glass-to-glass is measured the same way: the session actor echoes the ids.

import { HttpError, api, forgetToken, iceGathered, token } from "./common.js";
import { JanusSession } from "./janus.js";
import { MODULUS, StampReader, fits as stampFits, write as writeStamp } from "./stamp.js";

const STATS_PERIOD_MS = 500;
const GLASS_REPORT_MS = 2000; // a room's driver reports glass-to-glass to the gateway this often
const SERVER_SILENCE_MS = 4000; // no stats message for this long while connected: the session is lost
const DISCONNECTED_GRACE_MS = 3000; // ICE "disconnected" can recover by itself
const GLASS_WINDOW = 90; // samples in the running median (~3 s at 30 fps)
const FPS_WINDOW_MS = 2000;
const BUSY_RETRY_S = 5;
const MAX_BACKOFF_S = 8;

const $ = (id) => document.getElementById(id);
const transport = readTransport(); // how the page's WebRTC is tuned for latency (readTransport below)
const wantedAvatar = new URLSearchParams(location.search).get("avatar");
const roomLink = readRoomLink(); // null: serve's page; else { room, role, token } of a gateway's room link
forgetToken(); // the service answered this address with a cookie for the token

const STATES = {
  loading: ["Loading…", "Asking the service what it serves."],
  camera: ["Waiting for the camera", "Allow camera access: your camera drives the avatar."],
  connecting: ["Connecting…", "Setting up the WebRTC session."],
  running: ["Live", ""],
  "no-face": ["Face not found", "Look into the camera. The avatar holds its last pose, then eases to neutral."],
  paused: ["Paused", "The avatar is paused. Press Resume to continue."],
  "camera-denied": ["Camera access denied", "Allow the camera for this site in the browser's settings, then press Retry."],
  "no-camera": ["No camera available", "Connect a camera or close the app that holds it, then press Retry."],
  insecure: ["Camera needs a secure page", "Browsers give the camera only to https:// pages or localhost."],
  busy: ["Server busy, try later", "The service cannot take another session right now."],
  reconnecting: ["Reconnecting…", ""],
  unauthorized: ["Access token required", "Open the link you were given, including its ?token=… part."],
  forbidden: ["Not allowed from this origin", "Open the page from the address the service was started with."],
  error: ["Something went wrong", ""],
};
const RETRYABLE = new Set(["camera-denied", "no-camera", "error", "unauthorized", "forbidden", "insecure"]);

// ---- state shown to the user ----

const view = {
  state: "loading",
  setState(name, detail) {
    const [title, text] = STATES[name];
    this.state = name;
    document.body.dataset.state = name;
    $("state").dataset.state = name;
    $("state").textContent = name;
    $("banner-title").textContent = title;
    $("banner-detail").textContent = detail ?? text;
    $("retry").hidden = !RETRYABLE.has(name);
  },
  setStat(id, value, text) {
    const node = $(id);
    node.dataset.value = value ?? "";
    node.textContent = text;
  },
};

function ms(value) {
  return value == null || Number.isNaN(value) ? "–" : `${value.toFixed(0)} ms`;
}

// ---- the camera, stamped through a canvas ----

class StampedCamera {
  /** Draws each camera frame onto a canvas, paints an incrementing id, and sends the canvas. */
  constructor(stream, video) {
    this.stream = stream;
    this.video = video;
    this.canvas = document.createElement("canvas");
    this.ctx = this.canvas.getContext("2d", { alpha: false });
    this.sentAt = new Float64Array(MODULUS).fill(Number.NaN);
    this.nextId = 0;
    this.frames = 0;
    this.clockFrom = null; // where glass-to-glass starts: the camera's capture time, or the paint
    this.output = this.canvas.captureStream(0); // a frame exactly when requestFrame() is called
    this.track = this.output.getVideoTracks()[0];
    video.srcObject = stream;
    video.play().catch(() => {});
    this.onFrame = this.onFrame.bind(this);
    video.requestVideoFrameCallback(this.onFrame);
  }

  onFrame(now, meta) {
    const w = this.video.videoWidth;
    const h = this.video.videoHeight;
    if (w && h) {
      if (this.canvas.width !== w || this.canvas.height !== h) {
        this.canvas.width = w;
        this.canvas.height = h;
      }
      this.ctx.drawImage(this.video, 0, 0, w, h);
      if (stampFits(w, h)) {
        const id = this.nextId;
        this.nextId = (id + 1) % MODULUS;
        writeStamp(this.ctx, w, id);
        // From the camera's capture time where the browser gives it, else from now.
        const captured = meta.captureTime;
        const t = performance.now();
        const fromCapture = captured > 0 && captured <= t && t - captured < 1000;
        this.sentAt[id] = fromCapture ? captured : t;
        this.clockFrom = fromCapture ? "camera capture" : "canvas paint";
      }
      this.track.requestFrame();
      this.frames += 1;
    }
    this.video.requestVideoFrameCallback(this.onFrame);
  }

  /** When the frame with this id was captured, once: a repeated frame is not a new sample. */
  take(id) {
    const t = this.sentAt[id];
    this.sentAt[id] = Number.NaN;
    return t;
  }

  stop() {
    this.track.stop();
    for (const t of this.stream.getTracks()) t.stop();
  }
}

// ---- the running median of glass-to-glass samples ----

class Window {
  constructor(size) {
    this.size = size;
    this.values = [];
    this.count = 0;
    this.log = []; // every sample of this connection (capped), for benchmarks reading the page
  }
  push(v) {
    this.values.push(v);
    if (this.values.length > this.size) this.values.shift();
    this.count += 1;
    if (this.log.length < 100000) this.log.push(v);
  }
  median() {
    if (!this.values.length) return null;
    const s = [...this.values].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }
  clear() {
    this.values = [];
    this.log = [];
  }
}

// ---- where the glass-to-glass time goes (as streamer/core/split.py) ----

const SPLIT_PENDING_MS = 5000; // half of a join older than this is dropped (a lost frame, a wrapped id)
const SERVER_PARTS = ["queue", "track", "render", "infer", "compose", "handoff"];

/** server clock - page clock (ms), from pings over the data channel: the fastest of the recent ones. */
class ClockSync {
  constructor(keep = 20) {
    this.keep = keep;
    this.samples = []; // [round trip, offset]
  }
  observe(t0, server, t1) {
    if (t1 < t0) return;
    this.samples.push([t1 - t0, server - (t0 + t1) / 2]);
    if (this.samples.length > this.keep) this.samples.shift();
  }
  best() {
    return this.samples.length ? this.samples.reduce((a, b) => (b[0] < a[0] ? b : a)) : null;
  }
  get offset() {
    return this.best()?.[1] ?? null;
  }
  get error() {
    const b = this.best();
    return b ? b[0] / 2 : null;
  }
}

/**
 * Joins each frame id's capture and display times (this page's clock) with the server's times of
 * the same frame (its stats messages' `frames`: [tag, received, produced, sent, track, render,
 * infer, compose], its clock, seconds), into capture -> server receive (uplink), server
 * receive -> send (server, with its parts) and send -> displayed (downlink), in ms. The clock
 * offset cancels in their sum, which is the frame's glass-to-glass.
 */
class SplitJoin {
  constructor(sync) {
    this.sync = sync;
    this.client = new Map();
    this.server = new Map();
    this.rows = new Window(GLASS_WINDOW); // .log: every joined frame of this connection
  }
  shown(tag, captured, shown) {
    this.client.set(tag, [captured, shown]);
    this.join(tag, shown);
  }
  serverTimes(item, now) {
    if (!Array.isArray(item) || item.length !== 8 || !item.every((v) => typeof v === "number")) return;
    this.server.set(item[0], item);
    this.join(item[0], now);
  }
  join(tag, now) {
    const offset = this.sync.offset;
    if (offset == null || !this.client.has(tag) || !this.server.has(tag)) return this.prune(now);
    const [captured, shown] = this.client.get(tag);
    const [, received, produced, sent, track, render, infer, compose] = this.server.get(tag);
    this.client.delete(tag);
    this.server.delete(tag);
    const r = received * 1000 - offset;
    const s = sent * 1000 - offset;
    const parts = { track, render, infer, compose, handoff: sent - produced };
    parts.queue = produced - received - track - render - infer - compose;
    const row = { glass: shown - captured, uplink: r - captured, server: s - r, downlink: shown - s };
    for (const k of SERVER_PARTS) row[k] = parts[k] * 1000;
    this.rows.push(row);
  }
  prune(now) {
    if (this.client.size + this.server.size < 64) return;
    for (const [tag, [, shown]] of this.client) if (now - shown > SPLIT_PENDING_MS) this.client.delete(tag);
    const offset = this.sync.offset ?? 0;
    for (const [tag, item] of this.server) if (now - (item[3] * 1000 - offset) > SPLIT_PENDING_MS) this.server.delete(tag);
  }
  /** The median of each segment over the recent frames, ms. */
  medians() {
    const rows = this.rows.values;
    if (!rows.length) return null;
    const out = {};
    for (const k of ["glass", "uplink", "server", "downlink", ...SERVER_PARTS]) {
      const s = rows.map((r) => r[k]).sort((a, b) => a - b);
      const m = s.length >> 1;
      out[k] = s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
    }
    return out;
  }
  clear() {
    this.client.clear();
    this.server.clear();
    this.rows.clear();
  }
}

/**
 * Per-frame means (ms) of the browser's own WebRTC figures over the last stats period, from the
 * differences of getStats() counters: the camera sender's encode and packet send delay, the avatar
 * receiver's jitter buffer, decode, processing (first packet in -> decoded) and inter-frame delay.
 */
class TransportStats {
  constructor() {
    this.prev = null;
    this.latest = null;
    this.log = []; // every period's means, for benchmarks reading the page
  }
  update(report) {
    let inbound = null;
    let outbound = null;
    report.forEach((s) => {
      if (s.kind !== "video") return;
      if (s.type === "inbound-rtp") inbound = s;
      if (s.type === "outbound-rtp") outbound = s;
    });
    const now = {
      jb: inbound?.jitterBufferDelay, jbn: inbound?.jitterBufferEmittedCount,
      jbt: inbound?.jitterBufferTargetDelay, jbm: inbound?.jitterBufferMinimumDelay,
      dec: inbound?.totalDecodeTime, proc: inbound?.totalProcessingDelay, decn: inbound?.framesDecoded,
      ifd: inbound?.totalInterFrameDelay,
      enc: outbound?.totalEncodeTime, encn: outbound?.framesEncoded,
      psd: outbound?.totalPacketSendDelay, pkts: outbound?.packetsSent,
      encoder: outbound?.encoderImplementation, decoder: inbound?.decoderImplementation,
      size: outbound ? `${outbound.frameWidth}x${outbound.frameHeight}@${outbound.framesPerSecond}` : null,
    };
    const p = this.prev;
    this.prev = now;
    if (!p) return null;
    // Each total is in seconds; its mean per frame (or packet) over this period, in ms.
    const mean = (total, count) => {
      const n = (now[count] ?? 0) - (p[count] ?? 0);
      return now[total] != null && p[total] != null && n > 0 ? ((now[total] - p[total]) * 1000) / n : null;
    };
    const latest = {
      encode: mean("enc", "encn"),
      packet_send: mean("psd", "pkts"),
      jitter_buffer: mean("jb", "jbn"),
      jitter_target: mean("jbt", "jbn"),
      jitter_minimum: mean("jbm", "jbn"),
      decode: mean("dec", "decn"),
      processing: mean("proc", "decn"),
      inter_frame: mean("ifd", "decn"),
      frames_decoded: (now.decn ?? 0) - (p.decn ?? 0),
      frames_encoded: (now.encn ?? 0) - (p.encn ?? 0),
    };
    this.latest = latest;
    if (this.log.length < 10000) this.log.push({ ...latest, encoder: now.encoder, decoder: now.decoder, sent: now.size });
    return latest;
  }
  clear() {
    this.prev = null;
    this.latest = null;
    this.log = [];
  }
}

// ---- the session ----

const app = {
  info: null,
  mode: null, // "camera" (webrtc source: this camera drives the avatar) or "shared"
  camera: null,
  pc: null,
  channel: null,
  session: null,
  reconnect: null, // the secret of this page's latest peer: a reconnect sends it (options.replaces)
  attempt: 0,
  retryTimer: null,
  statsTimer: null,
  disconnectTimer: null,
  lastServerMessage: 0,
  framesShown: 0,
  lastId: -1,
  glass: new Window(GLASS_WINDOW),
  clock: new ClockSync(),
  split: null, // a SplitJoin on `clock`, made below
  stats: new TransportStats(),
  transport, // the latency settings this page runs with
  reader: new StampReader(),
  prevInbound: null, // recent [{frames decoded, time}] for the received frame rate
  paused: false,
  background: { value: "learned", pending: null }, // the shown mode, and the one to restore on refusal
  tooSmall: false, // the avatar frames cannot carry a stamp: no glass-to-glass
  server: null, // the latest stats message
  generation: 0, // bumps on every teardown so late callbacks of an old connection do nothing
  room: roomLink, // room mode (see the top of this file)
  glassReported: -Infinity, // when this page last reported glass-to-glass to the gateway (room mode)
  joined: null, // the gateway's join answer
  janus: null, // the JanusSession of this connection (room mode)
  subscriber: null, // its avatar subscription (room mode): `switches` counts followed re-publishes
  avatarAsked: false, // this page asked its session for the ?avatar= one
};
app.split = new SplitJoin(app.clock);
window.avatarcam = app; // for tests and for curious people with a console

/**
 * The page's WebRTC latency settings, from the address (for measuring one against another;
 * docs/benchmarks.md has the numbers behind the defaults):
 *   jitter=MS       the avatar receiver's jitterBufferTarget ("default": the browser's own);
 *   hint=HINT       the camera track's contentHint ("" leaves it alone);
 *   degrade=PREF    the camera sender's degradationPreference ("" leaves it alone);
 *   camera=WxH@FPS  what the page asks the camera for.
 */
function readTransport() {
  const params = new URLSearchParams(location.search);
  const jitter = params.get("jitter") ?? "default";
  const camera = /^(\d+)x(\d+)@(\d+)$/.exec(params.get("camera") ?? "") ?? [null, 640, 480, 30];
  return {
    jitter: jitter === "default" ? null : Number(jitter),
    hint: params.get("hint") ?? "",
    degrade: params.get("degrade") ?? "",
    camera: { width: Number(camera[1]), height: Number(camera[2]), fps: Number(camera[3]) },
  };
}

async function start() {
  clearTimeout(app.retryTimer);
  teardown();
  view.setState("loading");
  try {
    if (app.room) {
      const { room, role, token: roomToken } = app.room;
      app.joined = await api(`/api/rooms/${encodeURIComponent(room)}/join`, { role, token: roomToken });
    } else app.info = await api("/api/info");
  } catch (err) {
    return retryLater(err, "reconnecting");
  }
  if (app.room) {
    showRoom(app.joined);
    app.mode = app.joined.publish ? "camera" : "shared";
  } else {
    showInfo(app.info);
    app.mode = app.info.source === "webrtc" ? "camera" : "shared";
  }
  document.body.dataset.mode = app.mode;
  if (app.mode === "camera" && !app.camera) {
    if (!navigator.mediaDevices?.getUserMedia) return view.setState("insecure");
    view.setState("camera");
    try {
      const cam = transport.camera;
      const stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: cam.width }, height: { ideal: cam.height }, frameRate: { ideal: cam.fps } },
        audio: false,
      });
      app.camera = new StampedCamera(stream, $("camera"));
    } catch (err) {
      const denied = err.name === "NotAllowedError" || err.name === "SecurityError";
      const state = denied ? "camera-denied" : "no-camera";
      return view.setState(state, `${STATES[state][1]} (${err.name})`);
    }
  }
  try {
    await (app.room ? connectRoom() : connect());
  } catch (err) {
    retryLater(err, "reconnecting");
  }
}

function readRoomLink() {
  const params = new URLSearchParams(location.search);
  const room = params.get("room");
  if (room == null) return null;
  return { room, role: params.get("role") ?? "", token: params.get("room_token") ?? "" };
}

function showRoom(joined) {
  const driving = Boolean(joined.publish);
  $("mode").textContent = driving ? `room ${joined.room}: your camera drives the avatar` : `room ${joined.room}: watching`;
  $("avatar-name").textContent = "through Janus";
  $("watermark").textContent = "watermark: set by the session";
  $("dashboard-link").hidden = true;
  // The session runs on a cluster node: this page sends it frames, not controls.
  for (const id of ["calibrate", "pause", "background"]) $(id).disabled = true;
  $("controls-note").textContent = "A room: pause, calibrate and background belong to the operator of the cluster.";
  $("controls-note").hidden = false;
  view.setStat("stat-e2e", null, "n/a");
  if (!driving) {
    view.setStat("stat-glass", null, "n/a");
    $("glass-note").textContent = "Glass-to-glass is measured by the room's driver: this page only watches.";
  }
}

/** Room mode: publish the stamped camera (a driver) and subscribe to the avatar through Janus. */
async function connectRoom() {
  view.setState("connecting");
  const generation = ++app.generation;
  const target = new URL(app.joined.target);
  const secret = new URLSearchParams(target.hash.slice(1)).get("apisecret");
  const room = { room: app.joined.room, pin: app.joined.pin };
  // The gateway's /janus passes Janus's API through on this page's origin (docs/cluster.md).
  const janus = await JanusSession.open("/janus", { apiSecret: secret });
  if (generation !== app.generation) return janus.close();
  app.janus = janus;
  const watch = (pc) => {
    pc.addEventListener("connectionstatechange", () => {
      if (generation !== app.generation) return;
      const s = pc.connectionState;
      clearTimeout(app.disconnectTimer);
      if (s === "failed" || s === "closed") lost(`Connection to the room ${s}.`);
      else if (s === "disconnected") {
        app.disconnectTimer = setTimeout(() => generation === app.generation && lost("Connection interrupted."), DISCONNECTED_GRACE_MS);
      }
    });
  };
  const codec = $("codec").value;
  if (app.joined.publish) {
    const publisher = await janus.publish(room, app.camera.track, app.joined.publish, { codec, stream: app.camera.output });
    watch(publisher.pc);
  }
  const subscriber = await janus.subscribe(room, app.joined.subscribe, {
    onTrack: (track, stream) => {
      const video = $("avatar");
      video.srcObject = stream ?? new MediaStream([track]);
      video.play().catch(() => {});
    },
  });
  if (generation !== app.generation) return;
  app.subscriber = subscriber;
  app.pc = subscriber.pc;
  watch(subscriber.pc);
  app.session = `room ${app.joined.room}`;
  $("session").textContent = app.session;
  app.statsTimer = setInterval(() => tick(generation), STATS_PERIOD_MS);
}

function showInfo(info) {
  $("mode").textContent = info.source === "webrtc" ? "your camera drives the avatar" : `shared source: ${info.source}`;
  $("avatar-name").textContent = `${info.avatar} · ${info.resolution}px`;
  $("watermark").dataset.on = String(Boolean(info.watermark));
  $("watermark").textContent = info.watermark ? "invisible watermark: on" : "invisible watermark: off";
  // The dashboard and /create are the operator's: a viewer's page does not offer links that would be refused.
  $("dashboard-link").hidden = info.role !== "operator";
  $("create-link").hidden = info.role !== "operator";
  if (info.source !== "webrtc") {
    if (info.role !== "operator") {
      $("controls-note").textContent =
        "A shared stream: only the operator can pause, calibrate or change it (open the operator's link).";
    }
    view.setStat("stat-glass", null, "n/a");
    $("stat-glass").title = "Glass-to-glass needs this page's camera as the source; this service drives the avatar from its own source.";
    $("controls-note").hidden = false;
    $("glass-note").textContent =
      "Glass-to-glass latency is not available here: the avatar is driven by the service's own source " +
      `(${info.source}), not by this page's camera. Start the service with --source webrtc to measure it.`;
  }
}

function preferCodec(transceiver, codec) {
  const caps = RTCRtpReceiver.getCapabilities?.("video");
  if (!caps || !transceiver.setCodecPreferences) return;
  const mime = codec === "h264" ? "video/h264" : "video/vp8";
  const first = caps.codecs.filter((c) => c.mimeType.toLowerCase() === mime);
  const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== mime);
  if (first.length) transceiver.setCodecPreferences([...first, ...rest]);
}

async function connect() {
  view.setState("connecting");
  const generation = ++app.generation;
  const pc = new RTCPeerConnection({ iceServers: [] });
  app.pc = pc;
  app.channel = pc.createDataChannel("control");
  app.channel.onmessage = (e) => onServerMessage(e.data);
  app.channel.onclose = () => generation === app.generation && lost("The service closed the session.");

  const transceiver =
    app.mode === "camera"
      ? pc.addTransceiver(app.camera.track, { direction: "sendrecv", streams: [app.camera.output] })
      : pc.addTransceiver("video", { direction: "recvonly" });
  const codec = $("codec").value;
  preferCodec(transceiver, codec);
  await tuneTransceiver(transceiver);

  pc.ontrack = (e) => {
    const video = $("avatar");
    video.srcObject = e.streams[0] ?? new MediaStream([e.track]);
    video.play().catch(() => {});
  };
  pc.onconnectionstatechange = () => {
    if (generation !== app.generation) return;
    const s = pc.connectionState;
    clearTimeout(app.disconnectTimer);
    if (s === "failed" || s === "closed") lost(`Connection ${s}.`);
    else if (s === "disconnected") {
      const interrupted = () => generation === app.generation && lost("Connection interrupted.");
      app.disconnectTimer = setTimeout(interrupted, DISCONNECTED_GRACE_MS);
    }
  };

  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  const answer = await api("/offer", {
    sdp: pc.localDescription.sdp,
    type: pc.localDescription.type,
    // A reconnect sends the secret of the peer it replaces, and the server closes that one once
    // this offer is answered: a link that died on this side would otherwise hold its slot until
    // the server's ICE gives up on it. The peer id alone is public and replaces nothing.
    options: {
      codec,
      stamp: app.mode === "camera",
      background: $("background").value,
      replaces: app.reconnect ?? undefined,
    },
  });
  app.reconnect = answer.reconnect ?? null;
  if (generation !== app.generation) return;
  app.session = answer.session;
  $("session").textContent = answer.session ?? "–";
  await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  app.lastServerMessage = performance.now();
  app.statsTimer = setInterval(() => tick(generation), STATS_PERIOD_MS);
}

/** Apply the page's latency settings (readTransport) to its one video transceiver. */
async function tuneTransceiver(transceiver) {
  const receiver = transceiver.receiver;
  if (transport.jitter != null) {
    if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = transport.jitter;
    else if ("playoutDelayHint" in receiver) receiver.playoutDelayHint = transport.jitter / 1000;
  }
  const track = transceiver.sender.track;
  if (!track) return;
  if (transport.hint) track.contentHint = transport.hint;
  if (transport.degrade) {
    try {
      const params = transceiver.sender.getParameters();
      params.degradationPreference = transport.degrade;
      await transceiver.sender.setParameters(params);
    } catch (err) {
      console.warn("degradationPreference", transport.degrade, "refused:", err);
    }
  }
}

function teardown() {
  app.generation += 1;
  clearInterval(app.statsTimer);
  clearTimeout(app.disconnectTimer);
  if (app.channel) app.channel.onclose = null;
  app.pc?.close();
  app.pc = null;
  app.janus?.close();
  app.janus = null;
  app.subscriber = null;
  app.channel = null;
  app.session = null;
  app.server = null;
  app.prevInbound = null;
  app.glass.clear();
  app.split.clear();
  app.stats.clear();
  app.clock.samples = [];
  app.framesShown = 0;
  $("session").textContent = "–";
  $("avatar").srcObject = null;
  // Numbers of a connection that is gone would read as live: blank them.
  for (const id of ["stat-fps", "stat-rtt", "face", "dropped"]) view.setStat(id, null, "–");
  view.setStat("stat-e2e", null, app.room ? "n/a" : "–");
  if (app.mode === "camera") view.setStat("stat-glass", null, "–");
  $("video-info").textContent = "–";
}

function lost(reason) {
  teardown();
  app.attempt += 1;
  const wait = Math.min(MAX_BACKOFF_S, 2 ** (app.attempt - 1));
  view.setState("reconnecting", `${reason} Reconnecting in ${wait} s (attempt ${app.attempt}).`);
  app.retryTimer = setTimeout(start, wait * 1000);
}

function retryLater(err, fallback) {
  teardown();
  if (err instanceof HttpError) {
    if (err.status === 503 || err.status === 429) {
      const wait = Math.min(60, err.retryAfter > 0 ? err.retryAfter : BUSY_RETRY_S);
      view.setState("busy", `${err.message}. Trying again in ${wait} s.`);
      app.retryTimer = setTimeout(start, wait * 1000);
      return;
    }
    if (err.status === 401) return view.setState("unauthorized");
    if (err.status === 403) return view.setState("forbidden");
    if (err.status < 500) return view.setState("error", `The service refused the connection: ${err.message}`);
  }
  const reason = err instanceof TypeError ? "The service is unreachable." : `${err.message}.`;
  app.attempt += 1;
  const wait = Math.min(MAX_BACKOFF_S, 2 ** (app.attempt - 1));
  view.setState(fallback, `${reason} Retrying in ${wait} s (attempt ${app.attempt}).`);
  app.retryTimer = setTimeout(start, wait * 1000);
}

// ---- messages from the service ----

function onServerMessage(data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return;
  }
  if (msg.type === "error") {
    if (app.background.pending != null) {
      app.background.value = app.background.pending;
      $("background").value = app.background.pending;
      app.background.pending = null;
    }
    return notify(`The service refused: ${msg.error}`);
  }
  if (msg.type === "clock") {
    if (typeof msg.t === "number" && typeof msg.server === "number") app.clock.observe(msg.t, msg.server * 1000, performance.now());
    return;
  }
  if (msg.type !== "stats") return;
  app.lastServerMessage = performance.now();
  for (const item of Array.isArray(msg.frames) ? msg.frames : []) app.split.serverTimes(item, app.lastServerMessage);
  app.server = msg;
  if (msg.avatar) {
    $("avatar-name").textContent = `${msg.avatar} · ${app.info?.resolution ?? "?"}px`;
    // Opened as /?avatar=NAME (the create page's "open it live"): this session switches to it, once.
    if (wantedAvatar && msg.avatar !== wantedAvatar && !app.avatarAsked) {
      app.avatarAsked = true;
      control("avatar", wantedAvatar);
    }
  }
  // The session as the dashboard and /api/sessions name it (in shared mode: the shared one).
  if (msg.session && msg.session !== app.session) {
    app.session = msg.session;
    $("session").textContent = msg.session;
  }
  app.paused = msg.state === "paused";
  $("pause").textContent = app.paused ? "Resume" : "Pause";
  $("pause").setAttribute("aria-pressed", String(app.paused));
  view.setStat("stat-e2e", msg.e2e_ms, ms(msg.e2e_ms));
  view.setStat("face", msg.face_found, msg.face_found == null ? "–" : msg.face_found ? "found" : "not found");
  view.setStat("dropped", msg.dropped, String(msg.dropped ?? "–"));
  if (msg.state === "ended") return lost("The service ended the session.");
  if (app.framesShown > 0) showRunningState();
}

function showRunningState() {
  const next = app.paused ? "paused" : app.server?.face_found === false ? "no-face" : "running";
  if (view.state !== next) view.setState(next);
}

// ---- each displayed avatar frame ----

function onAvatarFrame(now, meta) {
  const video = $("avatar");
  video.requestVideoFrameCallback(onAvatarFrame);
  if (!app.pc) return;
  app.framesShown += 1;
  if (["connecting", "reconnecting", "busy"].includes(view.state)) {
    app.attempt = 0;
    showRunningState();
  }
  if (app.mode !== "camera" || !app.camera) return;
  app.tooSmall = !stampFits(meta.width, meta.height);
  const id = app.reader.readFrom(video, meta.width, meta.height);
  if (id == null || id === app.lastId) return;
  app.lastId = id;
  const sent = app.camera.take(id);
  const shown = meta.expectedDisplayTime ?? now;
  // Ids wrap every 1024 frames (~34 s at 30 fps); an older id than that is not this frame's.
  if (Number.isNaN(sent) || shown < sent || shown - sent > 10000) return;
  app.glass.push(shown - sent);
  app.split.shown(id, sent, shown);
}

// ---- periodic: stats overlay, glass report, watchdog ----

async function tick(generation) {
  const pc = app.pc;
  if (!pc || generation !== app.generation) return;
  const silent = performance.now() - app.lastServerMessage > SERVER_SILENCE_MS;
  if (!app.room && silent && app.channel?.readyState !== "connecting") {
    return lost("No word from the service.");
  }
  let report;
  try {
    report = await pc.getStats();
  } catch {
    return;
  }
  if (generation !== app.generation) return;
  let inbound = null;
  let pairId = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") inbound = s;
    if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  const pair = pairId ? report.get(pairId) : null;
  const means = app.stats.update(report);
  if (!app.room) send({ type: "clock", t: performance.now() });
  const rtt = pair?.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : null;
  view.setStat("stat-rtt", rtt, ms(rtt));

  if (inbound) {
    // Over the last ~2 s: at a few frames per second one tick holds too few frames to count.
    const history = (app.prevInbound ??= []);
    history.push({ frames: inbound.framesDecoded ?? 0, t: inbound.timestamp });
    while (history.length > 2 && history[history.length - 1].t - history[0].t > FPS_WINDOW_MS) history.shift();
    const first = history[0];
    const last = history[history.length - 1];
    if (last.t > first.t) {
      const fps = ((last.frames - first.frames) * 1000) / (last.t - first.t);
      view.setStat("stat-fps", fps, `${fps.toFixed(1)} fps`);
    }
    const codec = inbound.codecId ? report.get(inbound.codecId)?.mimeType?.replace("video/", "") : "";
    const video = $("avatar");
    $("video-info").textContent = `${video.videoWidth}×${video.videoHeight} ${codec ?? ""}`.trim();
  }

  if (app.mode === "camera") {
    const glass = app.glass.median();
    if (glass == null && app.tooSmall) {
      view.setStat("stat-glass", null, "n/a");
      $("stat-glass").title = "The avatar frames are too small to carry a frame id (at least 48 px wide).";
    } else if (glass == null) view.setStat("stat-glass", null, "measuring…");
    else {
      view.setStat("stat-glass", glass, ms(glass));
      $("stat-glass").title =
        `median of the last ${app.glass.values.length} frames (${app.glass.count} measured), ` +
        `from ${app.camera.clockFrom} to display`;
      const split = app.split.medians();
      if (split) {
        $("stat-glass").title +=
          `\nuplink ${ms(split.uplink)}, server ${ms(split.server)}, downlink ${ms(split.downlink)}` +
          (means ? `; page encode ${ms(means.encode)}, jitter buffer ${ms(means.jitter_buffer)}, decode ${ms(means.decode)}` : "");
      }
      if (app.room) reportGlass(glass);
      else send({ type: "glass", ms: glass, split: splitReport(split, means) });
    }
  }
}

/** What the page tells the service of its split (flat, ms), or undefined before one. */
function splitReport(split, means) {
  if (!split) return undefined;
  const out = { ...split, clock_error: app.clock.error };
  for (const k of ["encode", "packet_send", "jitter_buffer", "decode", "processing", "inter_frame"]) out[k] = means?.[k] ?? null;
  return out;
}

// In a room there is no data channel to the session: the driver's page reports its glass-to-glass
// median to the gateway, whose fleet view shows it.
function reportGlass(glass) {
  const now = performance.now();
  if (now - app.glassReported < GLASS_REPORT_MS) return;
  app.glassReported = now;
  const path = `/api/rooms/${encodeURIComponent(app.room.room)}/report`;
  api(path, { token: app.room.token, glass_ms: glass }).catch(() => {}); // the next one may pass
}

function send(message) {
  if (app.channel?.readyState === "open") {
    app.channel.send(JSON.stringify(message));
    return true;
  }
  return false;
}

function notify(text) {
  const node = $("notice");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => (node.hidden = true), 6000);
}

async function control(action, value) {
  const message = { type: "control", action };
  if (value !== undefined) message.value = value;
  if (send(message)) return;
  if (!app.session) return;
  try {
    await api("/api/control", { action, session: app.session, value });
  } catch (err) {
    notify(`Control failed: ${err.message}`);
  }
}

// ---- wiring ----

function wire() {
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype) || !window.RTCPeerConnection) {
    const detail = "This browser lacks WebRTC or requestVideoFrameCallback: use a current Chrome, Edge, Firefox or Safari.";
    view.setState("error", detail);
    return false;
  }
  $("retry").addEventListener("click", () => {
    app.attempt = 0;
    start();
  });
  $("calibrate").addEventListener("click", () => control("calibrate"));
  $("pause").addEventListener("click", () => control(app.paused ? "resume" : "pause"));
  $("background").addEventListener("change", (e) => {
    // Put the menu back if the service refuses (e.g. "image" without a picture configured).
    app.background.pending = app.background.value;
    app.background.value = e.target.value;
    control("background", e.target.value);
    setTimeout(() => (app.background.pending = null), 3000);
  });
  $("codec").addEventListener("change", () => {
    // A codec is fixed at negotiation: connect again with the new choice.
    if (app.pc) start();
  });
  $("avatar").requestVideoFrameCallback(onAvatarFrame);
  window.addEventListener("pagehide", () => {
    teardown();
    app.camera?.stop();
  });
  return true;
}

if (wire()) start();

