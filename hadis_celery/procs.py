"""Processes we start: stopping a process group (the one rule ``hadis up``, the benches and
the tests share: a signal to the whole group, SIGKILL for what is left after the grace
period), ``hadis up``'s restart back-off, and the port check made before starting."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0,
               sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to ``proc``'s process group (started with ``start_new_session``), wait
    up to ``grace_s``, then SIGKILL the group and reap ``proc``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


@dataclass(frozen=True)
class Backoff:
    """When to restart a child that died: ``initial_s`` after the first death, doubling with
    each death in a row up to ``cap_s``; a child that ran ``reset_after_s`` before dying
    counts as healthy again (its next restart is quick), so one crash a day never waits
    the cap while a crash loop never spins."""

    initial_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    reset_after_s: float = 60.0

    def delay(self, deaths_in_a_row: int) -> float:
        """Seconds to wait before restart number ``deaths_in_a_row`` (1 for the first)."""
        n = max(1, int(deaths_in_a_row))
        return min(self.cap_s, self.initial_s * self.factor ** (n - 1))

    def deaths_in_a_row(self, previous: int, uptime_s: float) -> int:
        """The count after one more death, following ``uptime_s`` of running."""
        return 1 if uptime_s >= self.reset_after_s else previous + 1


def exit_words(returncode: int | None) -> str:
    """``-9`` -> "killed by SIGKILL", ``1`` -> "exit status 1"."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None when it can): checked before starting
    anything, so a taken port is one clear line instead of a child's traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r} ({exc.strerror})"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug's server does
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            if exc.errno == errno.EACCES:
                return f"port {port} on {host} needs privileges (use a port above 1023)"
            return f"cannot listen on {host}:{port} ({exc.strerror or exc})"
    return None


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send file descriptors 1 and 2 to ``path`` for the block: what C libraries print
    (a solver's banner) goes to a log file instead of the person's terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with open(path, "ab") as fh:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
