// The create page (/create): record a selfie video with live coaching, train an avatar from it
// on the service, give consent, and switch the live stream to it.
//
// The recording is made in the browser (MediaRecorder, ~1 s pieces kept in memory) and uploaded
// when it stops, in pieces of up to 8 MiB with `PUT /api/create/uploads/{id}?offset=N`: a refused
// offset (409) or a lost connection resumes from the byte the service says it holds, so nothing
// recorded is lost.
// A second peer connection sends the camera at a few frames per second to the service's coach,
// which answers on the data channel "coach" (framing, head-pose coverage, expressions, enough).
// The training job lives on the service: its id is kept in the address (?job=) and in
// localStorage, so a reload, or a restart of the service, finds it again.

import { HttpError, api, forgetToken, iceGathered, request } from "./common.js";
import { escapeHtml } from "./plot.js";

const CHUNK_MS = 1000; // MediaRecorder timeslice: what a dropped connection can have in flight
const MAX_PUT = 8 * 1024 * 1024; // bytes per PUT (the service takes up to 8 MiB)
const POLL_MS = 1000;
const SAMPLE_EVERY_MS = 5000; // the sample strip is refetched this often while training
const PREVIEW_FPS = 4;
const PREVIEW_WIDTH = 640; // the preview is scaled down to about this width
const JOB_KEY = "avatarcam.create.job";
const RECORDER_TYPES = ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm", "video/mp4"];
const EXPRESSIONS = [
  ["jawOpen", "jaw open"],
  ["smile", "smile"],
  ["blink", "blink"],
  ["brows", "brows"],
  ["lips", "lips"],
];
const ACTIVE = new Set(["queued", "preparing", "training", "consent", "exporting", "distilling"]);
const STEP_NAMES = {
  loading: "loading…",
  camera: "waiting for the camera",
  ready: "ready to record",
  recording: "recording",
  uploading: "uploading",
  uploaded: "ready to train",
  training: "training",
  consent: "waiting for consent",
  done: "done",
  failed: "failed",
  cancelled: "cancelled",
};

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
forgetToken(); // the service answered this address with a cookie for the token

const create = {
  info: null, // GET /api/create/info
  stream: null, // the camera
  recorder: null,
  recording: null, // {started, chunks: [Blob], bytes, type, timer}
  uploader: null,
  putBytes: MAX_PUT, // bytes per PUT (tests make it small to send many)
  recorded: null, // the last recording: {bytes, seconds, type, bitrate}
  upload: null, // the finished upload's id
  coach: null, // {pc, channel}
  coachMessages: 0,
  last: null, // the newest coach message
  job: null,
  jobId: params.get("job") ?? localStorage.getItem(JOB_KEY),
  pollTimer: null,
  sampleShown: 0, // when the sample strip was last refetched
  lastCheckpoints: -1,
  live: null, // the avatar this page switched the service to
};
window.avatarcamCreate = create; // for tests and the console

// ---- what the page shows ----

function setStep(step) {
  document.body.dataset.step = step;
  $("step-pill").textContent = STEP_NAMES[step] ?? step;
}

/** One clear message for whatever went wrong; null clears it. */
function showError(err) {
  const node = $("error");
  if (err == null) {
    node.hidden = true;
    node.textContent = "";
    delete node.dataset.status;
    return;
  }
  let text;
  if (err instanceof HttpError) {
    text = err.message;
    if (err.status === 401) text = `${text} (open /create from the operator's link, the one with ?token=)`;
    node.dataset.status = String(err.status);
  } else if (err instanceof TypeError) {
    text = "The service is unreachable: check that avatarcam is still running, then try again.";
    node.dataset.status = "network";
  } else {
    text = err.message ?? String(err);
    node.dataset.status = "page";
  }
  node.textContent = text;
  node.hidden = false;
}

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

// ---- the camera ----

