"""OTLP metrics → Prometheus: decode `ExportMetricsServiceRequest`s, keep totals, expose them to a scrape.

Airflow pushes its metrics over OTLP/HTTP; Prometheus 2.42 cannot receive OTLP, so the telemetry server feeds
each request to a `MetricsBridge` and serves `MetricsBridge.collect()` (a prometheus_client custom collector).

Names follow Prometheus' own OTLP translation, so dashboards need no change:

- metric names: every run of characters outside `[a-zA-Z0-9_:]` becomes one `_`, a leading digit gets a `_`
  prefix (`airflow.ti_successes` → `airflow_ti_successes`); units are not appended;
- monotonic sums are counters named `<name>_total` (a name already ending in `_total` is not doubled);
  non-monotonic sums and gauges are gauges; explicit and exponential histograms are Prometheus histograms
  (`_bucket{le}`, `_sum`, `_count`); summaries are not supported (their points are rejected and counted);
- labels: the data point's attributes, names sanitised (invalid characters → `_`, a leading digit or underscore
  gets a `key` / `key_` prefix; values of keys that collide after sanitising are joined with `;`), empty values
  dropped (Prometheus treats them as absent), plus `service` = the resource's `service.name` (never `job`:
  Prometheus sets that). On histograms an attribute named `le` becomes `exported_le`.

Totals, correct however many processes push the same names (Airflow's scheduler, workers and every forked task
do, with no per-process resource id):

- delta sums and histograms are accumulated into the bridge's own cumulative totals, per label set;
- cumulative ones are tracked per stream — (resource attributes, scope, point attributes, start time) — and the
  exposed value is the sum over streams of each stream's latest value. It is kept as a running total: each new
  point adds its increase over the stream's previous point (a monotonic stream that goes down, or a histogram
  whose count goes down, restarted: its whole new value is added). Streams not seen for `stream_ttl_s` are
  forgotten (their contribution stays in the total), so short-lived processes do not grow memory forever;
- gauges: the last value received per label set (arrival order).

Exponential histograms (Airflow's timers) are mapped onto fixed `le` boundaries, `DEFAULT_BUCKETS_MS`, chosen for
Airflow's timings in milliseconds (1 ms … 1 h): each exponential bucket's count goes to the smallest `le` at or
above the bucket's upper bound (conservative: a value is never reported below its true bucket), the zero bucket
to the first `le` (values ≤ zero_threshold), negative buckets to the first `le`. Explicit histograms keep their own
boundaries (those of the first point seen for the metric; later points with other boundaries are re-bucketed the
same conservative way).
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from crispflow.errors import CrispflowError

if TYPE_CHECKING:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from prometheus_client.metrics_core import Metric

DEFAULT_BUCKETS_MS: tuple[float, ...] = (
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
    1_800_000, 3_600_000,
)
DEFAULT_STREAM_TTL_S = 3600.0

_DELTA = 1  # opentelemetry.proto.metrics.v1.AggregationTemporality
_NO_RECORDED_VALUE = 1  # DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_INVALID_NAME_RUN = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")

Kind = Literal["counter", "gauge", "histogram"]
LabelKey = tuple[tuple[str, str], ...]


class OtlpDecodeError(CrispflowError):
    """An OTLP request body is not a valid `ExportMetricsServiceRequest`."""


def decode_request(body: bytes) -> ExportMetricsServiceRequest:
    """Parse an OTLP/HTTP protobuf body; `OtlpDecodeError` when it is not one."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    try:
        return ExportMetricsServiceRequest.FromString(body)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise OtlpDecodeError(f"the body is not an OTLP ExportMetricsServiceRequest (protobuf): {exc}") from None


def metric_name(otel_name: str) -> str:
    """The Prometheus name of an OTLP metric name (without any `_total`)."""
    name = "_".join(part for part in _INVALID_NAME_RUN.split(otel_name) if part) or "_"
    return f"_{name}" if name[0].isdigit() else name


