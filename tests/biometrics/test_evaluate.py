"""The eval protocols and report on fake templates (a stub pipeline and scorer), and the command's errors."""
from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from palmnode.biometrics import evaluate as ev
from palmnode.biometrics import metrics
from palmnode.biometrics.dataset import SampleKey
from tests.conftest import reaped


class AbsScorer:
    """Fake templates are float vectors (one per modality); score = -|a - b|; fused = mean."""

    modalities = ("surface", "vein", "fused")

    def __init__(self):
        self.calls = 0

    def score_block(self, probes, gallery):
        self.calls += 1
        p = np.array(probes, dtype=np.float64).reshape(len(probes), 2)
        g = np.array(gallery, dtype=np.float64).reshape(len(gallery), 2)
        surface = -np.abs(p[:, None, 0] - g[None, :, 0])
        vein = -np.abs(p[:, None, 1] - g[None, :, 1])
        return {"surface": surface, "vein": vein, "fused": (surface + vein) / 2}


def stub_pipeline(vein, surface):
    """Template = the mean grey of each frame; an all-black frame is 'no hand'."""
    base = vein if vein is not None else surface
    if base.max() == 0:
        return ev.Failed("no_hand", "nothing bright")
    v = float(vein.mean()) if vein is not None else 0.0
    s = float(surface.mean()) if surface is not None else 0.0
    return ev.Encoded((s, v), {"vein": cv2.resize(base, (128, 128))})


def keys_for(subjects, session="1"):
    return [SampleKey(str(s), session, str(i)) for i, s in enumerate(subjects)]


# ------------------------------------------------------------------------------ protocols


def brute_all_vs_all(keys, t, modality_index):
    gen, imp = [], []
    n = len(t)
    own, other = np.full(n, -np.inf), np.full(n, -np.inf)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            s = -abs(t[i][modality_index] - t[j][modality_index])
            same = keys[i].subject == keys[j].subject
            if i < j:
                (gen if same else imp).append(s)
            if same:
                own[i] = max(own[i], s)
            else:
                other[i] = max(other[i], s)
    own[np.isinf(own)] = np.nan
    return sorted(gen), sorted(imp), own, other


@pytest.mark.parametrize("block", [1, 7, 10_000])
def test_all_vs_all_matches_brute_force(monkeypatch, block):
    monkeypatch.setattr(ev, "BLOCK_ENTRIES", block)
    rng = np.random.default_rng(3)
    subjects = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4]  # subject 2 and 4 have one sample: no mated search
    keys = keys_for(subjects)
    templates = [(s + rng.normal(0, 0.3), s * 2 + rng.normal(0, 0.3)) for s in subjects]
    scorer = AbsScorer()
    r = ev.all_vs_all(keys, templates, scorer, stream=io.StringIO())
    for mi, m in enumerate(("surface", "vein")):
        gen, imp, own, other = brute_all_vs_all(keys, templates, mi)
        assert np.allclose(np.sort(r.genuine[m]), gen, atol=1e-5)
        assert np.allclose(np.sort(r.impostor[m]), imp, atol=1e-5)
        np.testing.assert_allclose(r.searches[m].mated, own, atol=1e-5)
        np.testing.assert_allclose(r.searches[m].nonmated, other, atol=1e-5)
    assert r.genuine["fused"].size == 3 + 1 + 6  # C(3,2) + C(2,2) + C(4,2)
    assert r.impostor["fused"].size == 55 - 10
    assert r.searches["fused"].mated_searches == 9


def test_cross_session_matches_brute_force(monkeypatch):
    monkeypatch.setattr(ev, "BLOCK_ENTRIES", 5)
    gkeys = keys_for([0, 0, 1, 2], "1")
    gallery = [(0.0, 0.0), (0.2, 0.1), (1.0, 2.0), (2.0, 4.0)]
    pkeys = keys_for([0, 1, 1, 3], "2")  # subject 3 never enrolled: a non-mated search only
    probes = [(0.1, 0.0), (1.1, 2.5), (1.9, 3.9), (2.9, 6.0)]
    r = ev.cross_session(gkeys, gallery, pkeys, probes, AbsScorer(), stream=io.StringIO())
    s = r.searches["surface"]
    np.testing.assert_allclose(s.mated[:3], [-0.1, -0.1, -0.9], atol=1e-6)
    assert np.isnan(s.mated[3])
    np.testing.assert_allclose(s.nonmated, [-0.9, -0.9, -0.1, -0.9], atol=1e-6)
    np.testing.assert_allclose(np.sort(r.genuine["surface"]), [-0.9, -0.1, -0.1, -0.1], atol=1e-6)
    assert r.genuine["surface"].size == 4 and r.impostor["surface"].size == 12
    assert metrics.rank1_rate(s) == pytest.approx(2 / 3)  # the third probe is nearer subject 2


