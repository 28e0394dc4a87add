// The monitor's drawings: a scrolling waveform with an overview of the whole file,
// a spectrum analyser and peak/RMS meters, all drawn on canvases from the chunks'
// analysis (waveform pairs, 64 spectrum bands, peak_db, rms_db).

import { clock, cssColors, frequency, level } from "./format.js";

const PAIRS_PER_SECOND = 100; // the server's waveform resolution
const WINDOW_SECONDS = 12; // the main waveform view while it scrolls
const SPECTRUM_FLOOR = -96;
const METER_FLOOR = -60;

function palette() {
  return cssColors({
    background: ["--scope-bg", "#0b0e13"],
    grid: ["--scope-grid", "#232a35"],
    label: ["--scope-label", "#8d97a6"],
    wave: ["--wave", "#4cc2ff"],
    waveDim: ["--wave-dim", "#2b6f93"],
    pending: ["--scope-pending", "#141922"],
    playhead: ["--playhead", "#ffd166"],
    writehead: ["--writehead", "#ff9f43"],
    green: ["--meter-green", "#3ddc84"],
    amber: ["--meter-amber", "#ffc53d"],
    red: ["--meter-red", "#ff5c5c"],
  });
}

/** Size a canvas's bitmap to its CSS box times the pixel ratio; true if it changed. */
function fit(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const box = canvas.getBoundingClientRect();
  const width = Math.max(1, Math.round(box.width * ratio));
  const height = Math.max(1, Math.round(box.height * ratio));
  if (canvas.width === width && canvas.height === height) return false;
  canvas.width = width;
  canvas.height = height;
  return true;
}

/** A round step between time labels, so that at most `labels` fit. */
function timeStep(span, labels) {
  for (const step of [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]) {
    if (span / step <= labels) return step;
  }
  return 7200;
}

export class WaveformView {
  constructor(canvas, overview) {
    this.canvas = canvas;
    this.overview = overview;
    this.cache = document.createElement("canvas"); // the overview without its cursors
    this.colors = palette();
    this.reset(0);
  }

  /** Start a new file of (about) `duration` seconds. */
  reset(duration) {
    this.mins = new Float32Array(Math.max(1, Math.ceil(duration * PAIRS_PER_SECOND) + 200));
    this.maxs = new Float32Array(this.mins.length);
    this.length = 0;
    this.expected = duration;
    this.done = false;
    this.chunks = 0;
    this.drawnChunks = 0;
    this.lastPlayhead = null;
    this.dirty = true;
  }

  grow(size) {
    if (size <= this.mins.length) return;
    const capacity = Math.max(size, this.mins.length * 2);
    for (const name of ["mins", "maxs"]) {
      const bigger = new Float32Array(capacity);
      bigger.set(this[name]);
      this[name] = bigger;
    }
  }

  /** Add a chunk's [[min, max], ...] pairs, 100 a second from `start` seconds. */
  append(start, pairs) {
    const first = Math.round(start * PAIRS_PER_SECOND);
    this.grow(first + pairs.length);
    pairs.forEach(([low, high], i) => {
      this.mins[first + i] = low;
      this.maxs[first + i] = high;
    });
    this.length = Math.max(this.length, first + pairs.length);
    this.chunks += 1;
    this.dirty = true;
  }

  finish() {
    this.done = true;
    this.dirty = true;
  }

  get end() {
    return this.length / PAIRS_PER_SECOND;
  }

  get total() {
    return Math.max(this.expected, this.end, 0.01);
  }

  /** The seconds the main view shows: the whole file, or a window that follows the audio. */
  view(playhead) {
    const total = this.total;
    if (total <= WINDOW_SECONDS || (this.done && playhead === null)) return [0, total];
    if (playhead !== null) {
      const start = Math.min(Math.max(0, playhead - WINDOW_SECONDS * 0.25), total - WINDOW_SECONDS);
      return [start, start + WINDOW_SECONDS];
    }
    const start = Math.min(Math.max(0, this.end - WINDOW_SECONDS), total - WINDOW_SECONDS);
    return [start, start + WINDOW_SECONDS];
  }