def counter_name(otel_name: str) -> str:
    """The exposed name of a monotonic sum: `metric_name` + `_total`, never doubled."""
    name = metric_name(otel_name)
    return name if name.endswith("_total") else f"{name}_total"


def label_name(key: str) -> str:
    """A Prometheus label name for an attribute key."""
    name = _INVALID_LABEL_CHAR.sub("_", key) or "key_"
    if name[0].isdigit():
        return f"key_{name}"
    return f"key{name}" if name[0] == "_" else name


def exponential_upper_bound(scale: int, index: int) -> float:
    """The upper bound of bucket `index` of an exponential histogram of `scale`: base**(index + 1)."""
    try:
        return 2.0 ** ((index + 1) * 2.0 ** -scale)
    except OverflowError:
        return math.inf


def rebucket(pairs: Iterable[tuple[float, float]], bounds: Sequence[float]) -> list[float]:
    """Per-bucket counts on `bounds` (+ a last +Inf bucket) of (upper bound, count) source buckets: each count
    goes to the smallest bound at or above its upper bound (a relative 1e-9 tolerance absorbs float error)."""
    counts = [0.0] * (len(bounds) + 1)
    for upper, count in pairs:
        if count:
            if math.isnan(upper) or upper == math.inf:
                slot = len(bounds)
            else:
                slot = bisect.bisect_left(bounds, upper - abs(upper) * 1e-9)
            counts[slot] += count
    return counts


@dataclass
class Histo:
    """A histogram on its family's bounds: per-bucket (not cumulative) counts, the last one +Inf."""

    buckets: list[float]
    count: float
    sum: float

    def plus(self, other: Histo, sign: float = 1.0) -> Histo:
        return Histo([a + sign * b for a, b in zip(self.buckets, other.buckets, strict=True)],
                     self.count + sign * other.count, self.sum + sign * other.sum)

    def covers(self, other: Histo) -> bool:
        """True if every count is at least `other`'s (the same stream has not restarted)."""
        return self.count >= other.count and all(a >= b for a, b in zip(self.buckets, other.buckets, strict=True))


Value = float | Histo


@dataclass
class _Family:
    name: str  # the exposed name; for counters it ends in _total
    kind: Kind
    source: str  # gauge, sum or histogram: a non-monotonic sum and a gauge do not share a family
    help: str
    bounds: tuple[float, ...] = ()
    series: dict[LabelKey, Value] = field(default_factory=dict)


@dataclass
class _Stream:
    value: Value
    seen: float


@dataclass
class IngestResult:
    """What one request did: data points taken, and rejected ones by reason."""

    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + count


def _any_value(value: Any) -> Any:
    """An OTLP AnyValue as a plain Python value."""
    which = value.WhichOneof("value")
    if which is None:
        return ""
    if which == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, which)


def _label_value(value: Any) -> str:
    plain = _any_value(value)
    if isinstance(plain, bool):
        return "true" if plain else "false"
    if isinstance(plain, list | dict):
        return json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return str(plain)


