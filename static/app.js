// The page: choose a file, build a pipeline, upload with the socket's id, then
// follow the task over Socket.IO (progress, waveform, spectrum, meters, the pool's
// workers, playback with A/B against the original) to its end: complete (summary,
// zoomable waveform and download), stopped (partial result) or failed. The tasks
// of this browser are listed, and a reload takes the running one up again.

import * as fmt from "./format.js";
import { PipelineEditor } from "./pipeline.js";
import { StreamPlayer } from "./player.js";
import { RecentTasks } from "./recent.js";
import { ResultView } from "./result.js";
import { LevelMeters, SpectrumView, WaveformView } from "./scopes.js";
import { WorkerLanes } from "./workers.js";

const $ = (id) => document.getElementById(id);

const FORMAT_LABELS = {
  wav: "WAV (16-bit PCM)",
  flac: "FLAC (lossless)",
  mp3: "MP3 (VBR, about 190 kbit/s)",
  ogg: "Ogg Vorbis",
  opus: "Opus (48 kHz)",
};
const CHUNK_CHOICES = [0.25, 0.5, 1, 2, 5, 10, 20, 30, 60];
const QUIET_MS = 1500; // ask the server about the task when the stream is quiet this long
const AB_MAX_BYTES = 100e6; // larger files are not decoded in the browser for A/B
const TERMINAL = new Set(["completed", "stopped", "failed"]);
const BUSY = new Set(["uploading", "processing", "stopping"]);
const PHASE_WORDS = {
  loading: "Loading",
  idle: "Idle",
  ready: "Ready",
  uploading: "Uploading",
  processing: "Processing",
  stopping: "Stopping",
  complete: "Complete",
  stopped: "Stopped",
  failed: "Failed",
};

const ui = {
  form: $("job"),
  controls: $("setup-controls"),
  fileInput: $("file"),
  dropzone: $("dropzone"),
  facts: $("file-facts"),
  chunkSeconds: $("chunk-seconds"),
  format: $("format"),
  listen: $("listen"),
  process: $("process"),
  stop: $("stop"),
  status: $("status"),
  badge: $("phase-badge"),
  connection: $("connection"),
  connectionText: $("connection-text"),
  progress: $("progress"),
  progressLabel: $("progress-label"),
  progressPercent: $("progress-percent"),
  pause: $("pause"),
  volume: $("volume"),
  playbackStatus: $("playback-status"),
  result: $("result"),
  download: $("download"),
  resultAudio: $("result-audio"),
  ab: $("ab"),
  abStatus: $("ab-status"),
};

const editor = new PipelineEditor({
  list: $("steps"),
  empty: $("steps-empty"),
  addSelect: $("add-step-select"),
  addButton: $("add-step"),
  addHint: $("add-step-hint"),
  presets: $("presets"),
  clear: $("clear-steps"),
  error: $("pipeline-error"),
  announce: $("pipeline-announce"),
});
const player = new StreamPlayer({ onChange: () => showPlayback() });
const waveform = new WaveformView($("waveform"), $("overview"));
const spectrum = new SpectrumView($("spectrum"));
const meters = new LevelMeters($("meters"), {
  peak: $("meter-peak"),
  rms: $("meter-rms"),
  max: $("meter-max"),
  clip: $("clip"),
});
const lanes = new WorkerLanes($("workers"));
const resultView = new ResultView({
  figure: $("result-wave"),
  zoomview: $("result-zoomview"),
  overview: $("result-overview"),
  zoomIn: $("zoom-in"),
  zoomOut: $("zoom-out"),
  fit: $("zoom-fit"),
  note: $("result-wave-note"),
  audio: $("result-audio"),
});
const recent = new RecentTasks({
  list: $("recent-list"),
  empty: $("recent-empty"),
  clear: $("recent-clear"),
});

/** Everything the page knows about the current run. */
const run = {
  phase: "loading",
  file: null,
  maxUploadBytes: null, // from GET /pipeline/steps: larger files are refused before uploading
  task: null, // the upload's answer (task JSON)
  xhr: null,
  uploadSid: null,
  early: [], // events that came before the upload's answer
  nextIndex: 0,
  chunksTotal: null,
  indexes: [],
  duplicates: 0,
  levels: [], // per chunk: {start, end, peak, rms, spectrum}
  audioDone: 0,
  startedAt: null,
  finishedAt: null,
  terminal: null,
  subscribedSid: null,
  subscribing: null, // the subscribe waiting for its ack
  subscribes: [],
  resynced: false,
  lastEventAt: 0,
  polling: false,
  firstPass: null, // overall progress while a first pass measures (no chunk yet)
  progress: null, // the latest processing_progress
  progressLog: [], // what each processing_progress showed (for tests)
  playFrom: 0, // chunks before this index are not played (heard before a reload)
  heard: 0, // the chunk being heard, as last remembered for a reload
  resumed: null, // {taskId, heard} when a reload took the task up again
  original: "none", // the original for A/B: none, decoding, ready, unavailable
  originalWhy: "", // why it is unavailable
  soundAt: null, // when playback was first heard
  chunksAtSound: null,
  phaseAtSound: null,
  terminalAt: null,
};
let socket = null;
let connects = 0;
let disconnects = 0;
let retryUntil = 0;

// -- small helpers ---------------------------------------------------------------