async function openCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("This page needs a camera, which browsers give only to https:// pages or localhost.");
  }
  if (document.body.dataset.step === "loading") setStep("camera");
  try {
    create.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280, min: 320 }, height: { ideal: 720, min: 240 }, frameRate: { ideal: 30 } },
      audio: false,
    });
  } catch (err) {
    const denied = err.name === "NotAllowedError" || err.name === "SecurityError";
    throw new Error(
      denied
        ? "Camera access was refused: allow the camera for this site in the browser's settings and reload, or upload a video file."
        : `No camera could be opened (${err.name}): connect one or close the app that holds it and reload, or upload a video file.`,
    );
  }
  const video = $("camera");
  video.srcObject = create.stream;
  video.play().catch(() => {});
  const { width, height, frameRate } = cameraTrack().getSettings();
  $("camera-info").textContent = `${width}×${height} at ${Math.round(frameRate ?? 0)} fps`;
  if (width < 1280 || height < 720) {
    $("camera-info").textContent += " (below 1280×720: the avatar will be less sharp)";
  }
}

function cameraTrack() {
  return create.stream.getVideoTracks()[0];
}

// ---- the coach: a low-rate preview over WebRTC, answered on the "coach" data channel ----

async function startCoach() {
  stopCoach();
  const pc = new RTCPeerConnection({ iceServers: [] });
  const channel = pc.createDataChannel("coach");
  const coach = { pc, channel };
  create.coach = coach;
  channel.onmessage = (e) => {
    if (create.coach !== coach) return;
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return;
    }
    create.coachMessages += 1;
    create.last = msg;
    showCoach(msg);
  };
  const track = cameraTrack();
  const scale = Math.max(1, (track.getSettings().width ?? PREVIEW_WIDTH) / PREVIEW_WIDTH);
  const encoding = { maxFramerate: PREVIEW_FPS, scaleResolutionDownBy: scale, maxBitrate: 800_000 };
  const transceiver = pc.addTransceiver(track, { direction: "sendonly", sendEncodings: [encoding] });
  pc.onconnectionstatechange = () => {
    if (create.coach === coach && pc.connectionState === "failed") $("coach-note").textContent = "The coach's connection failed: the recording goes on without coaching.";
  };
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  const { sdp, type } = pc.localDescription;
  // The recording's height lets the coach judge the face's size in the recording, not the preview.
  const answer = await api("/api/create/coach", { sdp, type, height: track.getSettings().height });
  if (create.coach !== coach) return;
  await pc.setRemoteDescription(answer);
  // Browsers may drop sendEncodings given to addTransceiver: set the low rate on the sender too.
  const parameters = transceiver.sender.getParameters();
  if (parameters.encodings?.length) {
    Object.assign(parameters.encodings[0], encoding);
    await transceiver.sender.setParameters(parameters).catch(() => {});
  }
  $("coach-note").textContent = `The coach watches ${PREVIEW_FPS} frames a second at ${Math.round(track.getSettings().width / scale)} px wide.`;
}

function stopCoach() {
  if (!create.coach) return;
  create.coach.channel.onmessage = null;
  create.coach.pc.close();
  create.coach = null;
}

function showCoach(msg) {
  const framing = [...(msg.framing ?? [])];
  if (!msg.face && !framing.length) framing.push("No face in view: look into the camera.");
  $("framing").innerHTML = framing.map((f) => `<li>${escapeHtml(f)}</li>`).join("");
  $("framing").dataset.count = String(framing.length);
  showCoverage(msg.coverage, msg.fraction);
  for (const [key] of EXPRESSIONS) {
    const value = Math.min(1, Math.max(0, msg.expressions?.[key] ?? 0));
    const bar = document.querySelector(`#bars [data-key=${key}]`);
    bar.dataset.value = String(value);
    bar.querySelector("b > span").style.width = `${(100 * value).toFixed(0)}%`;
  }
  if (msg.enough && create.recording) {
    $("coach-note").textContent = "Enough: every pose and expression is covered. The recording stops here.";
    stopRecording();
  }
}

