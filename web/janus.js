// A small Janus VideoRoom client over Janus's HTTP API (REST: POST requests, one long-poll GET
// for events), for the page in room mode. Written against Janus's documented API; it mirrors
// streamer/janus/client.py (the Python participant) rather than vendoring janus.js.
//
//   const janus = await JanusSession.open("/janus", { apiSecret });
//   const publisher = await janus.publish(room, track, "driver");           // sendonly
//   const subscriber = await janus.subscribe(room, "avatar", { onTrack });  // recvonly, follows re-publishes
//   await janus.close();
//
// `room` is { room: N, pin: PIN }. A subscriber follows its display: when a new publisher with
// the same display appears (a restarted avatar session), it sends the VideoRoom "switch" request
// on its existing handle, so the same peer connection and <video> keep playing. To hear of new
// publishers it holds a second handle joined as a publisher that never publishes.

import { iceGathered } from "./common.js";

const PLUGIN = "janus.plugin.videoroom";
const KEEPALIVE_MS = 25000; // Janus drops a session silent for 60 s
const REQUEST_MS = 15000;

export class JanusError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

function transaction() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The (feed, mid) of each publisher shown as `display` that sends video. */
function videoFeeds(publishers, display) {
  const found = [];
  for (const p of publishers ?? []) {
    if (p.display !== display || p.dummy) continue;
    const stream = (p.streams ?? []).find((s) => s.type === "video" && !s.disabled);
    if (stream) found.push({ feed: p.id, mid: String(stream.mid) });
  }
  return found;
}

class Handle {
  constructor(session, id) {
    this.session = session;
    this.id = id;
    this.listeners = [];
  }

  /** A request to the plugin; its answer { data, jsep }, waiting for the event of an asynchronous one. */
  async message(body, jsep) {
    const msg = { janus: "message", body };
    if (jsep) msg.jsep = jsep;
    const { data, jsep: answer } = await this.session.send(`/${this.session.id}/${this.id}`, msg);
    if (data.error_code || data.error) {
      throw new JanusError(`Janus refused ${body.request} in room ${body.room ?? ""}: ${data.error} (${data.error_code})`, data.error_code);
    }
    return { data, jsep: answer };
  }

  emit(data, jsep) {
    for (const listener of this.listeners) listener(data, jsep);
  }

  async detach() {
    this.session.handles.delete(this.id);
    try {
      await this.session.post(`/${this.session.id}/${this.id}`, { janus: "detach" });
    } catch {
      // the session may be gone already
    }
  }
}

export class JanusSession {
  constructor(base, apiSecret) {
    this.base = base.replace(/\/$/, "");
    this.apiSecret = apiSecret ?? null;
    this.id = 0;
    this.handles = new Map();
    this.waiting = new Map(); // transaction -> resolve
    this.participants = [];
    this.closed = false;
  }

  static async open(base, { apiSecret } = {}) {
    const session = new JanusSession(base, apiSecret);
    const answer = await session.post("", { janus: "create" });
    session.id = answer.data.id;
    session.poll();
    session.keepalive = setInterval(() => session.post(`/${session.id}`, { janus: "keepalive" }).catch(() => {}), KEEPALIVE_MS);
    return session;
  }

