"""Model-candidate pruning before profiling cascades (the three rules of the HADIS paper).

Every pair of kept models is profiled over a grid, so the candidate set is cut first:

1. **near-duplicate**: two models within ``dup_latency_rel`` relative latency and
   ``dup_quality_abs`` quality of each other serve the same purpose; the better quality
   one is kept (the faster one on a tie).
2. **dominated**: a model that another model beats or equals on both latency and quality
   (better on one) is never worth running.
3. **near-segment**: sort the remaining models by latency; an interior model whose
   quality is no better than the straight segment between its two neighbours by more than
   ``segment_tol`` is dropped, because a cascade of the neighbours mixing the two in
   proportion reaches that segment's point at the same mean latency (and a cascade with
   a router does better than the linear mix). Applied repeatedly, worst offender first.

Quality is "lower is better" (FID; or 1 - mean discriminator score) and latency is the
batch-1 seconds per image. The result is one decision per model, with the rule and reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from planner.cascade import CascadeConfig


@dataclass(frozen=True)
class Candidate:
    id: int
    name: str
    latency_s: float  # batch-1 seconds per image
    quality: float  # lower is better

    def __post_init__(self) -> None:
        if not (self.latency_s > 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"model {self.name}: latency must be positive, got {self.latency_s}")
        if not math.isfinite(self.quality):
            raise ValueError(f"model {self.name}: quality must be finite, got {self.quality}")


@dataclass(frozen=True)
class Decision:
    candidate: Candidate
    kept: bool
    rule: str  # "" when kept; "near-duplicate" | "dominated" | "near-segment"
    reason: str

    def to_dict(self) -> dict:
        c = self.candidate
        return {"id": c.id, "name": c.name, "latency_s": c.latency_s, "quality": c.quality,
                "kept": self.kept, "rule": self.rule, "reason": self.reason}


def prune_candidates(
    candidates: Sequence[Candidate],
    *,
    dup_latency_rel: float = 0.10,
    dup_quality_abs: float = 0.5,
    segment_tol: float = 0.5,
) -> list[Decision]:
    """One decision per candidate (input order): kept, or pruned with the rule and reason."""
    ids = [c.id for c in candidates]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate model ids among candidates: {ids}")
    pruned: dict[int, tuple[str, str]] = {}
    alive = list(candidates)

    # Rule 1: near-duplicates keep the better quality (then the faster) one.
    order = sorted(alive, key=lambda c: (c.quality, c.latency_s, c.id))
    for i, best in enumerate(order):
        if best.id in pruned:
            continue
        for other in order[i + 1:]:
            if other.id in pruned:
                continue
            dl = abs(other.latency_s - best.latency_s) / max(other.latency_s, best.latency_s)
            dq = abs(other.quality - best.quality)
            if dl <= dup_latency_rel and dq <= dup_quality_abs:
                pruned[other.id] = ("near-duplicate", (
                    f"within {dl:.0%} latency and {dq:.2f} quality of {best.name}, "
                    f"which is {'better' if dq > 0 else 'as good'}"))
    alive = [c for c in alive if c.id not in pruned]

    # Rule 2: Pareto-dominated models.
    for c in alive:
        for o in alive:
            if o is c:
                continue
            if (o.latency_s <= c.latency_s and o.quality <= c.quality
                    and (o.latency_s < c.latency_s or o.quality < c.quality)):
                pruned[c.id] = ("dominated", (
                    f"{o.name} is as fast or faster ({o.latency_s:g} s vs {c.latency_s:g} s) "
                    f"and as good or better ({o.quality:g} vs {c.quality:g})"))
                break
    alive = sorted((c for c in alive if c.id not in pruned), key=lambda c: c.latency_s)

    # Rule 3: models close to (or behind) the segment between their neighbours.
    while len(alive) >= 3:
        worst: tuple[float, int, str] | None = None
        for k in range(1, len(alive) - 1):
            a, m, b = alive[k - 1], alive[k], alive[k + 1]
            t = (m.latency_s - a.latency_s) / (b.latency_s - a.latency_s)
            on_segment = a.quality + t * (b.quality - a.quality)
            margin = on_segment - m.quality  # > 0: m is better than the mix
            if margin <= segment_tol and (worst is None or margin < worst[0]):
                worst = (margin, k, (
                    f"quality {m.quality:g} is within {segment_tol:g} of (or behind) "
                    f"{on_segment:.2f} on the {a.name}-{b.name} segment at "
                    f"{m.latency_s:g} s; a cascade of the two reproduces it"))
        if worst is None:
            break
        _, k, reason = worst
        pruned[alive[k].id] = ("near-segment", reason)
        del alive[k]

    return [
        Decision(c, c.id not in pruned, *(pruned.get(c.id) or ("", "kept")))
        for c in candidates
    ]


def single_model_quality(configs: Iterable[CascadeConfig]) -> dict[int, float]:
    """Each model's quality alone, from the degenerate rows of the table: all-light rows
    (nothing reaches the heavy model) and all-heavy rows (nothing runs light)."""
    out: dict[int, list[float]] = {}
    for c in configs:
        if c.frac_heavy == 0.0:
            out.setdefault(c.light, []).append(c.fid)
        elif c.frac_light == 0.0:
            out.setdefault(c.heavy, []).append(c.fid)
    return {m: sum(v) / len(v) for m, v in sorted(out.items())}


def format_decisions(decisions: Sequence[Decision]) -> str:
    """A plain-text table: model, latency, quality, kept/pruned, reason."""
    lines = [f"{'id':>3}  {'model':<22} {'latency_s':>9} {'quality':>8}  {'decision':<24} reason"]
    for d in decisions:
        c = d.candidate
        verdict = "kept" if d.kept else f"pruned ({d.rule})"
        lines.append(f"{c.id:>3}  {c.name:<22} {c.latency_s:>9.3g} {c.quality:>8.3f}  "
                     f"{verdict:<24} {'' if d.kept else d.reason}")
    return "\n".join(lines)
