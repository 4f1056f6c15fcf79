"""The states of a query and the moves between them (one definition for the whole stack).

A ``StrEnum``: a member *is* its string (``QueryStatus.DONE == "done"``), so the SQL column,
the JSON of the API and the log events keep the same values, and code compares with the
enum instead of a literal that a typo would silently break.

The life of a query (``hadis_celery.store`` makes each move one conditional SQL write)::

    (front door) -> queued -> running -> done
                       ^         |  \\-> rerouted -> running -> ...
                       '---------'   (given back, or its worker lost: re-sent)
    queued, rerouted, running -> dropped (deadline) | failed (backend, storage, attempts)

``queued`` and ``rerouted`` are *waiting*: a message for the row is (or should be) on a
queue. ``done``, ``dropped`` and ``failed`` are final: nothing moves a query out of them.
"""

from __future__ import annotations

from enum import StrEnum


class QueryStatus(StrEnum):
    """The ``status`` of a query row."""

    QUEUED = "queued"  # accepted, its message waits on a model queue
    RUNNING = "running"  # claimed by a worker's batch (holds its token and lease)
    REROUTED = "rerouted"  # the light image was judged too poor; waits on the heavy queue
    DONE = "done"  # an image was served
    DROPPED = "dropped"  # it could not meet its deadline
    FAILED = "failed"  # the backend or the image store failed, or it ran out of attempts


WAITING: tuple[QueryStatus, ...] = (QueryStatus.QUEUED, QueryStatus.REROUTED)
OPEN: tuple[QueryStatus, ...] = WAITING + (QueryStatus.RUNNING,)
FINAL: tuple[QueryStatus, ...] = (QueryStatus.DONE, QueryStatus.DROPPED, QueryStatus.FAILED)

# src -> the states a query in src may move to. A waiting row "moves" to itself when its
# message is re-sent (the sweeper bumps ``attempts`` and ``updated_at`` only).
TRANSITIONS: dict[QueryStatus, frozenset[QueryStatus]] = {
    QueryStatus.QUEUED: frozenset({QueryStatus.QUEUED, QueryStatus.RUNNING,
                                   QueryStatus.DROPPED, QueryStatus.FAILED}),
    QueryStatus.REROUTED: frozenset({QueryStatus.REROUTED, QueryStatus.RUNNING,
                                     QueryStatus.DROPPED, QueryStatus.FAILED}),
    QueryStatus.RUNNING: frozenset({QueryStatus.QUEUED, QueryStatus.REROUTED,
                                    QueryStatus.DONE, QueryStatus.DROPPED,
                                    QueryStatus.FAILED}),
    QueryStatus.DONE: frozenset(),
    QueryStatus.DROPPED: frozenset(),
    QueryStatus.FAILED: frozenset(),
}
INITIAL = QueryStatus.QUEUED  # the state the front door writes


def can_move(src: str, dst: str) -> bool:
    """Whether a query in ``src`` may move to ``dst`` (plain strings are accepted, so a
    value read from SQL or JSON can be checked as is); an unknown state moves nowhere."""
    try:
        return QueryStatus(dst) in TRANSITIONS[QueryStatus(src)]
    except ValueError:
        return False


def is_final(status: str) -> bool:
    """Whether nothing can happen to a query in ``status`` any more."""
    return status in FINAL