def _attributes(attrs: Iterable[Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((kv.key, _label_value(kv.value)) for kv in attrs))


def _labels(attrs: Iterable[tuple[str, str]], service: str | None, kind: Kind) -> LabelKey:
    merged: dict[str, list[str]] = {}
    pairs = sorted(attrs) + ([("service", service)] if service else [])
    for key, value in pairs:
        name = label_name(key)
        if kind == "histogram" and name == "le":
            name = "exported_le"
        if value != "":
            merged.setdefault(name, []).append(value)
    return tuple(sorted((name, ";".join(values)) for name, values in merged.items()))


def _valid_bounds(bounds: Sequence[float]) -> bool:
    """True if `bounds` are finite and strictly increasing (an empty list is valid: one +Inf bucket)."""
    return all(math.isfinite(b) for b in bounds) and all(a < b for a, b in itertools.pairwise(bounds))


def _claimed_names(name: str, kind: Kind) -> tuple[str, ...]:
    return (name, f"{name}_bucket", f"{name}_sum", f"{name}_count") if kind == "histogram" else (name,)


class MetricsBridge:
    """Thread-safe OTLP → Prometheus state; also a prometheus_client collector (`collect`)."""

    def __init__(self, *, buckets: Sequence[float] = DEFAULT_BUCKETS_MS, stream_ttl_s: float = DEFAULT_STREAM_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not buckets or not _valid_bounds(buckets):
            raise ValueError("buckets must be a non-empty, strictly increasing list of bounds")
        self.buckets = tuple(float(b) for b in buckets)
        self.stream_ttl_s = stream_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._claims: dict[str, str] = {}  # every exposed sample name → its family's name
        self._streams: dict[tuple[Any, ...], _Stream] = {}
        self._swept = clock()

    # --- ingest --------------------------------------------------------------------------------------------------

    def ingest_bytes(self, body: bytes) -> IngestResult:
        """Decode (`OtlpDecodeError`) and ingest one OTLP/HTTP protobuf body."""
        return self.ingest(decode_request(body))

    def ingest(self, request: ExportMetricsServiceRequest) -> IngestResult:
        """Fold every data point of `request` into the totals."""
        result = IngestResult()
        with self._lock:
            now = self._clock()
            for rm in request.resource_metrics:
                resource = _attributes(rm.resource.attributes)
                service = dict(resource).get("service.name") or None
                for sm in rm.scope_metrics:
                    origin = (resource, sm.scope.name)
                    for metric in sm.metrics:
                        self._ingest_metric(metric, origin, service, now, result)
            self._sweep(now)
        return result

    def _ingest_metric(self, metric: Any, origin: tuple[Any, ...], service: str | None, now: float,
                       result: IngestResult) -> None:
        which = metric.WhichOneof("data")
        if which not in ("gauge", "sum", "histogram", "exponential_histogram"):
            result.reject(f"unsupported_{which or 'empty'}", self._point_count(metric, which))
            return
        data = getattr(metric, which)
        points = [dp for dp in data.data_points if not dp.flags & _NO_RECORDED_VALUE]
        bounds: tuple[float, ...] = ()
        if which == "gauge":
            name, kind = metric_name(metric.name), "gauge"
        elif which == "sum":
            monotonic = data.is_monotonic
            name, kind = (counter_name(metric.name), "counter") if monotonic else (metric_name(metric.name), "gauge")
        else:
            name, kind = metric_name(metric.name), "histogram"
            first = tuple(points[0].explicit_bounds) if which == "histogram" and points else ()
            bounds = first if first and _valid_bounds(first) else self.buckets
        source = "histogram" if which.endswith("histogram") else which
        family = self._family(metric, name, kind, source, bounds, result, len(points))
        if family is None:
            return
        for dp in points:
            labels = _labels(_attributes(dp.attributes), service, kind)
            if which == "gauge":
                family.series[labels] = self._number(dp)
            elif which == "sum":
                self._add(family, labels, dp, self._number(dp), data.aggregation_temporality, origin, now,
                          monotonic=data.is_monotonic)
            else:
                histo = self._histo(dp, family.bounds, exponential=which == "exponential_histogram")
                if histo is None:
                    result.reject("invalid_histogram")
                    continue
                self._add(family, labels, dp, histo, data.aggregation_temporality, origin, now, monotonic=True)
            result.accepted += 1

    @staticmethod
    def _point_count(metric: Any, which: str | None) -> int:
        return len(getattr(metric, which).data_points) if which else 1

    def _family(self, metric: Any, name: str, kind: Kind, source: str, bounds: tuple[float, ...],
                result: IngestResult, points: int) -> _Family | None:
        family = self._families.get(name)
        if family is None:
            claimed = _claimed_names(name, kind)
            if any(self._claims.get(n, name) != name for n in claimed):
                result.reject("name_conflict", points)
                return None
            family = _Family(name, kind, source, metric.description or f"OTLP metric {metric.name}", bounds)
            self._families[name] = family
            self._claims.update(dict.fromkeys(claimed, name))
        elif (family.kind, family.source) != (kind, source):
            result.reject("type_conflict", points)
            return None
        return family

    @staticmethod
    def _number(dp: Any) -> float:
        return float(dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double)

    @staticmethod
    def _histo(dp: Any, bounds: tuple[float, ...], *, exponential: bool) -> Histo | None:
        if exponential:
            pairs = [(dp.zero_threshold, float(dp.zero_count))]
            pairs += [(exponential_upper_bound(dp.scale, dp.positive.offset + i), float(c))
                      for i, c in enumerate(dp.positive.bucket_counts)]
            pairs += [(-exponential_upper_bound(dp.scale, dp.negative.offset + i - 1), float(c))
                      for i, c in enumerate(dp.negative.bucket_counts)]
        else:
            counts = list(dp.bucket_counts)
            if counts and (len(counts) != len(dp.explicit_bounds) + 1 or not _valid_bounds(dp.explicit_bounds)):
                return None
            uppers = [*dp.explicit_bounds, math.inf]
            pairs = [(uppers[i], float(c)) for i, c in enumerate(counts)]
        buckets = rebucket(pairs, bounds)
        in_buckets = sum(buckets)
        count = float(dp.count)
        if count > in_buckets:  # points outside every bucket (or no buckets at all): count them at +Inf
            buckets[-1] += count - in_buckets
        return Histo(buckets, max(count, in_buckets), dp.sum if dp.HasField("sum") else 0.0)

    def _add(self, family: _Family, labels: LabelKey, dp: Any, value: Value, temporality: int,
             origin: tuple[Any, ...], now: float, *, monotonic: bool) -> None:
        if temporality != _DELTA:  # cumulative (or unspecified, read as cumulative): add the increase
            key = (family.name, origin, _attributes(dp.attributes), dp.start_time_unix_nano)
            previous = self._streams.get(key)
            self._streams[key] = _Stream(value, now)
            if previous is not None:
                value = self._increase(previous.value, value, monotonic=monotonic)
        total = family.series.get(labels)
        if total is None:
            family.series[labels] = value
        elif isinstance(total, Histo):
            family.series[labels] = total.plus(value)
        else:
            family.series[labels] = total + value

    @staticmethod
    def _increase(before: Value, after: Value, *, monotonic: bool) -> Value:
        if isinstance(before, Histo) and isinstance(after, Histo):
            return after.plus(before, -1.0) if after.covers(before) else after
        assert not isinstance(before, Histo) and not isinstance(after, Histo)
        if monotonic and after < before:  # the stream restarted without a new start time
            return after
        return after - before

    def _sweep(self, now: float) -> None:
        if now - self._swept < self.stream_ttl_s / 10:
            return
        self._swept = now
        for key in [k for k, s in self._streams.items() if now - s.seen > self.stream_ttl_s]:
            del self._streams[key]

    # --- expose --------------------------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The prometheus_client collector protocol: one `Metric` per family, samples sorted by labels."""
        from prometheus_client.metrics_core import Metric
        from prometheus_client.utils import floatToGoString

        with self._lock:
            snapshot = [(f.name, f.kind, f.help, f.bounds, sorted(f.series.items())) for f in self._families.values()]
        for name, kind, help_text, bounds, series in sorted(snapshot):
            base = name.removesuffix("_total") if kind == "counter" else name
            family = Metric(base, help_text, kind)
            for labels, value in series:
                plain = dict(labels)
                if isinstance(value, Histo):
                    running = 0.0
                    for bound, count in zip([*bounds, math.inf], value.buckets, strict=True):
                        running += count
                        family.add_sample(f"{base}_bucket", {**plain, "le": floatToGoString(bound)}, running)
                    family.add_sample(f"{base}_count", plain, value.count)
                    family.add_sample(f"{base}_sum", plain, value.sum)
                else:
                    family.add_sample(name, plain, value)
            yield family

    def stream_count(self) -> int:
        """How many cumulative streams are tracked (for tests and the server's own metrics)."""
        with self._lock:
            return len(self._streams)