def test_modality_report_marks_unsupported_targets():
    rng = np.random.default_rng(0)
    scores = ev.ProtocolScores(
        {"fused": rng.normal(3, 1, 500).astype(np.float32)},
        {"fused": rng.normal(0, 1, 5000).astype(np.float32)},
        {"fused": metrics.SearchOutcomes.from_arrays(rng.normal(3, 1, 400), rng.normal(1, 1, 400))})
    r = ev.modality_report(scores, "fused")
    assert 0.05 < r["eer"] < 0.09
    assert r["fnmr_at_fmr"]["1e-2"]["fnmr"] is not None and r["fnmr_at_fmr"]["1e-3"]["fnmr"] is not None
    assert r["fnmr_at_fmr"]["1e-4"] == {"fnmr": None, "not_supported": "needs 30000 impostor pairs, have 5000"}
    assert r["fnmr_at_fmr"]["1e-6"]["not_supported"] == "needs 3000000 impostor pairs, have 5000"
    assert r["fnir_at_fpir"]["1e-2"]["fnir"] is not None
    assert 0 < r["rank1"] < 1
    assert list(r["fnmr_at_fmr"]) == ["1e-2", "1e-3", "1e-4", "1e-5", "1e-6"]


def test_failure_report_counts_fta_and_fte():
    keys = keys_for(["a", "a", "b", "b"])
    outcomes = [ev.Encoded((0, 0)), ev.Failed("no_hand"), ev.Failed("no_hand"), ev.Failed("unreadable", "x")]
    r = ev.failure_report(keys, outcomes, lambda k: True)
    assert r == {"fta": 0.75, "fta_count": 3, "fte": 0.5, "fte_count": 1,
                 "reasons": {"no_hand": 2, "unreadable": 1}}


# ------------------------------------------------------------------------------ the command


def write_folder(folder: Path, subjects=6, sessions=2, samples=3, paired=False):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for s in range(subjects):
        for session in range(1, sessions + 1):
            for k in range(1, samples + 1):
                grey = int(np.clip(30 + 30 * s + rng.normal(0, 3 if session == 1 else 6), 1, 255))
                img = np.full((40, 40), grey, np.uint8)
                if paired:
                    cv2.imwrite(str(folder / f"{s}_{session}_{k}_nir.png"), img)
                    cv2.imwrite(str(folder / f"{s}_{session}_{k}_surface.png"), 255 - img)
                else:
                    cv2.imwrite(str(folder / f"{s:03d}_{session}_{k}.png"), img)
    return folder


def run_main(capsys, argv):
    rc = ev.main(argv, pipeline=stub_pipeline, scorer=AbsScorer())
    out, err = capsys.readouterr()
    return rc, out, err


