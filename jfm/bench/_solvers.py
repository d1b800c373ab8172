"""The solvers the harness sweeps: the classical RK4 (absent from diffrax) and the default set."""

from collections.abc import Callable
from typing import ClassVar

import diffrax as dfx
import numpy as np

_rk4_tableau = dfx.ButcherTableau(
    c=np.array([0.5, 0.5, 1.0]),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    # Embedded midpoint rule (b = (0, 1, 0, 0), order 2): error = b_sol - b_midpoint.
    b_error=np.array([1 / 6, 1 / 3 - 1, 1 / 3, 1 / 6]),
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
)


class RK4(dfx.AbstractERK):
    r"""The classical 4-stage Runge-Kutta method (Kutta, 1901), absent from diffrax.

    Checklist: explicit, order 4, 4 stages (not FSAL), deterministic, either time
    direction. It carries an embedded midpoint rule (order 2) as error estimate, so it
    can also take adaptive steps, but it is meant for fixed steps: it is the ``"rk4"`` of
    other libraries (torchdiffeq's ``rk4`` uses Kutta's 3/8 variant, also order 4).

    Dense output (``SaveAt(ts=...)``, ``SaveAt(dense=True)``): diffrax's public
    :class:`diffrax.ThirdOrderHermitePolynomialInterpolation` through the step's end
    points and its first and last stage, as diffrax's own non-FSAL tableaus (e.g.
    :class:`diffrax.Heun`) do. The last stage is the slope at ``(t1, y0 + h k3)``, not
    at ``(t1, y1)``, so in between the steps the output is third-order accurate (error
    ``O(h^3)``), at the step ends fourth-order.

    Examples:
        >>> import diffrax as dfx, jax.numpy as jnp, jfm
        >>> sol = jfm.sample_ode(lambda t, x, a: -x, jnp.ones((1, 1)),
        ...                      solver=jfm.bench.RK4(), steps=10)
        >>> round(float(sol.x1[0, 0]), 6), int(sol.nfe)
        (0.36788, 40)

    References:
        W. Kutta, "Beitrag zur naeherungsweisen Integration totaler
        Differentialgleichungen", Z. Math. Phys. 46 (1901).
    """

    tableau: ClassVar[dfx.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., dfx.ThirdOrderHermitePolynomialInterpolation]] = (
        dfx.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms) -> int:
        del terms
        return 4


def default_solvers() -> dict[str, dfx.AbstractSolver]:
    """The explicit solvers the harness sweeps by default, by name.

    Euler (order 1), Heun, Midpoint, Ralston (2), Bosh3 (3), :class:`RK4` (4), Dopri5,
    Tsit5 (5), Dopri8 (8).

    Returns:
        A fresh ``{name: solver}`` dict, in that order.
    """
    return {
        "Euler": dfx.Euler(),
        "Heun": dfx.Heun(),
        "Midpoint": dfx.Midpoint(),
        "Ralston": dfx.Ralston(),
        "Bosh3": dfx.Bosh3(),
        "RK4": RK4(),
        "Dopri5": dfx.Dopri5(),
        "Tsit5": dfx.Tsit5(),
        "Dopri8": dfx.Dopri8(),
    }
