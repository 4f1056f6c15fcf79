"""``bench.frontdoor``'s CPU accounting: the split of a phase's CPU into client and server."""

from __future__ import annotations

import os

from bench.frontdoor import CpuMeter


def _spin(cpu_s: float) -> None:
    """Burn ``cpu_s`` of this process's CPU (by its own clock, not the wall's)."""
    t = os.times()
    end = t.user + t.system + cpu_s
    x = 0
    while True:
        t = os.times()
        if t.user + t.system >= end:
            return
        for i in range(10000):
            x += i


def test_the_clients_cpu_is_counted_per_request_and_inside_the_machines():
    meter = CpuMeter()
    _spin(0.3)
    cost = meter.per_request_ms(3)
    assert cost["cpu_ms_client"] >= 100  # 300 ms over 3 requests
    # the machine's count (kernel ticks) includes this process: allow a tick's difference
    assert cost["cpu_ms_machine"] >= 0.8 * cost["cpu_ms_client"]
    assert abs(cost["cpu_ms_server"] - (cost["cpu_ms_machine"] - cost["cpu_ms_client"])) < 0.01
