// The thread pool made visible: a lane per pool worker, and on it a bar for each chunk
// that worker processed, from when it started to when it finished.
//
// Every audio_chunk says which worker processed it (`worker`) and for how long
// (`processing_ms`). The page notes when the chunk arrived; the chunk finished just
// before (chunks leave the server in order as soon as they are done, so a chunk that
// waited for an earlier one is drawn a little late, never early), and started
// `processing_ms` before that. One worker alone would have needed the sum of every
// chunk's time; the pool needed the span from the first start to the last end: their
// ratio is the speed-up it measured over one worker.

import { cssColors } from "./format.js";

const PALETTE = ["#4cc2ff", "#3ddc84", "#ffc53d", "#ff9f43", "#c792ea", "#ff6b9a", "#7fdbca"];
const LANE_MIN_PX = 16;

function palette() {
  return cssColors({
    background: ["--scope-bg", "#0b0e13"],
    grid: ["--scope-grid", "#232a35"],
    label: ["--scope-label", "#8d97a6"],
    lane: ["--scope-pending", "#131820"],
  });
}

/** A name's position among the pool's workers: "worker_3" is 3, others after them. */
function workerOrder(name) {
  const match = /(\d+)$/.exec(name ?? "");
  return match ? Number(match[1]) : 1e6;
}

export class WorkerLanes {
  constructor(canvas) {
    this.canvas = canvas;
    this.colors = palette();
    this.reset(0);
  }

  /** Start a new task, whose pool has `workers` threads (from the task JSON). */
  reset(workers) {
    this.poolSize = workers;
    this.lanes = new Map(); // worker name -> [{index, start, end}]
    this.first = null; // seconds: the first start and the last end seen
    this.last = null;
    this.busy = 0; // seconds of processing, summed over the chunks
    this.count = 0;
    this.dirty = true;
  }

  /** Note a chunk that arrived `arrived` seconds after the task started (page clock). */
  note(chunk, arrived) {
    const seconds = (chunk.processing_ms ?? 0) / 1000;
    const bar = { index: chunk.index, start: Math.max(0, arrived - seconds), end: arrived };
    const name = chunk.worker ?? "worker";
    if (!this.lanes.has(name)) this.lanes.set(name, []);
    this.lanes.get(name).push(bar);
    this.first = this.first === null ? bar.start : Math.min(this.first, bar.start);
    this.last = this.last === null ? bar.end : Math.max(this.last, bar.end);
    this.busy += seconds;
    this.count += 1;
    this.dirty = true;
  }

  /** Work done over wall time: how many workers' worth the pool delivered (null: too early). */
  get speedup() {
    const span = this.last - this.first;
    if (this.count < 2 || !(span > 0)) return null;
    return this.busy / span;
  }

  /** What the page shows and tests read. */
  summary() {
    const lanes = [...this.lanes.keys()].sort((a, b) => workerOrder(a) - workerOrder(b));
    return {
      pool: this.poolSize,
      workers: lanes.map((name) => ({
        name,
        chunks: this.lanes.get(name).length,
        busySeconds: this.lanes.get(name).reduce((sum, bar) => sum + bar.end - bar.start, 0),
      })),
      chunks: this.count,
      busySeconds: this.busy,
      spanSeconds: this.count ? this.last - this.first : 0,
      speedup: this.speedup,
    };
  }

  /** Every chunk's bar, by worker: {name: [[start, end, index], ...]} (seconds). */
  bars() {
    return Object.fromEntries(
      [...this.lanes].map(([name, bars]) => [name, bars.map((b) => [b.start, b.end, b.index])]),
    );
  }

  render(force = false) {
    const resized = this.fit();
    if (!(this.dirty || resized || force)) return;
    this.dirty = false;
    this.draw();
  }

  fit() {
    const ratio = window.devicePixelRatio || 1;
    const box = this.canvas.getBoundingClientRect();
    const width = Math.max(1, Math.round(box.width * ratio));
    const height = Math.max(1, Math.round(box.height * ratio));
    if (this.canvas.width === width && this.canvas.height === height) return false;
    this.canvas.width = width;
    this.canvas.height = height;
    return true;
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const c = this.colors;
    ctx.fillStyle = c.background;
    ctx.fillRect(0, 0, width, height);
    const names = [...this.lanes.keys()].sort((a, b) => workerOrder(a) - workerOrder(b));
    const laneCount = Math.max(names.length, this.poolSize, 1);
    const left = 74 * ratio;
    const plotWidth = width - left - 6 * ratio;
    const laneHeight = Math.max(LANE_MIN_PX * ratio, (height - 4 * ratio) / laneCount);
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    if (!this.count) {
      ctx.fillStyle = c.label;
      ctx.textAlign = "center";
      ctx.fillText(
        "Each worker's chunks appear here as they are processed",
        width / 2,
        height / 2,
        width - 16 * ratio,
      );
      ctx.textAlign = "start";
      return;
    }
    const from = this.first;
    const span = Math.max(this.last - from, 0.001);
    const xOf = (seconds) => left + ((seconds - from) / span) * plotWidth;
    for (let lane = 0; lane < laneCount; lane += 1) {
      const top = 2 * ratio + lane * laneHeight;
      ctx.fillStyle = c.lane;
      ctx.fillRect(left, top + 1, plotWidth, laneHeight - 2);
      const name = names[lane] ?? `worker_${lane}`;
      ctx.fillStyle = c.label;
      ctx.fillText(name.replace("_", " "), 6 * ratio, top + laneHeight / 2, left - 10 * ratio);
      ctx.fillStyle = PALETTE[lane % PALETTE.length];
      for (const bar of this.lanes.get(name) ?? []) {
        const x = xOf(bar.start);
        const w = Math.max(1, xOf(bar.end) - x - ratio); // a hair between neighbours
        ctx.fillRect(x, top + 3 * ratio, w, laneHeight - 6 * ratio);
      }
    }
  }
}