def test_folder_run_reports_both_protocols(tmp_path, capsys):
    folder = write_folder(tmp_path / "imgs")
    cv2.imwrite(str(folder / "005_2_4.png"), np.zeros((40, 40), np.uint8))  # no hand -> FTA
    (folder / "005_2_5.png").write_bytes(b"not an image")  # unreadable -> FTA with its reason
    (folder / "notes.txt").write_text("skipped: does not match")
    rc, out, err = run_main(capsys, [str(folder), "--out", str(tmp_path / "out"), "--modality", "both"])
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["dataset"]["skipped_files"] == 1 and report["dataset"]["samples"] == 38
    avsa = report["all_vs_all"]
    assert avsa["counts"]["identities"] == 6 and avsa["counts"]["images"] == 38
    assert avsa["counts"]["templates"] == 36
    assert avsa["counts"]["genuine"] == 6 * 15 and avsa["counts"]["impostor"] == 36 * 35 // 2 - 90
    assert avsa["failures"]["fta_count"] == 2 and avsa["failures"]["reasons"] == {"no_hand": 1, "unreadable": 1}
    assert set(avsa["modalities"]) == {"surface", "vein", "fused"}
    assert avsa["modalities"]["fused"]["fnmr_at_fmr"]["1e-2"]["fnmr"] is not None  # 540 impostor pairs
    assert "needs 3000 impostor pairs, have 540" in avsa["modalities"]["fused"]["fnmr_at_fmr"]["1e-3"]["not_supported"]
    assert avsa["modalities"]["vein"]["rank1"] == 1.0
    cross = report["cross_session"]
    assert cross["enrol_session"] == "1" and cross["probe_sessions"] == ["2"]
    assert cross["counts"]["images"] == 20 and cross["counts"]["gallery_templates"] == 18
    assert cross["counts"]["genuine"] == 18 * 3 and cross["counts"]["impostor"] == 18 * 15
    assert cross["failures"]["fta"] == pytest.approx(0.1) and cross["failures"]["fte"] == 0.0
    for name in ("det_all_vs_all", "det_cross_session", "roi_contact_sheet"):
        assert cv2.imread(report["plots"][name]) is not None
    assert "Traceback" not in err


def test_folder_with_paired_channels(tmp_path, capsys):
    folder = write_folder(tmp_path / "imgs", subjects=3, sessions=1, samples=2, paired=True)
    (folder / "0_1_2_surface.png").unlink()  # a sample without its surface image
    pattern = r"(?P<id>\d+)_(?P<session>\d)_(?P<sample>\d+)_(?P<channel>nir|surface)\.png"
    rc, out, err = run_main(capsys, [str(folder), "--pattern", pattern, "--out", str(tmp_path / "o")])
    assert rc == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["dataset"]["modality"] == "both" and report["dataset"]["channels"] == ["nir", "surface"]
    assert report["all_vs_all"]["failures"]["reasons"] == {"unreadable": 1}
    assert report["cross_session"] == {"skipped": "one session (1): cross-session needs two"}
    rc, out, _ = run_main(capsys, [str(folder), "--pattern", pattern, "--modality", "vein",
                                   "--out", str(tmp_path / "o")])
    report = json.loads(out.splitlines()[-1])
    assert list(report["all_vs_all"]["modalities"]) == ["vein"]
    assert report["all_vs_all"]["failures"]["fta_count"] == 0


def test_sessions_from_the_sample_number(tmp_path, capsys):
    # a dataset without a session in its names (CASIA-MS): samples 1-3 one session, 4-6 the next
    folder = write_folder(tmp_path / "imgs", subjects=3, sessions=1, samples=6)
    rc, out, err = run_main(capsys, [str(folder), "--pattern", r"(?P<id>\d+)_1_(?P<sample>\d+)\.png",
                                     "--samples-per-session", "3", "--out", str(tmp_path / "o")])
    assert rc == 0, err
    report = json.loads(out.splitlines()[-1])
    cross = report["cross_session"]
    assert cross["enrol_session"] == "1" and cross["probe_sessions"] == ["2"]
    assert cross["counts"]["identities"] == 3 and cross["counts"]["images"] == 9 and cross["counts"]["genuine"] == 27


