// The pipeline editor: steps from GET /pipeline/steps, each parameter a labelled
// number input with its unit, default and range; add, remove, reorder; presets.

import { plain, rate as formatRate } from "./format.js";

const STEP_TITLES = {
  gain: "Gain",
  normalize: "Peak normalise",
  loudness: "Loudness",
  highpass: "High-pass",
  lowpass: "Low-pass",
  bandpass: "Band-pass",
  fade_in: "Fade in",
  fade_out: "Fade out",
  resample: "Resample",
  mono: "Mono",
  compressor: "Compressor",
};

const PARAM_LABELS = {
  db: "Gain",
  peak_db: "Peak",
  target: "Target",
  max_peak: "Max peak",
  freq: "Frequency",
  order: "Order",
  low: "Low edge",
  high: "High edge",
  seconds: "Length",
  rate: "Sample rate",
  threshold_db: "Threshold",
  ratio: "Ratio",
  attack_ms: "Attack",
  release_ms: "Release",
  makeup_db: "Make-up gain",
};

const KIND_NOTES = {
  global: "measures the whole file first, so output starts after a first pass",
  stateful: "has memory: each chunk is processed with the audio before it",
  "per sample": "sample by sample",
  "position-dependent": "depends on where the chunk is in the file",
};

/** Common jobs, as pipelines in the JSON array form the server takes. */
export const PRESETS = [
  {
    name: "Podcast",
    detail: "high-pass 80 Hz, loudness \u221216 LUFS",
    steps: [
      { step: "highpass", freq: 80, order: 2 },
      { step: "loudness", target: -16, max_peak: -1 },
    ],
  },
  {
    name: "Streaming music",
    detail: "loudness \u221214 LUFS, peak \u22121 dBFS",
    steps: [{ step: "loudness", target: -14, max_peak: -1 }],
  },
  {
    name: "Broadcast",
    detail: "EBU R128: loudness \u221223 LUFS",
    steps: [{ step: "loudness", target: -23, max_peak: -1 }],
  },
  {
    name: "Peak normalise",
    detail: "sample peak to \u22121 dBFS",
    steps: [{ step: "normalize", peak_db: -1 }],
  },
  {
    name: "Voice, compressed",
    detail: "high-pass 80 Hz, 3:1 compressor, \u221216 LUFS",
    steps: [
      { step: "highpass", freq: 80, order: 2 },
      { step: "compressor", threshold_db: -24, ratio: 3, attack_ms: 10, release_ms: 150 },
      { step: "loudness", target: -16, max_peak: -1 },
    ],
  },
  {
    name: "Telephone",
    detail: "band-pass 300\u20133400 Hz, mono",
    steps: [{ step: "bandpass", low: 300, high: 3400, order: 2 }, { step: "mono" }],
  },
];

export function stepTitle(name) {
  return STEP_TITLES[name] ?? name.replaceAll("_", " ");
}

function paramLabel(name) {
  return PARAM_LABELS[name] ?? name.replaceAll("_", " ");
}

