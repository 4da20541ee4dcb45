"""Counters, gauges and histograms a fleet operator can scrape, and the node's REPL can read.

One :class:`Metrics` per node (``node.metrics``). Flows record into it from the trio loop or from
worker threads (every method takes one lock). :meth:`Metrics.render_prometheus` writes the
Prometheus text exposition format 0.0.4; :func:`serve_metrics` serves it over HTTP at ``/metrics``.

A histogram keeps fixed cumulative buckets, a count and a sum (for Prometheus) plus a bounded
window of the most recent observations (for percentiles in the REPL, the demo and ``node.status``).

Names and labels follow the Prometheus data model: ``[a-zA-Z_:][a-zA-Z0-9_:]*`` metric names,
``[a-zA-Z_][a-zA-Z0-9_]*`` label names; label values are any text (escaped on output). A metric
name is one kind for its whole life: ``inc`` on a gauge's name is a ``ValueError``.
"""
from __future__ import annotations

import collections
import math
import re
import threading
from typing import Any, Iterable, Literal, Mapping

import attrs
import trio

from palmnode.actors.health import DeviceState, GateState, HealthRegistry

Kind = Literal["counter", "gauge", "histogram"]

#: histogram bucket upper bounds (ms) unless :meth:`Metrics.describe` gives others; chosen
#: around the decision budget (p50 ≤ 150 ms, p99 ≤ 300 ms) so both show in the buckets
DEFAULT_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 25, 50, 75, 100, 150, 200, 300, 500, 750,
                                      1000, 2500, 5000, 10000)
#: observations kept per histogram series for percentiles (the most recent ones)
RECENT_WINDOW = 2048
#: label sets kept per metric name; more are dropped and counted in palmnode_metrics_dropped_total
MAX_SERIES = 1000

#: HELP text of the names the node records (others get a generic line until described)
KNOWN: dict[str, tuple[Kind, str]] = {
    "palmnode_build_info": ("gauge", "1, labelled with the version of palmnode the node runs."),
    "palmnode_start_time_seconds": ("gauge", "When the node started, Unix time in seconds."),
    "palmnode_identify_latency_ms": ("histogram", "Hand present to decision, milliseconds, by outcome."),
    "palmnode_decisions_total": ("counter", "Identify decisions, by outcome."),
    "palmnode_decisions_unrecorded_total": ("counter", "Identify decisions (identified, unknown) that never reached "
                                                       "the vault's outbox, by reason (vault, queue_full, stopped)."),
    "palmnode_enrolments_total": ("counter", "Enrolments finished, by result."),
    "palmnode_deletions_total": ("counter", "People deleted from this node."),
    "palmnode_gallery_palms": ("gauge", "Enrolled palms in the in-memory gallery."),
    "palmnode_retries_total": ("counter", "Identify attempts ended with a retry, by reason."),
    "palmnode_metrics_dropped_total": ("counter", "Observations dropped: too many label sets for one metric name."),
    "palmnode_metrics_refused_total": ("counter", "Scrape connections closed at accept: too many open at once."),
    "palmnode_gate_state": ("gauge", "1 for the gate's state now (starting, ready, degraded, down), 0 for the others."),
    "palmnode_device_state": ("gauge", "1 for each device's state now, 0 for its other states."),
    "palmnode_device_restarts_total": ("counter", "Restarts of each device's actor."),
    "palmnode_device_events_total": ("counter", "Each device's counted events by kind: drops by reason, frames skipped."),
    "palmnode_link_connected": ("gauge", "1 while the link to the store controller is up."),
    "palmnode_link_connects_total": ("counter", "Connections to the store controller that got through their hellos."),
    "palmnode_link_failed_attempts_total": ("counter", "Attempts to reach the store controller that failed (dial, "
                                                       "TLS, hello, refused by it)."),
    "palmnode_link_dropped_total": ("counter", "Connections to the store controller dropped for its broken frames, "
                                               "by reason."),
    "palmnode_link_events_total": ("counter", "Outbox events sent to the store controller, acked by it, or unreadable "
                                              "in the vault, by result."),
    "palmnode_link_requests_served_total": ("counter", "The store controller's requests this node answered (its "
                                                       "pushes among them), refused ones included."),
    "palmnode_link_requests_refused_total": ("counter", "The store controller's requests this node refused (a push of "
                                                        "a person it cannot take, a bad argument)."),
    "palmnode_link_unmatched_total": ("counter", "Responses and acks from the store controller that matched nothing "
                                                 "in flight, by kind."),
    "palmnode_bus_dropped_total": ("counter", "Events a subscriber of the node's event bus fell too far behind to get."),
    "palmnode_vault_wal_blocked": ("gauge", "1 while the vault's WAL stays untruncated after a removal: another "
                                            "connection to the file (a backup, an sqlite3 shell) blocks it."),
    "palmnode_vault_wal_blocked_seconds": ("gauge", "How long the vault's WAL has stayed untruncated (0 when it is)."),
    "palmnode_vault_wal_retries_total": ("counter", "Retries of a vault WAL truncation another connection blocked."),
}

