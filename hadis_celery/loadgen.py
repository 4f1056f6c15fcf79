"""Open-loop load generation against a front door: ``hadis replay`` and ``bench.testbed``.

Open loop: every arrival is sent at its trace time x the time scale, whether or not the
stack has answered the earlier ones (a closed loop would slow down with the stack and
hide its overload). ``threads`` senders take arrivals in trace order, each sleeping until
its arrival is due; an arrival is sent late only when every sender is busy in a request,
and the lag is recorded per arrival (``LiveRecord.sent_at - scheduled_at``).

The plain part (which arrivals, when) is ``select_arrivals``/``send_offsets``; the shell
is ``send_all`` (POST every arrival), ``collect`` (read every accepted query's final state
once its deadline is near, polling only the open ones) and ``fetch_plans``.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from planner.status import FINAL, QueryStatus
from sim.live import LiveRecord

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Arrival:
    index: int  # arrival number in the sorted trace
    t_s: float  # trace seconds from the slice start (profile time)
    prompt_index: int


def select_arrivals(arrival_s: Sequence[float] | np.ndarray,
                    prompt_index: Sequence[int] | np.ndarray, *, start_s: float = 0.0,
                    duration_s: float | None = None, limit: int | None = None
                    ) -> list[Arrival]:
    """The arrivals in ``[start_s, start_s + duration_s)``, the first ``limit`` of them,
    with times relative to ``start_s``."""
    if start_s < 0 or (duration_s is not None and duration_s <= 0) or (
            limit is not None and limit < 1):
        raise ValueError("start must be >= 0, duration > 0 and limit >= 1")
    out = []
    end = math.inf if duration_s is None else start_s + duration_s
    for i, (t, p) in enumerate(zip(arrival_s, prompt_index, strict=True)):
        if start_s <= t < end:
            out.append(Arrival(i, float(t) - start_s, int(p)))
            if limit is not None and len(out) >= limit:
                break
    return out


def send_offsets(arrivals: Sequence[Arrival], time_scale: float) -> list[float]:
    """Wall seconds from the replay's start at which each arrival is due."""
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time scale must be a positive number, got {time_scale!r}")
    return [a.t_s * time_scale for a in arrivals]


# -- HTTP ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """The front door's base URL, split once (``http://host:port/prefix``)."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s)://host[:port] URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{url!r}: bad port") from None
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: give the front door's base URL, without ? or #")
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout_s)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.prefix}"


