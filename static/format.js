// How the page writes numbers: sizes, times, levels, rates.

const MINUS = "\u2212"; // a real minus sign reads better than a hyphen in figures

/** A number with a typographic minus, `digits` decimals. */
export function number(value, digits = 1) {
  const text = value.toFixed(digits);
  return text.startsWith("-") ? MINUS + text.slice(1) : text;
}

/** A level such as "−16.0 LUFS"; "—" when the figure does not exist (silence, too short). */
export function level(value, unit, digits = 1) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "\u2014";
  return `${number(value, digits)} ${unit}`;
}

/** A signed gain such as "+7.0 dB". */
export function gain(value) {
  return `${value > 0 ? "+" : ""}${number(value, 1)} dB`;
}

/** A file size: "812 kB", "3.4 MB", "1.2 GB". */
export function bytes(count) {
  if (count < 1000) return `${count} bytes`;
  const units = ["kB", "MB", "GB", "TB"];
  let value = count;
  let unit = "";
  for (const next of units) {
    value /= 1000;
    unit = next;
    if (value < 1000) break;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${unit}`;
}

/** A position or length in audio: "0:06.0", "12:04.3", "1:02:03". */
export function clock(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "\u2014";
  const whole = Math.max(0, seconds);
  const hours = Math.floor(whole / 3600);
  const minutes = Math.floor((whole % 3600) / 60);
  if (hours > 0) {
    const secs = Math.floor(whole % 60);
    return `${hours}:${String(minutes).padStart(2, "0")}:${String(secs).padStart(2, "0")}`;
  }
  const secs = (whole % 60).toFixed(1).padStart(4, "0");
  return `${minutes}:${secs}`;
}

/** A wall-clock duration: "0.4 s", "12.5 s", "2 min 05 s". */
export function elapsed(seconds) {
  if (seconds < 1) return `${seconds.toFixed(2)} s`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
}

/** A sample rate: "44.1 kHz", "48 kHz", "8 kHz". */
export function rate(hertz) {
  if (!hertz) return "\u2014";
  return `${Number((hertz / 1000).toFixed(3))} kHz`;
}

/** A frequency for axis labels and hints: "80 Hz", "1 k", "12.5 kHz". */
export function frequency(hertz, { short = false } = {}) {
  if (hertz >= 1000) {
    const khz = Number((hertz / 1000).toFixed(1));
    return short ? `${khz}k` : `${khz} kHz`;
  }
  return short ? `${Math.round(hertz)}` : `${Math.round(hertz)} Hz`;
}

/** A channel count in words. */
export function channels(count) {
  if (!count) return "\u2014";
  return { 1: "mono", 2: "stereo", 6: "6 (5.1)", 8: "8 (7.1)" }[count] ?? `${count} channels`;
}

/** A plain number for hints and messages, without trailing zeros: 94080, 0.25, −60. */
export function plain(value) {
  const text = String(Number(Number(value).toPrecision(6)));
  return text.startsWith("-") ? MINUS + text.slice(1) : text;
}

/**
 * The page's colours from its CSS custom properties: {key: ["--property", fallback]}
 * gives {key: colour}, so a canvas draws in the style sheet's colours.
 */
export function cssColors(properties) {
  const style = getComputedStyle(document.documentElement);
  return Object.fromEntries(
    Object.entries(properties).map(([key, [name, fallback]]) => [
      key,
      style.getPropertyValue(name).trim() || fallback,
    ]),
  );
}