def record_health(metrics: "Metrics", health: HealthRegistry, *, link_connected: bool | None = None,
                  bus_dropped: int = 0) -> None:
    """Copy the gate's and every device's health (and the link's state, when there is a link, and
    the event bus's drops) into ``metrics``: states as 0/1 gauges, one per state; the registry's
    restarts and counted events (monotonic totals) as counters. Call it in the trio thread that
    owns ``health``."""
    for state in GateState:
        metrics.set("palmnode_gate_state", float(health.gate is state), state=state.value)
    for device in health.snapshot():
        for state in DeviceState:
            metrics.set("palmnode_device_state", float(device.state is state), device=device.name, state=state.value)
        _total(metrics, "palmnode_device_restarts_total", device.restarts, device=device.name)
        for kind, n in device.counters.items():
            _total(metrics, "palmnode_device_events_total", n, device=device.name, kind=kind)
    _total(metrics, "palmnode_bus_dropped_total", bus_dropped)
    if link_connected is not None:
        metrics.set("palmnode_link_connected", float(link_connected))


def record_link(metrics: "Metrics", stats: Any) -> None:
    """The link's counters (``palmnode.link.client.LinkStats``, monotonic totals) into ``metrics``:
    connects, failed attempts, drops by reason, outbox events by result, the controller's requests
    served and refused, unmatched answers by kind (an acked event whose mark the vault put off
    counts as ``mark_deferred``, then ``acked`` once marked). Call it in the trio thread that owns
    the link."""
    _total(metrics, "palmnode_link_connects_total", stats.connects)
    _total(metrics, "palmnode_link_failed_attempts_total", stats.failed_attempts)
    for reason, n in list(stats.dropped.items()):
        _total(metrics, "palmnode_link_dropped_total", n, reason=reason)
    for result, n in (("sent", stats.events_sent), ("acked", stats.events_acked),
                      ("unreadable", stats.events_unreadable), ("mark_deferred", stats.acks_deferred)):
        _total(metrics, "palmnode_link_events_total", n, result=result)
    _total(metrics, "palmnode_link_requests_served_total", stats.requests_served)
    _total(metrics, "palmnode_link_requests_refused_total", stats.requests_refused)
    for kind, n in (("response", stats.responses_unmatched), ("ack", stats.acks_unmatched)):
        _total(metrics, "palmnode_link_unmatched_total", n, kind=kind)


def record_vault_wal(metrics: "Metrics", state: Mapping[str, Any], retries_total: int) -> None:
    """The vault's WAL truncation into ``metrics``: ``state`` is ``walscrub.WalKeeper.state()``
    (blocked or not, for how long), ``retries_total`` its retries so far."""
    blocked = not state["truncated"]
    metrics.set("palmnode_vault_wal_blocked", float(blocked))
    metrics.set("palmnode_vault_wal_blocked_seconds", float(state["blocked_s"]) if blocked else 0.0)
    _total(metrics, "palmnode_vault_wal_retries_total", retries_total)


def _total(metrics: "Metrics", name: str, total: float, **labels: str) -> None:
    """The counter ``name`` brought up to a monotonic ``total`` kept elsewhere."""
    if (delta := total - metrics.value(name, **labels)) > 0:
        metrics.inc(name, delta, **labels)


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

