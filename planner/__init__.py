"""The planning side: model registry, profiler and cascade configuration table, MILP
planner, demand estimate and baselines. Plain Python over plain data."""
