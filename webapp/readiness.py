"""Readiness, as orchestrators and operators ask for it (pure: plain data in, plain data out).

- ``/livez``: the process answers; it checks nothing else, so a Redis outage never gets the
  front door restarted.
- ``/readyz``: every check the front door needs to accept work, each named in the body:
  ``redis``, ``sql``, ``plan`` (a plan is published) and ``workers`` (at least one worker's
  heartbeat is alive); 503 with the failed ones in ``failed`` otherwise.
- per model (``GET /v1/models/readiness``, ``/readyz``'s ``models``, the dashboard): the
  workers whose heartbeat says they serve the model's queues (``workers.control``: each
  worker's heartbeat names its queues and the model behind each, the one it loads for
  its next message), and the workers the active plan gives it. A model the plan uses
  with no live worker on its queues is not ready: its queries wait.
"""

from __future__ import annotations

from collections.abc import Mapping

from planner.policy import ActivePlan
from planner.registry import Registry

CHECKS = ("redis", "sql", "plan", "workers")


def model_readiness(reg: Registry, plan: ActivePlan | None,
                    workers: Mapping[str, dict]) -> list[dict]:
    """One entry per declared model: its queues, live workers serving each, the workers the
    plan wants there, whether the plan uses it, and ``ready``."""
    out = []
    planned_ids = {plan.light, plan.heavy} if plan is not None else set()
    want = dict(plan.workers) if plan is not None else {}
    for m in reg:
        queues = [m.light_queue, m.heavy_queue]
        live = {q: sorted(w for w, hb in workers.items() if q in (hb.get("queues") or []))
                for q in queues}
        names = sorted({w for ws in live.values() for w in ws})
        used = m.id in planned_ids
        out.append({
            "id": m.id, "name": m.name, "in_plan": used,
            "queues": {q: {"live_workers": len(live[q]), "planned_workers": int(want.get(q, 0)),
                           "workers": live[q]} for q in queues},
            "live_workers": len(names),
            "planned_workers": sum(int(want.get(q, 0)) for q in queues),
            "ready": bool(names) and (not used or all(
                live[q] for q in queues if int(want.get(q, 0)) > 0)),
        })
    return out


def readiness(checks: Mapping[str, str], models: list[dict]) -> tuple[bool, dict]:
    """``(ready, body)`` of ``/readyz`` from the checks' outcomes (``"ok"`` or why not)."""
    failed = [c for c in CHECKS if checks.get(c, "unknown") != "ok"]
    return not failed, {"ready": not failed, "checks": {c: checks.get(c, "unknown")
                                                        for c in CHECKS},
                        "failed": failed, "models": models}