class Client:
    """One keep-alive connection per thread; JSON in and out."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 30.0,
                 headers: dict[str, str] | None = None) -> None:
        self.ep, self.timeout_s = endpoint, timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._local = threading.local()

    def request(self, method: str, path: str, body: dict | None = None
                ) -> tuple[int, dict, dict[str, str]]:
        """``(status, JSON body or {}, headers)``; raises ``OSError`` when there is no
        answer. A keep-alive connection the server closed while idle is reopened once
        (the request never reached it)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            fresh = conn is None
            if fresh:
                conn = self._local.conn = self.ep.connection(self.timeout_s)
            try:
                conn.request(method, self.ep.prefix + path, data, self.headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as exc:
                conn.close()
                self._local.conn = None
                if fresh or attempt:
                    raise OSError(f"{type(exc).__name__}: {exc}") from exc
                continue
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                raise OSError(f"{type(exc).__name__}: {exc}") from exc
            try:
                payload = json.loads(raw) if raw else {}
            except ValueError:
                payload = {"error": {"code": "not_json", "message": raw[:200].decode(
                    "utf-8", "replace")}}
            return resp.status, payload if isinstance(payload, dict) else {}, dict(
                resp.getheaders())
        raise AssertionError("unreachable")


def health(client: Client) -> tuple[int, dict]:
    status, body, _ = client.request("GET", "/v1/health")
    return status, body


# -- sending ---------------------------------------------------------------------------------

def _number(x: object) -> float | None:
    """A JSON number, or the API's "inf"/"-inf" strings, as a float."""
    if isinstance(x, int | float) and not isinstance(x, bool):
        return float(x)
    if x in ("inf", "-inf"):
        return float(x)
    return None


def _record_answer(rec: LiveRecord, status: int, body: dict, headers: dict[str, str]) -> None:
    rec.http_status = status
    if status == 202:
        t = body.get("timings") or {}
        rec.id, rec.route, rec.plan_id = body.get("id"), body.get("route"), body.get("plan_id")
        rec.hardness, rec.theta = _number(body.get("hardness")), _number(body.get("theta"))
        rec.slo_s, rec.status = body.get("slo_s"), body.get("status", QueryStatus.QUEUED)
        rec.received_at, rec.deadline = t.get("received_at"), t.get("deadline")
        try:
            rec.added_ms = float(headers.get("X-Hadis-Added-Ms", "nan"))
        except ValueError:
            rec.added_ms = None
        if rec.added_ms is not None and math.isnan(rec.added_ms):
            rec.added_ms = None
        return
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    rec.status = "refused"
    rec.error = f"{err.get('code', 'error')}: {err.get('message', '')}".strip(": ")


def send_all(client: Client, arrivals: Sequence[Arrival], prompts: Sequence[str], *,
             time_scale: float, threads: int = 8, slo_s: float | None = None,
             progress: Progress | None = None, stop: threading.Event | None = None,
             start_at: float | None = None) -> tuple[float, list[LiveRecord]]:
    """POST every arrival at its scaled time; returns ``(t0, records)``, ``t0`` the epoch
    second of trace time 0 (``start_at`` when given, else in a moment). ``slo_s`` (wall
    seconds) is sent with each request when given, else the stack's default applies.
    ``stop`` ends the replay early (records of arrivals not sent stay ``unsent``)."""
    offsets = send_offsets(arrivals, time_scale)
    stop = stop or threading.Event()
    now_wall, now_mono = time.time(), time.monotonic()
    t0 = max(start_at if start_at is not None else 0.0, now_wall + 0.2)
    t0_mono = now_mono + (t0 - now_wall)
    records = [LiveRecord(index=a.index, t_s=a.t_s, prompt_index=a.prompt_index,
                          scheduled_at=t0 + off) for a, off in zip(arrivals, offsets, strict=True)]
    lock = threading.Lock()
    nxt = [0]

    def sender() -> None:
        while not stop.is_set():
            with lock:
                k = nxt[0]
                nxt[0] += 1
            if k >= len(records):
                return
            # an Event wait may wake a hair early: wait again until due, never send before
            while (delay := t0_mono + offsets[k] - time.monotonic()) > 0:
                if stop.wait(delay):
                    return
            rec, a = records[k], arrivals[k]
            body: dict = {"prompt": prompts[a.prompt_index], "seed": a.index}
            if slo_s is not None:
                body["slo_s"] = slo_s
            rec.sent_at = t0 + (time.monotonic() - t0_mono)
            try:
                status, payload, headers = client.request("POST", "/v1/generations", body)
                _record_answer(rec, status, payload, headers)
            except OSError as exc:
                rec.status, rec.error = "no_answer", str(exc)[:300]
            rec.responded_at = time.time()
            if progress:
                progress(1)

    pool = [threading.Thread(target=sender, daemon=True) for _ in range(max(1, threads))]
    for t in pool:
        t.start()
    for t in pool:
        while t.is_alive():
            t.join(0.5)
    return t0, records


# -- results ---------------------------------------------------------------------------------

def _apply_state(rec: LiveRecord, body: dict) -> None:
    t = body.get("timings") or {}
    rec.status = body.get("status", rec.status)
    rec.models = [int(m["id"]) for m in body.get("models") or []]
    sm = body.get("served_model")
    rec.served_model = int(sm["id"]) if isinstance(sm, dict) else None
    rec.quality = _number(body.get("quality"))
    rec.started_at, rec.finished_at = t.get("started_at"), t.get("finished_at")
    rec.model_s, rec.reason = t.get("model_s"), body.get("reason")
    rec.plan_id = body.get("plan_id", rec.plan_id)
    rec.route = body.get("route", rec.route)


def collect(client: Client, records: Sequence[LiveRecord], *, wait_s: float = 60.0,
            poll_s: float = 2.0, threads: int = 8, peek: int = 20,
            max_rounds: int | None = None, progress: Progress | None = None,
            stop: threading.Event | None = None) -> int:
    """Read the final state of every accepted query (``GET /v1/generations/<id>``) and
    return how many were still open when it gave up, ``wait_s`` after the last deadline.

    Every ``poll_s`` it reads the open queries whose deadline has passed (they are final,
    or about to be), plus the ``peek`` open ones due next (so it ends as soon as the stack
    has answered everything, without polling the whole tail of the run every round)."""
    stop = stop or threading.Event()
    pending = sorted((r for r in records if r.accepted and r.status not in FINAL),
                     key=lambda r: r.deadline if r.deadline is not None else math.inf)
    last_deadline = max((r.deadline for r in pending if r.deadline is not None),
                        default=time.time())
    give_up = max(last_deadline, time.time()) + wait_s

    def read(rec: LiveRecord) -> None:
        try:
            status, body, _ = client.request("GET", f"/v1/generations/{rec.id}")
        except OSError:
            return
        if status == 200:
            _apply_state(rec, body)

    if progress:  # refused and unsent arrivals have ended already
        progress(len(records) - len(pending))
    rounds = 0
    with ThreadPoolExecutor(max(1, threads)) as pool:
        while pending and not stop.is_set():
            rounds += 1
            now = time.time()
            due = [r for r in pending if r.deadline is None or r.deadline <= now]
            list(pool.map(read, due + pending[len(due):len(due) + peek]))
            still = [r for r in pending if r.status not in FINAL]
            if progress:
                progress(len(pending) - len(still))
            pending = still
            if not pending or time.time() > give_up or rounds == max_rounds:
                break
            stop.wait(poll_s)
    return len(pending)


def fetch_plans(client: Client, plan_ids: Iterable[int | None], latest: int = 500
                ) -> dict[int, dict]:
    """The API plans of ``plan_ids``, plus the ``latest`` ones (for the timeline)."""
    plans: dict[int, dict] = {}
    try:
        status, body, _ = client.request("GET", f"/v1/plans?limit={latest}")
        if status == 200:
            plans = {int(p["id"]): p for p in body.get("plans", [])}
    except OSError:
        pass
    for pid in sorted({int(p) for p in plan_ids if p is not None} - set(plans)):
        try:
            status, body, _ = client.request("GET", f"/v1/plans/{pid}")
        except OSError:
            continue
        if status == 200:
            plans[pid] = body
    return plans


# -- one replay, end to end ------------------------------------------------------------------

@dataclass
class ReplayRun:
    """What a replay gathered: every arrival's record, the plans the queries ran under,
    ``t0`` (epoch second of trace time 0) and how many queries were still open."""

    endpoint: str
    time_scale: float
    t0: float
    records: list[LiveRecord]
    plans: dict[int, dict]
    open_at_end: int
    send_wall_s: float
    interrupted: bool = False

    def http_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            key = str(r.http_status) if r.http_status else (
                "unsent" if r.sent_at is None else "no_answer")
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))


def replay(client: Client, arrivals: Sequence[Arrival], prompts: Sequence[str], *,
           time_scale: float, threads: int = 8, slo_s: float | None = None,
           wait_s: float = 60.0, on_sent: Progress | None = None,
           on_collected: Progress | None = None, stop: threading.Event | None = None,
           start_at: float | None = None) -> ReplayRun:
    """Send every arrival on time, then read every accepted query's end and the plans."""
    stop = stop or threading.Event()
    start = time.monotonic()
    t0, records = send_all(client, arrivals, prompts, time_scale=time_scale, threads=threads,
                           slo_s=slo_s, progress=on_sent, stop=stop, start_at=start_at)
    send_wall = time.monotonic() - start
    interrupted = stop.is_set()
    # Interrupted: one read of everything accepted, no waiting for the rest.
    still_open = collect(client, records, wait_s=wait_s, threads=threads,
                         peek=len(records) if interrupted else 20,
                         max_rounds=1 if interrupted else None, progress=on_collected)
    plans = fetch_plans(client, (r.plan_id for r in records))
    return ReplayRun(str(client.ep), time_scale, t0, records, plans, still_open, send_wall,
                     interrupted)