  /** Draw a frame; `playhead` is the file time being heard, or null. */
  render(playhead) {
    const resized = fit(this.canvas) | fit(this.overview);
    const [from, to] = this.view(playhead);
    const moved = playhead !== null || this.lastPlayhead !== null;
    const viewChanged = this.lastView?.[0] !== from || this.lastView?.[1] !== to;
    if (!(this.dirty || resized || moved || viewChanged)) return; // nothing new: keep the frame
    this.drawMain(from, to, playhead);
    if (this.dirty || resized) this.drawOverviewCache();
    this.drawOverview(from, to, playhead);
    this.lastView = [from, to];
    this.lastPlayhead = playhead;
    this.drawnChunks = this.chunks;
    this.dirty = false;
  }

  /** Draw min/max columns of [from, to) seconds into a context's rectangle. */
  drawColumns(ctx, { x0, width, top, height, from, to, color, pendingColor }) {
    const middle = top + height / 2;
    const half = (height / 2) * 0.94;
    const perPixel = ((to - from) * PAIRS_PER_SECOND) / width;
    for (let x = 0; x < width; x += 1) {
      const first = Math.floor(from * PAIRS_PER_SECOND + x * perPixel);
      const last = Math.max(first + 1, Math.floor(from * PAIRS_PER_SECOND + (x + 1) * perPixel));
      if (first >= this.length) {
        if (pendingColor && first < this.total * PAIRS_PER_SECOND) {
          ctx.fillStyle = pendingColor;
          ctx.fillRect(x0 + x, top, 1, height);
        }
        continue;
      }
      let low = 1;
      let high = -1;
      for (let i = Math.max(0, first); i < Math.min(last, this.length); i += 1) {
        if (this.mins[i] < low) low = this.mins[i];
        if (this.maxs[i] > high) high = this.maxs[i];
      }
      if (high < low) continue;
      const y = middle - high * half;
      ctx.fillStyle = color;
      ctx.fillRect(x0 + x, y, 1, Math.max(1, (high - low) * half));
    }
  }

  drawMain(from, to, playhead) {
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const ruler = 16 * ratio;
    const plot = height - ruler;
    const c = this.colors;
    ctx.fillStyle = c.background;
    ctx.fillRect(0, 0, width, height);
    const gradient = ctx.createLinearGradient(0, 0, 0, plot);
    gradient.addColorStop(0, c.waveDim);
    gradient.addColorStop(0.5, c.wave);
    gradient.addColorStop(1, c.waveDim);
    this.drawColumns(ctx, {
      x0: 0,
      width,
      top: 0,
      height: plot,
      from,
      to,
      color: gradient,
      pendingColor: c.pending,
    });
    // -6 dB lines and the centre line.
    ctx.fillStyle = c.grid;
    for (const amplitude of [0.5, 0, -0.5]) {
      ctx.fillRect(
        0,
        Math.round(plot / 2 - amplitude * (plot / 2) * 0.94),
        width,
        Math.max(1, ratio / 2),
      );
    }
    if (this.length === 0) {
      ctx.fillStyle = c.label;
      ctx.font = `${13 * ratio}px system-ui, sans-serif`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(
        "The waveform scrolls in here as chunks arrive",
        width / 2,
        plot / 2 - 12 * ratio,
        width - 16 * ratio,
      );
      ctx.textAlign = "start";
    }
    this.drawRuler(ctx, from, to, plot, ruler, ratio);
    const xOf = (seconds) => ((seconds - from) / (to - from)) * width;
    if (!this.done && this.length > 0 && this.end < to) {
      ctx.fillStyle = c.writehead;
      ctx.fillRect(Math.round(xOf(this.end)), 0, Math.max(1, ratio), plot);
    }
    if (playhead !== null && playhead >= from && playhead <= to) {
      ctx.fillStyle = c.playhead;
      ctx.fillRect(Math.round(xOf(playhead)), 0, Math.max(2, 2 * ratio), plot);
    }
  }