function say(message) {
  ui.status.textContent = message;
}

function fieldError(name, message) {
  const slot = $(`${name}-error`);
  if (slot) slot.textContent = message;
  const control = { file: ui.fileInput, "chunk-seconds": ui.chunkSeconds, format: ui.format }[name];
  if (control) {
    if (message) control.setAttribute("aria-invalid", "true");
    else control.removeAttribute("aria-invalid");
  }
  if (name === "file") ui.dropzone.classList.toggle("invalid", Boolean(message));
}

function clearErrors() {
  for (const name of ["file", "chunk-seconds", "format", "stream_audio", "process"])
    fieldError(name, "");
  editor.clearErrors();
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  return { status: response.status, ok: response.ok, body };
}

function setPhase(phase) {
  run.phase = phase;
  const busy = BUSY.has(phase);
  ui.badge.textContent = PHASE_WORDS[phase];
  ui.badge.dataset.phase = phase;
  document.body.dataset.phase = phase;
  ui.controls.disabled = busy || phase === "loading";
  ui.process.disabled = busy || phase === "loading" || Date.now() < retryUntil;
  ui.stop.disabled = !(phase === "uploading" || phase === "processing");
  showPlayback();
}

// -- setting up --------------------------------------------------------------------

async function init() {
  wireControls();
  connectSocket();
  setPhase("loading");
  let catalogue;
  try {
    const answer = await getJSON("/pipeline/steps");
    if (!answer.ok) throw new Error(answer.body?.message ?? `status ${answer.status}`);
    catalogue = answer.body;
  } catch (error) {
    say(`Could not load the step catalogue (${error.message}). Reload the page to try again.`);
    return;
  }
  editor.setCatalogue(catalogue);
  run.maxUploadBytes = catalogue.max_upload_bytes ?? null;
  const start = catalogue.default_pipeline ?? "";
  editor.load(
    start
      ? [{ step: start }].filter((entry) => catalogue.steps.some((s) => s.name === entry.step))
      : [],
  );
  fillOutputChoices(catalogue);
  setPhase("idle");
  say("Choose an audio file to begin.");
  requestAnimationFrame(frame);
  const following = recent.current;
  await recent.refresh();
  if (following) await takeUp(following);
}

/** After a reload: take up the live view of the task this page followed, if it still runs. */
async function takeUp({ task_id: taskId, heard }) {
  const answer = await getJSON(`/tasks/${taskId}`).catch(() => null);
  if (!answer?.ok || TERMINAL.has(answer.body.status)) {
    recent.unfollow(taskId);
    return;
  }
  if (run.phase !== "idle") return; // a file was chosen meanwhile: that comes first
  const task = answer.body;
  resetRun();
  run.resumed = { taskId, heard };
  run.playFrom = heard; // what was heard before the reload is not played again
  $("fact-name").textContent = task.filename;
  $("fact-size").textContent = "—";
  ui.facts.hidden = false;
  accepted(task);
  say(
    `Took up ${task.filename} after the reload: the chunks so far are replayed, ` +
      `and listening goes on from chunk ${heard + 1}.`,
  );
}

function fillOutputChoices(catalogue) {
  const { min, max, default: chosen } = catalogue.chunk_seconds;
  const choices = [...new Set([...CHUNK_CHOICES, chosen])]
    .filter((s) => s >= min && s <= max)
    .sort((a, b) => a - b);
  ui.chunkSeconds.replaceChildren(
    ...choices.map(
      (seconds) => new Option(`${seconds} s`, String(seconds), false, seconds === chosen),
    ),
  );
  const formats = Object.keys(catalogue.formats);
  ui.format.replaceChildren(
    ...formats.map(
      (name, i) => new Option(FORMAT_LABELS[name] ?? name.toUpperCase(), name, false, i === 0),
    ),
  );
}

function wireControls() {
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  ui.stop.addEventListener("click", () => stop());
  ui.fileInput.addEventListener("change", () => {
    if (ui.fileInput.files.length) chooseFile(ui.fileInput.files[0]);
  });
  wireDropzone();
  ui.chunkSeconds.addEventListener("change", () => fieldError("chunk-seconds", ""));
  ui.format.addEventListener("change", () => fieldError("format", ""));
  ui.pause.addEventListener("click", () => {
    if (player.blocked) player.unblock();
    else player.setPaused(!player.paused);
  });
  ui.volume.addEventListener("input", () => player.setVolume(Number(ui.volume.value)));
  ui.ab.addEventListener("change", (event) => {
    player.listenTo(event.target.value);
    showAB();
  });
}

function wireDropzone() {
  const zone = ui.dropzone;
  let depth = 0;
  const accepts = () => !BUSY.has(run.phase) && run.phase !== "loading";
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    if (accepts()) zone.classList.add("dragging");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = accepts() ? "copy" : "none";
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (file && accepts()) chooseFile(file);
  });
  // A file dropped beside the zone must not make the browser leave the page.
  for (const name of ["dragover", "drop"])
    window.addEventListener(name, (event) => event.preventDefault());
}

function chooseFile(file) {
  run.file = file;
  fieldError("file", "");
  ui.facts.hidden = false;
  $("fact-name").textContent = file.name;
  $("fact-size").textContent = fmt.bytes(file.size);
  for (const id of ["fact-duration", "fact-rate", "fact-channels", "fact-codec"])
    $(id).textContent = "after upload";
  editor.setSampleRate(null);
  if (!BUSY.has(run.phase)) setPhase("ready");
  say(`${file.name} chosen. Build the pipeline, then press Process.`);
}

