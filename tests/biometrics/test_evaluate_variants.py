"""palmnode eval with probe variants: which samples carry them, the max over variants for genuine
and impostor pairs alike, the scorer's kernel path equal to matcher.match_probe, the report."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

import fake_palms  # tests/biometrics is on sys.path (pytest rootdir import mode)
from palmnode.biometrics import evaluate as ev
from palmnode.biometrics import features, matcher, variants
from palmnode.biometrics.variants import ProbeTemplates
from test_evaluate import keys_for, write_folder

SHIFT = 0.5


class Fan:
    """A fake probe with variants: the (surface, vein) vectors it may be matched as, base first."""

    def __init__(self, base, shifts=(0.0, SHIFT, -SHIFT)):
        self.templates = tuple((base[0] + d, base[1] + d) for d in shifts)
        self.variants = shifts


class MaxScorer:
    """Score = -|a - b| per modality, fused = mean; a Fan probe scores as its best-fused variant."""

    modalities = ("surface", "vein", "fused")

    def score_block(self, probes, gallery):
        g = np.array(gallery, np.float64).reshape(len(gallery), 2)
        out = {m: np.empty((len(probes), len(gallery))) for m in self.modalities}
        for i, p in enumerate(probes):
            ts = np.array(p.templates if isinstance(p, Fan) else [p], np.float64)
            s = -np.abs(ts[:, None, 0] - g[None, :, 0])
            v = -np.abs(ts[:, None, 1] - g[None, :, 1])
            f = (s + v) / 2
            best = np.argmax(f, axis=0)
            cols = np.arange(len(gallery))
            out["surface"][i], out["vein"][i], out["fused"][i] = s[best, cols], v[best, cols], f[best, cols]
        return out


class FanPipeline:
    """Template = mean grey of the NIR frame (twice); with probe=True also its Fan."""

    makes_probe_variants = True
    variants = (variants.IDENTITY,)

    def __init__(self):
        self.asked = []

    def __call__(self, vein, surface, *, probe=False):
        t = (float(vein.mean()), float(vein.mean()))
        self.asked.append(probe)
        return ev.Encoded(t, probe=Fan(t) if probe else None)


def test_cross_session_scores_each_probe_as_its_best_variant_impostors_too():
    gkeys, pkeys = keys_for([0, 1, 2]), keys_for([0, 1, 2], "2")
    gallery = [(0.0, 0.0), (10.0, 10.0), (20.0, 20.0)]
    probes = [Fan((0.6, 0.6)), Fan((9.0, 9.0)), (20.4, 20.4)]
    r = ev.cross_session(gkeys, gallery, pkeys, probes, MaxScorer(), stream=io.StringIO())
    # genuine: 0.6 -> 0.1 by the -0.5 variant; 9.0 -> 9.5 by +0.5; a plain probe stays as it is
    np.testing.assert_allclose(sorted(r.genuine["fused"]), sorted([-0.1, -0.5, -0.4]))
    # impostors get the same freedom: 0.6 vs 10 -> 1.1 closer by +0.5 = -8.9
    assert np.isclose(r.impostor["fused"], -8.9).any() and r.impostor["fused"].size == 6


def test_all_vs_all_rows_carry_the_variants_columns_the_templates():
    keys = keys_for([0, 0, 1])
    templates = [(0.0, 0.0), (1.0, 1.0), (5.0, 5.0)]
    probes = [Fan(t, (0.0, 0.9)) for t in templates]
    r = ev.all_vs_all(keys, templates, MaxScorer(), probes=probes, stream=io.StringIO())
    # pair (0, 1): row 0's variant 0.9 against template 1.0 -> -0.1 (not row 1's variants vs 0.0)
    np.testing.assert_allclose(r.genuine["fused"], [-0.1])
    # impostors: row 0 (0, 0.9) vs 5 -> -4.1; row 1 (1, 1.9) vs 5 -> -3.1
    np.testing.assert_allclose(sorted(r.impostor["fused"]), [-4.1, -3.1], rtol=1e-6)
    with pytest.raises(ValueError):
        ev.all_vs_all(keys, templates, MaxScorer(), probes=probes[:2], stream=io.StringIO())


def test_only_probe_side_samples_get_variants_and_the_report_says_so(tmp_path, capsys):
    folder = write_folder(tmp_path / "imgs", subjects=4)
    pipe = FanPipeline()
    rc = ev.main([str(folder), "--out", str(tmp_path / "o"), "--protocol", "cross_session", "--sheet", "0"],
                 pipeline=pipe, scorer=MaxScorer())
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out.splitlines()[-1])
    assert pipe.asked.count(True) == 12 and pipe.asked.count(False) == 12      # session 2 only
    assert report["probe_variants"]["probes"] == 12
    assert report["probe_variants"]["templates_per_probe"] == {"3": 12}
    with_variants = report["cross_session"]["modalities"]["vein"]["eer_threshold"]
    # all-vs-all: every sample is a row somewhere
    pipe = FanPipeline()
    assert ev.main([str(folder), "--out", str(tmp_path / "o"), "--protocol", "both", "--sheet", "0"],
                   pipeline=pipe, scorer=MaxScorer()) == 0
    capsys.readouterr()
    assert pipe.asked == [True] * 24
    # --no-probe-variants: none made, reported as null, the scores are the templates'
    pipe = FanPipeline()
    assert ev.main([str(folder), "--out", str(tmp_path / "o"), "--protocol", "cross_session", "--sheet", "0",
                    "--no-probe-variants"], pipeline=pipe, scorer=MaxScorer()) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert pipe.asked == [False] * 24 and report["probe_variants"] is None
    assert report["cross_session"]["modalities"]["vein"]["eer_threshold"] != with_variants


def test_a_pipeline_without_variants_is_run_as_before(tmp_path, capsys):
    from test_evaluate import AbsScorer, stub_pipeline

    folder = write_folder(tmp_path / "imgs", subjects=3)
    assert ev.main([str(folder), "--out", str(tmp_path / "o"), "--sheet", "0"], pipeline=stub_pipeline,
                   scorer=AbsScorer()) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["probe_variants"] is None


@pytest.fixture(scope="module")
def engine_set():
    rois = [[fake_palms.capture(fake_palms.identity(i), 100 * i + s) for s in range(2)] for i in range(5)]
    gallery = [features.encode(*r[0]) for r in rois]
    gallery.append(features.encode(None, rois[0][0][1]))     # a template without its surface code
    probes = [variants.from_rois(*r[1]) for r in rois]
    return gallery, probes


def test_matcher_scorer_with_variants_equals_match_probe(engine_set):
    gallery, probes = engine_set
    block = [probes[0], probes[1].base, probes[2], ProbeTemplates.single(probes[3].base)]
    got = ev.MatcherScorer(("surface", "vein", "fused"), matcher).score_block(block, gallery)
    for i, p in enumerate(block):
        for j, t in enumerate(gallery):
            want = matcher.match_probe(p, t) if isinstance(p, ProbeTemplates) else matcher.match(p, t)
            for m in ("surface", "vein", "fused"):
                w = np.float32(getattr(want, m))
                assert (np.isnan(w) and np.isnan(got[m][i, j])) or got[m][i, j] == w, (m, i, j)
    assert (got["fused"][0] >= ev.MatcherScorer(("fused",), matcher).score_block([probes[0].base], gallery)["fused"][0]).all()


def test_engine_pipeline_makes_variants_from_given_rois():
    surface, vein = fake_palms.capture(fake_palms.identity(3), 4)
    pipe = ev.EnginePipeline(roi_given=True)
    plain = pipe(vein, surface)
    made = pipe(vein, surface, probe=True)
    assert plain.probe is None and plain.as_probe is plain.template
    assert isinstance(made.probe, ProbeTemplates) and made.probe.variants == variants.VARIANTS
    assert made.probe.base is made.template and made.as_probe is made.probe
    assert made.template.to_bytes() == plain.template.to_bytes() and pipe.variant_seconds > 0
