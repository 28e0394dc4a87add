// Upload a file, print each processed chunk as it streams in, save the result.
//
// Usage: node examples/process.mjs song.mp3 [pipeline] [server]
// Needs Node 18+ (global fetch, FormData, Blob) and socket.io-client (npm ci).

import { readFile, writeFile } from "node:fs/promises";
import { basename } from "node:path";
import { io } from "socket.io-client";

const [path, pipeline = "highpass=freq=80,normalize", server = "http://localhost:5001"] =
  process.argv.slice(2);

const socket = io(server, { transports: ["websocket"] });
await new Promise((resolve, reject) => {
  socket.once("connect", resolve);
  socket.once("connect_error", reject);
});

socket.on("audio_chunk", (chunk) => {
  console.log(
    `chunk ${chunk.index + 1}/${chunk.chunks_total}: ` +
      `peak ${chunk.peak_db.toFixed(1)} dBFS, rms ${chunk.rms_db.toFixed(1)} dBFS`,
  );
});
const end = new Promise((resolve) => {
  socket.on("processing_complete", (data) => resolve(["complete", data]));
  socket.on("processing_error", (data) => resolve(["error", data]));
});

// Passing sid (socket.id) subscribes this socket to the task from its first chunk.
const form = new FormData();
form.append("file", new Blob([await readFile(path)]), basename(path));
form.append("pipeline", pipeline);
form.append("sid", socket.id);
const upload = await fetch(`${server}/upload`, { method: "POST", body: form });
if (upload.status !== 202) {
  console.error(`upload refused: ${(await upload.json()).message}`);
  process.exit(1);
}
const { task_id } = await upload.json();

const [outcome, data] = await end;
socket.disconnect();
if (outcome === "error") {
  console.error(`failed: ${data.message}`);
  process.exit(1);
}
console.log(`done: ${data.duration.toFixed(1)} s of audio in ${data.elapsed.toFixed(2)} s`);

const result = await fetch(`${server}/tasks/${task_id}/result`);
const output = path.replace(/\.[^./]+$/, "") + "_processed.wav";
await writeFile(output, Buffer.from(await result.arrayBuffer()));
console.log(`saved ${output}`);