function showFacts(task) {
  const input = task.input ?? {};
  $("fact-duration").textContent = fmt.clock(input.duration ?? task.duration);
  $("fact-rate").textContent = fmt.rate(input.sample_rate ?? task.sample_rate);
  $("fact-channels").textContent = fmt.channels(input.channels ?? task.channels);
  $("fact-codec").textContent = input.codec ?? "—";
}

// -- the live channel ----------------------------------------------------------------

function connectSocket() {
  if (typeof window.io !== "function") {
    showConnection(
      "offline",
      "No live channel: socket.io.min.js is missing (run scripts/setup.sh)",
    );
    return;
  }
  socket = window.io({ reconnectionDelay: 500, reconnectionDelayMax: 4000 });
  socket.on("connect", () => {
    connects += 1;
    showConnection("connected", "Live");
    if (isActive() && connects > 1) say(`Reconnected: resuming from chunk ${run.nextIndex + 1}.`);
    ensureSubscribed();
  });
  socket.on("disconnect", (reason) => {
    disconnects += 1;
    run.subscribedSid = null;
    run.subscribing = null;
    showConnection("reconnecting", "Reconnecting…");
    if (isActive())
      say(`Connection lost (${reason}). Reconnecting… the server carries on meanwhile.`);
  });
  socket.on("connect_error", () =>
    showConnection("reconnecting", "Cannot reach the server; retrying…"),
  );
  for (const name of [
    "audio_chunk",
    "processing_progress",
    "processing_complete",
    "processing_stopped",
    "processing_error",
  ]) {
    socket.on(name, (data) => route(name, data));
  }
}

function showConnection(state, text) {
  ui.connection.dataset.state = state;
  ui.connectionText.textContent = text;
}

function isActive() {
  return Boolean(run.task) && !run.terminal;
}

/** Subscribe this connection to the task, from the next chunk the page needs. */
function ensureSubscribed() {
  if (!isActive() || !socket?.connected || run.subscribedSid === socket.id) return;
  if (run.subscribing?.sid === socket.id) return; // asked already; a second ask would replay twice
  subscribe(run.nextIndex);
}

function subscribe(fromIndex) {
  const record = { from_index: fromIndex, sid: socket.id, ok: null };
  run.subscribes.push(record);
  run.subscribing = record;
  const taskId = run.task.task_id;
  socket
    .timeout(10000)
    .emit("subscribe", { task_id: taskId, from_index: fromIndex }, (error, ack) => {
      if (run.subscribing === record) run.subscribing = null;
      if (run.task?.task_id !== taskId) return;
      if (error) {
        record.ok = false; // no answer: the next connect or the quiet-stream check tries again
        return;
      }
      record.ok = ack.ok;
      if (ack.ok) run.subscribedSid = record.sid;
      else if (ack.error === "task_not_found")
        fail("The task is gone from the server (deleted, or the server restarted).");
      else record.error = ack.error;
    });
}

function route(name, data) {
  if (run.phase === "uploading" && !run.task) {
    run.early.push([name, data]); // the server may stream before the upload's answer arrives
    return;
  }
  if (data.task_id !== run.task?.task_id) {
    stopOrphan(name, data.task_id);
    return;
  }
  if (run.terminal) return;
  run.lastEventAt = performance.now();
  if (name === "audio_chunk") onChunk(data);
  else if (name === "processing_progress") onProgress(data);
  else if (name === "processing_complete") onComplete(data);
  else if (name === "processing_stopped") onStopped(data);
  else onFailed(data);
}

/**
 * Chunks of a task the page does not follow come from an upload cancelled just as
 * the server accepted it (only this page's uploads name this socket): stop that task.
 */
const orphans = new Set();
function stopOrphan(name, taskId) {
  if (name !== "audio_chunk" || orphans.has(taskId)) return;
  orphans.add(taskId);
  askToStop(taskId);
}

// -- processing ------------------------------------------------------------------------

function resetRun() {
  Object.assign(run, {
    task: null,
    xhr: null,
    early: [],
    nextIndex: 0,
    chunksTotal: null,
    indexes: [],
    duplicates: 0,
    levels: [],
    audioDone: 0,
    startedAt: null,
    finishedAt: null,
    terminal: null,
    subscribedSid: null,
    subscribing: null,
    subscribes: [],
    resynced: false,
    firstPass: null,
    progress: null,
    progressLog: [],
    playFrom: 0,
    heard: 0,
    resumed: null,
    original: "none",
    originalWhy: "",
    soundAt: null,
    chunksAtSound: null,
    phaseAtSound: null,
    terminalAt: null,
  });
  player.close();
  player.reset();
  waveform.reset(0);
  meters.reset();
  lanes.reset(0);
  resultView.reset();
  ui.result.hidden = true;
  ui.resultAudio.removeAttribute("src");
  ui.resultAudio.load();
  $("ab-processed").checked = true;
  showAB();
  ui.progress.value = 0;
  ui.progressLabel.textContent = "Progress";
  ui.progressPercent.textContent = "0 %";
  for (const id of ["stat-chunks", "stat-audio", "stat-elapsed", "stat-speed"])
    $(id).textContent = "—";
}