LabelKey = tuple[tuple[str, str], ...]



@attrs.define
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int]
    count: int = 0
    sum: float = 0.0
    recent: collections.deque[float] = attrs.field(factory=lambda: collections.deque(maxlen=RECENT_WINDOW))

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.count += 1
        self.sum += value
        self.recent.append(value)


@attrs.define
class _Family:
    kind: Kind
    help: str
    buckets: tuple[float, ...]
    series: dict[LabelKey, float | _Histogram] = attrs.field(factory=dict)


class Metrics:
    """Thread-safe registry of counters, gauges and histograms (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}

    def describe(self, name: str, kind: Kind, help: str, *,
                 buckets: Iterable[float] | None = None) -> None:
        """Declare ``name``'s kind and HELP text (and a histogram's bucket bounds) before use.

        Optional: an undeclared name is created on first use with a generic HELP line. Declaring
        an existing name again updates its HELP; changing its kind or buckets is a ``ValueError``.
        """
        if kind not in ("counter", "gauge", "histogram"):
            raise ValueError(f"metric kind must be counter, gauge or histogram, not {kind!r}")
        bounds = _buckets(buckets) if buckets is not None else DEFAULT_BUCKETS
        with self._lock:
            family = self._family(name, kind, bounds if buckets is not None else None)
            family.help = " ".join(help.split())

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        """Add ``n`` (≥ 0) to the counter ``name`` with these labels."""
        if not n >= 0:
            raise ValueError(f"counter {name}: increment must be >= 0, not {n!r}")
        key = _label_key(labels)
        with self._lock:
            family = self._family(name, "counter")
            if self._room(family, key):
                family.series[key] = family.series.get(key, 0.0) + float(n)  # type: ignore[operator]

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set the gauge ``name`` with these labels to ``value``."""
        key = _label_key(labels)
        with self._lock:
            family = self._family(name, "gauge")
            if self._room(family, key):
                family.series[key] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation into the histogram ``name`` with these labels."""
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"histogram {name}: cannot observe NaN")
        key = _label_key(labels)
        with self._lock:
            family = self._family(name, "histogram")
            if self._room(family, key):
                hist = family.series.get(key)
                if hist is None:
                    hist = family.series[key] = _Histogram(family.buckets, [0] * len(family.buckets))
                hist.observe(value)  # type: ignore[union-attr]

    def value(self, name: str, **labels: str) -> float:
        """A counter's or gauge's current value for exactly these labels (0 if never recorded)."""
        key = _label_key(labels)
        with self._lock:
            family = self._families.get(name)
            if family is None:
                return 0.0
            if family.kind == "histogram":
                raise ValueError(f"{name} is a histogram: use percentiles() or snapshot()")
            return float(family.series.get(key, 0.0))  # type: ignore[arg-type]

    def percentiles(self, name: str, qs: Iterable[int] = (50, 95, 99), **labels: str) -> dict[int, float]:
        """Percentiles of the recent observations of histogram ``name``.

        ``labels`` select every series whose labels include them (none: all series of the name,
        merged). Linear interpolation between closest ranks; NaN for each q with no observations.
        """
        want = _label_key(labels)
        with self._lock:
            family = self._families.get(name)
            if family is not None and family.kind != "histogram":
                raise ValueError(f"{name} is a {family.kind}, not a histogram")
            values = [] if family is None else [
                v for key, hist in family.series.items() if set(want) <= set(key)
                for v in hist.recent]  # type: ignore[union-attr]
        return _percentiles(sorted(values), qs)

    def snapshot(self) -> dict:
        """Plain data (str keys, numbers, lists): for the REPL, ``node.status`` and the link.

        ``{name: {"type", "help", "series": [{"labels": {...}, "value"} | {"labels", "count",
        "sum", "buckets": [[le, cumulative], ...], "percentiles": {"p50": ..}}]}}``; histogram
        buckets list only the finite bounds (``count`` is the +Inf bucket), and percentiles are
        absent while a series has no recent observations.
        """
        out: dict = {}
        with self._lock:
            for name, family in sorted(self._families.items()):
                series = []
                for key, item in sorted(family.series.items()):
                    entry: dict = {"labels": dict(key)}
                    if isinstance(item, _Histogram):
                        entry.update(count=item.count, sum=item.sum, buckets=[
                            [bound, total] for bound, total in zip(item.buckets, _cumulative(item.counts))])
                        if item.recent:
                            pcts = _percentiles(sorted(item.recent), (50, 95, 99))
                            entry["percentiles"] = {f"p{q}": v for q, v in pcts.items()}
                    else:
                        entry["value"] = item
                    series.append(entry)
                out[name] = {"type": family.kind, "help": family.help, "series": series}
        return out

    def render_prometheus(self) -> str:
        """Every metric in the Prometheus text exposition format, version 0.0.4."""
        lines: list[str] = []
        with self._lock:
            for name, family in sorted(self._families.items()):
                lines.append(f"# HELP {name} {_escape_help(family.help)}")
                lines.append(f"# TYPE {name} {family.kind}")
                for key, item in sorted(family.series.items()):
                    if isinstance(item, _Histogram):
                        for bound, total in zip(item.buckets, _cumulative(item.counts)):
                            lines.append(f"{name}_bucket{_labels(key + (('le', _number(bound)),))} {total}")
                        lines.append(f"{name}_bucket{_labels(key + (('le', '+Inf'),))} {item.count}")
                        lines.append(f"{name}_sum{_labels(key)} {_number(item.sum)}")
                        lines.append(f"{name}_count{_labels(key)} {item.count}")
                    else:
                        lines.append(f"{name}{_labels(key)} {_number(item)}")
        return "\n".join(lines) + "\n" if lines else ""

    # -- inside the lock

    def _family(self, name: str, kind: Kind, buckets: tuple[float, ...] | None = None) -> _Family:
        family = self._families.get(name)
        if family is None:
            if not _NAME.match(name):
                raise ValueError(f"bad metric name {name!r}: use letters, digits, '_' and ':'")
            known = KNOWN.get(name)
            help = known[1] if known and known[0] == kind else f"palmnode {kind} {name}."
            family = self._families[name] = _Family(kind, help, buckets or DEFAULT_BUCKETS)
        elif family.kind != kind:
            raise ValueError(f"metric {name} is a {family.kind}, not a {kind}")
        elif buckets is not None and buckets != family.buckets:
            raise ValueError(f"histogram {name} already has buckets {family.buckets}")
        return family

    def _room(self, family: _Family, key: LabelKey) -> bool:
        if key in family.series or len(family.series) < MAX_SERIES:
            return True
        dropped = self._family("palmnode_metrics_dropped_total", "counter")
        dropped.series[()] = dropped.series.get((), 0.0) + 1  # type: ignore[operator]
        return False


def _label_key(labels: dict[str, str]) -> LabelKey:
    for label in labels:
        if not _LABEL.match(label) or label.startswith("__") or label == "le":
            raise ValueError(f"bad label name {label!r}: letters, digits and '_', not 'le' or '__…'")
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _buckets(bounds: Iterable[float]) -> tuple[float, ...]:
    result = tuple(float(b) for b in bounds)
    if not result or any(math.isnan(b) or math.isinf(b) for b in result) or list(result) != sorted(set(result)):
        raise ValueError(f"histogram buckets must be finite, increasing and non-empty: {result}")
    return result


def _cumulative(counts: list[int]) -> list[int]:
    total, out = 0, []
    for c in counts:
        total += c
        out.append(total)
    return out


def _percentiles(ordered: list[float], qs: Iterable[int]) -> dict[int, float]:
    out = {}
    for q in qs:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be within 0..100, not {q}")
        if not ordered:
            out[q] = math.nan
            continue
        pos = (len(ordered) - 1) * q / 100
        lo = math.floor(pos)
        hi = min(lo + 1, len(ordered) - 1)
        out[q] = ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
    return out


def _number(value: float) -> str:
    """A sample value as Prometheus writes it: ``+Inf``, ``-Inf``, ``NaN``, integers without ``.0``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(key: LabelKey) -> str:
    if not key:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in key) + "}"


