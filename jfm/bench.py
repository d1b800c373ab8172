"""Solver-accuracy harness (public submodule ``jfm.bench``; the code is in ``jfm/_bench.py``).

Measure how accurately and cheaply ODE solvers integrate a field with a known answer, or
your own field against a tight float64 reference::

    import diffrax as dfx, jax, jax.numpy as jnp, jfm
    jax.config.update("jax_enable_x64", True)
    ref = jfm.bench.reference_solution(field, x0, rtol=1e-12, atol=1e-12)
    problem = jfm.bench.Problem("my field", field, x0, ref)
    records = jfm.bench.solver_sweep(problem, jfm.bench.default_solvers(),
                                     steps=[8, 16, 32, 64], tolerances=[1e-4, 1e-6, 1e-8])
    print(jfm.bench.records_to_markdown(records))
    jfm.bench.convergence_orders(records)      # fitted order of each fixed-step solver
    jfm.bench.plot_work_precision(records, x="nfe")

Ready-made problems with exact answers: :func:`mixture_problem` (the exact Gaussian-mixture
velocity under any affine path, with exact log-densities) and :func:`gaussian_problem`
(a Gaussian-to-Gaussian flow with a closed-form endpoint, :func:`gaussian_flow`).
"""

from ._bench import (
    RK4 as RK4,
    Problem as Problem,
    Reference as Reference,
    SweepRecord as SweepRecord,
    convergence_orders as convergence_orders,
    default_solvers as default_solvers,
    endpoint_errors as endpoint_errors,
    fit_order as fit_order,
    gaussian_flow as gaussian_flow,
    gaussian_problem as gaussian_problem,
    mixture_problem as mixture_problem,
    plot_work_precision as plot_work_precision,
    records_to_markdown as records_to_markdown,
    reference_solution as reference_solution,
    solver_sweep as solver_sweep,
    write_csv as write_csv,
)