async function start() {
  if (BUSY.has(run.phase) || run.phase === "loading") return;
  clearErrors();
  if (!run.file) {
    fieldError("file", "Choose an audio file first: use the button or drop a file on the zone.");
    ui.fileInput.focus();
    say("No file chosen yet.");
    return;
  }
  if (run.maxUploadBytes && run.file.size > run.maxUploadBytes) {
    // The server would answer 413 only after the whole file went up: say it now.
    const message =
      `This file is ${fmt.bytes(run.file.size)}; the server takes at most ` +
      `${fmt.bytes(run.maxUploadBytes)}. Choose a smaller or more compressed file.`;
    fieldError("file", message);
    ui.fileInput.focus();
    say(message);
    return;
  }
  const invalid = editor.validate();
  if (invalid) {
    invalid.focus();
    say("Not sent: fix the highlighted pipeline value first.");
    return;
  }
  resetRun();
  setPhase("uploading");
  say(`Uploading ${run.file.name}…`);
  const answer = await upload(buildForm());
  run.xhr = null;
  if (answer.status === 202 && answer.body) accepted(answer.body);
  else refused(answer);
}

function buildForm() {
  const form = new FormData();
  form.append("file", run.file, run.file.name);
  form.append("pipeline", JSON.stringify(editor.toJSON()));
  form.append("chunk_seconds", ui.chunkSeconds.value);
  form.append("format", ui.format.value);
  form.append("stream_audio", ui.listen.checked ? "true" : "false");
  run.uploadSid = socket?.connected ? socket.id : null;
  if (run.uploadSid) form.append("sid", run.uploadSid);
  return form;
}

/**
 * POST /upload, reporting upload progress. Resolves to {status, body, retryAfter}:
 * status 0 when the network failed, -1 when the upload was cancelled.
 */
function upload(form) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    run.xhr = xhr;
    xhr.open("POST", "/upload");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      const percent = Math.floor((event.loaded / event.total) * 100);
      ui.progressLabel.textContent = "Uploading";
      ui.progress.value = percent;
      ui.progressPercent.textContent = `${percent} %`;
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      resolve({ status: xhr.status, body, retryAfter: xhr.getResponseHeader("Retry-After") });
    });
    xhr.addEventListener("error", () => resolve({ status: 0 }));
    xhr.addEventListener("abort", () => resolve({ status: -1 }));
    xhr.send(form);
  });
}

function refused({ status, body, retryAfter }) {
  ui.progress.value = 0;
  ui.progressLabel.textContent = "Progress";
  ui.progressPercent.textContent = "0 %";
  setPhase("ready");
  if (status === -1) {
    for (const [name, data] of run.early.splice(0)) stopOrphan(name, data.task_id);
    say("Upload cancelled.");
    return;
  }
  if (status === 0) {
    fieldError(
      "process",
      "The upload did not get through: the connection failed or the server closed it " +
        "(a file over its size limit is cut off this way). Check the connection and try again.",
    );
    say("Not sent: see the message under the buttons.");
    ui.process.focus();
    return;
  }
  const error = body ?? { message: `The server answered ${status} without an explanation.` };
  const target = placeError(status, error, retryAfter);
  say(`Not processed: ${whereIs(target)}.`);
  target?.focus();
}

function whereIs(control) {
  if (control === ui.fileInput) return "see the message under the file";
  if (control === ui.process) return "see the message under the buttons";
  if (control?.closest?.("#steps")) return "see the message in the pipeline";
  return "see the message next to the setting";
}

/** Show an HTTP error next to the control it is about; return that control. */
function placeError(status, error, retryAfter) {
  const aboutFile = ["missing_file", "empty_filename", "not_audio", "too_large"].includes(
    error.error,
  );
  if (status === 413 || status === 415 || aboutFile) {
    fieldError("file", error.message);
    return ui.fileInput;
  }
  if (status === 503) {
    waitBeforeRetry(Number(retryAfter) || 5, error.message);
    return ui.process;
  }
  const inPipeline = editor.showServerError(error);
  if (inPipeline) return inPipeline;
  const field = { chunk_seconds: "chunk-seconds", format: "format", stream_audio: "stream_audio" }[
    error.parameter
  ];
  if (field) {
    fieldError(field, error.message);
    return { "chunk-seconds": ui.chunkSeconds, format: ui.format, stream_audio: ui.listen }[field];
  }
  fieldError("process", error.message);
  return ui.process;
}

/** At capacity: keep Process off until Retry-After has passed, counting down. */
function waitBeforeRetry(seconds, message) {
  retryUntil = Date.now() + seconds * 1000;
  ui.process.disabled = true;
  const tick = () => {
    const left = Math.ceil((retryUntil - Date.now()) / 1000);
    if (left > 0) {
      fieldError("process", `${message} Process is available again in ${left} s.`);
      setTimeout(tick, 250);
    } else {
      fieldError("process", `${message} You can try again now.`);
      setPhase(run.phase);
    }
  };
  tick();
}