  async post(path, message) {
    const body = { transaction: transaction(), ...message };
    if (this.apiSecret) body.apisecret = this.apiSecret;
    let response;
    try {
      response = await fetch(this.base + path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify(body),
      });
    } catch (err) {
      throw new JanusError(`cannot reach Janus at ${this.base}: ${err.message}`);
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      answer = null;
    }
    if (!response.ok) throw new JanusError(answer?.error ?? `Janus answered HTTP ${response.status}`, response.status);
    if (answer?.janus === "error") throw new JanusError(`Janus refused ${message.janus}: ${answer.error?.reason}`, answer.error?.code);
    answer._transaction = body.transaction;
    return answer;
  }

  /** A handle message; for an asynchronous request, the event that answers it. */
  async send(path, message) {
    const id = transaction();
    const event = new Promise((resolve, reject) => {
      this.waiting.set(id, resolve);
      setTimeout(() => reject(new JanusError(`Janus did not answer ${message.body?.request ?? message.janus} in time`)), REQUEST_MS);
    });
    try {
      const answer = await this.post(path, { ...message, transaction: id });
      if (answer.janus === "success") return { data: answer.plugindata?.data ?? {}, jsep: answer.jsep };
      if (answer.janus !== "ack") throw new JanusError(`Janus answered ${answer.janus} to ${message.janus}`);
      return await event;
    } finally {
      this.waiting.delete(id);
    }
  }

  async poll() {
    while (!this.closed) {
      let events;
      try {
        const secret = this.apiSecret ? `&apisecret=${encodeURIComponent(this.apiSecret)}` : "";
        const response = await fetch(`${this.base}/${this.id}?maxev=10&rid=${Date.now()}${secret}`, { credentials: "same-origin" });
        events = await response.json();
      } catch {
        if (this.closed) return;
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      for (const event of Array.isArray(events) ? events : [events]) this.dispatch(event);
    }
  }

  dispatch(event) {
    if (!event || event.janus === "keepalive") return;
    const data = event.janus === "event" ? (event.plugindata?.data ?? {}) : { janus: event.janus };
    const resolve = this.waiting.get(event.transaction);
    // An "updated" offer may carry the transaction of the switch that caused it: it goes to the
    // handle, and the switch waits for its own "switched" event (as streamer/janus/client.py).
    if (event.janus === "event" && resolve && data.videoroom !== "updated") {
      this.waiting.delete(event.transaction);
      resolve({ data, jsep: event.jsep });
      return;
    }
    this.handles.get(event.sender)?.emit(data, event.jsep);
  }

  async attach() {
    const answer = await this.post(`/${this.id}`, { janus: "attach", plugin: PLUGIN });
    const handle = new Handle(this, answer.data.id);
    this.handles.set(handle.id, handle);
    return handle;
  }

  /** Join `room` as a publisher shown as `display` and send `track` (sendonly). */
  async publish(room, track, display, { codec = "vp8", stream } = {}) {
    const handle = await this.attach();
    const joined = await handle.message({ request: "join", ptype: "publisher", room: room.room, pin: room.pin, display });
    const pc = new RTCPeerConnection({ iceServers: [] });
    const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: stream ? [stream] : [] });
    preferCodec(transceiver, codec);
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    const { jsep } = await handle.message({ request: "publish", display }, { type: "offer", sdp: pc.localDescription.sdp });
    if (!jsep) throw new JanusError(`Janus accepted the publish in room ${room.room} but sent no answer`);
    await pc.setRemoteDescription(jsep);
    const publisher = { feed: joined.data.id, pc, handle, close: async () => (pc.close(), handle.detach()) };
    this.participants.push(publisher);
    return publisher;
  }

  /** Receive the video of the publisher shown as `display` (waiting for one) and follow it
   * across re-publishes. `onTrack(track)` gets the remote track once. */
  async subscribe(room, display, { onTrack, timeoutMs = 30000 } = {}) {
    const watcher = await this.attach();
    const queue = [];
    let wake = null;
    watcher.listeners.push((data) => {
      queue.push(data);
      wake?.();
    });
    const joined = await watcher.message({ request: "join", ptype: "publisher", room: room.room, pin: room.pin, display: `(${display} viewer)` });
    let feeds = videoFeeds(joined.data.publishers, display);
    const deadline = performance.now() + timeoutMs;
    while (!feeds.length) {
      const left = deadline - performance.now();
      if (left <= 0) throw new JanusError(`no publisher "${display}" in room ${room.room} yet`);
      await new Promise((resolve) => {
        wake = resolve;
        setTimeout(resolve, Math.min(left, 1000));
      });
      wake = null;
      while (queue.length && !feeds.length) feeds = videoFeeds(queue.shift().publishers, display);
    }
    const subscriber = new Subscriber(this, room, display, watcher, await this.attach(), onTrack);
    for (const f of feeds) subscriber.seen.add(f.feed);
    queue.length = 0;
    await subscriber.start(feeds[feeds.length - 1]);
    this.participants.push(subscriber);
    return subscriber;
  }

  async close() {
    if (this.closed) return;
    for (const p of this.participants) {
      try {
        await p.close();
      } catch {
        // closing the rest matters more
      }
    }
    this.closed = true;
    clearInterval(this.keepalive);
    try {
      await this.post(`/${this.id}`, { janus: "destroy" });
    } catch {
      // Janus may be gone
    }
  }
}

class Subscriber {
  constructor(session, room, display, watcher, handle, onTrack) {
    this.session = session;
    this.room = room;
    this.display = display;
    this.watcher = watcher;
    this.handle = handle;
    this.onTrack = onTrack;
    this.pc = new RTCPeerConnection({ iceServers: [] });
    this.feed = 0;
    this.mid = "0";
    this.switches = 0;
    this.seen = new Set();
    this.signaling = Promise.resolve(); // one negotiation at a time
    this.pc.ontrack = (e) => e.track.kind === "video" && this.onTrack?.(e.track, e.streams[0]);
  }

  serial(work) {
    const next = this.signaling.then(work, work);
    this.signaling = next.catch(() => {});
    return next;
  }

  async start({ feed, mid }) {
    const { data, jsep } = await this.handle.message({
      request: "join",
      ptype: "subscriber",
      room: this.room.room,
      pin: this.room.pin,
      streams: [{ feed, mid }],
    });
    if (!jsep) throw new JanusError(`Janus attached the subscription in room ${this.room.room} but sent no offer`);
    const video = (data.streams ?? []).find((s) => s.type === "video");
    this.feed = feed;
    this.mid = video ? String(video.mid) : "0";
    await this.answer(jsep);
    // Janus's "updated" offers (the publisher left: m-line inactive; a switch re-activated it)
    this.handle.listeners.push((_, offer) => offer?.type === "offer" && this.serial(() => this.answer(offer)).catch(() => {}));
    this.watcher.listeners.push((event) => this.follow(event.publishers));
  }

  async answer(offer) {
    await this.pc.setRemoteDescription(offer);
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    await iceGathered(this.pc);
    await this.handle.message({ request: "start" }, { type: "answer", sdp: this.pc.localDescription.sdp });
  }

  /** Switch to each new publisher with our display (a restarted session's re-publish). */
  follow(publishers) {
    for (const { feed, mid } of videoFeeds(publishers, this.display)) {
      if (this.seen.has(feed)) continue;
      this.seen.add(feed);
      this.serial(async () => {
        await this.handle.message({ request: "switch", streams: [{ feed, mid, sub_mid: this.mid }] });
        this.feed = feed;
        this.switches += 1;
      }).catch((err) => console.warn(`room ${this.room.room}: cannot switch to feed ${feed}: ${err.message}`));
    }
  }

  async close() {
    this.pc.close();
    await this.handle.detach();
    await this.watcher.detach();
  }
}

export function preferCodec(transceiver, codec) {
  const caps = RTCRtpReceiver.getCapabilities?.("video");
  if (!caps || !transceiver.setCodecPreferences) return;
  const mime = codec === "h264" ? "video/h264" : "video/vp8";
  const first = caps.codecs.filter((c) => c.mimeType.toLowerCase() === mime);
  const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== mime);
  if (first.length) transceiver.setCodecPreferences([...first, ...rest]);
}
