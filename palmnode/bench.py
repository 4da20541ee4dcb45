"""``palmnode bench``: the node's idle cost while the virtual gate streams, beside a baseline,
a bad-input soak (palmnode/soak.py) and the node's memory at ``--enrolled`` people
(palmnode/memory_bench.py).

Two phases in one run, each a virtual gate (proximity at 100 Hz, camera at 30 fps) and one host
process on it, measured from /proc CPU counters over the same window:
- ``node``: ``palmnode run`` on the sim's endpoints (supervisors, all four drivers, presence,
  health), beside the emulators' own cost;
- ``baseline`` ``bare_read_loop``: the least a host can do to consume the same two streams — a
  blocking pyserial loop reading the TFmini frames and a cv2.VideoCapture loop reading the camera.
Prints one JSON object on stdout; progress goes to stderr.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

_BASELINE = r"""
import sys, threading, serial, cv2
port, url = sys.argv[1], sys.argv[2]
def camera():
    cap = cv2.VideoCapture(url)
    while True:
        ok, _ = cap.read()
        if not ok:
            break
threading.Thread(target=camera, daemon=True).start()
ser = serial.Serial(port, 115200, timeout=1)
ser.write(bytes([0x5A, 0x05, 0x07, 0x01, 0x67]))  # enable output (TFmini Plus manual 5.5)
frames = 0
buf = b""
while True:
    buf += ser.read(ser.in_waiting or 1)
    while len(buf) >= 9:
        i = buf.find(b"\x59\x59")
        if i < 0:
            buf = buf[-1:]
            break
        frame, buf = buf[i:i + 9], buf[i + 9:]
        if len(frame) == 9 and sum(frame[:8]) & 0xFF == frame[8]:
            frames += 1
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(procs: dict[str, subprocess.Popen], name: str, args: list[str], **popen) -> subprocess.Popen:
    """Start ``args`` as ``procs[name]``: in ``procs`` before a Ctrl-C or SIGTERM can stop the bench
    (stopsignals.deferred), so the ``finally`` that stops ``procs`` stops it too."""
    from palmnode import stopsignals

    with stopsignals.deferred():
        procs[name] = subprocess.Popen(args, **popen)
    return procs[name]


def _start_sim(procs: dict[str, subprocess.Popen], run_dir: Path, port: int) -> None:
    """A virtual gate as ``procs["sim"]``, once it has printed its endpoints."""
    proc = _start(procs, "sim", [sys.executable, "-m", "palmnode.cli", "sim", "--run-dir", str(run_dir),
                                 "--camera-port", str(port)], stdout=subprocess.PIPE,
                  stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("the virtual gate did not start")


def node_toml(folder: Path, node_id: str, endpoints, more: str = "") -> Path:
    """``folder``/node.toml: a node on the devices at ``endpoints`` (a virtual gate's
    ``Endpoints``), warnings only, its card token key in ``folder``; ``more``: further tables."""
    path = folder / "node.toml"
    path.write_text(f"""
[node]
node_id = "{node_id}"
log_level = "warning"
[devices.proximity]
port = "{endpoints.proximity}"
[devices.card_reader]
port = "{endpoints.card_reader}"
token_key_file = "{folder}/card_token.key"
[devices.illuminator]
port = "{endpoints.illuminator}"
[devices.camera]
source = "{endpoints.camera}"
{more}""")
    return path


def _node_config(folder: Path, run_dir: Path, port: int) -> Path:
    from palmnode.sim.gate import Endpoints

    return node_toml(folder, "bench", Endpoints(f"{run_dir}/proximity", f"{run_dir}/card_reader",
                                                f"{run_dir}/illuminator", f"http://127.0.0.1:{port}/stream.mjpg"))


def measure(procs: dict[str, subprocess.Popen], seconds: float) -> dict[str, float]:
    """CPU of each process over the same ``seconds`` window, in % of one core."""
    for name, p in procs.items():
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited early with status {p.returncode}")
    before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    return {name: 100.0 * (cpu_seconds(p.pid) - before[name]) / wall for name, p in procs.items()}


def _phase(folder: Path, host: list[str], seconds: float, warmup: float) -> dict[str, float]:
    """Start a virtual gate and a host process on it; measure both after ``warmup``."""
    port = free_port()
    run_dir = folder / "sim"
    procs: dict[str, subprocess.Popen] = {}
    try:  # a Ctrl-C or SIGTERM at any moment stops what has started (the sim was left running, stopped while it started)
        _start_sim(procs, run_dir, port)
        args = [a.format(run_dir=run_dir, port=port, config=_node_config(folder, run_dir, port)) for a in host]
        _start(procs, "host", args, stderr=subprocess.DEVNULL)
        time.sleep(warmup)
        return measure(procs, seconds)
    finally:
        from palmnode import stopsignals

        with stopsignals.deferred():  # a second Ctrl-C or SIGTERM waits for them, or they ran on
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in procs.values():
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def run(seconds: float = 20.0, warmup: float = 5.0) -> dict:
    """The node and the baseline, one after the other, each beside its own virtual gate."""
    node_cmd = [sys.executable, "-m", "palmnode.cli", "run", "--config", "{config}"]
    base_cmd = [sys.executable, "-c", _BASELINE, "{run_dir}/proximity", "http://127.0.0.1:{port}/stream.mjpg"]
    with tempfile.TemporaryDirectory(prefix="palmnode-bench-") as tmp:
        print(f"node: warming up {warmup:.0f} s, measuring {seconds:.0f} s ...", file=sys.stderr)
        (Path(tmp) / "node").mkdir()
        node = _phase(Path(tmp) / "node", node_cmd, seconds, warmup)
        print(f"baseline: warming up {warmup:.0f} s, measuring {seconds:.0f} s ...", file=sys.stderr)
        (Path(tmp) / "base").mkdir()
        base = _phase(Path(tmp) / "base", base_cmd, seconds, warmup)
    return {
        "benchmark": "node_idle_cpu",
        "window_s": seconds,
        "load": {"proximity_hz": 100, "camera_fps": 30, "camera_size": "640x480",
                 "card_reader": "chip waits for cards"},
        "node_cpu_pct_of_core": round(node["host"], 2),
        "emulators_cpu_pct_of_core": round(node["sim"], 2),
        "baseline": "bare_read_loop",
        "baseline_cpu_pct_of_core": round(base["host"], 2),
        "ratio_node_to_baseline": round(node["host"] / base["host"], 2) if base["host"] > 0 else None,
        "budget_pct_of_core": 5.0,
        "within_budget": node["host"] <= 5.0,
    }


def main(args) -> int:
    from palmnode import soak
    from palmnode.biometrics import bench as engine_bench

    if args.suite in ("engine", "all"):
        engine_bench.check_arguments(args)
    report = {}
    if args.suite in ("node", "all"):
        report["node_idle_cpu"] = run(args.seconds)
        report["bad_input_soak"] = soak.main(args.seconds)
        from palmnode import memory_bench

        report["node_memory"] = memory_bench.run(memory_bench.TRAFFIC_WINDOWS * args.seconds, args.enrolled)
    if args.suite in ("engine", "all"):
        report["engine"] = engine_bench.main(args)
    if args.suite in ("gate", "all"):
        from palmnode import gate_bench

        report["gate"] = gate_bench.main(args)
    from palmnode import stopsignals

    if stopsignals.noted() in stopsignals.STOP_SIGNALS:  # one that reached no KeyboardInterrupt: stopsignals.interrupt
        return stopsignals.interrupted("bench")
    print(json.dumps(report))
    return 0