function accepted(task) {
  run.task = task;
  run.startedAt = performance.now();
  run.lastEventAt = run.startedAt;
  run.chunksTotal = task.chunks_total;
  showFacts(task);
  editor.setSampleRate(task.input?.sample_rate ?? null);
  waveform.reset(task.duration ?? 0);
  spectrum.reset(task.sample_rate);
  lanes.reset(task.workers ?? 0);
  if (task.stream_audio) player.begin({ sampleRate: task.sample_rate });
  ui.progressLabel.textContent = "Progress";
  ui.progress.value = 0;
  ui.progressPercent.textContent = "0 %";
  setPhase("processing");
  say(`Processing ${task.filename}…`);
  recent.note(task);
  recent.follow(task.task_id, run.playFrom);
  if (task.stream_audio && !run.resumed) decodeOriginal(run.file, task.task_id);
  showAB();
  if (run.uploadSid && socket?.connected && socket.id === run.uploadSid)
    run.subscribedSid = run.uploadSid;
  for (const [name, data] of run.early.splice(0)) route(name, data);
  ensureSubscribed();
  watch(task.task_id);
}

/** Decode the chosen file in the browser, for A/B against the processed audio. */
async function decodeOriginal(file, taskId) {
  if (!file || !player.context) return;
  if (file.size > AB_MAX_BYTES) {
    run.original = "unavailable";
    run.originalWhy = `the file is over ${fmt.bytes(AB_MAX_BYTES)}`;
    showAB();
    return;
  }
  run.original = "decoding";
  showAB();
  const context = player.context;
  let buffer;
  try {
    buffer = await context.decodeAudioData(await file.arrayBuffer());
  } catch {
    buffer = null;
  }
  if (run.task?.task_id !== taskId || player.context !== context) return;
  if (!buffer) {
    run.original = "unavailable";
    run.originalWhy = "this browser cannot decode the file";
  } else {
    run.original = "ready";
    player.setOriginal(buffer);
  }
  showAB();
}

/** The A/B switch: usable while the original is ready and the processed audio plays. */
function showAB() {
  const status = player.status();
  const usable = run.original === "ready" && !status.stopped && Boolean(player.context);
  ui.ab.disabled = !usable;
  if (!usable && status.hearing !== "processed") player.listenTo("processed");
  if (!usable) $("ab-processed").checked = true;
  let text = "";
  if (!run.task?.stream_audio) text = "";
  else if (run.resumed) text = "A/B: choose the file again to compare (a reload forgets it).";
  else if (run.original === "decoding") text = "A/B: decoding the original in the browser…";
  else if (run.original === "unavailable") text = `A/B is off: ${run.originalWhy}.`;
  else if (usable)
    text = `Hearing the ${status.hearing} audio; switch at any moment, at the same position.`;
  if (ui.abStatus.textContent !== text) ui.abStatus.textContent = text;
}

function onChunk(chunk) {
  if (chunk.index < run.nextIndex) {
    run.duplicates += 1;
    return;
  }
  if (chunk.index > run.nextIndex) {
    // A gap: ask again from the first missing chunk (once; later chunks of the gap wait).
    if (run.subscribing?.sid !== socket.id) subscribe(run.nextIndex);
    return;
  }
  if (run.nextIndex === 0 && run.phase === "processing" && !run.resumed)
    say(`Processing ${run.task.filename}…`);
  run.nextIndex += 1;
  run.indexes.push(chunk.index);
  run.chunksTotal = chunk.chunks_total;
  run.audioDone = chunk.start + chunk.duration;
  run.firstPass = null;
  const levels = {
    start: chunk.start,
    end: chunk.start + chunk.duration,
    peak: chunk.peak_db,
    rms: chunk.rms_db,
    spectrum: chunk.spectrum,
  };
  run.levels.push(levels);
  meters.note(chunk.peak_db);
  waveform.append(chunk.start, chunk.waveform);
  if (chunk.index >= run.playFrom) {
    // Before playFrom: a replay after a reload, already heard, and not processed just now.
    lanes.note(chunk, (performance.now() - run.startedAt) / 1000);
    if (chunk.audio && run.phase === "processing") player.enqueue(chunk);
  }
  showProgress();
}

function onProgress(progress) {
  run.progress = progress;
  const measuring = progress.stage < progress.stages - 1;
  run.firstPass = measuring && run.nextIndex === 0 ? progress.progress : null;
  if (progress.stage === progress.stages - 1) run.chunksTotal = progress.chunks_total;
  showProgress();
  showFirstPass();
  if (run.progressLog.length < 400) {
    run.progressLog.push({
      stage: progress.stage,
      progress: progress.progress,
      chunks: run.nextIndex,
      bar: ui.progress.value,
      said: ui.status.textContent,
    });
  }
}

function showFirstPass() {
  if (run.nextIndex === 0 && run.firstPass !== null && run.phase === "processing") {
    say(
      "Measuring the whole file first (a global step): " +
        `${Math.round(run.firstPass * 100)} % of the work done.`,
    );
  }
}

function ended(terminal) {
  run.terminal = terminal;
  run.finishedAt = performance.now();
  run.terminalAt = run.finishedAt;
  waveform.finish();
  lanes.render(true);
  if (run.task) {
    recent.unfollow(run.task.task_id);
    recent.note({ task_id: run.task.task_id, ...terminal.data });
  }
}

