"""The shadow arm: records mirrored to the shadow model are scored on a worker thread after the response is sent,
logged with `served=False`, and never returned. A full queue drops (and counts) mirrored work, never waits."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crispflow.serving.models import LoadedModel
from crispflow.serving.policy import SHADOW

if TYPE_CHECKING:
    from crispflow.serving.metrics import ServingMetrics

log = logging.getLogger("crispflow.serving")

# the shadow model, then per mirrored record: record, request id, entity; then the request's time and the
# record keys allowed besides the signature's (the policy's entity key)
ShadowJob = tuple[LoadedModel, list[dict[str, Any]], list[str], list[str | None], datetime, tuple[str, ...]]


class ShadowWorker:
    """Scores mirrored records with the shadow model on its own thread; results only go to `sink` (the log)."""

    def __init__(self, model: str, sink: Callable[[list[dict[str, Any]]], None] | None, metrics: ServingMetrics,
                 max_jobs: int) -> None:
        self.model = model
        self._sink = sink
        self._metrics = metrics
        self._jobs: queue.Queue[ShadowJob | None] = queue.Queue(max_jobs)
        self._thread = threading.Thread(target=self._run, name=f"crispflow-shadow-{model}", daemon=True)
        self._start_lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start the worker thread (idempotent; `submit` starts it on first use, so an unused shadow costs none)."""
        with self._start_lock:
            if not self._closed and not self._thread.is_alive():
                self._thread.start()

    def submit(self, job: ShadowJob) -> None:
        """Queue a mirrored request; when the queue is full (or the worker is closed) it is dropped and counted,
        never waited on."""
        self.start()
        if self._closed:
            self._metrics.shadow_dropped.labels(self.model).inc(len(job[1]))
            return
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self._metrics.shadow_dropped.labels(self.model).inc(len(job[1]))

    def close(self, timeout: float) -> None:
        """Score what is queued, then stop."""
        with self._start_lock:
            self._closed = True
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._score(*job)
            except Exception:  # the shadow never affects serving
                log.exception("shadow scoring failed")
                self._metrics.errors.labels("shadow").inc()

    def _score(self, model: LoadedModel, records: list[dict[str, Any]], ids: list[str],
               entities: list[str | None], ts: datetime, allowed: tuple[str, ...]) -> None:
        start = time.perf_counter()
        valid = [i for i, r in enumerate(records) if not model.schema.check_record(i, r, allowed)]
        outputs: dict[int, Any] = {}
        if valid:
            try:
                out = model.output_records([records[i] for i in valid])
                outputs = dict(zip(valid, out.tolist(), strict=True))
            except Exception:
                log.exception("shadow model v%s failed", model.version)
                self._metrics.errors.labels("shadow").inc()
        if len(valid) < len(records):  # the shadow's signature refuses what the served arm accepted
            self._metrics.errors.labels("shadow_validation").inc(len(records) - len(valid))
        latency_ms = (time.perf_counter() - start) * 1000
        if self._sink is not None:
            self._sink([{"request_id": ids[i], "ts": ts, "model": self.model, "version": model.version,
                         "alias": SHADOW, "served": False, "entity": entities[i], **model.logged(outputs.get(i)),
                         "latency_ms": latency_ms, "status": "ok" if i in outputs else "error",
                         "features": records[i]} for i in range(len(records))])
