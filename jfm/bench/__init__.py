"""Solver-accuracy harness: references, sweeps, convergence orders, work-precision output.

Measure how accurately and cheaply ODE solvers integrate a field ``f(t, x, args)`` with a
known answer, or your own field against a tight float64 reference::

    import diffrax as dfx, jax, jax.numpy as jnp, jfm
    jax.config.update("jax_enable_x64", True)
    ref = jfm.bench.reference_solution(field, x0, rtol=1e-12, atol=1e-12)
    problem = jfm.bench.Problem("my field", field, x0, ref)
    records = jfm.bench.solver_sweep(problem, jfm.bench.default_solvers(),
                                     steps=[8, 16, 32, 64], tolerances=[1e-4, 1e-6, 1e-8])
    print(jfm.bench.records_to_markdown(records))
    jfm.bench.convergence_orders(records)      # fitted order of each fixed-step solver
    jfm.bench.plot_work_precision(records, x="nfe")

1. a :class:`Problem` bundles a field, initial points ``x0 [B, *event]`` at ``t0`` and a
   :class:`Reference` for the endpoints at ``t1``: either from a high-order solver at a
   very tight tolerance in float64 (:func:`reference_solution`, with its own error
   estimated from a second, independent solve) or from a closed form
   (:func:`gaussian_flow` for a Gaussian-to-Gaussian flow); :func:`mixture_problem` (the
   exact Gaussian-mixture velocity under any affine path) and :func:`gaussian_problem`
   build the ones with known answers, including exact log-densities for the likelihood
   check;
2. :func:`solver_sweep` runs every solver (:func:`default_solvers`, with the classical
   :class:`RK4` that diffrax lacks) over fixed step counts (``steps=N``) and over
   tolerances (``rtol = atol = tol``) through :func:`jfm.sample_ode` (and
   :func:`jfm.log_prob` when the problem knows its log-densities), and records the
   endpoint error (:func:`endpoint_errors`: max and RMS over the points of the
   Euclidean norm over the event), the log-likelihood error, the NFE and the wall time
   after compilation, one :class:`SweepRecord` per setting;
3. :func:`convergence_orders` fits ``log error = c - p log N`` per fixed-step solver
   (:func:`fit_order`); :func:`records_to_markdown`, :func:`write_csv` and
   :func:`plot_work_precision` write the table and the work-precision diagrams (error vs
   NFE, error vs time; matplotlib is imported only when plotting).
"""

from ._order import convergence_orders as convergence_orders, fit_order as fit_order
from ._plot import plot_work_precision as plot_work_precision
from ._problems import (
    Problem as Problem,
    gaussian_flow as gaussian_flow,
    gaussian_problem as gaussian_problem,
    mixture_problem as mixture_problem,
)
from ._record import SweepRecord as SweepRecord, endpoint_errors as endpoint_errors
from ._reference import Reference as Reference, reference_solution as reference_solution
from ._report import records_to_markdown as records_to_markdown, write_csv as write_csv
from ._solvers import RK4 as RK4, default_solvers as default_solvers
from ._sweep import solver_sweep as solver_sweep