@pytest.mark.parametrize("argv, message", [
    (["{folder}", "--pattern", r"(?P<person>\d+)_\d_\d+\.png"], "has no (?P<id>...) group"),
    (["{folder}", "--pattern", r"(?P<id>\d+"], "is not a valid regular expression"),
    (["{folder}", "--pattern", r"(?P<id>\d+)\.jpg"], "none of the 12 files"),
    (["{empty}"], "is empty"),
    (["{missing}"], "no such folder"),
    ([], "give a FOLDER"),
    (["{folder}", "--pattern", r"(?P<id>\d+)_(?P<sample>\d_\d+)\.png", "--protocol", "cross_session"],
     "cross-session needs two sessions"),
    (["{folder}", "--pattern", r"(?P<id>\d+)_(?P<channel>\w+)_\d+\.png"], "is neither NIR nor surface"),
    (["{folder}", "--synthetic", "3"], "either a FOLDER or --synthetic"),
    (["{folder}", "--pattern", r"(?P<id>\d+)_\d_(?P<sample>\d+)\.png"], "000_1_1.png and 000_2_1.png are the same"),
    (["{folder}", "--samples-per-id", "10"], "--samples-per-id derives the id from the sample number: drop"),
    (["--synthetic", "3", "--samples-per-session", "3"], "--samples-per-session describes the files of a FOLDER"),
    (["--synthetic", "3", "--bit-depth", "12"], "--bit-depth describes the files of a FOLDER"),
    (["{folder}", "--roi-given", "--config", "{gate}"], "--config's thresholds do not apply to --roi-given"),
    (["{folder}", "--config", "{missing}"], "config file {missing} does not exist"),
    (["{folder}", "--config", "{badgate}"], "[roi]: unknown key 'valley_side'"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    folder = write_folder(tmp_path / "imgs", subjects=2, sessions=2, samples=3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "gate.toml").write_text("[roi]\nmax_hand_area = 0.8\n")
    (tmp_path / "bad.toml").write_text("[roi]\nvalley_side = 1.5\n")
    names = {"folder": folder, "empty": tmp_path / "empty", "missing": tmp_path / "nope",
             "gate": tmp_path / "gate.toml", "badgate": tmp_path / "bad.toml"}
    argv = [a.format(**names) for a in argv] + ["--out", str(tmp_path / "o")]
    rc, out, err = run_main(capsys, argv)
    assert rc == 1 and out == ""
    message = message.format(**names)
    assert len(err.strip().splitlines()) == 1 and message in err and err.startswith("palmnode eval: ")


def test_real_entry_point_reports_errors_without_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "palmnode.biometrics.evaluate", str(tmp_path / "empty"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"palmnode eval: {tmp_path / 'empty'} is empty: no image files to evaluate"


def test_an_out_folder_whose_plots_cannot_be_written_is_one_line(tmp_path, capsys):
    """The plots are written after the run: an --out folder that exists but cannot be written
    (read-only, or a plot's name taken by a folder) ended the run with a traceback."""
    folder = write_folder(tmp_path / "imgs", subjects=2, sessions=2, samples=2)
    (tmp_path / "o" / "det_all_vs_all.png").mkdir(parents=True)
    rc, out, err = run_main(capsys, [str(folder), "--out", str(tmp_path / "o")])
    assert rc == 1 and out == ""
    assert err.splitlines()[-1] == (f"palmnode eval: cannot write the plot {tmp_path / 'o' / 'det_all_vs_all.png'}: "
                                    "Is a directory")
    assert "Traceback" not in err


def test_a_debug_folder_that_cannot_be_created_is_one_line(tmp_path, capsys):
    """It was created at the first sample's write: every sample failed on it, counted as an
    engine_error failure to acquire (FTA 1.0 in the JSON, exit 0) after a traceback."""
    folder = write_folder(tmp_path / "imgs", subjects=2, sessions=1, samples=2)
    (tmp_path / "taken").write_text("a file where the folder should go")
    rc, out, err = run_main(capsys, [str(folder), "--out", str(tmp_path / "o"), "--debug-dir", str(tmp_path / "taken")])
    assert rc == 1 and out == ""
    assert err == f"palmnode eval: cannot create the debug folder {tmp_path / 'taken'}: File exists\n"


def test_debug_frames_of_a_name_that_is_not_utf8_are_written(tmp_path):
    """cv2.imwrite took the debug frame's path, named after the sample, as UTF-8 text: a Latin-1
    file name (unpacked from a zip) crashed the process with a segfault. In a fresh process."""
    folder = write_folder(tmp_path / "imgs", subjects=2, sessions=1, samples=1)
    os.rename(folder / "000_1_1.png", os.path.join(os.fsencode(folder), b"caf\xe9_1_1.png"))
    proc = subprocess.run([sys.executable, "-m", "palmnode.biometrics.evaluate", str(folder), "--out",
                           str(tmp_path / "o"), "--debug-dir", str(tmp_path / "debug")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(os.fsencode(tmp_path / "debug"))) == [b"001_1_1_image.png", b"caf\xe9_1_1_image.png"]


def test_debug_frames_of_a_session_spanning_folders_are_written_flat(tmp_path, capsys):
    """A session group that spans a folder (day1/s1) put a '/' in the frame's name: it was written
    into a sub-folder that did not exist, i.e. not at all, without a word."""
    for session in ("s1", "s2"):
        (tmp_path / "imgs" / "day1").mkdir(parents=True, exist_ok=True)
        write_folder(tmp_path / "imgs" / "day1" / session, subjects=2, sessions=1, samples=1)
    rc, out, err = run_main(capsys, [str(tmp_path / "imgs"), "--pattern", r"(?P<session>\w+/\w+)/(?P<id>\d+)_1_1\.png",
                                     "--out", str(tmp_path / "o"), "--debug-dir", str(tmp_path / "debug")])
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "debug")) == [f"{i:03d}_day1_{s}_1_image.png" for i in (0, 1) for s in ("s1", "s2")]


def test_a_link_planted_at_a_debug_frame_name_is_not_followed(tmp_path, capsys):
    """A frame's file was opened with O_TRUNC through a symbolic link at its name (one planted in
    a debug folder another user could write before the run made it 0700): the run overwrote the
    file it pointed to, whoever's it was. The link is refused now; its target is untouched."""
    folder = write_folder(tmp_path / "imgs", subjects=2, sessions=1, samples=1)
    debug = tmp_path / "debug"
    debug.mkdir()
    precious = tmp_path / "precious"
    precious.write_text("not a palm")
    os.symlink(precious, debug / "000_1_1_image.png")
    rc, out, err = run_main(capsys, [str(folder), "--out", str(tmp_path / "o"), "--debug-dir", str(debug)])
    assert rc == 1
    assert err.splitlines()[-1] == (f"palmnode eval: cannot write the debug frame {debug / '000_1_1_image.png'}: "
                                    "a symbolic link is in its place: remove it")
    assert precious.read_text() == "not a palm"


@pytest.mark.parametrize("umask", [0o022, 0o277], ids=["umask022", "umask277"])
@pytest.mark.parametrize("earlier_run", [False, True], ids=["new", "earlier-run"])
def test_debug_frames_are_private_whatever_the_umask(tmp_path, capsys, umask, earlier_run):
    """--debug-dir writes raw palm images: they were written with the umask's modes (0644 files in
    a 0755 folder under the usual 022), readable by every user of the machine. Now the folder is
    0700 and each frame 0600, a folder and a frame left by an earlier run tightened too."""
    folder = write_folder(tmp_path / "imgs", subjects=2, sessions=1, samples=1)
    debug = tmp_path / "debug"
    if earlier_run:
        debug.mkdir(mode=0o755)
        (debug / "000_1_1_image.png").write_bytes(b"an earlier run's frame")
        os.chmod(debug, 0o755)
        os.chmod(debug / "000_1_1_image.png", 0o644)
    before = os.umask(umask)
    try:
        rc, _, err = run_main(capsys, [str(folder), "--out", str(tmp_path / "o"), "--debug-dir", str(debug)])
    finally:
        os.umask(before)
    assert rc == 0, err
    assert stat.S_IMODE(debug.stat().st_mode) == 0o700
    frames = sorted(debug.iterdir())
    assert [p.name for p in frames] == ["000_1_1_image.png", "001_1_1_image.png"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in frames] == [0o600, 0o600]
    assert cv2.imread(str(frames[0])) is not None   # the frame, not what the earlier run left


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_min_quality_must_be_a_finite_number(capsys, value):
    """--min-quality nan refused every sample ('quality 1.00 below nan'): FTA 1.0, exit 0."""
    with pytest.raises(SystemExit) as exc:
        ev.build_parser().parse_args(["--synthetic", "2", "--min-quality", value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"argument --min-quality: must be a finite number, got {value}")


def test_engine_error_counts_as_failure_and_is_shown_once(tmp_path, capsys):
    folder = write_folder(tmp_path / "imgs", subjects=2, sessions=1, samples=2)

    def broken(vein, surface):
        raise RuntimeError("kaput")

    rc = ev.main([str(folder), "--out", str(tmp_path / "o")], pipeline=broken, scorer=AbsScorer())
    out, err = capsys.readouterr()
    assert rc == 0
    report = json.loads(out.splitlines()[-1])
    assert report["all_vs_all"]["failures"]["reasons"] == {"engine_error": 4}
    assert report["all_vs_all"]["modalities"]["vein"]["error"].startswith("no genuine comparisons")
    assert err.count("Traceback") == 1
    named = [line for line in err.splitlines() if line.startswith("eval: failed to acquire ")]
    assert len(named) == 4 and all(line.endswith(": engine_error: RuntimeError: kaput") for line in named)


def test_add_arguments_builds_a_subcommand(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="palmnode")
    sub = parser.add_subparsers(dest="command")
    ev.add_arguments(sub.add_parser("eval"))
    folder = write_folder(tmp_path / "imgs", subjects=2, sessions=2, samples=2)
    args = parser.parse_args(["eval", str(folder), "--out", str(tmp_path / "o"), "--sheet", "0"])
    assert ev.main(args, pipeline=stub_pipeline, scorer=AbsScorer()) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "roi_contact_sheet" not in report["plots"]
    assert ev.EvalOptions.from_namespace(args).folder == str(folder)


def test_progress_prints_only_for_long_work():
    now = [0.0]
    stream = io.StringIO()
    p = ev.Progress("encoding", 100, stream=stream, delay=2.0, clock=lambda: now[0])
    for _ in range(10):
        p.update()
    assert stream.getvalue() == ""
    now[0] = 3.0
    for _ in range(90):
        p.update()
    p.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("encoding [") and "100/100" in lines[-1]
    assert len(lines) <= 11
    quiet = io.StringIO()
    q = ev.Progress("x", 5, stream=quiet, clock=lambda: 0.0)
    q.update(5)
    q.close()
    assert quiet.getvalue() == ""


def test_sheet_keys_spread_over_subjects():
    keys = [SampleKey(f"{s}", str(se), str(k)) for s in range(20) for se in (1, 2) for k in (1, 2, 3)]
    chosen = ev.sheet_keys(keys, 48)
    assert len(chosen) == 48 and len({k.subject for k in chosen}) == 8
    assert ev.sheet_keys(keys, 0) == set()


def test_rate_keys():
    assert [ev.rate_key(t) for t in metrics.FMR_TARGETS] == ["1e-2", "1e-3", "1e-4", "1e-5", "1e-6"]


def test_synthetic_run_renders_in_memory(tmp_path, capsys, monkeypatch):
    import types as pytypes

    import palmnode.biometrics

    class Identity:
        def __init__(self, seed, hand):
            self.seed, self.hand = seed, hand

        @classmethod
        def from_seed(cls, seed, hand=None):
            return cls(seed, hand)

    def render_pair(identity, capture):
        v = 20 + (identity.seed % 20) * 10 + (3 if identity.hand == "left" else 0) + capture
        return np.full((48, 64), v, np.uint8), np.full((48, 64), 255 - v, np.uint8)

    fake = pytypes.SimpleNamespace(Identity=Identity, render_pair=render_pair,
                                   sample_capture=lambda rng, *, session, rotation: int(rng.integers(2)))
    monkeypatch.setitem(sys.modules, "palmnode.biometrics.synth", fake)
    monkeypatch.setattr(palmnode.biometrics, "synth", fake, raising=False)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = run_main(capsys, ["--synthetic", "5", "--hands", "both", "--out", str(out)])
    assert rc == 0, err
    report = json.loads(stdout.splitlines()[-1])
    assert report["all_vs_all"]["counts"]["identities"] == 10 and report["all_vs_all"]["counts"]["images"] == 60
    assert report["cross_session"]["counts"]["gallery_templates"] == 30
    assert set(report["cross_session"]["modalities"]) == {"surface", "vein", "fused"}
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["out/det_all_vs_all.png", "out/det_cross_session.png", "out/roi_contact_sheet.png"]
    rc, _, _ = run_main(capsys, ["--synthetic", "2", "--out", str(out), "--debug-dir", str(tmp_path / "dbg")])
    assert rc == 0 and len(list((tmp_path / "dbg").glob("*.png"))) == 2 * 6 * 2


def test_matcher_scorer_uses_the_fastest_kernel_there_is():
    import types as pytypes

    score = pytypes.SimpleNamespace

    def match(a, b):
        return score(surface=-abs(a - b), vein=-abs(a - b) * 2, fused=-abs(a - b) * 3)

    def match_many(p, gallery):
        g = np.array(gallery, float)
        return score(surface=-abs(p - g), vein=-abs(p - g) * 2, fused=-abs(p - g) * 3)

    def match_matrix(probes, gallery):
        d = -np.abs(np.array(probes, float)[:, None] - np.array(gallery, float)[None, :])
        return score(surface=d, vein=2 * d, fused=3 * d)

    probes, gallery = [0.0, 1.0], [0.5, 2.0, 3.0]
    want = None
    for kernels in ({"match": match}, {"match": match, "match_many": match_many},
                    {"match": match, "match_matrix": match_matrix}):
        got = ev.MatcherScorer(("vein", "fused"), pytypes.SimpleNamespace(**kernels)).score_block(probes, gallery)
        assert got["vein"].shape == (2, 3) and got["vein"].dtype == np.float32
        if want is None:
            want = got
        for m in ("vein", "fused"):
            np.testing.assert_allclose(got[m], want[m])
    np.testing.assert_allclose(want["vein"], [[-1, -4, -6], [-1, -2, -4]])


def test_nan_scores_are_left_out():
    class NanScorer(AbsScorer):
        def score_block(self, probes, gallery):
            out = super().score_block(probes, gallery)
            out["surface"][0, :] = np.nan  # the block's first probe has no surface code
            return out

    keys = keys_for([0, 0, 1, 1])
    r = ev.all_vs_all(keys, [(0, 0), (0.1, 0.1), (1, 1), (1.1, 1.1)], NanScorer(), stream=io.StringIO())
    assert r.genuine["surface"].size == 1 and r.impostor["surface"].size == 2
    assert np.isfinite(r.genuine["surface"]).all() and r.genuine["vein"].size == 2
    assert r.searches["surface"].mated[0] == -np.inf  # mates exist, nothing compared: a miss
    assert r.searches["surface"].mated_searches == 4
    c = ev.cross_session(keys_for([0, 1]), [(0, 0), (1, 1)], keys_for([0, 1], "2"), [(0.1, 0), (1.2, 1)], NanScorer(),
                         stream=io.StringIO())
    assert c.impostor["surface"].size == 1 and c.genuine["surface"].size == 1


def test_matcher_scorer_kernel_path_equals_match():
    """The 1:N kernel path gives matcher.match's numbers exactly (needs the built engine)."""
    matcher = pytest.importorskip("palmnode.biometrics.matcher")
    features = pytest.importorskip("palmnode.biometrics.features")
    rng = np.random.default_rng(7)
    base = [cv2.GaussianBlur(rng.integers(0, 255, (128, 128), dtype=np.uint8), (0, 0), 2) for _ in range(3)]
    rois = [np.clip(b.astype(int) + rng.integers(-12, 12, b.shape), 0, 255).astype(np.uint8)
            for b in base for _ in range(2)]
    templates = [features.encode(r, np.flipud(r).copy()) for r in rois]
    templates.append(features.encode(None, rois[0]))  # a template without its surface code
    got = ev.MatcherScorer(("surface", "vein", "fused"), matcher).score_block(templates[:3], templates)
    for i in range(3):
        for j, t in enumerate(templates):
            want = matcher.match(templates[i], t)
            for m in ("surface", "vein", "fused"):
                w = np.float32(getattr(want, m))
                assert (np.isnan(w) and np.isnan(got[m][i, j])) or got[m][i, j] == w, (m, i, j)


def test_engine_pipeline_measures_with_a_gate_configs_thresholds(tmp_path):
    from palmnode import config
    from palmnode.biometrics import synth

    nir, surface = synth.render_pair(synth.Identity.from_seed(5),
                                     synth.sample_capture(np.random.default_rng(1), session=1))
    assert isinstance(ev.EnginePipeline()(nir, surface), ev.Encoded)
    path = tmp_path / "gate.toml"
    path.write_text("[roi]\nmin_palm_diameter = 0.05\nmax_palm_diameter = 0.1\n")  # optics that see hands small
    policy, limits = config.capture_thresholds(path)
    failed = ev.EnginePipeline(policy=policy, limits=limits)(nir, surface)
    assert isinstance(failed, ev.Failed) and failed.reason == "too_close", failed


def test_a_pair_from_two_cameras_is_refused_with_both_sizes():
    from palmnode.biometrics import roi, synth

    nir, surface = synth.render_pair(synth.Identity.from_seed(5),
                                     synth.sample_capture(np.random.default_rng(1), session=1))
    failed = ev.EnginePipeline()(nir, cv2.resize(surface, (800, 600)))
    assert isinstance(failed, ev.Failed) and failed.reason == "bad_image"
    assert failed.detail.startswith("NIR image is 640×480, surface image 800×600: ")
    found = roi.extract_roi(nir)
    vein_roi, surface_roi = roi.warp(nir, found), cv2.resize(roi.warp(surface, found), (200, 200))
    assert isinstance(ev.EnginePipeline(roi_given=True)(vein_roi, surface_roi), ev.Encoded)  # each resized


def test_an_roi_without_palm_texture_is_a_failure_to_acquire_not_an_engine_error():
    flat = np.full((128, 128), 120, np.uint8)
    failed = ev.EnginePipeline(roi_given=True)(flat, None)
    assert isinstance(failed, ev.Failed) and failed.reason == "bad_image"
    assert "too little palm texture" in failed.detail


@pytest.mark.parametrize(("signum", "status", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_stop_during_a_run_is_one_line_and_leaves_no_report(tmp_path, signum, status, name):
    """Ctrl-C while `palmnode eval` encodes: it exited 130 without a word (the terminal showed the
    progress bar, then the prompt, as if the run had ended); a SIGTERM (`kill`, a job scheduler's
    stop) killed it silently, exit -15. Now one line says what stopped it, exit 130 or 143 (128 +
    the signal), no traceback, no JSON report on stdout, no plot in --out, no calibration and no
    file beside either. A real signal to a real run, sent once its first line says the samples
    are being encoded."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "palmnode.cli", "eval", "--synthetic", "60", "--out", str(out),
                             "--calibration-out", str(tmp_path / "calibration.json")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with reaped(proc):
        assert proc.stderr.readline().startswith("eval: 360 samples of 60 palms")
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.splitlines() == [f"palmnode eval: stopped by {name}"], stderr[-2000:]
    assert stdout == ""
    assert [p.name for p in tmp_path.iterdir()] in ([], ["out"])
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(("signum", "status", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_ctrl_c_swallowed_on_its_way_still_stops_the_run_before_any_plot(tmp_path, capsys, signum, status, name):
    """C code may clear the KeyboardInterrupt a Ctrl-C raises (CPython drops an exception raised
    while some C calls run Python code): once in fresh-clone CI a Ctrl-C'd `palmnode eval` went on
    to write its plots, then said it was stopped. Noted by stopsignals.interrupt, the Ctrl-C now
    stops the run at its next stage, before any plot is written; a SIGTERM (the same handler) too."""
    from palmnode import stopsignals

    folder = write_folder(tmp_path / "imgs")
    calls = []

    def swallowing(vein, surface):
        calls.append(1)
        if len(calls) == 3:
            try:
                stopsignals.interrupt(signum, None)
            except KeyboardInterrupt:
                pass  # what the C code did with it
        return stub_pipeline(vein, surface)

    try:
        rc = ev.main([str(folder), "--out", str(tmp_path / "out")], pipeline=swallowing, scorer=AbsScorer())
    finally:
        stopsignals._noted.clear()
    out, err = capsys.readouterr()
    assert rc == status and out == ""
    assert err.splitlines()[-1] == f"palmnode eval: stopped by {name}"
    assert list((tmp_path / "out").iterdir()) == []
    # at the next sample, not at the end of the stage: a real SIGTERM swallowed so let the whole
    # encoding (13 s, its progress lines and failures) run on after it
    assert len(calls) == 3
