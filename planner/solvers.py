"""Solver adapters: one solver-neutral MILP (``MilpModel``), two back ends.

The planner builds the model once as arrays (objective, bounds, variable types, a sparse
constraint matrix with senses and right-hand sides) and hands the same arrays to gurobipy
or to HiGHS (``highspy``), both in bulk (no per-variable Python calls), so both solvers
answer exactly the same question and the build cost stays small.

gurobipy from PyPI runs under a size-limited licence (about 2000 variables and 2000
constraints): a larger model, a missing licence or a missing package raise
``SolverUnavailable``, and ``solve`` falls back to HiGHS when allowed. Gurobi's console
output (including the "Restricted license" banner) is switched off before its
environment starts; HiGHS prints its banner once per process, from its C++ constructor,
whatever the options say, so the first ``Highs()`` of a process is made with the C-level
stdout pointed at stderr (``hadis plan --json`` prints JSON and nothing else).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

SOLVERS = ("gurobi", "highs")


class SolverUnavailable(RuntimeError):
    """The asked solver cannot take this model (not installed, unlicensed, too large)."""


@dataclass
class MilpModel:
    """``min c.x`` s.t. ``A x (sense) rhs``, ``lb <= x <= ub``; ``vtype`` in 'B', 'I', 'C'."""

    c: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    vtype: np.ndarray  # dtype '<U1'
    A: sp.csr_matrix
    sense: np.ndarray  # '<', '>', '='
    rhs: np.ndarray
    abs_gap: float = 1e-6  # the objective's resolution (integer objectives: just under 1)

    @property
    def num_vars(self) -> int:
        return len(self.c)

    @property
    def num_constraints(self) -> int:
        return self.A.shape[0]


@dataclass
class SolverResult:
    status: str  # "optimal" | "feasible" (time limit, incumbent kept) | "infeasible"
    x: np.ndarray | None
    objective: float
    solver: str
    note: str = ""


# -- console output ----------------------------------------------------------------------

@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr for the block: a C library's banner printed with
    ``printf`` lands on stderr, so a command's stdout stays machine-readable."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no usable stdout: nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# -- Gurobi ------------------------------------------------------------------------------

_GRB_LOCK = threading.Lock()
_GRB_ENV = None
_GRB_ERROR: str | None = None


def _gurobi_env():
    """One quiet Gurobi environment per process (starting one costs milliseconds)."""
    global _GRB_ENV, _GRB_ERROR
    with _GRB_LOCK:
        if _GRB_ENV is None and _GRB_ERROR is None:
            try:
                import gurobipy as gp
            except ImportError:
                _GRB_ERROR = "gurobipy is not installed"
            else:
                try:
                    with _stdout_to_stderr():  # a licence banner never lands on stdout
                        env = gp.Env(empty=True)
                        env.setParam("OutputFlag", 0)
                        env.setParam("LogToConsole", 0)
                        env.start()
                    _GRB_ENV = env
                except gp.GurobiError as exc:
                    _GRB_ERROR = f"gurobi licence unavailable: {exc}"
        if _GRB_ENV is None:
            raise SolverUnavailable(_GRB_ERROR or "gurobi unavailable")
        return _GRB_ENV


def solve_gurobi(model: MilpModel, time_limit_s: float = 10.0, threads: int = 1
                 ) -> SolverResult:
    env = _gurobi_env()
    import gurobipy as gp
    from gurobipy import GRB

    m = gp.Model(env=env)
    try:
        m.Params.TimeLimit = time_limit_s
        m.Params.Threads = threads
        m.Params.MIPGap = 0.0
        m.Params.MIPGapAbs = model.abs_gap
        x = m.addMVar(model.num_vars, lb=model.lb, ub=model.ub, obj=model.c,
                      vtype=model.vtype)
        if model.num_constraints:
            m.addMConstr(model.A, x, model.sense, model.rhs)
        m.ModelSense = GRB.MINIMIZE
        try:
            m.optimize()
        except gp.GurobiError as exc:
            if exc.errno == 10010:  # size-limited licence
                raise SolverUnavailable(
                    f"gurobi: model too large for the size-limited licence "
                    f"({model.num_vars} variables, {model.num_constraints} constraints)"
                ) from None
            raise SolverUnavailable(f"gurobi error {exc.errno}: {exc}") from None
        status = m.Status
        if status == GRB.OPTIMAL:
            return SolverResult("optimal", np.asarray(x.X), float(m.ObjVal), "gurobi")
        if status in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):
            return SolverResult("infeasible", None, math.inf, "gurobi")
        if m.SolCount > 0:
            return SolverResult("feasible", np.asarray(x.X), float(m.ObjVal), "gurobi",
                                f"gurobi stopped with status {status} (time limit?)")
        raise SolverUnavailable(f"gurobi ended with status {status} and no solution")
    finally:
        m.dispose()


# -- HiGHS -------------------------------------------------------------------------------

_HIGHS_LOCK = threading.Lock()
_HIGHS_BANNER_DONE = False


def _new_highs(highspy):
    """A ``Highs`` instance; the first of the process prints HiGHS's banner on stderr."""
    global _HIGHS_BANNER_DONE
    with _HIGHS_LOCK:
        if _HIGHS_BANNER_DONE:
            return highspy.Highs()
        with _stdout_to_stderr():
            h = highspy.Highs()
        _HIGHS_BANNER_DONE = True
        return h


