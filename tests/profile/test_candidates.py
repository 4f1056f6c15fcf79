"""Model-candidate pruning on a synthetic registry where the expected kept set is known."""

from __future__ import annotations

import pytest

from planner.candidates import Candidate, format_decisions, prune_candidates
from planner.registry import ModelSpec, Registry, affine_batch_latency

# id, name, batch-1 latency, FID
SYNTHETIC = [
    (0, "fast", 1.0, 30.0),
    (1, "fast-twin", 1.05, 29.8),   # near-duplicate of "fast": better quality, kept instead
    (2, "slow-bad", 2.0, 31.0),     # dominated: slower and worse than "fast-twin"
    (3, "mid", 5.0, 25.0),          # well below the fast-twin..big segment: kept
    (4, "on-line", 10.0, 22.6),     # on the mid..big segment (22.5 at 10 s): pruned
    (5, "big", 15.0, 20.0),
    (6, "huge", 30.0, 15.0),
]


def _registry() -> Registry:
    return Registry(tuple(ModelSpec(id=i, name=n, queue=n.replace("-", "_"),
                                    latency=affine_batch_latency(lat))
                          for i, n, lat, _ in SYNTHETIC))


def test_synthetic_registry_kept_set():
    reg = _registry()
    fid = {i: q for i, _, _, q in SYNTHETIC}
    decisions = prune_candidates([Candidate(m.id, m.name, m.latency_b1, fid[m.id]) for m in reg])
    by_id = {d.candidate.id: d for d in decisions}
    assert [d.candidate.id for d in decisions] == reg.ids()
    assert {i for i, d in by_id.items() if d.kept} == {1, 3, 5, 6}
    assert by_id[0].rule == "near-duplicate" and "fast-twin" in by_id[0].reason
    assert by_id[2].rule == "dominated" and "fast-twin" in by_id[2].reason
    assert by_id[4].rule == "near-segment" and "mid-big" in by_id[4].reason
    table = format_decisions(decisions)
    assert "pruned (near-segment)" in table and table.count("kept") == 4


def test_segment_rule_keeps_models_that_beat_the_mix_and_is_repeated():
    c = [Candidate(0, "a", 1.0, 30.0), Candidate(1, "b", 2.0, 29.0),
         Candidate(2, "c", 3.0, 28.0), Candidate(3, "d", 10.0, 10.0)]
    # b lies on the a..c segment and c behind the b..d one; pruning repeats (worst first)
    # until b and c are both gone.
    kept = {d.candidate.name for d in prune_candidates(c) if d.kept}
    assert kept == {"a", "d"}
    convex = [Candidate(0, "a", 1.0, 30.0), Candidate(1, "b", 2.0, 20.0),
              Candidate(2, "c", 10.0, 15.0)]
    assert all(d.kept for d in prune_candidates(convex))


def test_reference_models_are_all_kept(sd35_table):
    from hadis_celery.examples import sd35_registry
    from planner.candidates import single_model_quality

    q = single_model_quality(sd35_table)
    ds = prune_candidates([Candidate(m.id, m.name, m.latency_b1, q[m.id])
                           for m in sd35_registry()])
    assert all(d.kept for d in ds)


def test_bad_candidates():
    with pytest.raises(ValueError, match="latency"):
        Candidate(0, "x", 0.0, 1.0)
    with pytest.raises(ValueError, match="duplicate model ids"):
        prune_candidates([Candidate(0, "x", 1.0, 1.0), Candidate(0, "y", 2.0, 0.5)])
