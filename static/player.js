// Progressive, gapless playback of the streamed chunks through the Web Audio API.
//
// Each chunk's `audio` (interleaved 16-bit PCM) becomes an AudioBuffer that is
// scheduled to start exactly where the previous one ends, counted in frames so
// that no rounding opens a gap. Only a few seconds are scheduled ahead; the rest
// waits as compact 16-bit PCM, up to a cap, so a long file does not fill memory.
//
// A/B: when the original (the chosen file, decoded in the browser) is given, the
// same stretch of it is scheduled beside each processed buffer, at the same
// moment, into a second gain. Both always play; switching moves the two gains
// across in a few milliseconds, so the other version takes over at the same
// position with no gap.

const LEAD_SECONDS = 0.25; // from the first chunk's arrival to its first sound
const AHEAD_SECONDS = 6; // scheduled into the audio graph at any time
const HELD_SECONDS = 600; // waiting beyond that; later audio is left to the download
const SWITCH_SECONDS = 0.005; // time constant of the A/B crossfade

export class StreamPlayer {
  constructor({ onChange = () => {} } = {}) {
    this.onChange = onChange;
    this.context = null;
    this.volume = 0.8;
    this.reset();
  }

  reset() {
    this.original = null; // AudioBuffer of the chosen file, for A/B
    this.originals = new Set(); // its scheduled sources
    this.originalsScheduled = 0;
    this.hearing = "processed"; // or "original"
    this.queue = []; // chunks waiting: {pcm: Int16Array, start, channels, rate}
    this.heldSeconds = 0;
    this.sources = new Set();
    this.segments = []; // scheduled: {at, start, duration} (context time, file time)
    this.origin = null; // context time of frame 0 of the current run of buffers
    this.framesScheduled = 0;
    this.buffersScheduled = 0;
    this.secondsScheduled = 0;
    this.firstStart = null;
    this.firstFileTime = null; // the file time the first scheduled buffer starts at
    this.underruns = 0;
    this.dropped = 0;
    this.stopped = false;
    this.ended = false; // no more chunks will come
    this.paused = false;
  }

  /** Open a context at the output's sample rate, for a new task. */
  begin({ sampleRate }) {
    this.close();
    this.reset();
    const Context = window.AudioContext ?? window.webkitAudioContext;
    if (!Context) return;
    try {
      this.context = new Context({ sampleRate, latencyHint: "playback" });
    } catch {
      this.context = new Context({ latencyHint: "playback" }); // a rate it cannot open: resample
    }
    this.gain = this.context.createGain();
    this.gain.gain.value = this.volume;
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 8192;
    this.analyser.smoothingTimeConstant = 0; // each reading is of the last 0.17 s alone
    this.gain.connect(this.analyser).connect(this.context.destination);
    this.processedGain = this.context.createGain();
    this.originalGain = this.context.createGain();
    this.processedGain.connect(this.gain);
    this.originalGain.connect(this.gain);
    this.setGains(0);
    this.context.addEventListener("statechange", () => this.onChange());
    this.context.resume().catch(() => {});
    this.timer = setInterval(() => this.pump(), 500);
    this.onChange();
  }

  /** Whether the browser keeps the context suspended until a click (autoplay rules). */
  get blocked() {
    return (
      Boolean(this.context) && this.context.state === "suspended" && !this.paused && !this.stopped
    );
  }

  /** Take one audio_chunk (its `audio` is an ArrayBuffer). */
  enqueue(chunk) {
    if (!this.context || this.stopped || !chunk.audio) return;
    const pcm = new Int16Array(chunk.audio);
    const seconds = pcm.length / chunk.channels / chunk.sample_rate;
    if (this.heldSeconds + seconds > HELD_SECONDS) {
      this.dropped += 1;
      this.onChange();
      return;
    }
    this.heldSeconds += seconds;
    this.queue.push({ pcm, start: chunk.start, channels: chunk.channels, rate: chunk.sample_rate });
    this.pump();
  }

  /** Schedule waiting chunks until AHEAD_SECONDS are in the graph. */
  pump() {
    if (!this.context || this.stopped) return;
    while (this.queue.length && this.scheduledAhead() < AHEAD_SECONDS) {
      this.schedule(this.queue.shift());
    }
  }

  scheduledAhead() {
    if (this.origin === null) return 0;
    return this.origin + this.framesScheduled / this.context.sampleRate - this.context.currentTime;
  }

