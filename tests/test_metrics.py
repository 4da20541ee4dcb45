"""Metrics: counters/gauges/histograms, percentiles, threads, and the exposition parsed back over a real socket."""
from __future__ import annotations

import math
import re
import threading

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import palmnode.metrics as metrics_module
from palmnode.metrics import DEFAULT_BUCKETS, MAX_SERIES, RECENT_WINDOW, Metrics, serve_metrics

# -- a small independent parser of the text exposition format 0.0.4

_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)\Z')
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|\Z)')


def _unescape(value: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, frozenset], float]]:
    """→ ({name: (type, help)}, {(sample name, frozenset(labels)): value}); asserts the layout."""
    assert text.endswith("\n") or text == ""  # lines end in \n only (\r etc. may sit in labels)
    meta: dict[str, list[str]] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    current = None
    for line in text.split("\n")[:-1]:
        if line.startswith("# HELP "):
            name, help = line[7:].split(" ", 1)
            meta[name] = [None, _unescape(help)]
            current = name
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name == current and kind in ("counter", "gauge", "histogram")
            meta[name][0] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, line
            name, _, body, value = m.groups()
            assert name.startswith(current)
            labels = {}
            rest = body or ""
            while rest:
                pm = _PAIR.match(rest)
                assert pm, rest
                labels[pm.group(1)] = _unescape(pm.group(2))
                rest = rest[pm.end():]
            samples[(name, frozenset(labels.items()))] = float(value)
    return {k: tuple(v) for k, v in meta.items()}, samples


def test_counter_gauge_histogram_render_and_parse_back():
    m = Metrics()
    m.inc("palmnode_decisions_total", outcome="identified")
    m.inc("palmnode_decisions_total", 2, outcome="unknown")
    m.inc("palmnode_deletions_total")
    m.set("palmnode_gallery_palms", 40)
    for v in (3, 40, 120, 140, 290, 20000):
        m.observe("palmnode_identify_latency_ms", v, outcome="identified")
    meta, samples = parse(m.render_prometheus())
    assert meta["palmnode_decisions_total"] == ("counter", "Identify decisions, by outcome.")
    assert meta["palmnode_gallery_palms"][0] == "gauge"
    assert meta["palmnode_identify_latency_ms"][0] == "histogram"
    assert samples[("palmnode_decisions_total", frozenset({("outcome", "unknown")}))] == 2
    assert samples[("palmnode_deletions_total", frozenset())] == 1
    assert samples[("palmnode_gallery_palms", frozenset())] == 40
    ident = ("outcome", "identified")
    bucket = lambda le: samples[("palmnode_identify_latency_ms_bucket", frozenset({ident, ("le", le)}))]
    assert bucket("5") == 1 and bucket("50") == 2 and bucket("150") == 4 and bucket("300") == 5
    assert bucket("10000") == 5 and bucket("+Inf") == 6
    assert samples[("palmnode_identify_latency_ms_count", frozenset({ident}))] == 6
    assert samples[("palmnode_identify_latency_ms_sum", frozenset({ident}))] == 3 + 40 + 120 + 140 + 290 + 20000
    les = [float(dict(k[1])["le"]) for k in samples if k[0].endswith("_bucket")]
    assert les == sorted(les) and len(les) == len(DEFAULT_BUCKETS) + 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.text(max_size=60))
def test_label_values_and_help_survive_escaping(value, help):
    m = Metrics()
    m.describe("x_total", "counter", help)
    m.inc("x_total", 1.5, who=value)
    meta, samples = parse(m.render_prometheus())
    assert meta["x_total"] == ("counter", " ".join(help.split()))
    assert samples == {("x_total", frozenset({("who", value)})): 1.5}


def test_percentiles_from_the_recent_window_with_label_selection():
    m = Metrics()
    for v in range(1, 101):
        m.observe("lat_ms", v, outcome="identified")
    for v in range(1000, 1010):
        m.observe("lat_ms", v, outcome="unknown")
    p = m.percentiles("lat_ms", outcome="identified")
    assert p == {50: pytest.approx(50.5), 95: pytest.approx(95.05), 99: pytest.approx(99.01)}
    assert m.percentiles("lat_ms", (0, 100)) == {0: 1, 100: 1009}  # all series merged
    assert all(math.isnan(v) for v in m.percentiles("lat_ms", outcome="retry").values())
    assert all(math.isnan(v) for v in m.percentiles("never_seen").values())
    for v in range(5 * RECENT_WINDOW):
        m.observe("window_ms", 1e6 if v < 4 * RECENT_WINDOW else 1.0)
    assert m.percentiles("window_ms", (100,)) == {100: 1.0}  # only the recent ones count
    snap = m.snapshot()["window_ms"]["series"][0]
    assert snap["count"] == 5 * RECENT_WINDOW and snap["percentiles"]["p99"] == 1.0


