"""Structured logs: one JSON object a line, carrying the query id where there is one, so an
operator follows a query from the front door through every worker with one ``grep``.

``configure()`` installs the formatter on the root logger (``HADIS_LOG_FORMAT=json``, the
default, or ``text``); ``event(log, "query.accepted", query_id=..., queue=...)`` writes one
record whose fields become keys of the JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import sys

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"ts": round(record.created, 3), "level": record.levelname,
                                  "logger": record.name, "msg": record.getMessage()}
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(fmt: str | None = None, level: int | str = logging.INFO) -> None:
    """Log to stderr as JSON lines (or plain text), replacing the root logger's handlers."""
    fmt = (fmt or os.environ.get("HADIS_LOG_FORMAT", "json")).lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """One structured record ``name`` with ``fields`` (keys that clash with the standard
    record attributes get a ``_`` suffix instead of raising)."""
    extra = {"event": name}
    for k, v in fields.items():
        extra[f"{k}_" if k in _RESERVED else k] = v
    logger.log(level, name, extra=extra)
