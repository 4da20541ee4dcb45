"""The identify flow's evidence rule: identified, unknown, or (after the last pair) a near miss
asking for a fresh presentation — never a guess."""
from __future__ import annotations

from palmnode.biometrics.gallery import Candidate
from palmnode.biometrics.matcher import Score
from palmnode.gate.identify import NOT_SURE, Evidence, IdentifyPolicy

POLICY = IdentifyPolicy(threshold=0.40, margin=0.03, unknown_margin=0.05)


def seen(*scores: tuple[str, float]) -> list[Candidate]:
    return [Candidate(person_id=pid, palm="right", score=Score(surface=s, vein=s, fused=s)) for pid, s in scores]


def test_clear_match_is_identified_at_once_and_clear_miss_unknown():
    assert Evidence(POLICY).add(seen(("a", 0.45), ("b", 0.30))).outcome == "identified"
    assert Evidence(POLICY).add(seen(("a", 0.33))).outcome == "unknown"


def test_near_miss_waits_for_more_pairs_then_asks_for_a_new_presentation():
    evidence = Evidence(POLICY)
    assert evidence.add(seen(("a", 0.38))).outcome == "undecided"
    assert evidence.add(seen(("a", 0.37))).outcome == "undecided"
    final = evidence.verdict(final=True)
    assert final.outcome == "retry" and final.reason == NOT_SURE and final.person_id is None


def test_over_the_threshold_but_not_clear_of_the_runner_up_is_not_a_guess():
    evidence = Evidence(POLICY)
    assert evidence.add(seen(("a", 0.42), ("b", 0.41))).outcome == "undecided"
    assert evidence.verdict(final=True).outcome == "retry"


def test_scores_are_averaged_over_pairs():
    evidence = Evidence(POLICY)
    evidence.add(seen(("a", 0.39)))
    assert evidence.add(seen(("a", 0.43))).outcome == "identified"  # mean 0.41
