"""Micro-batching of /predict: one scoring thread takes every request that arrived while it was busy and scores
them together. The model call costs about the same for 1 row as for 100, so a busy server answers many more
requests per second; an idle one scores a request at once (no timer).

A request that asks for explanations (`?explain=true`) carries its `ExplainRequest` as a fourth element of its
arrival; a plain request's arrival stays (body, perf_counter, wall time), so it costs nothing extra. After the
model calls, the explained records of the batch are explained per answering arm and top_k (`explain_parts`)."""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from crispflow.serving.models import LoadedModel
    from crispflow.serving.validation import ExplainRequest

log = logging.getLogger("crispflow.serving")

# a /predict body, perf_counter() and wall time at its arrival (and, for an explained request, its ExplainRequest)
Arrival = tuple[bytes, float, datetime] | tuple[bytes, float, datetime, "ExplainRequest"]


def request_ids(n: int) -> list[str]:
    """`n` random (version 4) UUID strings, as `str(uuid.uuid4())` makes them, from one `os.urandom` call."""
    raw = bytearray(os.urandom(16 * n))
    for k in range(6, 16 * n, 16):
        raw[k] = (raw[k] & 0x0F) | 0x40  # version 4
        raw[k + 2] = (raw[k + 2] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return [f"{h[o:o + 8]}-{h[o + 8:o + 12]}-{h[o + 12:o + 16]}-{h[o + 16:o + 20]}-{h[o + 20:o + 32]}"
            for o in range(0, 32 * n, 32)]


@dataclass(slots=True)
class ModelCall:
    """The input of one model call that scored records of explained requests, kept so that their explanations
    reuse its preprocessing: the explainer's `transform` runs once for both the scores and the reasons."""

    frame: pd.DataFrame  # the model input (signature columns) of the call's records
    transformed: np.ndarray  # the explainer's transform of `frame`


@dataclass(slots=True)
class PreparedRequest:
    """One parsed, validated /predict request waiting for its outputs (filled in by `score_parts`)."""

    slot: int
    records: list[dict[str, Any]]
    ids: list[str]
    entities: list[str | None]
    chosen: list[str]  # arm per record
    groups: dict[str, list[int]]  # arm → record indexes
    allowed: tuple[str, ...]
    start: float
    ts: datetime
    scores: list[Any]  # per record: the model's output (see `LoadedModel.rows`)
    top_k: dict[str, int] | None = None  # explained requests only: arm → contributions listed per record
    # explained requests only: version → the call that scored the request's records of that version, and the row of
    # its first one there (a request's records of one version are consecutive rows of the call)
    calls: dict[str, tuple[ModelCall, int]] | None = None
    explanations: list[dict[str, Any] | None] | None = None  # per record, filled in by `explain_parts`
    explanation_texts: list[str | None] | None = None  # the same as compact JSON (the prediction log's column)


def score_parts(model: LoadedModel, parts: list[tuple[PreparedRequest, list[int]]]) -> None:
    """One model call over the given records of several requests; each record's output (a float, or the class
    probabilities of a multiclass model) written back to its request. When some of the requests ask for
    explanations and the model has an explainer, the call goes through the explainer's `transform` and
    `model_response` (the model's own output, checked equal at load) and is kept for `explain_parts`; otherwise
    the records go straight to `LoadedModel.output_records` (the compiled scorer when the version has one)."""
    if len(parts) == 1 and len(parts[0][1]) == len(parts[0][0].records):
        records = parts[0][0].records
    else:
        records = [p.records[i] for p, index in parts for i in index]
    import numpy as np

    call = None
    if model.explainer is not None and any(p.top_k is not None for p, _ in parts):
        frame = model.schema.frame(records)
        try:
            transformed = model.explainer.transform(frame)
            out = model.output_of(model.explainer.model_response(transformed))
            call = ModelCall(frame, transformed)
        except Exception:  # the plain model call decides; `explain_parts` reports the explainer's failure
            log.warning("%s v%s: the explainer's transform failed; scoring without it", model.name, model.version,
                        exc_info=True)
    if call is None:
        out = model.output_records(records)
    if len(out) != len(records):
        raise ValueError(f"the model returned {len(out)} outputs for {len(records)} records")
    if not np.isfinite(out).all():
        raise ValueError("the model returned a non-finite output")
    values = out.tolist()
    position = 0
    for p, index in parts:
        if call is not None and p.top_k is not None:
            p.calls = p.calls or {}
            p.calls[model.version] = (call, position)
        for i in index:
            p.scores[i] = values[position]
            position += 1


def explain_parts(model: LoadedModel, parts: list[tuple[PreparedRequest, list[int]]], top_k: int) -> None:
    """One explainer call over the given records of several requests (all asking `top_k` contributions), on the
    preprocessed rows of the model call that scored them when there is one; each explanation checked
    (`checked_explanation`) and written back to its request."""
    explainer = model.explainer
    if explainer is None:
        raise ValueError(f"v{model.version} has no explainer ({model.explainer_status})")
    n = sum(len(index) for _, index in parts)
    frame, transformed = _call_rows(model, parts)
    if frame is None:
        frame = model.schema.frame([p.records[i] for p, index in parts for i in index])
    explained = explainer.explain(frame, top_k, transformed=transformed)
    if len(explained) != n:
        raise ValueError(f"the explainer returned {len(explained)} explanations for {n} records")
    checked = [checked_explanation(e, model.explainer_tolerance) for e in explained]
    texts = [json.dumps(e, separators=(",", ":"), sort_keys=True, allow_nan=False) for e in checked]
    position = 0
    for p, index in parts:
        if p.explanations is None or p.explanation_texts is None:
            p.explanations, p.explanation_texts = [None] * len(p.records), [None] * len(p.records)
        for i in index:
            p.explanations[i], p.explanation_texts[i] = checked[position], texts[position]
            position += 1


def _call_rows(model: LoadedModel, parts: list[tuple[PreparedRequest, list[int]]]
               ) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    """(frame, transformed) of the parts' records from the one model call that scored them all; (None, None)
    when there is none (then the explainer preprocesses again)."""
    found = [(p.calls or {}).get(model.version) for p, _ in parts]
    if not found or any(f is None for f in found) or len({id(f[0]) for f in found}) != 1:  # type: ignore[index]
        return None, None
    call = found[0][0]  # type: ignore[index]
    rows = [start + k for (_, index), (_, start) in zip(parts, found, strict=True)  # type: ignore[misc]
            for k in range(len(index))]
    if rows == list(range(len(call.frame))):
        return call.frame, call.transformed
    return call.frame.iloc[rows].reset_index(drop=True), call.transformed[rows]


def checked_explanation(explanation: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """`explanation` if it is additive: base_value + Σ contributions + other equals check.output within
    `tolerance` (recomputed here, not read from check.abs_error), every number finite. Raises ValueError otherwise:
    a wrong reason is never served."""
    items = explanation["contributions"]
    numbers = [explanation["base_value"], explanation["other"], explanation["check"]["output"],
               *(item["contribution"] for item in items)]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        raise ValueError("the explanation has a non-finite or non-numeric value")
    total = math.fsum([explanation["base_value"], explanation["other"], *(item["contribution"] for item in items)])
    error = abs(total - explanation["check"]["output"])
    if not error <= tolerance:
        raise ValueError(f"the explanation is not additive: |base + contributions + other - output| = {error:.3g} "
                         f"> {tolerance:g}")
    return explanation


class QueueFull(Exception):
    """The scoring queue holds its most requests: refuse (503 with Retry-After) instead of growing memory."""


class Batcher:
    """Requests queue while the model is busy, and the scoring thread takes all that arrived meanwhile (at most
    `max_requests`) as one batch for `score`, which returns one response or exception per request, in order.
    At most `max_queue` requests wait: `submit` raises QueueFull beyond it."""

    def __init__(self, score: Callable[[list[Arrival]], list[dict[str, Any] | Exception]], max_requests: int,
                 max_queue: int = 1024) -> None:
        self._score = score
        self._max = max_requests
        self._max_queue = max_queue
        self._waiting = 0  # queued, not yet taken by the scoring thread
        self._count_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Arrival, Future[dict[str, Any]]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="crispflow-scoring", daemon=True)
        self.running = False

    def start(self) -> None:
        if not self.running and not self._thread.is_alive():
            self.running = True
            self._thread.start()

    def submit(self, body: bytes, explain: ExplainRequest | None = None) -> Future[dict[str, Any]]:
        """Queue one request (with what it asks to explain, if anything); the future holds its response or raises
        its exception."""
        with self._count_lock:
            if self._waiting >= self._max_queue:
                raise QueueFull(f"{self._waiting} requests are waiting to be scored (the limit is {self._max_queue})")
            self._waiting += 1
        future: Future[dict[str, Any]] = Future()
        arrival: Arrival = (body, time.perf_counter(), datetime.now(UTC)) if explain is None \
            else (body, time.perf_counter(), datetime.now(UTC), explain)
        self._queue.put((arrival, future))
        return future

    def _taken(self, n: int) -> None:
        with self._count_lock:
            self._waiting -= n

    def close(self, timeout: float) -> None:
        """Score what is queued, then stop."""
        self.running = False  # later requests are scored in the threadpool
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        """The scoring thread: native thread pools (OpenMP, BLAS) limited to `CRISPFLOW_SERVE_THREADS` (default 1)
        for its life: a 1-row call into a 2-thread OpenMP pool fought the server's other threads for the cores
        (gradient boosting: +6 ms p50 per explained request on 2 CPUs, benchmarks/explain_overhead.py)."""
        from crispflow.native_threads import thread_limit

        with thread_limit("CRISPFLOW_SERVE_THREADS"):
            self._loop()

    def _loop(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self._max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._taken(len(batch))
            try:
                outcomes = self._score([arrival for arrival, _ in batch])
            except Exception as exc:  # a bug, not bad input: every request of the batch gets a 500
                log.exception("scoring a batch of %d requests failed", len(batch))
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.set_running_or_notify_cancel():
                    continue  # the client went away
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