function onComplete(data) {
  ended({ event: "processing_complete", data });
  player.finish();
  setPhase("complete");
  ui.progress.value = 100;
  ui.progressPercent.textContent = "100 %";
  $("stat-chunks").textContent = `${data.chunks} / ${data.chunks}`;
  $("stat-elapsed").textContent = fmt.elapsed(data.elapsed);
  $("stat-speed").textContent = data.realtime_factor
    ? `${fmt.number(data.realtime_factor, 1)}× real time`
    : "—";
  $("stat-audio").textContent = fmt.clock(data.duration);
  showResult({
    summary: data.summary,
    url: data.result_url,
    duration: data.duration,
    elapsed: data.elapsed,
    partial: false,
  });
  showAB();
  const speed = data.realtime_factor ? ` (${fmt.number(data.realtime_factor, 1)}× real time)` : "";
  say(
    `Done: ${fmt.clock(data.duration)} of audio processed in ${fmt.elapsed(data.elapsed)}${speed}.`,
  );
}

function onStopped(data) {
  ended({ event: "processing_stopped", data });
  player.stop();
  setPhase("stopped");
  showAB();
  ui.progressLabel.textContent = "Stopped at";
  const audio = fmt.clock(data.duration ?? run.audioDone);
  const why =
    {
      requested: "",
      deleted: " (the task was deleted)",
      shutdown: " (the server is shutting down)",
    }[data.reason] ?? "";
  const kept = data.result_url ? " The partial result is below." : "";
  say(`Stopped${why} after ${data.chunks_emitted} chunks (${audio} of audio).${kept}`);
  if (!data.result_url) return;
  // The terminal event says all there is to say: no GET /tasks/<id> needed.
  showResult({
    summary: data.summary,
    url: data.result_url,
    duration: data.duration ?? run.audioDone,
    elapsed: data.elapsed ?? (run.finishedAt - run.startedAt) / 1000,
    partial: true,
  });
}

function onFailed(data) {
  ended({ event: "processing_error", data });
  fail(`Processing failed: ${data.message}`);
}

function fail(message) {
  if (!run.terminal) ended({ event: "failed", data: { message, status: "failed" } });
  player.stop();
  setPhase("failed");
  showAB();
  fieldError("process", message);
  say(`Failed after ${run.nextIndex} of ${run.chunksTotal ?? "?"} chunks.`);
}

async function stop() {
  if (run.phase === "uploading") {
    run.xhr?.abort();
    return;
  }
  if (run.phase !== "processing") return;
  const taskId = run.task.task_id;
  setPhase("stopping");
  player.stop();
  say("Stopping…");
  const answer = await askToStop(taskId);
  if (run.task?.task_id !== taskId || run.terminal) return;
  if (answer.error === "task_not_found") {
    fail("The task is gone from the server (deleted, or the server restarted).");
    return;
  }
  if (!answer.ok && answer.error !== "task_finished") {
    // Not stopped (the server could not be reached): the task runs on; Stop can be pressed again.
    fieldError("process", `Could not stop: ${answer.message}`);
    setPhase("processing");
    return;
  }
  // processing_stopped (or _complete, if the task won the race) follows; the
  // quiet-stream check asks the server if it does not.
  run.lastEventAt = performance.now();
}

function askToStop(taskId) {
  if (socket?.connected) {
    return new Promise((resolve) => {
      socket.timeout(5000).emit("stop", { task_id: taskId }, (error, ack) => {
        resolve(error ? { ok: false, message: "the server did not answer in time." } : ack);
      });
    });
  }
  return fetch("/stop-processing", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ task_id: taskId }),
  })
    .then(async (response) => ({ ok: response.ok, ...(await response.json().catch(() => ({}))) }))
    .catch(() => ({ ok: false, message: "the server cannot be reached." }));
}

/** While the task runs, ask the server about it whenever the stream has gone quiet. */
function watch(taskId) {
  const timer = setInterval(async () => {
    if (run.task?.task_id !== taskId || run.terminal) {
      clearInterval(timer);
      return;
    }
    // processing_progress keeps the stream busy even in a first pass that sends no chunk.
    if (run.polling || performance.now() - run.lastEventAt < QUIET_MS) return;
    run.polling = true;
    try {
      await checkTask(taskId);
    } finally {
      run.polling = false;
      run.lastEventAt = Math.max(run.lastEventAt, performance.now() - QUIET_MS / 2);
    }
  }, 250);
}

async function checkTask(taskId) {
  let answer;
  try {
    answer = await getJSON(`/tasks/${taskId}`);
  } catch {
    return; // the network is down; the socket's reconnection brings the page back
  }
  if (run.task?.task_id !== taskId || run.terminal) return;
  if (answer.status === 404) {
    fail("The task is gone from the server (deleted, or the server restarted).");
    return;
  }
  if (!answer.ok) return;
  const task = answer.body;
  ensureSubscribed(); // a subscribe that got no answer is tried again here
  if (task.status === "queued") say("Waiting for a free slot on the server…");
  if (task.status === "processing" && run.nextIndex === 0 && measuresFirst(task))
    run.firstPass = task.progress; // without the live channel, the task JSON tells
  if (!TERMINAL.has(task.status)) return;
  if (socket?.connected && !run.resynced) {
    run.resynced = true; // the end was missed: a subscribe replays the rest, then the end
    subscribe(run.nextIndex);
    return;
  }
  finishFromTask(task);
}

/** Whether a global step makes the task measure the file before any chunk is sent. */
function measuresFirst(task) {
  return (task.pipeline ?? []).some((entry) => editor.catalogue.get(entry.step)?.kind === "global");
}