def test_snapshot_is_plain_data():
    m = Metrics()
    m.inc("palmnode_retries_total", reason="too far")
    m.observe("palmnode_identify_latency_ms", 12.5, outcome="unknown")
    snap = m.snapshot()
    assert snap["palmnode_retries_total"] == {
        "type": "counter", "help": "Identify attempts ended with a retry, by reason.",
        "series": [{"labels": {"reason": "too far"}, "value": 1.0}]}
    hist = snap["palmnode_identify_latency_ms"]["series"][0]
    assert hist["count"] == 1 and hist["sum"] == 12.5 and hist["buckets"][4] == [25, 1]
    assert m.value("palmnode_retries_total", reason="too far") == 1
    assert m.value("palmnode_retries_total", reason="other") == 0


def test_misuse_is_a_one_line_value_error():
    m = Metrics()
    m.inc("a_total")
    for call in (lambda: m.set("a_total", 1), lambda: m.inc("a_total", -1),
                 lambda: m.inc("bad name"), lambda: m.inc("b_total", le="1"),
                 lambda: m.inc("b_total", **{"__x": "1"}), lambda: m.observe("h", math.nan),
                 lambda: m.describe("h2", "histogram", "x", buckets=[2, 1]),
                 lambda: m.percentiles("a_total")):
        with pytest.raises(ValueError) as info:
            call()
        assert "\n" not in str(info.value)


def test_label_sets_are_bounded_and_drops_counted():
    m = Metrics()
    for i in range(MAX_SERIES + 5):
        m.inc("c_total", who=str(i))
    assert len(m.snapshot()["c_total"]["series"]) == MAX_SERIES
    assert m.value("palmnode_metrics_dropped_total") == 5