def _escape_label(value: str) -> str:
    # exposition format 0.0.4: label values escape backslash, double quote and line feed
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    # exposition format 0.0.4: HELP escapes backslash and line feed (quotes stay)
    return text.replace("\\", "\\\\").replace("\n", "\\n")


# -- the scrape endpoint

#: the request head (request line + headers) may not exceed this; longer → 400 and closed
MAX_REQUEST_HEAD = 8192
#: a client must send its whole request head within this many seconds
REQUEST_TIMEOUT = 10.0
#: a client must take the whole answer within this many seconds; one that stops reading is cut off
RESPONSE_TIMEOUT = 10.0
#: connections served at once (a scraper needs one); more are closed at accept and counted in
#: palmnode_metrics_refused_total, so a flood of idle sockets cannot take the node's file descriptors
MAX_CONNECTIONS = 16
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # exposition format 0.0.4


async def serve_metrics(metrics: Metrics, host: str = "127.0.0.1", port: int = 9464, *,
                        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``GET /metrics`` over HTTP/1.1 until cancelled; ``task_status`` gets the bound (host, port).

    One request per connection (answered with ``Connection: close``). Other paths → 404, other
    methods → 405 (with ``Allow: GET``), a malformed, oversized or too slow request head → 400, then the connection closes.
    A client that has not taken the whole answer within ``RESPONSE_TIMEOUT`` is cut off.
    Beyond ``MAX_CONNECTIONS`` open at once, a new connection is closed at accept (counted).
    Port 0 binds a free port (the started value tells which).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, _MetricsHandler(metrics), listeners)
        task_status.started((sockname[0], sockname[1]))


