"""Gallery.search with probe variants: the final scores are matcher.match_probe's."""
import pytest

import fake_palms  # tests/biometrics is on sys.path (pytest rootdir import mode)
from palmnode.biometrics import features, variants
from palmnode.biometrics import gallery as gal
from palmnode.biometrics.gallery import Gallery
from palmnode.biometrics.matcher import match, match_probe
from palmnode.biometrics.variants import ProbeTemplates

N = 16


@pytest.fixture(scope="module")
def people():
    rois = [[fake_palms.capture(fake_palms.identity(i), 100 * i + s) for s in range(2)] for i in range(N)]
    return [(features.encode(*r[0]), variants.from_rois(*r[1])) for r in rois]


@pytest.mark.parametrize("chunk, threads", [(None, 1), (5, 1), (5, 2)])
def test_search_with_variants_scores_are_match_probe(people, monkeypatch, chunk, threads):
    if chunk is not None:
        monkeypatch.setattr(gal, "_GATHER", chunk)
    g = Gallery(segment_size=4, first_capacity=2, threads=threads)
    for i, (t, _) in enumerate(people):
        g.add(f"p{i}", "right", t)
    for i, (_, probe) in enumerate(people):
        found = g.search(probe, k=N)
        assert found[0].person_id == f"p{i}"
        for c in found:
            want = match_probe(probe, people[int(c.person_id[1:])][0])
            assert c.score == want
        assert found[0].score.fused >= match(probe.base, people[i][0]).fused
        assert g.search(ProbeTemplates.single(probe.base), k=N) == g.search(probe.base, k=N)