def test_threads_record_without_losing_counts():
    m = Metrics()

    def work():
        for _ in range(2000):
            m.inc("t_total", kind="a")
            m.observe("t_ms", 1.0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.value("t_total", kind="a") == 8000
    assert m.snapshot()["t_ms"]["series"][0]["count"] == 8000


# -- the HTTP endpoint over a real TCP socket

async def _http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    if not data:
        return 0, {}, b""  # closed without an answer (refused at accept)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return int(lines[0].split(" ")[1]), headers, body


async def _http_once_free(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """``_http``, asked again while the server refuses connections at accept (every slot taken)."""
    with trio.fail_after(5):
        while (answer := await _http(port, request))[0] == 0:
            await trio.sleep(0.05)
    return answer


async def test_scrape_over_http_parses_back(nursery):
    m = Metrics()
    m.inc("palmnode_decisions_total", outcome='say "hi"\\\n')
    m.observe("palmnode_identify_latency_ms", 80, outcome="identified")
    host, port = await nursery.start(serve_metrics, m, "127.0.0.1", 0)
    assert host == "127.0.0.1" and port > 0
    status, headers, body = await _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Connection"] == "close"
    meta, samples = parse(body.decode())
    assert samples[("palmnode_decisions_total", frozenset({("outcome", 'say "hi"\\\n')}))] == 1
    assert samples[("palmnode_identify_latency_ms_count", frozenset({("outcome", "identified")}))] == 1
    status, _, _ = await _http(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
    assert status == 200


@pytest.mark.parametrize("request_bytes, expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"GET /metricsX HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /metrics SMTP/1.0\r\n\r\n", 400),
    (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 400),
    (b"GET /metr", 400),  # then EOF
])
async def test_bad_requests_are_answered_and_closed_and_the_server_keeps_serving(nursery, request_bytes, expected):
    m = Metrics()
    m.inc("x_total")
    _, port = await nursery.start(serve_metrics, m, "127.0.0.1", 0)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request_bytes)
        if expected == 400 and request_bytes.endswith(b"metr"):
            await stream.send_eof()
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(f"HTTP/1.1 {expected} ".encode())
    if expected == 405:
        assert b"\r\nAllow: GET\r\n" in data
    status, _, body = await _http(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 200 and b"x_total 1\n" in body


async def test_slow_request_head_times_out_with_400(nursery, autojump_clock):
    _, port = await nursery.start(serve_metrics, Metrics(), "127.0.0.1", 0)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\n")  # never finishes the head
        data = b""
        with trio.fail_after(60):
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


async def test_connections_beyond_the_limit_are_closed_at_accept(nursery, monkeypatch):
    monkeypatch.setattr(metrics_module, "MAX_CONNECTIONS", 4, raising=False)
    m = Metrics()
    _, port = await nursery.start(serve_metrics, m, "127.0.0.1", 0)
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]  # each held up to 10 s
    extra = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(1):  # closed at once, not after the others' request timeout
        assert await extra.receive_some(65536) == b""
    assert m.value("palmnode_metrics_refused_total") == 1
    for stream in idle:
        await stream.aclose()
    status, _, _ = await _http_once_free(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 200


async def test_a_scraper_that_stops_reading_is_cut_off(nursery, monkeypatch):
    monkeypatch.setattr(metrics_module, "MAX_CONNECTIONS", 1)
    monkeypatch.setattr(metrics_module, "RESPONSE_TIMEOUT", 0.5, raising=False)
    m = Metrics()
    for i in range(1000):  # MAX_SERIES label sets: a 1.2 MB answer, more than the socket buffers hold
        m.observe("palmnode_identify_latency_ms", 5, outcome=f"o{i}")
    _, port = await nursery.start(serve_metrics, m, "127.0.0.1", 0)
    stalled = await trio.open_tcp_stream("127.0.0.1", port)
    async with stalled:
        await stalled.send_all(b"GET /metrics HTTP/1.1\r\n\r\n")  # and never reads the answer
        status, _, body = await _http_once_free(port, b"GET /metrics HTTP/1.1\r\n\r\n")  # its slot frees
        assert status == 200 and len(body) > 1_000_000


async def test_device_health_is_scraped_as_states_restarts_and_counted_events():
    """A fleet's scraper saw decisions and latencies but not whether a gate's devices worked."""
    from palmnode.actors.health import DeviceState, HealthRegistry
    from palmnode.metrics import record_health

    health, metrics = HealthRegistry(), Metrics()
    for name in ("camera", "card_reader"):
        health.register(name)
    health.set_state("camera", DeviceState.READY)
    health.set_state("card_reader", DeviceState.LOST, "port gone")
    health.count("card_reader", "dropped_checksum", 3)
    health.note_restart("card_reader")
    record_health(metrics, health, link_connected=False)
    health.count("card_reader", "dropped_checksum", 2)
    record_health(metrics, health, link_connected=True, bus_dropped=7)   # again: totals are not added twice
    assert metrics.value("palmnode_gate_state", state="degraded") == 1
    assert metrics.value("palmnode_gate_state", state="ready") == 0
    assert metrics.value("palmnode_device_state", device="camera", state="ready") == 1
    assert metrics.value("palmnode_device_state", device="card_reader", state="lost") == 1
    assert metrics.value("palmnode_device_state", device="card_reader", state="ready") == 0
    assert metrics.value("palmnode_device_restarts_total", device="card_reader") == 1
    assert metrics.value("palmnode_device_events_total", device="card_reader", kind="dropped_checksum") == 5
    assert metrics.value("palmnode_link_connected") == 1 and metrics.value("palmnode_bus_dropped_total") == 7
    text = metrics.render_prometheus()
    assert "# TYPE palmnode_device_events_total counter" in text
    assert 'palmnode_device_state{device="card_reader",state="lost"} 1' in text


def test_the_links_counters_are_copied_as_monotonic_totals():
    from palmnode.link.client import LinkStats
    from palmnode.metrics import record_link

    stats, metrics = LinkStats(), Metrics()
    stats.connects, stats.failed_attempts, stats.events_sent, stats.events_acked = 1, 3, 10, 9
    stats.requests_served, stats.requests_refused, stats.acks_unmatched = 5, 2, 1
    stats.acks_deferred = 1
    stats.channel.count_drop("stalled")
    record_link(metrics, stats)
    stats.connects, stats.events_acked, stats.requests_refused = 2, 10, 4
    stats.channel.count_drop("stalled")
    stats.channel.count_drop("oversize")
    record_link(metrics, stats)
    record_link(metrics, stats)  # again: totals are not added twice
    assert metrics.value("palmnode_link_connects_total") == 2
    assert metrics.value("palmnode_link_failed_attempts_total") == 3
    assert metrics.value("palmnode_link_events_total", result="sent") == 10
    assert metrics.value("palmnode_link_events_total", result="acked") == 10
    assert metrics.value("palmnode_link_events_total", result="mark_deferred") == 1
    assert metrics.value("palmnode_link_requests_served_total") == 5
    assert metrics.value("palmnode_link_requests_refused_total") == 4
    assert metrics.value("palmnode_link_unmatched_total", kind="ack") == 1
    assert metrics.value("palmnode_link_dropped_total", reason="stalled") == 2
    assert metrics.value("palmnode_link_dropped_total", reason="oversize") == 1
    text = metrics.render_prometheus()
    assert "# HELP palmnode_link_dropped_total Connections to the store controller dropped for its broken frames" in text
    assert 'palmnode_link_dropped_total{reason="stalled"} 2' in text
