"""Sampling: the integrate core and every sampler built on it."""

from .base import (
    AbstractCountedSolver as AbstractCountedSolver,
    Solution as Solution,
)
from .grids import (
    GRIDS as GRIDS,
    log_snr as log_snr,
    time_at_log_snr as time_at_log_snr,
    time_grid as time_grid,
)
from .langevin import (
    PredictorCorrector as PredictorCorrector,
    langevin as langevin,
    sample_pc as sample_pc,
)
from .likelihood import bits_per_dim as bits_per_dim, log_prob as log_prob
from .ode import sample_ode as sample_ode
from .sde import sample_sde as sample_sde
from .solvers import (
    DEIS as DEIS,
    EDM as EDM,
    AbstractFlowSolver as AbstractFlowSolver,
    DPMSolverPP as DPMSolverPP,
    DPMSolverPP2S as DPMSolverPP2S,
    UniPC as UniPC,
)
