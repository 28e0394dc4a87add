"""Upload a file, print each processed chunk as it streams in, save the result.

Usage: python examples/process.py song.mp3 [pipeline] [server]
"""

import sys
import threading
import wave

import requests

from audioclient import InOrderClient  # a socketio.Client that keeps event order

path = sys.argv[1]
pipeline = sys.argv[2] if len(sys.argv) > 2 else "highpass=freq=80,normalize"
server = sys.argv[3] if len(sys.argv) > 3 else "http://localhost:5001"

sio = InOrderClient()
chunks, finished = [], threading.Event()


@sio.on("audio_chunk")
def on_chunk(chunk):
    chunks.append(chunk)
    print(
        f"chunk {chunk['index'] + 1}/{chunk['chunks_total']}: "
        f"peak {chunk['peak_db']:.1f} dBFS, rms {chunk['rms_db']:.1f} dBFS"
    )


@sio.on("processing_complete")
def on_complete(end):
    print(f"done: {end['duration']:.1f} s of audio in {end['elapsed']:.2f} s")
    finished.set()


@sio.on("processing_error")
def on_error(error):
    print("failed:", error["message"])
    finished.set()


sio.connect(server, transports=["websocket"])
with open(path, "rb") as file:
    response = requests.post(
        f"{server}/upload", files={"file": file}, data={"pipeline": pipeline, "sid": sio.get_sid()}
    )
if response.status_code != 202:
    sys.exit(f"upload refused: {response.json()['message']}")
finished.wait()
sio.disconnect()

if chunks:
    output = path.rsplit(".", 1)[0] + "_processed.wav"
    with wave.open(output, "wb") as out:
        out.setnchannels(chunks[0]["channels"])
        out.setsampwidth(2)
        out.setframerate(chunks[0]["sample_rate"])
        out.writeframes(b"".join(chunk["audio"] for chunk in chunks))
    print("saved", output)