  drawRuler(ctx, from, to, top, height, ratio) {
    const c = this.colors;
    ctx.fillStyle = c.grid;
    ctx.fillRect(0, top, this.canvas.width, Math.max(1, ratio / 2));
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    const step = timeStep(to - from, Math.max(2, Math.floor(this.canvas.width / (64 * ratio))));
    for (let t = Math.ceil(from / step) * step; t <= to; t += step) {
      const x = Math.round(((t - from) / (to - from)) * this.canvas.width);
      ctx.fillStyle = c.grid;
      ctx.fillRect(x, top, Math.max(1, ratio / 2), 4 * ratio);
      ctx.fillStyle = c.label;
      const text = clock(t).replace(/\.0$/, "");
      ctx.fillText(
        text,
        Math.min(x + 3 * ratio, this.canvas.width - ctx.measureText(text).width - 2),
        top + height / 2 + ratio,
      );
    }
  }

  drawOverviewCache() {
    this.cache.width = this.overview.width;
    this.cache.height = this.overview.height;
    const ctx = this.cache.getContext("2d");
    const { width, height } = this.cache;
    const c = this.colors;
    ctx.fillStyle = c.background;
    ctx.fillRect(0, 0, width, height);
    this.drawColumns(ctx, {
      x0: 0,
      width,
      top: 0,
      height,
      from: 0,
      to: this.total,
      color: c.waveDim,
      pendingColor: c.pending,
    });
  }

  drawOverview(from, to, playhead) {
    const ctx = this.overview.getContext("2d");
    const { width, height } = this.overview;
    const ratio = window.devicePixelRatio || 1;
    const c = this.colors;
    ctx.drawImage(this.cache, 0, 0);
    const xOf = (seconds) => (seconds / this.total) * width;
    if (to - from < this.total) {
      ctx.strokeStyle = c.label;
      ctx.lineWidth = ratio;
      ctx.strokeRect(xOf(from) + ratio / 2, ratio / 2, xOf(to) - xOf(from) - ratio, height - ratio);
    }
    if (playhead !== null) {
      ctx.fillStyle = c.playhead;
      ctx.fillRect(Math.round(xOf(playhead)), 0, Math.max(2, 2 * ratio), height);
    }
  }

  /** Count the pixels that are not background (for the tests). */
  inkedPixels() {
    const { width, height } = this.canvas;
    const data = this.canvas.getContext("2d").getImageData(0, 0, width, height).data;
    let count = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 2] > 150 && data[i + 1] > 120) count += 1; // the waveform's cyan
    }
    return count;
  }
}

export class SpectrumView {
  constructor(canvas) {
    this.canvas = canvas;
    this.colors = palette();
    this.reset(44100);
  }

  reset(sampleRate) {
    this.nyquist = sampleRate / 2;
    this.target = null;
    this.shown = new Float32Array(64).fill(SPECTRUM_FLOOR);
    this.peaks = new Float32Array(64).fill(SPECTRUM_FLOOR);
    this.held = new Float32Array(64);
    this.drawnSettled = false;
  }

  /** The bands to show now (64 values in dBFS), or null for silence. */
  set(bands) {
    this.target = bands;
  }

