"""Delivery: every subscriber reads the task's chunk log from its own cursor.

Against the seams' fakes (an in-memory log, a recording publisher), so that
the interleavings are chosen by the test; the engine-level tests are at the end.
"""

from __future__ import annotations

import shutil
import threading

import pytest
from fakes import LogTask
from helpers import Count, Recorder, music, write_wav

from audioserver.audio.pipeline import Pipeline
from audioserver.delivery import Delivery
from audioserver.tasks import TaskEngine, TaskOptions

BACKLOG = 8


class Clients(Recorder):
    """A recording publisher whose clients can stop reading (their backlog stays full)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused: set[str] = set()
        self.slow: set[str] = set()
        self._turn = 0

    def backlog(self, sid: str) -> int | None:
        if sid not in self.connected:
            return None
        if sid in self.paused:
            return BACKLOG * 10
        if sid in self.slow:  # full every other look: served at its pace, never dropped
            self._turn += 1
            return BACKLOG * 2 if self._turn % 2 else 0
        return 0

    def stream(self, sid: str, task_id: str) -> list[tuple[str, int | None]]:
        """What a client got of a task: (event, chunk index or None), progress left out."""
        with self._condition:
            return [
                (event, data.get("index") if event == "audio_chunk" else None)
                for event, data in self.received[sid]
                if data["task_id"] == task_id and event != "processing_progress"
            ]

    def last(self, sid: str, task_id: str) -> str:
        with self._condition:
            return [event for event, data in self.received[sid] if data["task_id"] == task_id][-1]

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        with self._condition:
            assert self._condition.wait_for(predicate, timeout=timeout), self.summary()

    def summary(self) -> str:
        return ", ".join(f"{sid}: {len(events)}" for sid, events in self.received.items())


def whole(count: int) -> list[tuple[str, int | None]]:
    return [("audio_chunk", index) for index in range(count)] + [("processing_complete", None)]


@pytest.fixture
def clients() -> Clients:
    return Clients()


@pytest.fixture
def delivery(clients) -> Delivery:
    return Delivery(clients, client_backlog=BACKLOG)


def ended(clients: Clients, sid: str, task: LogTask) -> bool:
    return any(event == "processing_complete" for event, _ in clients.stream(sid, task.id))


def test_three_cursors_at_different_speeds_each_get_every_chunk_once_in_order(clients, delivery):
    task = LogTask("t1")
    fast, slow, paused = (clients.connect(sid) for sid in ("fast", "slow", "paused"))
    clients.slow.add(slow)
    clients.paused.add(paused)
    for sid in (fast, slow, paused):
        delivery.subscribe(task, sid)
    writer = threading.Thread(target=lambda: (task.write(60), task.finish()))
    writer.start()
    # The paused client reads nothing until the two others have the whole task...
    clients.wait_for(lambda: ended(clients, fast, task) and ended(clients, slow, task))
    assert clients.stream(paused, task.id) == []
    # ...then catches up from where it was, at its own pace.
    clients.paused.discard(paused)
    clients.wait_for(lambda: ended(clients, paused, task))
    writer.join()
    for sid in (fast, slow, paused):
        assert clients.stream(sid, task.id) == whole(60), sid


def progress(task: LogTask, stage: int, emitted: int) -> dict:
    """A processing_progress of a two-stage task, after emitted chunks."""
    return {"task_id": task.id, "stage": stage, "stages": 2, "chunks_done": emitted,
            "chunks_total": 10, "progress": 0.5 + emitted / 20, "chunks_emitted": emitted,
            "duration": 1.0, "elapsed": 0.1}  # fmt: skip


def test_a_cursor_behind_gets_every_stage_end_in_its_place_and_skips_the_rest(clients, delivery):
    task = LogTask("t-progress")
    live, behind = clients.connect("live"), clients.connect("behind")
    clients.paused.add(behind)  # reads nothing: its cursor stays at chunk 0
    for sid in (live, behind):
        delivery.subscribe(task, sid)

    def received(sid: str) -> list[tuple[str, object]]:
        with clients._condition:
            return [
                (event, data.get("index", data.get("chunks_emitted")))
                for event, data in clients.received[sid]
            ]

    delivery.progress(task, progress(task, 0, 0) | {"chunks_done": 10}, stage_end=True)
    task.write(5)
    clients.wait_for(lambda: len(clients.stream(live, task.id)) == 5)
    delivery.progress(task, progress(task, 1, 5))  # throttled: to caught-up cursors only
    task.write(5, start=5)
    clients.wait_for(lambda: len(clients.stream(live, task.id)) == 10)
    delivery.progress(task, progress(task, 1, 10), stage_end=True)
    task.finish()
    delivery.ended(task)
    clients.wait_for(lambda: ended(clients, live, task))
    chunks = [("audio_chunk", index) for index in range(10)]
    stage_0_end, stage_1_end = ("processing_progress", 0), ("processing_progress", 10)
    assert received(live) == [stage_0_end, *chunks[:5], ("processing_progress", 5),
                              *chunks[5:], stage_1_end, ("processing_complete", 10)]  # fmt: skip
    assert received(behind) == []
    # Once it reads, it gets the first stage's end before chunk 0 and the last one's before
    # the end: every stage end in its place, the throttled one (superseded) not at all.
    clients.paused.discard(behind)
    clients.wait_for(lambda: ended(clients, behind, task))
    assert received(behind) == [stage_0_end, *chunks, stage_1_end, ("processing_complete", 10)]


@pytest.mark.parametrize(
    "moment",
    [
        ("append", 9),  # just before the last chunk is written
        ("append", 10),  # the last chunk is written, the end is not
        ("end", 10),  # the end is written; the publisher has not been told
    ],
)
def test_a_subscribe_landing_as_the_last_chunk_and_the_end_are_written(clients, delivery, moment):
    task = LogTask("t2")
    early, late = clients.connect("early"), clients.connect("late")
    delivery.subscribe(task, early)

    def subscribe_now(what: str, length: int) -> None:
        if (what, length) == moment:
            delivery.subscribe(task, late)

    task.chunk_log.hook = subscribe_now
    task.write(10)
    task.finish()
    delivery.ended(task)  # what TaskRun does right after ending the log
    clients.wait_for(lambda: ended(clients, early, task) and ended(clients, late, task))
    assert clients.stream(early, task.id) == whole(10)
    assert clients.stream(late, task.id) == whole(10)


def test_subscribing_again_moves_the_cursor(clients, delivery):
    task = LogTask("t3")
    sid = clients.connect("client")
    task.write(5)
    delivery.subscribe(task, sid)
    clients.wait_for(lambda: len(clients.stream(sid, task.id)) == 5)
    delivery.subscribe(task, sid, from_index=3)  # the client lost chunks 3 and 4
    clients.wait_for(lambda: len(clients.stream(sid, task.id)) == 7)
    task.write(2, start=5)
    task.finish()
    clients.wait_for(lambda: ended(clients, sid, task))
    indexes = [index for _, index in clients.stream(sid, task.id)]
    assert indexes == [0, 1, 2, 3, 4, 3, 4, 5, 6, None]


def test_unsubscribe_and_disconnect_end_the_cursor(clients, delivery):
    task = LogTask("t4")
    leaving, gone, staying = (clients.connect(sid) for sid in ("leaving", "gone", "staying"))
    for sid in (leaving, gone, staying):
        delivery.subscribe(task, sid)
    task.write(3)
    clients.wait_for(lambda: all(len(clients.stream(s, task.id)) == 3 for s in (leaving, gone)))
    delivery.unsubscribe(task, leaving)
    clients.disconnect(gone)
    delivery.drop_client(gone)
    task.write(3, start=3)
    task.finish()
    delivery.ended(task)
    clients.wait_for(lambda: ended(clients, staying, task))
    assert clients.stream(leaving, task.id) == whole(3)[:-1]
    assert clients.stream(gone, task.id) == whole(3)[:-1]
    assert clients.stream(staying, task.id) == whole(6)
    assert delivery.subscribers(task) == 0


# -- the engine: the real log on disk, the real pool ------------------------------------


@pytest.fixture
def engine_with(tmp_path, ffmpeg):
    engines = []

    def make(recorder, folder="data", **settings) -> TaskEngine:
        engine = TaskEngine(
            data_dir=tmp_path / folder, ffmpeg=ffmpeg, workers=2, publisher=recorder, **settings
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


def start_task(engine, tmp_path, seconds, *, sid=None, spec="gain=db=-3", chunk_seconds=0.1):
    source = write_wav(tmp_path / f"source-{seconds}.wav", music(seconds), 44100)
    upload = tmp_path / "upload"
    shutil.copy(source, upload)
    options = TaskOptions(pipeline=Pipeline.parse(spec), chunk_seconds=chunk_seconds)
    return engine.create(upload, filename="a.wav", options=options, subscriber=sid)


def test_200_subscribers_each_get_every_chunk_once_and_each_chunk_is_encoded_once(
    engine_with, tmp_path, test_steps
):
    clients = Clients()
    engine = engine_with(clients)
    first = clients.connect("first")
    task = start_task(engine, tmp_path, 4.0, sid=first, spec="test_count")
    Count.wait_for(1)  # the first chunk is in the step: the others subscribe meanwhile
    sids = [clients.connect(f"client-{number}") for number in range(200)]
    for sid in sids:
        engine.subscribe(task.id, sid)
    Count.gate.set()
    clients.wait_for(lambda: all(ended(clients, sid, task) for sid in [first, *sids]), 120)
    chunks = task.next_index
    assert chunks == 40
    expected = whole(chunks)
    for sid in [first, *sids]:
        assert clients.stream(sid, task.id) == expected, sid
        assert clients.last(sid, task.id) == "processing_complete"  # no progress after it
    audio = {bytes(data["audio"]) for _, data in clients.received[sids[-1]] if "audio" in data}
    assert len(audio) == chunks  # every chunk's own audio
    encoded = [data["index"] for event, data in clients.prepared if event == "audio_chunk"]
    assert sorted(encoded) == list(range(chunks))  # once each, for 201 clients


def test_a_cursor_on_a_long_finished_task_reads_it_from_disk(engine_with, tmp_path):
    clients = Clients()
    engine = engine_with(clients)
    live = clients.connect("live")
    task = start_task(engine, tmp_path, 6.0, sid=live)
    clients.wait_for(lambda: ended(clients, live, task))
    assert task.retired.wait(30)
    original = [data for event, data in clients.received[live] if event == "audio_chunk"]
    engine.shutdown()
    # A server started later takes the task back from its folder: nothing of it in memory.
    later = engine_with(clients)
    assert later.get(task.id) is not task
    replay, middle = clients.connect("replay"), clients.connect("middle")
    later.subscribe(task.id, replay)
    later.subscribe(task.id, middle, from_index=37)
    clients.wait_for(lambda: ended(clients, replay, task) and ended(clients, middle, task))
    assert clients.stream(replay, task.id) == whole(60)
    assert clients.stream(middle, task.id) == whole(60)[37:]
    again = [data for event, data in clients.received[replay] if event == "audio_chunk"]
    assert [bytes(chunk["audio"]) for chunk in again] == [bytes(c["audio"]) for c in original]
    assert [chunk["waveform"] for chunk in again] == [chunk["waveform"] for chunk in original]


def test_a_file_log_keeps_no_audio_in_memory_once_ended(tmp_path):
    from audioserver.chunklog import FileChunkLog, LogClosed
    from audioserver.storage import ChunkStore

    log = FileChunkLog(ChunkStore(tmp_path, sample_rate=8000, channels=1))
    pcm = [bytes([index]) * 200 for index in range(6)]
    for index, audio in enumerate(pcm):
        log.append({"index": index, "frames": 100}, audio)
    assert log.wait(5, timeout=0) and not log.wait(6, timeout=0)
    log.end("processing_complete", {"task_id": "t"})
    assert log.wait(6, timeout=0)  # the end is an entry: a waiting cursor wakes for it
    assert log._tail == {}  # a finished task can be kept a day: its audio stays on disk
    assert [log.read(index) for index in range(6)] == [
        ({"index": index, "frames": 100}, audio) for index, audio in enumerate(pcm)
    ]
    log.close()
    with pytest.raises(LogClosed):
        log.read(0)


def test_jobs_finished_in_any_order_are_emitted_in_order(tmp_path, ffmpeg):
    from fakes import HeldRunner

    clients, runner = Clients(), HeldRunner()
    engine = TaskEngine(
        data_dir=tmp_path / "data", ffmpeg=ffmpeg, workers=2, publisher=clients, runner=runner
    )
    sid = clients.connect("client")
    try:
        task = start_task(engine, tmp_path, 1.2, sid=sid)  # 12 chunks, a window of 4
        for _ in range(3):
            window = runner.wait_jobs(4)  # the feeder waits for room: the window is full
            for job in reversed(window):  # the last of the window finishes first
                job()
        clients.wait_for(lambda: ended(clients, sid, task))
    finally:
        engine.shutdown()
    assert clients.stream(sid, task.id) == whole(12)