function showCoverage(coverage, fraction) {
  const grid = $("pose-grid");
  const rows = coverage?.filled ?? [];
  const columns = rows[0]?.length ?? 0;
  grid.style.gridTemplateColumns = `repeat(${columns}, 1fr)`;
  if (grid.children.length !== rows.length * columns) {
    grid.replaceChildren(...Array.from({ length: rows.length * columns }, () => document.createElement("i")));
  }
  let filled = 0;
  rows.forEach((row, r) =>
    row.forEach((on, c) => {
      // Yaw > 0 is the face turned to the person's left; mirrored like the preview, that is the left.
      const cell = grid.children[r * columns + (columns - 1 - c)];
      cell.classList.toggle("on", Boolean(on));
      filled += on ? 1 : 0;
    }),
  );
  grid.dataset.filled = String(filled);
  $("coverage").dataset.value = String(fraction ?? "");
  $("coverage").textContent = fraction == null ? "–" : `${Math.round(100 * fraction)} % covered`;
}

function resetCoach() {
  showCoverage(null, null);
  for (const bar of $("bars").children) {
    bar.dataset.value = "0";
    bar.querySelector("b > span").style.width = "0%";
  }
}

function drawBars() {
  $("bars").innerHTML = EXPRESSIONS.map(
    ([key, label]) => `<div class="bar-row" data-key="${key}" data-value="0"><span class="label">${label}</span><b><span></span></b></div>`,
  ).join("");
}

// ---- recording and the uploader ----

class Uploader {
  /** Sends `blob` to upload `id` in pieces; after a refused offset (409) or a lost connection it
   * goes on from the byte the service says it holds. */
  constructor(id, blob, onProgress) {
    this.id = id;
    this.blob = blob;
    this.total = blob.size;
    this.onProgress = onProgress;
    this.received = 0; // bytes the service holds
    this.retries = 0; // connection losses survived
  }

  async run() {
    const path = `/api/create/uploads/${encodeURIComponent(this.id)}`;
    this.onProgress(this, null);
    while (this.received < this.total) {
      const start = this.received;
      const piece = this.blob.slice(start, Math.min(this.total, start + create.putBytes));
      try {
        this.received = (await request("PUT", `${path}?offset=${start}`, piece)).received;
      } catch (err) {
        if (err instanceof HttpError && err.status === 409 && Number.isFinite(err.data?.received)) {
          this.received = err.data.received; // the service holds a different amount: go on from there
        } else if (err instanceof TypeError || (err instanceof HttpError && err.status >= 502 && err.status <= 504)) {
          this.retries += 1;
          this.onProgress(this, `connection lost, resuming (attempt ${this.retries})`);
          await new Promise((r) => setTimeout(r, Math.min(8000, 500 * 2 ** Math.min(4, this.retries - 1))));
          try {
            this.received = (await api(path)).received;
          } catch {
            // still unreachable: the next round tries again
          }
          continue;
        } else {
          throw err;
        }
      }
      this.onProgress(this, null);
    }
    return this.received;
  }
}

function showUpload(uploader, trouble) {
  const node = $("upload");
  node.dataset.received = String(uploader.received);
  node.dataset.total = String(uploader.total);
  node.dataset.retries = String(uploader.retries);
  node.textContent = `uploaded ${megabytes(uploader.received)} of ${megabytes(uploader.total)}${trouble ? `: ${trouble}` : ""}`;
}

function recorderType() {
  return RECORDER_TYPES.find((t) => window.MediaRecorder?.isTypeSupported(t)) ?? "";
}

/** About 0.25 bit per pixel: high quality for a webcam, from 2.5 to 16 Mbit/s. */
function recorderBitrate() {
  const { width = 1280, height = 720, frameRate = 30 } = cameraTrack().getSettings();
  return Math.round(Math.min(16e6, Math.max(2.5e6, width * height * frameRate * 0.25)));
}