class _MetricsHandler:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._open = 0

    async def __call__(self, stream: trio.SocketStream) -> None:
        if self._open >= MAX_CONNECTIONS:
            self._metrics.inc("palmnode_metrics_refused_total")
            await trio.aclose_forcefully(stream)
            return
        self._open += 1
        try:
            await self._serve(stream)
        finally:
            self._open -= 1

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.move_on_after(REQUEST_TIMEOUT) as timer:
                    status, body = await self._answer(stream)
                if timer.cancelled_caught:
                    status, body = 400, "request too slow\n"
                with trio.move_on_after(RESPONSE_TIMEOUT) as timer:
                    await _respond(stream, status, body)
                if timer.cancelled_caught:
                    return  # the scraper stopped reading: the connection closes
                if status != 200:
                    await _linger(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the scraper went away: nothing to tell it

    async def _answer(self, stream: trio.SocketStream) -> tuple[int, str]:
        head = bytearray()
        while True:
            end = min((i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0), default=-1)
            if end > MAX_REQUEST_HEAD or (end < 0 and len(head) > MAX_REQUEST_HEAD):
                return 400, "request head too large\n"
            if end >= 0:
                break
            chunk = await stream.receive_some(4096)
            if not chunk:
                return 400, "incomplete request\n"
            head += chunk
        try:
            request_line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("ascii")
            method, target, version = request_line.split(" ")
        except (UnicodeDecodeError, ValueError):
            return 400, "malformed request line\n"
        if not version.startswith("HTTP/1.") or not target.startswith("/"):
            return 400, "malformed request line\n"
        if target.split("?", 1)[0] != "/metrics":
            return 404, "not found: the metrics are at /metrics\n"
        if method != "GET":
            return 405, "only GET /metrics\n"
        return 200, await trio.to_thread.run_sync(self._metrics.render_prometheus)


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close and drain a little, so unread request bytes do not reset away our answer."""
    await stream.send_eof()
    with trio.move_on_after(1.0):
        drained = 0
        while drained < 65536 and (chunk := await stream.receive_some(4096)):
            drained += len(chunk)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


async def _respond(stream: trio.SocketStream, status: int, body: str) -> None:
    data = body.encode("utf-8")
    content_type = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n"
            + ("Allow: GET\r\n" if status == 405 else "")
            + "Connection: close\r\n\r\n")
    await stream.send_all(head.encode("ascii") + data)


__all__ = ["DEFAULT_BUCKETS", "KNOWN", "MAX_SERIES", "RECENT_WINDOW", "Metrics",
           "serve_metrics"]
