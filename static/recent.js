// The tasks this browser started, kept in localStorage: status, duration and links, after
// a reload too. The task being followed is kept as well (with the chunks already heard),
// so that a reload while it processes can take its live view up again.

import { clock } from "./format.js";

const TASKS_KEY = "audioserver.recent-tasks";
const CURRENT_KEY = "audioserver.current-task";
const KEEP = 10;
const WORDS = {
  queued: "queued",
  processing: "processing",
  completed: "completed",
  stopped: "stopped",
  failed: "failed",
  gone: "gone from the server",
};
const WITH_RESULT = new Set(["completed", "stopped"]);

/** localStorage, or a stand-in that forgets (storage off, or full). */
function storage() {
  try {
    const probe = "audioserver.probe";
    window.localStorage.setItem(probe, "1");
    window.localStorage.removeItem(probe);
    return window.localStorage;
  } catch {
    const memory = new Map();
    return {
      getItem: (key) => memory.get(key) ?? null,
      setItem: (key, value) => memory.set(key, String(value)),
      removeItem: (key) => memory.delete(key),
    };
  }
}

function read(store, key, fallback) {
  try {
    return JSON.parse(store.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

export class RecentTasks {
  /** @param parts {list, empty, clear} */
  constructor(parts) {
    this.parts = parts;
    this.store = storage();
    this.entries = read(this.store, TASKS_KEY, []).filter((entry) => entry?.task_id);
    parts.clear.addEventListener("click", () => {
      this.entries = this.entries.filter((entry) => entry.task_id === this.current?.task_id);
      this.save();
    });
    this.render();
  }

  /** The task a reload should take up again: {task_id, heard}, or null. */
  get current() {
    return read(this.store, CURRENT_KEY, null);
  }

  follow(taskId, heard = 0) {
    this.store.setItem(CURRENT_KEY, JSON.stringify({ task_id: taskId, heard }));
  }

  unfollow(taskId) {
    if (this.current?.task_id === taskId) this.store.removeItem(CURRENT_KEY);
  }

  /** Add or update a task from its JSON, or from a terminal event's core. */
  note(task) {
    const known = this.entries.find((entry) => entry.task_id === task.task_id);
    const entry = known ?? { task_id: task.task_id, added: new Date().toISOString() };
    for (const field of ["filename", "status", "duration", "format", "chunks_emitted"])
      if (task[field] !== undefined && task[field] !== null) entry[field] = task[field];
    if (task.chunks_done !== undefined) entry.chunks_emitted = task.chunks_done;
    if (!known) this.entries.unshift(entry);
    this.entries = this.entries.slice(0, KEEP);
    this.save();
  }

  /** Ask the server how each task is now (once, at page load): a reload shows the truth. */
  async refresh() {
    await Promise.all(
      this.entries.map(async (entry) => {
        try {
          const response = await fetch(`/tasks/${entry.task_id}`, {
            headers: { Accept: "application/json" },
          });
          if (response.status === 404) this.note({ task_id: entry.task_id, status: "gone" });
          else if (response.ok) this.note(await response.json());
        } catch {
          // the server cannot be reached: keep what is known
        }
      }),
    );
  }

  save() {
    try {
      this.store.setItem(TASKS_KEY, JSON.stringify(this.entries));
    } catch {
      // storage full or off: the list lives as long as the page
    }
    this.render();
  }

  render() {
    const items = this.entries.map((entry) => this.item(entry));
    this.parts.list.replaceChildren(...items);
    this.parts.empty.hidden = items.length > 0;
    this.parts.clear.hidden = items.length === 0;
  }

  item(entry) {
    const item = document.createElement("li");
    item.className = "recent-task";
    item.dataset.taskId = entry.task_id;
    item.dataset.status = entry.status ?? "";
    const name = document.createElement("span");
    name.className = "recent-name";
    name.textContent = entry.filename ?? entry.task_id;
    const status = document.createElement("span");
    status.className = "recent-status";
    status.textContent = WORDS[entry.status] ?? entry.status ?? "?";
    const duration = document.createElement("span");
    duration.className = "recent-duration";
    duration.textContent = clock(entry.duration);
    const links = document.createElement("span");
    links.className = "recent-links";
    if (WITH_RESULT.has(entry.status)) {
      links.append(link(`/tasks/${entry.task_id}/result`, "Result", entry, { download: true }));
    }
    if (entry.status !== "gone") links.append(link(`/tasks/${entry.task_id}`, "Details", entry));
    item.append(name, status, duration, links);
    return item;
  }

  /** What tests (and the curious) can read. */
  status() {
    return this.entries.map((entry) => ({ ...entry }));
  }
}

function link(href, text, entry, { download = false } = {}) {
  const anchor = document.createElement("a");
  anchor.href = href;
  anchor.textContent = text;
  if (download) anchor.setAttribute("download", "");
  const about = document.createElement("span");
  about.className = "visually-hidden";
  about.textContent = ` of ${entry.filename ?? "the task"}`;
  anchor.append(about);
  return anchor;
}