async function startRecording() {
  showError(null);
  const type = recorderType();
  if (!type) return showError(new Error("This browser cannot record video (no MediaRecorder): use a current Chrome, Edge or Firefox, or upload a video file."));
  const bitrate = recorderBitrate();
  const maxSeconds = create.info?.max_seconds ?? 180;
  const maxBytes = create.info?.max_upload_bytes ?? Infinity;
  startCoach().catch(coachFailed); // a fresh coach: coverage counts this recording only
  resetCoach();
  const recorder = new MediaRecorder(create.stream, { mimeType: type, videoBitsPerSecond: bitrate });
  // The pieces stay in memory until the end: the service takes an upload of a declared size.
  const recording = { started: performance.now(), bytes: 0, chunks: [], type, bitrate };
  recorder.ondataavailable = (e) => {
    if (!e.data.size) return;
    recording.chunks.push(e.data);
    recording.bytes += e.data.size;
    $("upload").textContent = `recorded ${megabytes(recording.bytes)}`;
    if (recording.bytes > maxBytes * 0.97 && create.recording === recording) {
      $("coach-note").textContent = "The recording reached the service's size limit: it stops here.";
      stopRecording();
    }
  };
  recorder.onstop = () => {
    create.recorded = recording;
    const blob = new Blob(recording.chunks, { type });
    recording.chunks = [];
    uploadBlob(blob, type);
  };
  create.recorder = recorder;
  create.recording = recording;
  create.upload = null;
  recorder.start(CHUNK_MS);
  recording.timer = setInterval(() => {
    const elapsed = (performance.now() - recording.started) / 1000;
    $("rec-time").textContent = `${clock(elapsed)} / ${clock(maxSeconds)}`;
    $("rec-time").dataset.seconds = elapsed.toFixed(1);
    if (elapsed >= maxSeconds) {
      $("coach-note").textContent = `${clock(maxSeconds)} reached: the recording stops here.`;
      stopRecording();
    }
  }, 250);
  $("rec-time").dataset.recording = "true";
  $("record").hidden = true;
  $("stop").hidden = false;
  $("file").disabled = true;
  $("train").disabled = true;
  setStep("recording");
}

function stopRecording() {
  const recording = create.recording;
  if (!recording) return;
  create.recording = null;
  clearInterval(recording.timer);
  recording.seconds = (performance.now() - recording.started) / 1000;
  $("rec-time").dataset.recording = "false";
  $("stop").hidden = true;
  $("record").hidden = false;
  $("record").disabled = true; // until the upload is through
  $("file").disabled = true;
  create.recorder.stop(); // its last piece arrives before onstop, which uploads
  stopCoach(); // the last advice stays on the page; the tracker's CPU goes back to the service
  setStep("uploading");
}

/** Upload a recording or a chosen file; on success the training form takes it. */
async function uploadBlob(blob, type) {
  showError(null);
  setStep("uploading");
  $("record").disabled = true;
  $("file").disabled = true;
  $("train").disabled = true;
  try {
    const { upload } = await api("/api/create/uploads", { bytes: blob.size, type: type || "application/octet-stream" });
    const uploader = new Uploader(upload, blob, showUpload);
    create.uploader = uploader;
    await uploader.run();
    create.upload = upload;
    $("train").disabled = false;
    setStep("uploaded");
  } catch (err) {
    showError(err);
    setStep("ready");
  } finally {
    $("record").disabled = !create.stream;
    $("file").disabled = false;
    $("file").value = "";
  }
}

// ---- the training job ----

async function startJob(event) {
  event.preventDefault();
  if (!create.upload) return;
  showError(null);
  $("train").disabled = true;
  const body = {
    upload: create.upload,
    minutes: Number.parseFloat($("minutes").value),
    preset: $("preset").value || undefined,
    keep_video: $("keep-video").checked,
  };
  try {
    const job = await api("/api/create/jobs", body);
    create.upload = null; // the job owns it now
    follow(job);
    $("train-step").scrollIntoView({ block: "start" });
  } catch (err) {
    showError(err);
    if (err instanceof HttpError && err.status === 415) {
      create.upload = null; // not a video: record again or choose another file
      setStep("ready");
    } else $("train").disabled = false;
  }
}

