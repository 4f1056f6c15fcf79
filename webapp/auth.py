"""Who is asking, and what they may read: API keys, operator keys, ownership of queries.

Without keys (``HADIS_API_KEYS`` and ``HADIS_OPERATOR_KEYS`` both empty) the front door is
open: everyone is an operator. With keys, every request except the public ones
(``PUBLIC_PATHS``, the pages' static files) needs one:

- on ``/v1`` in a header, ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; the
  browser's cookie is never accepted there, so another site cannot act through it;
- on ``/ui`` and ``/metrics`` the same headers, or the signed session a browser gets from
  the login form (``/ui/login``), which holds the key's id, never the key.

A query belongs to the key that made it: its row stores ``key_id(key)`` (``owner``). A key
reads only its own queries and images; an operator key reads everything and is the only
kind that sees the dashboard and ``/metrics``. The plans (``/v1/plans``) need any key.
Pure: no Flask here, so the rules are testable alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PUBLIC_PATHS = frozenset({"/", "/v1/health", "/livez", "/readyz", "/v1/openapi.json",
                          "/ui/login", "/ui/logout"})
PUBLIC_PREFIXES = ("/ui/static/",)
OPERATOR_PATHS = frozenset({"/metrics", "/ui/dashboard", "/ui/dashboard.json"})
SESSION_PATHS = ("/ui", "/metrics")  # where the login session counts (never /v1)


def key_id(key: str) -> str:
    """The id stored for a key (on query rows, in the session): a SHA-256 prefix, so the
    database and the cookie never hold the key itself."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class Principal:
    """The caller: ``owner`` is the key id (None without keys); ``operator`` reads all."""

    owner: str | None
    operator: bool

    @property
    def client(self) -> str | None:
        """The rate-limit and log name of a key (None: use the address)."""
        return None if self.owner is None else "key:" + self.owner[:16]


OPEN = Principal(owner=None, operator=True)  # keys off: everyone reads everything
ANONYMOUS = Principal(owner=None, operator=False)  # keys on, none given


class Keys:
    """The configured keys by id (``True``: operator)."""

    def __init__(self, api_keys: tuple[str, ...] = (), operator_keys: tuple[str, ...] = ()
                 ) -> None:
        self.roles = {key_id(k): False for k in api_keys}
        self.roles.update({key_id(k): True for k in operator_keys})

    @property
    def required(self) -> bool:
        return bool(self.roles)

    def by_id(self, kid: str | None) -> Principal | None:
        """The principal of a key id (from a session), None when it is not (or no longer)
        a configured key."""
        if not kid or kid not in self.roles:
            return None
        return Principal(owner=kid, operator=self.roles[kid])

    def by_key(self, key: str) -> Principal | None:
        return self.by_id(key_id(key)) if key else None


def header_key(x_api_key: str | None, authorization: str | None) -> str:
    """The key a request sends: ``X-API-Key``, else ``Authorization: Bearer <key>``."""
    key = (x_api_key or "").strip()
    auth = (authorization or "").strip()
    if not key and auth[:7].lower() == "bearer ":
        key = auth[7:].strip()
    return key


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def needs_operator(path: str) -> bool:
    return path in OPERATOR_PATHS


def session_counts(path: str) -> bool:
    """Whether the login session may authenticate ``path`` (pages and /metrics only)."""
    return path == "/metrics" or path == "/ui" or path.startswith("/ui/")


def can_read(p: Principal, owner: str | None) -> bool:
    """Whether ``p`` may read a query owned by ``owner`` (rows made without keys have no
    owner: only operators read them once keys are on)."""
    return p.operator or (owner is not None and owner == p.owner)