function element(tag, { className, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs ?? {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

let nextItemId = 1;

export class PipelineEditor {
  /**
   * @param {object} parts the page's elements: list, empty, addSelect, addButton, addHint,
   *   presets, clear, error, announce.
   */
  constructor(parts) {
    this.parts = parts;
    this.catalogue = new Map();
    this.maxSteps = 32;
    this.items = []; // {id, name, values: {param: text}}
    this.nodes = new Map(); // id -> the step's <li>
    this.inputRate = null; // the chosen file's sample rate, once the server told it
    parts.addButton.addEventListener("click", () => this.addFromSelect());
    parts.addSelect.addEventListener("change", () => this.describeSelected());
    parts.clear.addEventListener("click", () => this.clear());
    parts.list.addEventListener("click", (event) => this.onListClick(event));
    parts.list.addEventListener("input", (event) => this.onInput(event));
    parts.list.addEventListener("change", (event) => this.onCommit(event));
  }

  /** Take the catalogue (GET /pipeline/steps) and fill the step menu and presets. */
  setCatalogue(catalogue) {
    this.catalogue = new Map(catalogue.steps.map((step) => [step.name, step]));
    this.maxSteps = catalogue.max_steps ?? 32;
    const select = this.parts.addSelect;
    select.replaceChildren();
    for (const step of catalogue.steps) {
      select.append(
        element("option", {
          text: `${stepTitle(step.name)} (${step.name})`,
          attrs: { value: step.name },
        }),
      );
    }
    this.describeSelected();
    this.renderPresets();
  }

  renderPresets() {
    const box = this.parts.presets;
    box.replaceChildren();
    for (const preset of PRESETS) {
      if (!preset.steps.every((entry) => this.catalogue.has(entry.step))) continue;
      const button = element("button", { className: "preset", attrs: { type: "button" } }, [
        element("span", { className: "preset-name", text: preset.name }),
        element("span", { className: "preset-detail", text: preset.detail }),
      ]);
      button.addEventListener("click", () => {
        this.load(preset.steps);
        this.announce(`Preset ${preset.name} loaded: ${preset.detail}.`);
      });
      box.append(button);
    }
  }

  describeSelected() {
    const step = this.catalogue.get(this.parts.addSelect.value);
    this.parts.addHint.textContent = step ? step.description : "";
  }

  /** The file's sample rate, so frequency limits (0.49 x rate) can be checked here too. */
  setSampleRate(rate) {
    this.inputRate = rate;
    this.render();
  }

  /** Replace the pipeline with entries like [{step: "highpass", freq: 80}]. */
  load(entries) {
    this.items = [];
    for (const entry of entries) this.items.push(this.newItem(entry.step, entry));
    this.clearErrors();
    this.render();
  }

  clear() {
    this.items = [];
    this.clearErrors();
    this.render();
    this.announce("Pipeline cleared: the file will only be analysed.");
    this.parts.addSelect.focus();
  }

  newItem(name, values = {}) {
    const spec = this.catalogue.get(name);
    const texts = {};
    for (const param of spec.parameters) {
      const given = values[param.name] ?? param.default;
      texts[param.name] = given === null || given === undefined ? "" : String(given);
    }
    return { id: nextItemId++, name, values: texts };
  }

  addFromSelect() {
    const name = this.parts.addSelect.value;
    if (!this.catalogue.has(name) || this.items.length >= this.maxSteps) return;
    const item = this.newItem(name);
    this.items.push(item);
    this.render();
    this.announce(`Step ${this.items.length}, ${stepTitle(name)}, added.`);
    const node = this.nodes.get(item.id);
    (node.querySelector("input") ?? node.querySelector("[data-action=remove]")).focus();
  }

  onListClick(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const id = Number(button.closest("li").dataset.id);
    const at = this.items.findIndex((item) => item.id === id);
    const action = button.dataset.action;
    if (action === "remove") this.remove(at);
    else this.move(at, action === "up" ? -1 : 1, action);
  }

  remove(at) {
    const [item] = this.items.splice(at, 1);
    this.render();
    this.announce(`Step ${at + 1}, ${stepTitle(item.name)}, removed.`);
    const neighbour = this.items[Math.min(at, this.items.length - 1)];
    if (neighbour) this.nodes.get(neighbour.id).querySelector("[data-action=remove]").focus();
    else this.parts.addSelect.focus();
  }

  move(at, delta, action) {
    const to = at + delta;
    if (to < 0 || to >= this.items.length) return;
    const [item] = this.items.splice(at, 1);
    this.items.splice(to, 0, item);
    this.render();
    this.announce(`${stepTitle(item.name)} moved to step ${to + 1} of ${this.items.length}.`);
    const node = this.nodes.get(item.id);
    const same = node.querySelector(`[data-action=${action}]`);
    (same.disabled
      ? node.querySelector(`[data-action=${action === "up" ? "down" : "up"}]`)
      : same
    ).focus();
  }

  onInput(event) {
    const input = event.target;
    if (!input.dataset.param) return;
    const item = this.itemOf(input);
    item.values[input.dataset.param] = input.value;
    // A field being corrected loses its message at once; a new one waits for the commit.
    if (input.getAttribute("aria-invalid") === "true" && !this.problem(input))
      this.setError(input, "");
    if (input.dataset.param === "rate" && item.name === "resample") this.updateRanges();
  }

  onCommit(event) {
    const input = event.target;
    if (input.dataset.param) this.setError(input, this.problem(input));
  }

  itemOf(node) {
    const id = Number(node.closest("li").dataset.id);
    return this.items.find((item) => item.id === id);
  }

  // -- drawing the list ---------------------------------------------------------

  render() {
    const list = this.parts.list;
    const alive = new Set(this.items.map((item) => item.id));
    for (const [id, node] of this.nodes) {
      if (!alive.has(id)) {
        node.remove();
        this.nodes.delete(id);
      }
    }
    this.items.forEach((item, at) => {
      let node = this.nodes.get(item.id);
      if (!node) {
        node = this.buildStep(item);
        this.nodes.set(item.id, node);
      }
      this.labelStep(node, item, at);
      if (list.children[at] !== node) list.insertBefore(node, list.children[at] ?? null);
    });
    this.parts.empty.hidden = this.items.length > 0;
    this.parts.clear.disabled = this.items.length === 0;
    this.parts.addButton.disabled = this.items.length >= this.maxSteps;
    this.updateRanges();
  }

  buildStep(item) {
    const spec = this.catalogue.get(item.name);
    const prefix = `step-${item.id}`;
    const title = element("h3", { className: "step-title", attrs: { id: `${prefix}-title` } }, [
      element("span", { className: "step-number" }),
      element("span", { className: "step-name", text: stepTitle(item.name) }),
      element("code", { className: "step-code", text: item.name }),
    ]);
    const kind = element("span", {
      className: `kind kind-${spec.kind.replaceAll(" ", "-")}`,
      text: spec.kind,
      attrs: { title: KIND_NOTES[spec.kind] ?? spec.kind },
    });
    const tools = element("div", { className: "step-tools" }, [
      this.toolButton("up", "\u2191"),
      this.toolButton("down", "\u2193"),
      this.toolButton("remove", "\u00d7"),
    ]);
    const params = element(
      "div",
      { className: "params" },
      spec.parameters.map((param) => this.buildParam(item, param, prefix)),
    );
    return element(
      "li",
      {
        className: "step",
        attrs: { "data-id": item.id, "aria-labelledby": `${prefix}-title` },
      },
      [
        element("div", { className: "step-head" }, [title, kind, tools]),
        element("p", { className: "step-description", text: spec.description }),
        ...(spec.parameters.length ? [params] : []),
        element("p", {
          className: "field-error",
          attrs: { id: `${prefix}-error`, "aria-live": "polite" },
        }),
      ],
    );
  }

  toolButton(action, glyph) {
    return element("button", {
      className: `icon-button tool-${action}`,
      text: glyph,
      attrs: { type: "button", "data-action": action },
    });
  }

  buildParam(item, param, prefix) {
    const id = `${prefix}-${param.name}`;
    const input = element("input", {
      attrs: {
        id,
        type: "number",
        inputmode: param.type === "integer" ? "numeric" : "decimal",
        step: param.type === "integer" ? "1" : "any",
        "data-param": param.name,
        "aria-describedby": `${id}-hint ${id}-error`,
      },
    });
    input.value = item.values[param.name];
    if (param.required) input.required = true;
    input.dataset.unit = param.unit;
    // The unit shows beside the number; screen readers get it with the label.
    const label = element("label", { attrs: { for: id } }, [paramLabel(param.name)]);
    const box = element("div", { className: "input-unit" }, [input]);
    if (param.unit) {
      label.append(element("span", { className: "visually-hidden", text: ` in ${param.unit}` }));
      box.append(
        element("span", {
          className: "suffix",
          text: param.unit,
          attrs: { "aria-hidden": "true" },
        }),
      );
    }
    return element("div", { className: "param" }, [
      label,
      box,
      element("p", { className: "hint", attrs: { id: `${id}-hint` } }),
      element("p", {
        className: "field-error",
        attrs: { id: `${id}-error`, "aria-live": "polite" },
      }),
    ]);
  }

  labelStep(node, item, at) {
    const name = stepTitle(item.name);
    node.querySelector(".step-number").textContent = `${at + 1}`;
    const label = (what) => `${what} step ${at + 1}, ${name}`;
    const up = node.querySelector("[data-action=up]");
    const down = node.querySelector("[data-action=down]");
    up.setAttribute("aria-label", label("Move up"));
    down.setAttribute("aria-label", label("Move down"));
    node.querySelector("[data-action=remove]").setAttribute("aria-label", label("Remove"));
    up.disabled = at === 0;
    down.disabled = at === this.items.length - 1;
  }

  /** The sample rate reaching each step: the file's, or the last resample's before it. */
  ratesAlongThePipeline() {
    let rate = this.inputRate;
    return this.items.map((item) => {
      const here = rate;
      if (item.name === "resample") {
        const chosen = Number(item.values.rate);
        rate = item.values.rate !== "" && Number.isFinite(chosen) ? chosen : null;
      }
      return here;
    });
  }

  /** Set each input's min/max and its hint from the catalogue and the known sample rate. */
  updateRanges() {
    const rates = this.ratesAlongThePipeline();
    this.items.forEach((item, at) => {
      const spec = this.catalogue.get(item.name);
      const node = this.nodes.get(item.id);
      for (const param of spec.parameters) {
        const input = node.querySelector(`input[data-param="${param.name}"]`);
        const range = this.range(param, rates[at]);
        input.min = String(range.min);
        input.max = String(range.max);
        input.placeholder = param.required ? "required" : "";
        node.querySelector(`#${input.id}-hint`).textContent = this.hint(param, range, rates[at]);
      }
    });
  }

  range(param, rate) {
    let max = param.max;
    if (param.max_rate_fraction && rate)
      max = Math.min(max, Math.floor(param.max_rate_fraction * rate * 1000) / 1000);
    return { min: param.min, max, limitedByRate: Boolean(param.max_rate_fraction) };
  }

  hint(param, range, rate) {
    const unit = param.unit ? ` ${param.unit}` : "";
    let span = `${plain(range.min)} to ${plain(range.max)}${unit}`;
    if (range.limitedByRate) {
      span = rate
        ? `${plain(range.min)} to ${plain(range.max)}${unit} ` +
          `(${param.max_rate_fraction} \u00d7 ${formatRate(rate)})`
        : `${plain(range.min)}${unit} to ${param.max_rate_fraction} \u00d7 the sample rate`;
    }
    const start = param.required ? "required" : `default ${plain(param.default)}${unit}`;
    return `${start} \u00b7 ${span}`;
  }

  // -- checking and reporting ----------------------------------------------------

  /** What is wrong with an input's value, in plain words ("" when nothing). */
  problem(input) {
    const validity = input.validity;
    const unit = input.dataset.unit;
    const span = `${plain(input.min)} to ${plain(input.max)}${unit ? ` ${unit}` : ""}`;
    if (validity.badInput) return "Not a number. Type digits, for example 80 or -16.";
    if (validity.valueMissing) return `Required: enter a value from ${span}.`;
    if (validity.rangeUnderflow || validity.rangeOverflow) {
      return `Out of range: use a value from ${span}.`;
    }
    if (validity.stepMismatch) return "Use a whole number.";
    return "";
  }

  setError(target, message) {
    const slot = document.getElementById(`${target.id}-error`);
    if (slot) slot.textContent = message;
    if (target.matches("input")) {
      if (message) target.setAttribute("aria-invalid", "true");
      else target.removeAttribute("aria-invalid");
    }
  }

  /** Check every input; show each problem next to its input; return the first bad one. */
  validate() {
    let first = null;
    for (const input of this.parts.list.querySelectorAll("input[data-param]")) {
      const message = this.problem(input);
      this.setError(input, message);
      if (message && !first) first = input;
    }
    return first;
  }

  clearErrors() {
    for (const slot of this.parts.list.querySelectorAll(".field-error")) slot.textContent = "";
    for (const input of this.parts.list.querySelectorAll("[aria-invalid]"))
      input.removeAttribute("aria-invalid");
    this.parts.error.textContent = "";
  }

  /**
   * Show a pipeline error from the server next to the step and parameter it names.
   * Returns the element to focus, or null if the error is not about the pipeline.
   */
  showServerError(body) {
    const aboutPipeline =
      body.error === "invalid_pipeline" || body.step !== undefined || body.position !== undefined;
    if (!aboutPipeline) return null;
    let item = body.position ? this.items[body.position - 1] : undefined;
    if (!item && body.step) {
      item =
        this.items.find((entry) => entry.name === body.step && body.parameter in entry.values) ??
        this.items.find((entry) => entry.name === body.step);
    }
    const node = item && this.nodes.get(item.id);
    const input =
      node && body.parameter ? node.querySelector(`input[data-param="${body.parameter}"]`) : null;
    if (input) {
      this.setError(input, body.message);
      return input;
    }
    if (node) {
      node.querySelector(":scope > .field-error").textContent = body.message;
      return node.querySelector("input, button");
    }
    this.parts.error.textContent = body.message;
    return this.parts.addSelect;
  }

  /** The pipeline as the server's JSON array form; empty inputs fall back to the defaults. */
  toJSON() {
    return this.items.map((item) => {
      const entry = { step: item.name };
      for (const [name, text] of Object.entries(item.values)) {
        if (text.trim() !== "") entry[name] = Number(text);
      }
      return entry;
    });
  }

  announce(message) {
    this.parts.announce.textContent = message;
  }
}