  schedule({ pcm, start, channels, rate }) {
    const context = this.context;
    const frames = pcm.length / channels;
    const buffer = context.createBuffer(channels, frames, rate);
    for (let channel = 0; channel < channels; channel += 1) {
      const samples = buffer.getChannelData(channel);
      for (let frame = 0, at = channel; frame < frames; frame += 1, at += channels) {
        samples[frame] = pcm[at] / 32768;
      }
    }
    this.heldSeconds -= buffer.duration;
    if (this.origin === null || this.scheduledAhead() < 0.02) {
      // First buffer, or the stream fell behind real time: start a new run a little ahead.
      if (this.origin !== null) this.underruns += 1;
      const rateHere = context.sampleRate;
      this.origin = Math.ceil((context.currentTime + LEAD_SECONDS) * rateHere) / rateHere;
      this.framesScheduled = 0;
    }
    const at = this.origin + this.framesScheduled / context.sampleRate;
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.processedGain);
    source.addEventListener("ended", () => {
      this.sources.delete(source);
      this.pump();
      this.onChange();
    });
    source.start(at);
    this.sources.add(source);
    this.framesScheduled += Math.round(buffer.duration * context.sampleRate);
    const segment = { at, start, duration: buffer.duration };
    this.segments.push(segment);
    if (this.segments.length > 64) this.segments.splice(0, this.segments.length - 64);
    this.scheduleOriginal(segment);
    if (this.firstStart === null) {
      this.firstStart = at;
      this.firstFileTime = start;
    }
    this.buffersScheduled += 1;
    this.secondsScheduled += buffer.duration;
    this.onChange();
  }

  // -- A/B: the original beside the processed audio ----------------------------------

  /** Take the decoded original; the stretches already scheduled get theirs from now on. */
  setOriginal(buffer) {
    if (!this.context || this.stopped) return;
    this.original = buffer;
    for (const segment of this.segments) this.scheduleOriginal(segment);
    this.onChange();
  }

  /** Schedule the original's stretch of a segment (what is still to come of it). */
  scheduleOriginal({ at, start, duration }) {
    if (!this.original || this.stopped) return;
    const context = this.context;
    const from = Math.max(at, context.currentTime + 0.02); // a stretch under way joins late
    const into = from - at;
    if (into >= duration || start + into >= this.original.duration) return;
    const source = context.createBufferSource();
    source.buffer = this.original;
    source.connect(this.originalGain);
    source.addEventListener("ended", () => this.originals.delete(source));
    source.start(from, start + into, duration - into);
    this.originals.add(source);
    this.originalsScheduled += 1;
  }

  /** Hear "processed" or "original" from now on, at the same position, without a gap. */
  listenTo(version) {
    this.hearing = version === "original" && this.original ? "original" : "processed";
    if (this.context) this.setGains(SWITCH_SECONDS);
    this.onChange();
  }

  setGains(timeConstant) {
    const original = this.hearing === "original" ? 1 : 0;
    const now = this.context.currentTime;
    for (const [node, value] of [
      [this.processedGain, 1 - original],
      [this.originalGain, original],
    ]) {
      node.gain.cancelScheduledValues(now);
      if (timeConstant > 0) node.gain.setTargetAtTime(value, now, timeConstant);
      else node.gain.value = value;
    }
  }

  /** The output's level (dBFS RMS) and strongest frequency (Hz) now, from an analyser. */
  outputLevel() {
    if (!this.analyser) return null;
    const samples = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(samples);
    let energy = 0;
    for (const sample of samples) energy += sample * sample;
    const bins = new Float32Array(this.analyser.frequencyBinCount);
    this.analyser.getFloatFrequencyData(bins);
    let strongest = 1;
    for (let i = 2; i < bins.length; i += 1) if (bins[i] > bins[strongest]) strongest = i;
    return {
      rmsDb: 10 * Math.log10(energy / samples.length + 1e-12),
      peakHz: (strongest * this.context.sampleRate) / this.analyser.fftSize,
      time: this.context.currentTime,
    };
  }

  /** The file time being heard now, or null when nothing plays. */
  position() {
    if (!this.context || this.stopped || this.context.state === "closed") return null;
    const now = this.context.currentTime - (this.context.outputLatency || 0);
    for (let i = this.segments.length - 1; i >= 0; i -= 1) {
      const segment = this.segments[i];
      if (segment.at <= now) {
        const into = now - segment.at;
        return into < segment.duration ? segment.start + into : null;
      }
    }
    return null;
  }

  /** Whether sound is still to come from what was received. */
  get playing() {
    return (
      Boolean(this.context) && !this.stopped && (this.sources.size > 0 || this.queue.length > 0)
    );
  }

  /** No more chunks will come (the task ended); what is held still plays. */
  finish() {
    this.ended = true;
    this.onChange();
  }

  async setPaused(paused) {
    if (!this.context || this.stopped) return;
    this.paused = paused;
    if (paused) await this.context.suspend();
    else await this.context.resume();
    this.onChange();
  }

  /** Resume a context the browser kept suspended (call from a click). */
  async unblock() {
    if (this.context) await this.context.resume();
    this.onChange();
  }

  setVolume(volume) {
    this.volume = volume;
    if (this.gain) this.gain.gain.setTargetAtTime(volume, this.context.currentTime, 0.02);
  }

  /** Silence at once and drop what waits. */
  stop() {
    this.stopped = true;
    this.queue = [];
    this.heldSeconds = 0;
    for (const source of [...this.sources, ...this.originals]) {
      try {
        source.stop();
      } catch {
        // a source that never started cannot be stopped; it is dropped anyway
      }
    }
    this.sources.clear();
    this.originals.clear();
    this.onChange();
  }

  close() {
    clearInterval(this.timer);
    if (this.context) {
      this.stop();
      this.context.close().catch(() => {});
      this.context = null;
    }
  }

  /** What the tests and the page's status line read. */
  status() {
    const context = this.context;
    return {
      contextState: context ? context.state : "none",
      sampleRate: context ? context.sampleRate : null,
      currentTime: context ? context.currentTime : 0,
      firstStart: this.firstStart,
      firstFileTime: this.firstFileTime,
      playedSeconds:
        context && this.firstStart !== null
          ? Math.max(0, context.currentTime - this.firstStart)
          : 0,
      buffersScheduled: this.buffersScheduled,
      secondsScheduled: this.secondsScheduled,
      buffersPlaying: this.sources.size,
      waiting: this.queue.length,
      underruns: this.underruns,
      dropped: this.dropped,
      stopped: this.stopped,
      paused: this.paused,
      hearing: this.hearing,
      originalReady: Boolean(this.original),
      originalsScheduled: this.originalsScheduled,
      originalsPlaying: this.originals.size,
    };
  }
}
