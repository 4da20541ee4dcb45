"""`palmnode bench` runs end to end on small sizes (the numbers themselves are for the closing note)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio

from palmnode import soak
from tests.conftest import reaped, run_with_file_size_limit


def test_engine_suite_prints_one_json_object(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "palmnode.cli", "bench", "--suite", "engine", "--sizes", "3000", "--ids", "6",
         "--genuine-seed", "20000", "--frames", "6", "--repeat", "2", "--threads", "2", "--cache", str(tmp_path)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])["engine"]
    assert report["search_threads"] == 2
    assert report["genuine_seed"] == 20000 and report["pipeline"]["frames"] > 0 and report["pipeline"]["baseline"] == "opencv_numpy"
    row = report["search"]["3000"]
    assert row["ms"] > 0 and row["faiss_binaryflat_ms"] > 0 and row["numpy_ms"] > 0 and row["stranger_ms"] > 0
    recall = report["recall"]["by_gallery"]["3000"]
    assert 0.0 <= recall["fast_pass_sufficed"] <= 1.0 and 0.0 <= recall["recall_loss"] <= 1.0


def test_bad_input_soak_keeps_the_gate_ready_and_counts_drops():
    result = trio.run(soak.soak, 2.0)
    assert result["gate_state_after"] == "ready"
    assert all(sum(d.values()) > 0 for d in result["drops"].values()), result["drops"]
    assert result["bytes_injected"] > 10_000


def test_gate_bench_counts_a_final_retry_for_whoever_was_asked():
    from palmnode.gate_bench import arrivals

    counts = {"identified correctly": 148, "retry (not sure: present your palm again)": 1,
              "stranger retry (not sure: present your palm again)": 2, "stranger refused": 50,
              "stranger admitted": 0, "feedback": 56, "retries": 4, "unknown card": 1}
    assert arrivals(counts) == (149, 52)


def _bench_refusal(*args: str) -> subprocess.CompletedProcess:
    """`palmnode bench` with every suite and bad arguments: refused before the node suite's
    virtual gate starts (the timeout is below that suite's two 20 s phases)."""
    return subprocess.run([sys.executable, "-m", "palmnode.cli", "bench", *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


def test_bad_sizes_are_refused_before_any_suite_runs():
    for sizes, reason in (("x", "not a whole number: 'x'"), ("1000,,2000", "not a comma-separated list"),
                          ("0", "must be at least 1, got 0"), ("", "not a comma-separated list")):
        proc = _bench_refusal("--sizes", sizes)
        assert proc.returncode == 2 and proc.stdout == ""
        assert f"argument --sizes: {reason}" in proc.stderr.splitlines()[-1], proc.stderr


def test_a_genuine_seed_overlapping_the_impostor_pool_is_refused_before_any_suite_runs():
    from palmnode.biometrics.bench import SOURCE_SEED

    proc = _bench_refusal("--genuine-seed", str(SOURCE_SEED + 5), "--no-faiss")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"palmnode bench: --genuine-seed {SOURCE_SEED + 5} with --ids 300 overlaps the impostor source pool "
        f"(seeds {SOURCE_SEED}..{SOURCE_SEED + 299})"]


def test_a_template_cache_that_cannot_be_written_whole_is_not_left_for_the_next_run(tmp_path):
    """The engine bench's rendered templates were saved straight at their cache name: a Ctrl-C or a
    full disk mid-save left a truncated .npz there, which the next run took as a finished cache
    and stopped on (a BadZipFile traceback) until someone found and removed it. Now the cache is
    written beside its name and renamed once whole: the failed run leaves nothing, the next one
    renders again. A real write refused past 4 KiB by the kernel, then a run without the limit."""
    code = ("from pathlib import Path; from palmnode.biometrics import bench\n"
            f"print(len(bench.render_set(20000, 2, Path({str(tmp_path)!r}))[0]))")
    failed = run_with_file_size_limit(code)
    assert failed.returncode == 1 and "File too large" in failed.stderr.splitlines()[-1], failed.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr[-2000:]
    assert int(again.stdout) > 0 and [p.suffix for p in tmp_path.iterdir()] == [".npz"]


def _processes_naming(text: str) -> dict[int, str]:
    """Every process whose command line holds ``text``: {pid: command line}."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:  # gone meanwhile
                continue
            if text in cmdline:
                found[int(entry)] = cmdline
    return found


def _wait_for_child(proc: subprocess.Popen, needle: str, timeout: float = 120.0) -> None:
    """Until a child of ``proc`` runs a command line holding ``needle`` (after its exec)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _processes_naming(needle):
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == proc.pid:
                return
        assert proc.poll() is None, f"the bench ended ({proc.returncode}) before running {needle!r}"
        time.sleep(0.005)
    raise AssertionError(f"no child running {needle!r} within {timeout} s")


@pytest.mark.parametrize("moment", ["the virtual gate starting", "the node measured", "the memory bench's node"])
def test_a_sigterm_stops_the_node_suite_and_everything_it_started(tmp_path, moment):
    """A SIGTERM (`kill`, a job scheduler's stop) to `palmnode bench` killed it by the signal, exit
    -15 without a word, and left what it had started: the virtual gate and the node it measures,
    running on with nobody to stop them, and its temporary folder. Taken now as Ctrl-C is: one
    line, exit 143, the children stopped (a virtual gate still starting too: it was not yet the
    bench's to stop; the memory bench's node too: the KeyboardInterrupt landed in trio's loop,
    which abandoned the run and its cleanup), no file left in its temporary folder. A real
    SIGTERM to the bench alone (not its process group) once the child of the moment runs."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    needle, wait_line = {"the virtual gate starting": (" sim --run-dir ", None),
                         "the node measured": ("/node/node.toml", None),
                         "the memory bench's node": ("palmnode-bench-mem-", "node memory: idle")}[moment]
    proc = subprocess.Popen([sys.executable, "-m", "palmnode.cli", "bench", "--suite", "node", "--seconds", "1",
                             "--enrolled", "10"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    try:
        with reaped(proc):
            lines = [proc.stderr.readline()]
            assert lines[0] == "node: warming up 5 s, measuring 1 s ...\n", lines
            while wait_line is not None and not lines[-1].startswith(wait_line):
                lines.append(proc.stderr.readline())
                assert lines[-1], lines
            _wait_for_child(proc, needle)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        left = _processes_naming(str(tmp))
    finally:
        for pid in _processes_naming(str(tmp)):
            os.kill(pid, signal.SIGKILL)
    assert left == {}
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.splitlines()[-1:] == ["palmnode bench: stopped by SIGTERM"], stderr[-3000:]
    assert "Traceback" not in stderr and "Trio" not in stderr, stderr[-3000:]
    assert stdout == ""
    assert list(tmp.iterdir()) == []


def test_a_sigterm_while_the_engine_suite_renders_leaves_no_cache_cut_off(tmp_path):
    """SIGTERM while the engine suite renders its templates into --cache: one line, exit 143, no
    report, and the cache holds no temporary file and no template set cut off (one is whole or
    absent: the next run takes any there as finished). A real SIGTERM once the suite says it
    has timed the pipeline, as the rendering starts."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "palmnode.cli", "bench", "--suite", "engine", "--sizes", "3000", "--ids", "6",
         "--genuine-seed", "20000", "--frames", "6", "--repeat", "2", "--threads", "2", "--cache", str(tmp_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with reaped(proc):
        assert proc.stderr.readline().startswith("ROI and features on 6 rendered frames")
        assert proc.stderr.readline().startswith("pipeline {")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.splitlines() == ["palmnode bench: stopped by SIGTERM"], stderr[-3000:]
    assert stdout == ""
    for path in tmp_path.iterdir():
        assert path.suffix == ".npz", path
        with np.load(path) as saved:
            assert len(saved["blobs"]) > 0


def test_a_stop_while_a_child_starts_is_raised_once_the_bench_holds_it():
    """A Ctrl-C or SIGTERM raised inside Popen, after the fork and before it returned, lost the
    child: the bench's ``finally`` did not know it, and it ran on. The start is now one step
    (stopsignals.deferred): the signal is noted and raised once the child is in hand. A real
    SIGTERM, raised where the fork would be, given eval's and bench's handler."""
    from palmnode import stopsignals

    previous = signal.signal(signal.SIGTERM, stopsignals.interrupt)
    kept = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with stopsignals.deferred():
                signal.raise_signal(signal.SIGTERM)
                kept.append("child")
        assert kept == ["child"] and stopsignals.noted() == signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
        stopsignals._noted.clear()
