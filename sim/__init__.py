"""Discrete-event cluster simulator: the live system's router and planners, a simulated
clock and simulated GPU workers, driven by real traces and recorded measurements."""