function finishFromTask(task) {
  const core = {
    task_id: task.task_id,
    status: task.status,
    chunks_emitted: task.chunks_done,
    duration: task.duration,
    elapsed: task.elapsed,
    summary: task.summary,
    result_url: task.links.result,
    warnings: task.warnings,
  };
  if (task.status === "completed") {
    onComplete({
      ...core,
      chunks: task.chunks_done,
      realtime_factor: task.elapsed > 0 ? task.duration / task.elapsed : null,
    });
  } else if (task.status === "stopped") {
    onStopped({ ...core, duration: task.summary?.duration ?? run.audioDone, reason: "requested" });
  } else {
    onFailed({
      task_id: task.task_id,
      message: task.error?.message ?? "the server gave no reason.",
    });
  }
}

// -- showing progress and the result ---------------------------------------------------

/**
 * The work done, of every pass: the server's processing_progress (a few a second), and
 * between two of them the chunks of the last pass as they arrive.
 */
function overallProgress() {
  const total = Math.max(run.chunksTotal ?? 0, run.nextIndex, 1);
  const stages = run.progress?.stages ?? 1;
  const fromChunks = (stages - 1 + run.nextIndex / total) / stages;
  return Math.max(run.progress?.progress ?? 0, run.nextIndex ? fromChunks : 0);
}

function showProgress() {
  const percent = Math.min(99, Math.floor(overallProgress() * 100));
  ui.progress.value = percent;
  ui.progressPercent.textContent = `${percent} %`;
  $("stat-chunks").textContent = `${run.nextIndex} / ${run.chunksTotal ?? "?"}`;
  $("stat-audio").textContent =
    `${fmt.clock(run.audioDone)} / ${fmt.clock(Math.max(run.task.duration ?? 0, run.audioDone))}`;
}

/** Elapsed time and speed tick while the task runs. */
function showClock() {
  if (!isActive() || run.startedAt === null) return;
  const seconds = (performance.now() - run.startedAt) / 1000;
  $("stat-elapsed").textContent = fmt.elapsed(seconds);
  $("stat-speed").textContent =
    run.audioDone > 0 ? `${fmt.number(run.audioDone / seconds, 1)}× real time` : "—";
  showFirstPass(); // without the live channel, the task JSON's progress
}

function showResult({ summary, url, duration, elapsed, partial }) {
  ui.result.hidden = false;
  $("result-title").textContent = partial ? "Partial result" : "Result";
  const note = partial ? `Processing was stopped; this is the first ${fmt.clock(duration)}.` : "";
  const missing = summary ? "" : " The server reported no loudness figures for it.";
  $("result-note").textContent = `${note}${missing}`.trim();
  $("summary").dataset.figures = summary ? "yes" : "none";
  const figures = summary ?? {};
  $("summary-lufs").textContent = fmt.level(figures.integrated_lufs, "LUFS");
  $("summary-true-peak").textContent = fmt.level(figures.true_peak_db, "dBTP");
  $("summary-sample-peak").textContent = fmt.level(figures.sample_peak_db, "dBFS");
  $("summary-lra").textContent = fmt.level(figures.loudness_range_lu, "LU");
  $("summary-duration").textContent = fmt.clock(figures.duration ?? duration);
  $("summary-time").textContent = fmt.elapsed(elapsed ?? 0);
  $("step-reports").replaceChildren(...(figures.steps ?? []).map(describeStepReport));
  ui.download.href = url;
  ui.download.textContent = partial ? "Download partial result" : "Download result";
  const stem = (run.task.filename ?? "audio").replace(/\.[^.]*$/, "") || "audio";
  const format = run.task.format;
  $("download-info").textContent =
    `${stem}_processed.${format} · ${FORMAT_LABELS[format] ?? format}`;
  ui.resultAudio.src = url;
  resultView.show(`/tasks/${run.task.task_id}/waveform.json`);
}

/** The pool's figures under its lanes. */
function showWorkers() {
  const summary = lanes.summary();
  const pool = summary.pool || summary.workers.length;
  const write = (id, text) => {
    if ($(id).textContent !== text) $(id).textContent = text;
  };
  write("workers-pool", pool ? `${pool} worker${pool === 1 ? "" : "s"}` : "—");
  const busy = `${fmt.elapsed(summary.busySeconds)} in ${fmt.elapsed(summary.spanSeconds)}`;
  write("workers-busy", summary.chunks ? busy : "—");
  write("workers-speedup", summary.speedup ? `${fmt.number(summary.speedup, 2)}×` : "—");
  const used = summary.workers.map((w) => `${w.name.replace("_", " ")}: ${w.chunks}`).join(", ");
  write("workers-note", summary.chunks ? `chunks per worker: ${used}` : "");
  const label = summary.chunks
    ? `${pool} workers processed ${summary.chunks} chunks (${used}); ` +
      `measured speed-up over one worker ${fmt.number(summary.speedup ?? 1, 2)}×`
    : "The thread pool's workers and the chunks each processed";
  const canvas = $("workers");
  if (canvas.getAttribute("aria-label") !== label) canvas.setAttribute("aria-label", label);
}

