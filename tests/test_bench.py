"""`palmnode bench` runs end to end on small sizes (the numbers themselves are for the closing note)."""
import json
import subprocess
import sys

import trio

from palmnode import soak
from tests.conftest import run_with_file_size_limit


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