function follow(job) {
  create.jobId = job.id;
  create.lastCheckpoints = -1;
  localStorage.setItem(JOB_KEY, job.id);
  const url = new URL(location.href);
  url.searchParams.set("job", job.id);
  history.replaceState(history.state, "", url);
  showJob(job);
  schedulePoll();
}

function schedulePoll() {
  clearTimeout(create.pollTimer);
  create.pollTimer = setTimeout(poll, POLL_MS);
}

async function poll() {
  const id = create.jobId;
  if (!id) return;
  try {
    const job = await api(`/api/create/jobs/${encodeURIComponent(id)}`);
    if (id !== create.jobId) return;
    if ($("error").dataset.status === "network") showError(null); // the service is back
    showJob(job);
  } catch (err) {
    if (err instanceof HttpError && err.status === 404) {
      forgetJob();
      return showError(new Error(`The service no longer knows job ${id}: record again or upload a video.`));
    }
    showError(err); // e.g. the service restarting: keep asking
  }
  if (!create.job || ACTIVE.has(create.job.state)) schedulePoll();
}

function forgetJob() {
  create.jobId = null;
  create.job = null;
  localStorage.removeItem(JOB_KEY);
  const url = new URL(location.href);
  url.searchParams.delete("job");
  history.replaceState(history.state, "", url);
  $("job").hidden = true;
}

function showJob(job) {
  const previous = create.job;
  create.job = job;
  $("job").hidden = false;
  $("job").dataset.id = job.id;
  $("job-state").textContent = job.state;
  $("job-state").dataset.state = job.state;
  $("job-stage").textContent = job.stage || job.state;
  $("job-progress").value = job.progress ?? 0;
  $("job-percent").textContent = `${Math.round(100 * (job.progress ?? 0))} %`;
  $("job-eta").dataset.value = job.eta_s ?? "";
  $("job-eta").textContent = job.eta_s == null ? "" : `about ${clock(job.eta_s)} left of a ${job.minutes} min budget`;
  const position = job.position;
  $("job-position").textContent =
    position == null ? "" : position === 0 ? "" : `in the queue: position ${position} (this machine trains one avatar at a time)`;
  $("job-position").dataset.value = position ?? "";
  $("cancel").hidden = !ACTIVE.has(job.state);
  $("job-warnings").innerHTML = (job.warnings ?? []).map((w) => `<li>${escapeHtml(w)}</li>`).join("");
  if (job.state === "failed" && job.error) showError(new Error(job.error));
  showCheckpoints(job.checkpoints ?? []);
  showSample(job);
  showConsent(job);
  const step = job.state === "consent" ? "consent" : ACTIVE.has(job.state) ? "training" : job.state;
  if (!create.recording && document.body.dataset.step !== "uploading") setStep(step);
  if (job.state === "done" && previous?.state !== "done") refreshAvatars();
  if (previous && job.state !== previous.state && ["consent", "done"].includes(job.state)) {
    $(job.state === "done" ? "live-step" : "consent-step").scrollIntoView({ block: "start" });
  }
}

function showCheckpoints(points) {
  if (points.length === create.lastCheckpoints) return;
  create.lastCheckpoints = points.length;
  const cell = (v, digits) => (v == null ? "–" : v.toFixed(digits));
  $("checkpoints").tBodies[0].innerHTML = points
    .map((p) => {
      const better = p.lpips != null && p.baseline_lpips != null && p.lpips < p.baseline_lpips;
      return `<tr data-step="${p.step}"><td>${p.step}</td><td>${cell(p.seconds / 60, 1)}</td><td class="${better ? "better" : ""}">${cell(p.lpips, 3)}</td><td>${cell(p.baseline_lpips, 3)}</td></tr>`;
    })
    .join("");
  drawLpips(points);
}