/** Remember which chunk is being heard, so that a reload goes on listening from there. */
function rememberHeard(playhead) {
  if (!isActive() || playhead === null) return;
  const heard = run.levels.findIndex((levels) => levels.end > playhead);
  if (heard <= Math.max(run.playFrom, run.heard)) return;
  run.heard = heard;
  recent.follow(run.task.task_id, heard);
}

function describeStepReport(report) {
  const item = document.createElement("li");
  const parts = [];
  if (report.measured_lufs !== undefined)
    parts.push(`measured ${fmt.level(report.measured_lufs, "LUFS")}`);
  if (report.measured_peak_db !== undefined)
    parts.push(`peak ${fmt.level(report.measured_peak_db, "dBFS")}`);
  if (report.target_lufs !== undefined)
    parts.push(`target ${fmt.level(report.target_lufs, "LUFS")}`);
  if (report.gain_db !== undefined && report.gain_db !== null)
    parts.push(`gain ${fmt.gain(report.gain_db)}`);
  if (report.limited_by_peak) parts.push("limited by the peak ceiling");
  item.textContent = `${report.step}: ${parts.join(", ") || "applied"}`;
  return item;
}

function showPlayback() {
  const status = player.status();
  const listening = Boolean(run.task?.stream_audio);
  ui.pause.disabled =
    !player.context || player.stopped || !(player.playing || player.paused || player.blocked);
  ui.pause.textContent = player.blocked
    ? "Start listening"
    : player.paused
      ? "Resume listening"
      : "Pause listening";
  ui.pause.setAttribute("aria-pressed", String(player.paused));
  let text = "";
  if (run.task && !listening) text = "Listening is off for this run.";
  else if (player.blocked) text = "The browser holds the sound until you press Start listening.";
  else if (player.paused) text = "Paused; the audio keeps arriving.";
  else if (status.dropped)
    text = "Playback holds the first ten minutes; the download has the rest.";
  else if (player.playing && status.underruns)
    text = "Processing is slower than real time: playback waits for it.";
  else if (player.playing) text = "Listening to the processed audio.";
  else if (player.stopped && run.task) text = "Playback stopped.";
  else if (run.terminal && status.buffersScheduled) text = "Played to the end.";
  if (ui.playbackStatus.textContent !== text) ui.playbackStatus.textContent = text;
}

// -- the animation frame: scopes follow what is heard, or what just arrived ----------------

function levelsAt(time) {
  const levels = run.levels;
  let low = 0;
  let high = levels.length - 1;
  while (low <= high) {
    const middle = (low + high) >> 1;
    if (levels[middle].end <= time) low = middle + 1;
    else if (levels[middle].start > time) high = middle - 1;
    else return levels[middle];
  }
  return null;
}

let lastFrame = performance.now();
let lastClock = 0;

function frame(now) {
  const dt = Math.min(0.1, Math.max(0, (now - lastFrame) / 1000));
  lastFrame = now;
  const playhead = player.position();
  let current = playhead !== null ? levelsAt(playhead) : null;
  if (!current && isActive() && !player.playing)
    current = run.levels[run.levels.length - 1] ?? null;
  waveform.render(playhead);
  lanes.render();
  spectrum.set(current?.spectrum ?? null);
  spectrum.render(dt);
  meters.set(current);
  meters.render(dt);
  noteFirstSound();
  if (now - lastClock > 100) {
    lastClock = now;
    showClock();
    showPlayback();
    showWorkers();
    showAB();
    rememberHeard(playhead);
    $("waveform-note").textContent = playhead !== null ? `at ${fmt.clock(playhead)}` : "";
  }
  requestAnimationFrame(frame);
}

function noteFirstSound() {
  if (run.soundAt !== null || !run.task) return;
  const status = player.status();
  if (
    status.contextState === "running" &&
    status.firstStart !== null &&
    status.currentTime > status.firstStart
  ) {
    run.soundAt = performance.now();
    run.chunksAtSound = run.nextIndex;
    run.phaseAtSound = run.phase;
  }
}

// -- what tests (and the curious) can read: window.audioPage.status ---------------------------

function snapshot() {
  return {
    phase: run.phase,
    taskId: run.task?.task_id ?? null,
    connected: Boolean(socket?.connected),
    socketId: socket?.id ?? null,
    connects,
    disconnects,
    nextIndex: run.nextIndex,
    chunksTotal: run.chunksTotal,
    indexes: [...run.indexes],
    duplicates: run.duplicates,
    chunksDrawn: waveform.drawnChunks,
    subscribes: run.subscribes.map((record) => ({ ...record })),
    progress: ui.progress.value,
    terminal: run.terminal?.event ?? null,
    terminalData: run.terminal?.data ?? null,
    playback: player.status(),
    progressLog: run.progressLog.map((entry) => ({ ...entry })),
    lastProgress: run.progress,
    workers: lanes.summary(),
    original: run.original,
    result: resultView.status(),
    recent: recent.status(),
    following: recent.current,
    resumed: run.resumed,
    playFrom: run.playFrom,
    soundAt: run.soundAt,
    chunksAtSound: run.chunksAtSound,
    phaseAtSound: run.phaseAtSound,
    terminalAt: run.terminalAt,
  };
}

window.audioPage = Object.freeze({
  get status() {
    return snapshot();
  },
  get socket() {
    return socket;
  },
  inkedPixels: () => waveform.inkedPixels(),
  listening: () => player.outputLevel(),
  workerBars: () => lanes.bars(),
});

init();
