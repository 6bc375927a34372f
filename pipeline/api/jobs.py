"""Runs behind the HTTP API: a bounded number at once off the event loop, a bounded queue, one
computation for identical concurrent requests, and cancellation when nobody listens any more.

A `Job` records every event its run emits (queued, result, progress, done, error); each
listener replays them from the start, so a request that joins an identical running one sees
the same stream. Everything here runs on the event loop except `work`, which runs in a thread
and hands its events back with `call_soon_threadsafe`. A server shutting down `close`s the
runner: queued runs end with `error`, running ones stop after their current chunk and end with
`done` (interrupted), or at once (`abort`) with an `error` that says what was kept.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]  # {"event": name, "data": JSON-able}
# Runs in a thread; returns the `done` event's data and the answer of a non-streaming request.
Work = Callable[["Emitter"], tuple[dict[str, Any], Any]]


class QueueFull(Exception):
    """Every run slot is busy and the queue holds as many requests as it may."""


class ShuttingDown(Exception):
    """The server is shutting down: it starts no more runs."""


SHUTTING_DOWN = "the server is shutting down; retry when it is back"


@dataclass
class Emitter:
    """What a run's thread gets: `emit` an event, ask `cancelled` between kernel calls."""

    emit: Callable[[str, Any], None]
    cancelled: Callable[[], bool]


@dataclass
class Job:
    key: str
    work: Work
    id: int
    events: list[Event] = field(default_factory=list)
    listeners: int = 0
    state: str = "queued"  # queued -> running -> done | error | cancelled
    cancel: threading.Event = field(default_factory=threading.Event)  # stop after the current chunk
    abort: threading.Event = field(default_factory=threading.Event)  # stop at once (a second signal)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # replaced at each event
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    answer: Any = None
    finished_at: float | None = None
    cancelled_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "error", "cancelled")

    def publish(self, name: str, data: Any) -> None:
        self.events.append({"event": name, "data": data})
        self.changed.set()
        self.changed = asyncio.Event()

    def stop_asked(self) -> bool:
        """A run's `should_stop`: True stops it after its current chunk; after `abort`, StopNow at once."""
        if self.abort.is_set():
            from pipeline.core.stopping import StopNow

            raise StopNow("the server is shutting down at once")
        return self.cancel.is_set()


class Runner:
    """`max_running` runs at once in threads; up to `max_queued` more wait (else QueueFull)."""

    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running = max(1, max_running)
        self.max_queued = max(0, max_queued)
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: set[int] = set()
        self.live: dict[str, Job] = {}  # key -> job not finished yet (identical requests join it)
        self.counts = collections.Counter()  # started, joined, rejected, cancelled, done, error
        self.recent: collections.deque[Job] = collections.deque(maxlen=200)  # finished jobs, newest last
        self.closing = False
        self._active: dict[int, Job] = {}  # the running jobs by id (`running` has their ids)
        self._ids = itertools.count(1)

    def submit(self, key: str, work: Work) -> Job:
        """The live job for `key` (joined), or a new one started or queued; QueueFull if neither fits."""
        if self.closing:
            raise ShuttingDown(SHUTTING_DOWN)
        job = self.live.get(key)
        if job is not None and not job.cancel.is_set():
            self.counts["joined"] += 1
            return job
        if len(self.running) >= self.max_running and len(self.waiting) >= self.max_queued:
            self.counts["rejected"] += 1
            raise QueueFull(f"{len(self.running)} runs are running and {len(self.waiting)} waiting, the most "
                            f"allowed (CRYPTOBT_API_WORKERS, CRYPTOBT_API_QUEUE); retry later")
        job = Job(key, work, next(self._ids))
        self.live[key] = job
        self.waiting.append(job)
        self._start_waiting()
        return job

    def leave(self, job: Job) -> None:
        """A listener (who did `job.listeners += 1`) is gone; the last one leaving cancels the job."""
        job.listeners -= 1
        if job.listeners <= 0 and not job.finished:
            self.cancel(job)

    def cancel(self, job: Job) -> None:
        """Stop `job`: out of the queue if it waits, else its thread stops after the current kernel call."""
        if job.cancel.is_set():
            return
        job.cancel.set()
        job.cancelled_at = time.monotonic()
        self.counts["cancelled"] += 1
        if self.live.get(job.key) is job:
            del self.live[job.key]
        if job in self.waiting:
            self.waiting.remove(job)
            self._finish(job, "cancelled")
            self._announce_positions()

    def _announce_positions(self) -> None:
        for position, job in enumerate(self.waiting, start=1):
            job.publish("queued", {"position": position, "running": len(self.running)})

    def _start_waiting(self) -> None:
        while self.waiting and len(self.running) < self.max_running:
            job = self.waiting.popleft()
            self.running.add(job.id)
            self._active[job.id] = job
            job.state = "running"
            self.counts["started"] += 1
            asyncio.get_running_loop().create_task(self._run(job))
        self._announce_positions()

    async def close(self, forced: Callable[[], bool]) -> None:
        """Start no more runs; end the queued ones with `error` and stop the running ones after their
        current chunk (at once once `forced()`), and return when every run has ended and its
        listeners have had its last event (those still reading after a few seconds are left)."""
        self.closing = True
        for job in list(self.waiting):
            self.waiting.remove(job)
            job.publish("error", {"error": SHUTTING_DOWN, "status": 503})
            self._finish(job, "error")
        stopping = list(self._active.values())
        for job in stopping:
            job.cancel.set()
        while self._active:
            if forced():
                for job in stopping:
                    job.abort.set()
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 5
        while any(job.listeners > 0 for job in stopping) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _run(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        emitter = Emitter(lambda name, data: loop.call_soon_threadsafe(job.publish, name, data), job.stop_asked)
        try:
            done, job.answer = await asyncio.to_thread(job.work, emitter)
        except KeyboardInterrupt as exc:  # stopped at once (`abort`): says what it kept
            await asyncio.sleep(0)
            job.publish("error", {"error": f"stopped at once: {exc}", "status": 503})
            self._finish(job, "error")
        except Exception as exc:  # noqa: BLE001 - reported to every listener as one `error` event
            from pipeline.core.errors import PipelineError

            message = str(exc).splitlines()[0] if isinstance(exc, PipelineError) else \
                f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            await asyncio.sleep(0)  # let the thread's last call_soon_threadsafe events land first
            job.publish("error", {"error": message, "status": 400 if isinstance(exc, PipelineError) else 500})
            self._finish(job, "error")
        else:
            await asyncio.sleep(0)
            job.publish("done", done)
            self._finish(job, "cancelled" if job.cancel.is_set() else "done")
        finally:
            self.running.discard(job.id)
            self._active.pop(job.id, None)
            if not self.closing:
                self._start_waiting()

    def _finish(self, job: Job, state: str) -> None:
        job.state = state
        job.finished_at = time.monotonic()
        if state != "cancelled":
            self.counts[state] += 1
        if self.live.get(job.key) is job:
            del self.live[job.key]
        self.recent.append(job)
        job.changed.set()
        job.ended.set()