def solve_highs(model: MilpModel, time_limit_s: float = 10.0) -> SolverResult:
    try:
        import highspy
    except ImportError:
        raise SolverUnavailable("highspy is not installed") from None
    h = _new_highs(highspy)
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", float(model.abs_gap))
    lp = highspy.HighsLp()
    n, r = model.num_vars, model.num_constraints
    lp.num_col_ = n
    lp.num_row_ = r
    lp.col_cost_ = model.c.astype(float)
    lp.col_lower_ = model.lb.astype(float)
    lp.col_upper_ = model.ub.astype(float)
    inf = highspy.kHighsInf
    lo = np.where(model.sense == "<", -inf, model.rhs).astype(float)
    hi = np.where(model.sense == ">", inf, model.rhs).astype(float)
    lp.row_lower_ = lo
    lp.row_upper_ = hi
    A = model.A.tocsc()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_ = n
    lp.a_matrix_.num_row_ = r
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data.astype(float)
    kint, kcont = highspy.HighsVarType.kInteger, highspy.HighsVarType.kContinuous
    lp.integrality_ = [kcont if t == "C" else kint for t in model.vtype]
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    S = highspy.HighsModelStatus
    info = h.getInfo()
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    if status == S.kOptimal:
        x = np.asarray(h.getSolution().col_value)
        return SolverResult("optimal", x, float(info.objective_function_value), "highs")
    if status in (S.kInfeasible, S.kUnboundedOrInfeasible):
        return SolverResult("infeasible", None, math.inf, "highs")
    if has_sol:
        x = np.asarray(h.getSolution().col_value)
        return SolverResult("feasible", x, float(info.objective_function_value), "highs",
                            f"highs stopped with status {h.modelStatusToString(status)}")
    raise SolverUnavailable(f"highs ended with status {h.modelStatusToString(status)}")


def solve(model: MilpModel, solver: str = "gurobi", *, fallback: bool = True,
          time_limit_s: float = 10.0) -> SolverResult:
    """Solve with ``solver``; when Gurobi cannot take the model and ``fallback`` is on,
    solve with HiGHS and say why in ``note``."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (one of {', '.join(SOLVERS)})")
    if solver == "highs":
        return solve_highs(model, time_limit_s)
    try:
        return solve_gurobi(model, time_limit_s)
    except SolverUnavailable as exc:
        if not fallback:
            raise
        res = solve_highs(model, time_limit_s)
        res.note = (f"{exc}; solved with highs" + (f"; {res.note}" if res.note else ""))
        return res