/** LPIPS per checkpoint (solid) against the mean-frame baseline (dashed), over training minutes. */
function drawLpips(points) {
  const svg = $("lpips-plot");
  const shown = points.filter((p) => p.lpips != null);
  if (!shown.length) {
    svg.innerHTML = "";
    return;
  }
  const [w, h, pad] = [300, 120, 28];
  const tMax = Math.max(...shown.map((p) => p.seconds), 1);
  const vMax = Math.max(...shown.flatMap((p) => [p.lpips, p.baseline_lpips ?? 0])) * 1.1 || 1;
  const x = (t) => pad + (t / tMax) * (w - pad - 6);
  const y = (v) => h - 16 - (v / vMax) * (h - 26);
  const line = (key) => shown.filter((p) => p[key] != null).map((p) => `${x(p.seconds).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
  const dot = (p, key) => `<circle cx="${x(p.seconds).toFixed(1)}" cy="${y(p[key]).toFixed(1)}" r="2.5"/>`;
  const dots = shown.map((p) => dot(p, "lpips")).join("");
  const marks = shown.filter((p) => p.baseline_lpips != null).map((p) => dot(p, "baseline_lpips")).join("");
  svg.innerHTML = `
    <line class="axis" x1="${pad}" y1="${h - 16}" x2="${w - 6}" y2="${h - 16}"/>
    <text x="${pad - 4}" y="${y(vMax / 1.1) + 4}" text-anchor="end">${(vMax / 1.1).toFixed(2)}</text>
    <text x="${pad - 4}" y="${h - 12}" text-anchor="end">0</text>
    <text x="${w - 6}" y="${h - 2}" text-anchor="end">${(tMax / 60).toFixed(1)} min</text>
    <polyline class="baseline" points="${line("baseline_lpips")}"/>
    <polyline class="lpips" points="${line("lpips")}"/>
    <g class="lpips">${dots}</g>
    <g class="baseline-dots">${marks}</g>
    <text class="legend-lpips" x="${pad + 4}" y="12">LPIPS</text>
    <text class="legend-baseline" x="${pad + 54}" y="12">mean frame</text>`;
}

function showSample(job) {
  if (!job.sample) return;
  const now = performance.now();
  const changed = (job.checkpoints?.length ?? 0) !== Number($("sample").dataset.checkpoints ?? -1);
  if (!changed && now - create.sampleShown < SAMPLE_EVERY_MS && !$("sample").hidden) return;
  create.sampleShown = now;
  const img = $("sample");
  img.dataset.checkpoints = String(job.checkpoints?.length ?? 0);
  img.onload = () => {
    img.hidden = false;
    $("sample-note").textContent = "The newest sample: real frames above, the avatar's pictures of them below.";
  };
  img.src = `/api/create/jobs/${encodeURIComponent(job.id)}/sample.jpg?t=${Date.now()}`;
}

async function cancelJob() {
  if (!create.job) return;
  showError(null);
  try {
    showJob(await api(`/api/create/jobs/${encodeURIComponent(create.job.id)}/cancel`, {}));
  } catch (err) {
    showError(err);
  }
}

// ---- consent ----

function showConsent(job) {
  const open = job && !job.consent_given && ["queued", "preparing", "training", "consent"].includes(job.state);
  $("give-consent").disabled = !open;
  $("consent-state").dataset.given = String(Boolean(job?.consent_given));
  $("consent-state").textContent = !job
    ? "Start a training first."
    : job.consent_given
      ? "Consent given: it is stored in the avatar."
      : open
        ? job.state === "consent"
          ? "Training is done: the avatar is exported as soon as consent is given."
          : "You can give consent now; the avatar is exported after training."
        : "";
  document.body.dataset.consent = job?.consent_given ? "given" : job?.state === "consent" ? "waiting" : "";
}

async function giveConsent(event) {
  event.preventDefault();
  if (!create.job) return;
  showError(null);
  const body = { subject: $("subject").value.trim(), consent: $("consent-text").value.trim(), agree: $("agree").checked };
  try {
    showJob(await api(`/api/create/jobs/${encodeURIComponent(create.job.id)}/consent`, body));
    if (ACTIVE.has(create.job.state)) schedulePoll();
  } catch (err) {
    showError(err);
  }
}

// ---- going live ----

async function refreshAvatars() {
  try {
    create.info = await api("/api/create/info");
  } catch (err) {
    return showError(err);
  }
  showAvatars(create.info.avatars ?? []);
}

function showAvatars(names) {
  const made = create.job?.state === "done" ? create.job.avatar : null;
  $("avatars").innerHTML = names
    .map((name) => {
      const safe = escapeHtml(name);
      const tag = name === made ? ' <span class="pill new">new</span>' : "";
      const live = name === create.live ? ` <a href="/?avatar=${encodeURIComponent(name)}" class="open-live">open it live</a>` : "";
      return `<li data-avatar="${safe}"><span class="name">${safe}</span>${tag}<button type="button" data-live="${safe}">Go live</button>${live}</li>`;
    })
    .join("");
}

async function goLive(name) {
  showError(null);
  try {
    await api("/api/control", { action: "avatar", value: name });
  } catch (err) {
    return showError(err);
  }
  create.live = name;
  showAvatars(create.info?.avatars ?? []);
  const state = $("live-state");
  state.hidden = false;
  state.dataset.avatar = name;
  state.innerHTML = `The service's stream now shows <b>${escapeHtml(name)}</b>: <a href="/?avatar=${encodeURIComponent(name)}">open the live page</a>.`;
}

// ---- start ----

function coachFailed(err) {
  $("coach-note").textContent = `No coaching: ${err.message}`;
}

function fillInfo(info) {
  const maxSeconds = info.max_seconds ?? 180;
  $("rec-time").textContent = `0:00 / ${clock(maxSeconds)}`;
  if (info.suggested_minutes != null) {
    $("minutes").value = String(info.suggested_minutes);
    $("suggestion").textContent = `suggested for this machine: ${info.suggested_minutes} min`;
  }
  $("preset").innerHTML = (info.presets ?? []).map((p) => `<option>${escapeHtml(p)}</option>`).join("");
  if (info.preset) $("preset").value = info.preset;
  $("upload").title = `at most ${megabytes(info.max_upload_bytes ?? 0)} per video`;
  showAvatars(info.avatars ?? []);
}

async function start() {
  drawBars();
  showCoverage(null, null);
  showConsent(null);
  $("record").addEventListener("click", startRecording);
  $("stop").addEventListener("click", stopRecording);
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) uploadBlob(file, file.type);
  });
  $("train-form").addEventListener("submit", startJob);
  $("cancel").addEventListener("click", cancelJob);
  $("consent-form").addEventListener("submit", giveConsent);
  $("avatars").addEventListener("click", (e) => {
    const name = e.target.closest?.("button[data-live]")?.dataset.live;
    if (name) goLive(name);
  });
  window.addEventListener("pagehide", () => {
    stopCoach();
    for (const t of create.stream?.getTracks() ?? []) t.stop();
  });

  try {
    create.info = await api("/api/create/info");
  } catch (err) {
    setStep("failed");
    return showError(err);
  }
  fillInfo(create.info);
  if (create.jobId) await poll();
  // Whatever happened meanwhile (a file chosen, a job found) keeps its step.
  const settle = () => ["loading", "camera"].includes(document.body.dataset.step) && setStep("ready");
  try {
    await openCamera();
  } catch (err) {
    settle();
    if ($("error").hidden) showError(err); // a refusal shown meanwhile says more
    return;
  }
  settle();
  $("record").disabled = ["uploading", "recording"].includes(document.body.dataset.step);
  if (create.job && ACTIVE.has(create.job.state)) {
    $("coach-note").textContent = "The coach starts with the next recording (a training is running).";
    return;
  }
  startCoach().catch(coachFailed); // framing advice before the recording starts
}

start();