  render(dt) {
    const resized = fit(this.canvas);
    const count = this.target ? this.target.length : this.shown.length;
    if (this.shown.length !== count) this.reset(this.nyquist * 2);
    for (let i = 0; i < count; i += 1) {
      const goal = this.target ? Math.max(SPECTRUM_FLOOR, this.target[i]) : SPECTRUM_FLOOR;
      this.shown[i] = goal > this.shown[i] ? goal : Math.max(goal, this.shown[i] - 48 * dt);
      if (this.shown[i] >= this.peaks[i]) {
        this.peaks[i] = this.shown[i];
        this.held[i] = 1.2;
      } else if ((this.held[i] -= dt) < 0) {
        this.peaks[i] = Math.max(this.shown[i], this.peaks[i] - 20 * dt);
      }
    }
    // Silence that is already drawn needs no new frame.
    const settled = !this.target && this.peaks.every((db) => db <= SPECTRUM_FLOOR);
    if (settled && this.drawnSettled && !resized) return;
    this.draw();
    this.drawnSettled = settled;
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const c = this.colors;
    const left = 30 * ratio;
    const bottom = 16 * ratio;
    const plotWidth = width - left - 4 * ratio;
    const plotHeight = height - bottom - 6 * ratio;
    const top = 6 * ratio;
    const yOf = (db) =>
      top + (Math.min(0, Math.max(SPECTRUM_FLOOR, db)) / SPECTRUM_FLOOR) * plotHeight;
    const xOf = (hz) => left + (Math.log(hz / 20) / Math.log(this.nyquist / 20)) * plotWidth;
    ctx.fillStyle = c.background;
    ctx.fillRect(0, 0, width, height);
    ctx.font = `${10 * ratio}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    for (let db = 0; db >= SPECTRUM_FLOOR; db -= 12) {
      const y = Math.round(yOf(db));
      ctx.fillStyle = c.grid;
      ctx.fillRect(left, y, plotWidth, Math.max(1, ratio / 2));
      ctx.fillStyle = c.label;
      ctx.textAlign = "right";
      ctx.fillText(db === 0 ? "0" : `\u2212${-db}`, left - 4 * ratio, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const hz of [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]) {
      if (hz >= this.nyquist) break;
      const x = Math.round(xOf(hz));
      ctx.fillStyle = c.grid;
      ctx.fillRect(x, top, Math.max(1, ratio / 2), plotHeight);
      ctx.fillStyle = c.label;
      ctx.fillText(frequency(hz, { short: true }), x, top + plotHeight + 3 * ratio);
    }
    const gradient = ctx.createLinearGradient(0, top + plotHeight, 0, top);
    gradient.addColorStop(0, c.waveDim);
    gradient.addColorStop(0.55, c.wave);
    gradient.addColorStop(0.85, c.amber);
    gradient.addColorStop(1, c.red);
    const barWidth = plotWidth / this.shown.length;
    const gap = barWidth > 4 * ratio ? ratio : 0;
    for (let i = 0; i < this.shown.length; i += 1) {
      const x = left + i * barWidth;
      const y = yOf(this.shown[i]);
      ctx.fillStyle = gradient;
      ctx.fillRect(x, y, barWidth - gap, top + plotHeight - y);
      if (this.peaks[i] > SPECTRUM_FLOOR) {
        ctx.fillStyle = c.label;
        ctx.fillRect(x, Math.round(yOf(this.peaks[i])), barWidth - gap, Math.max(1, ratio));
      }
    }
  }
}

export class LevelMeters {
  /** @param readouts {peak, rms, max, clip} elements for the figures. */
  constructor(canvas, readouts) {
    this.canvas = canvas;
    this.readouts = readouts;
    this.colors = palette();
    this.reset();
  }

  reset() {
    this.target = null;
    this.peak = METER_FLOOR;
    this.rms = METER_FLOOR;
    this.hold = METER_FLOOR;
    this.holdTime = 0;
    this.max = null;
    this.clipped = false;
    this.drawnSettled = false;
    this.sinceText = Infinity;
    this.writeFigures();
  }

  /** The chunk levels to show now ({peak, rms} in dBFS), or null for silence. */
  set(levels) {
    this.target = levels;
  }

  /** Every chunk's peak, as it arrives: the maximum and the clip light keep them all. */
  note(peak) {
    this.max = this.max === null ? peak : Math.max(this.max, peak);
    if (peak >= -0.1) this.clipped = true;
  }

  render(dt) {
    const resized = fit(this.canvas);
    const peakGoal = this.target ? Math.max(METER_FLOOR, this.target.peak) : METER_FLOOR;
    const rmsGoal = this.target ? Math.max(METER_FLOOR, this.target.rms) : METER_FLOOR;
    this.peak = peakGoal > this.peak ? peakGoal : Math.max(peakGoal, this.peak - 24 * dt);
    this.rms += (rmsGoal - this.rms) * Math.min(1, dt / 0.3);
    if (Math.abs(this.rms - rmsGoal) < 0.05) this.rms = rmsGoal;
    if (this.peak >= this.hold) {
      this.hold = this.peak;
      this.holdTime = 2;
    } else if ((this.holdTime -= dt) < 0) {
      this.hold = Math.max(this.peak, this.hold - 12 * dt);
    }
    const settled =
      !this.target &&
      this.peak <= METER_FLOOR &&
      this.rms <= METER_FLOOR &&
      this.hold <= METER_FLOOR;
    if (!(settled && this.drawnSettled && !resized)) this.draw();
    this.drawnSettled = settled;
    this.sinceText += dt;
    if (this.sinceText > 0.15) this.writeFigures();
  }

  writeFigures() {
    this.sinceText = 0;
    const shown = this.target;
    const write = (node, text) => {
      if (node.textContent !== text) node.textContent = text;
    };
    write(this.readouts.peak, level(shown ? shown.peak : null, "dBFS"));
    write(this.readouts.rms, level(shown ? shown.rms : null, "dBFS"));
    write(this.readouts.max, level(this.max, "dBFS"));
    this.readouts.clip.hidden = !this.clipped;
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const c = this.colors;
    const top = 6 * ratio;
    const bottom = 16 * ratio;
    const plotHeight = height - top - bottom;
    const scaleWidth = 28 * ratio;
    const barWidth = Math.min(44 * ratio, (width - scaleWidth - 16 * ratio) / 2);
    const yOf = (db) => top + (db / METER_FLOOR) * plotHeight;
    ctx.fillStyle = c.background;
    ctx.fillRect(0, 0, width, height);
    const bars = [
      { x: scaleWidth + 4 * ratio, value: this.peak, hold: this.hold, name: "PK" },
      { x: scaleWidth + 8 * ratio + barWidth, value: this.rms, hold: null, name: "RMS" },
    ];
    ctx.font = `${10 * ratio}px system-ui, sans-serif`;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let db = 0; db >= METER_FLOOR; db -= 6) {
      const y = Math.round(yOf(db));
      ctx.fillStyle = c.grid;
      ctx.fillRect(scaleWidth, y, width - scaleWidth, Math.max(1, ratio / 2));
      ctx.fillStyle = c.label;
      ctx.fillText(db === 0 ? "0" : `\u2212${-db}`, scaleWidth - 4 * ratio, y);
    }
    const zones = [
      [METER_FLOOR, -18, c.green],
      [-18, -6, c.amber],
      [-6, 0, c.red],
    ];
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const bar of bars) {
      ctx.fillStyle = c.pending;
      ctx.fillRect(bar.x, top, barWidth, plotHeight);
      for (const [low, high, color] of zones) {
        if (bar.value <= low) continue;
        const y0 = yOf(Math.min(bar.value, high));
        ctx.fillStyle = color;
        ctx.fillRect(bar.x, y0, barWidth, yOf(low) - y0);
      }
      if (bar.hold !== null && bar.hold > METER_FLOOR) {
        ctx.fillStyle = bar.hold > -6 ? c.red : "#e8eaed";
        ctx.fillRect(bar.x, Math.round(yOf(bar.hold)), barWidth, Math.max(2, 2 * ratio));
      }
      ctx.fillStyle = c.label;
      ctx.fillText(bar.name, bar.x + barWidth / 2, top + plotHeight + 3 * ratio);
    }
  }
}
