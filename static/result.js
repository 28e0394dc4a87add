// The finished result's whole waveform, in peaks.js: zoomable, with the playhead of the
// result's player, and a click on the waveform to seek there.
//
// The waveform is the server's waveform.json (BBC audiowaveform JSON, 100 points a
// second); the player is the page's <audio> element playing the result file.
// peaks.js (with Konva and waveform-data inside its bundle) is served by the server
// from npm, like the Socket.IO client; without it the result keeps its plain player.

import { clock, cssColors } from "./format.js";

export class ResultView {
  /**
   * @param {object} parts {figure, zoomview, overview, zoomIn, zoomOut, fit, note, audio}
   */
  constructor(parts) {
    this.parts = parts;
    this.peaks = null;
    this.levels = [];
    this.state = "none"; // none, loading, ready, unavailable
    this.logged = [];
    this.generation = 0;
    parts.zoomIn.addEventListener("click", () => this.zoom(-1));
    parts.zoomOut.addEventListener("click", () => this.zoom(+1));
    parts.fit.addEventListener("click", () => this.zoom(+Infinity));
  }

  /** Forget the shown result. */
  reset() {
    this.generation += 1;
    this.peaks?.destroy();
    this.peaks = null;
    this.levels = [];
    this.state = "none";
    this.parts.figure.hidden = true;
    this.parts.note.textContent = "";
  }

  /** Show a finished task's waveform (fetched from waveformUrl) over the result's player. */
  async show(waveformUrl) {
    this.reset();
    const generation = this.generation;
    if (typeof window.peaks?.init !== "function") {
      this.state = "unavailable"; // peaks.js could not be served: the plain player stays
      return;
    }
    this.state = "loading";
    this.parts.figure.hidden = false;
    let json;
    try {
      const response = await fetch(waveformUrl, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`status ${response.status}`);
      json = await response.json();
    } catch (error) {
      if (generation !== this.generation) return;
      this.fail(`The waveform could not be loaded (${error.message}).`);
      return;
    }
    if (generation !== this.generation) return;
    if (!json.length) {
      this.fail("Nothing was processed: there is no waveform to show.");
      return;
    }
    this.levels = zoomLevels(json, this.parts.zoomview.clientWidth || 800);
    const colors = palette();
    const options = {
      zoomview: {
        container: this.parts.zoomview,
        waveformColor: colors.wave,
        playedWaveformColor: colors.played,
        playheadColor: colors.playhead,
        axisGridlineColor: colors.grid,
        axisLabelColor: colors.label,
        showPlayheadTime: true,
        playheadTextColor: colors.playhead,
        wheelMode: "none",
      },
      overview: {
        container: this.parts.overview,
        waveformColor: colors.dim,
        playedWaveformColor: colors.played,
        playheadColor: colors.playhead,
        highlightColor: colors.label,
        axisGridlineColor: colors.grid,
        axisLabelColor: colors.label,
      },
      mediaElement: this.parts.audio,
      waveformData: { json },
      zoomLevels: this.levels,
      keyboard: false,
      logger: (...args) => this.logged.push(args.join(" ")), // peaks.js's own complaints
    };
    window.peaks.init(options, (error, instance) => {
      if (generation !== this.generation) {
        instance?.destroy();
        return;
      }
      if (error) {
        this.fail(`The waveform could not be drawn (${error.message}).`);
        return;
      }
      this.peaks = instance;
      this.state = "ready";
      this.zoom(+Infinity); // the whole result first
    });
  }

  fail(message) {
    this.state = "unavailable";
    this.parts.note.textContent = message;
  }

  /** Zoom in (-1), out (+1), or to the whole result (+Infinity). */
  zoom(step) {
    if (!this.peaks) return;
    const last = this.levels.length - 1;
    const index = Math.min(last, Math.max(0, this.peaks.zoom.getZoom() + step));
    this.peaks.zoom.setZoom(index);
    this.parts.zoomIn.disabled = index === 0;
    this.parts.zoomOut.disabled = index === last;
    this.parts.fit.disabled = index === last;
    requestAnimationFrame(() => this.describe());
  }

  /** Say what the zoomed view shows, for everyone (and for screen readers, politely). */
  describe() {
    const view = this.peaks?.views.getView("zoomview");
    if (!view) return;
    const { start, end } = { start: view.getStartTime(), end: view.getEndTime() };
    const whole = this.peaks.zoom.getZoom() === this.levels.length - 1;
    this.parts.note.textContent = whole
      ? "The whole result. Zoom in for detail; click the waveform to play from there."
      : `Showing ${clock(start)} to ${clock(end)}. Drag to scroll; click to play from there.`;
  }

  /** What tests (and the curious) can read. */
  status() {
    const view = this.peaks?.views.getView("zoomview") ?? null;
    return {
      state: this.state,
      zoom: this.peaks ? this.peaks.zoom.getZoom() : null,
      levels: this.levels.length,
      start: view ? view.getStartTime() : null,
      end: view ? view.getEndTime() : null,
      time: this.peaks ? this.peaks.player.getCurrentTime() : null,
      duration: this.peaks ? this.peaks.player.getDuration() : null,
      logged: [...this.logged],
    };
  }
}

/**
 * Samples per pixel for each zoom step: the waveform's own resolution (100 points a
 * second), doubling, and last the one at which the whole result fits the view's width
 * (a result shorter than the width at 100 points a second stays at that resolution).
 */
function zoomLevels(json, width) {
  const base = json.samples_per_pixel;
  const fit = Math.ceil((json.length * base) / width);
  const levels = [base];
  while (levels[levels.length - 1] * 2 < fit) levels.push(levels[levels.length - 1] * 2);
  if (fit > levels[levels.length - 1]) levels.push(fit);
  return levels;
}

function palette() {
  return cssColors({
    wave: ["--wave", "#4cc2ff"],
    dim: ["--wave-dim", "#2b7aa6"],
    played: ["--wave-played", "#8fd8ff"],
    playhead: ["--playhead", "#ffd166"],
    grid: ["--scope-grid", "#232a35"],
    label: ["--scope-label", "#8d97a6"],
  });
}
