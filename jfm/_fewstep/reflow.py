r"""Reflow (rectified flow, Liu et al. 2023): re-pair noise with the model's own samples.

A trained flow ``dx/dt = v(t, x)`` defines a deterministic coupling ``(x0, Phi(x0))``,
``Phi`` its time-0-to-1 map. Flow matching on these pairs (the "k-rectified" flow) keeps
the marginals and, since the pairs no longer cross, gives straighter paths: a lower
transport cost ``E |x1 - x0|^2`` and a smaller error of few-step Euler sampling.
Applying it again with the new model's field gives the (k+1)-rectified flow.
"""

import diffrax as dfx
import equinox as eqx
import jax.lax as lax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_batch, check_callable
from .._couplings import check_pair_batch
from .._custom_types import Args, RealScalarLike, VectorField
from .._sampling import sample_ode


def reflow_pairs(
    field: VectorField,
    x0: Float[ArrayLike, " batch *event"],
    *,
    solver: dfx.AbstractSolver,
    steps: int | None = None,
    rtol: RealScalarLike | None = None,
    atol: RealScalarLike | None = None,
    ts: Float[ArrayLike, " N"] | None = None,
    args: Args = None,
    batch: str = "joint",
    max_steps: int = 4096,
) -> tuple[Float[Array, " batch *event"], Float[Array, " batch *event"]]:
    r"""The reflow pairs ``(x0, Phi(x0))`` of a flow, by :func:`jfm.sample_ode` from 0 to 1.

    .. math::
        x_1 = x_0 + \int_0^1 v(t, x(t))\,dt, \qquad x(0) = x_0 .

    The samples are training data: their gradient is stopped (the teacher is not trained
    through them).

    Args:
        field: the per-example teacher field ``field(t, x, args) -> dx/dt``.
        x0: ``[B, *event]`` source draws (noise).
        solver: a diffrax solver, e.g. ``dfx.Tsit5()``.
        steps, rtol, atol, ts: the step control, exactly one of ``steps=``, ``ts=`` or
            ``rtol``/``atol`` (as in :func:`jfm.sample_ode`).
        args: conditioning passed to ``field``.
        batch: ``"joint"`` or ``"vmap"`` (as in :func:`jfm.sample_ode`).
        max_steps: bound on the solver's steps.

    Returns:
        ``(x0, x1)``, both ``[B, *event]`` in ``x0``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`jfm.sample_ode` (bad ``field``, ``x0``, step
            control, ``solver``).

    Examples:
        >>> import diffrax as dfx, jax.numpy as jnp, jfm
        >>> x0, x1 = jfm.reflow_pairs(lambda t, x, a: -x, jnp.ones((3, 2)),
        ...                           solver=dfx.Euler(), steps=2)
        >>> x1[0].tolist()
        [0.25, 0.25]

    References:
        Liu, Gong & Liu, "Flow Straight and Fast: Learning to Generate and Transfer Data
        with Rectified Flow", ICLR 2023.
    """
    check_callable(field, "field")
    x0 = check_batch(x0, "x0")
    sol = sample_ode(
        field, x0, solver=solver, steps=steps, rtol=rtol, atol=atol, ts=ts, args=args,
        batch=batch, max_steps=max_steps,
    )  # fmt: skip
    return x0, lax.stop_gradient(sol.x1)


class ReflowCoupling(eqx.Module):
    """The coupling ``(x0, x1) -> (x0, Phi(x0))`` of a teacher flow (see
    :func:`reflow_coupling`). The teacher ``field`` is a pytree field (its arrays are
    traced); the solver options are static."""

    field: VectorField
    solver: dfx.AbstractSolver
    steps: int | None = eqx.field(static=True)
    rtol: RealScalarLike | None
    atol: RealScalarLike | None
    ts: Array | None
    args: Args
    batch: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __call__(
        self,
        x0: Float[ArrayLike, " batch *event"],
        x1: Float[ArrayLike, " batch *event"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, " batch *event"], Float[Array, " batch *event"]]:
        x0, _ = check_pair_batch(x0, x1)
        return reflow_pairs(
            self.field, x0, solver=self.solver, steps=self.steps, rtol=self.rtol,
            atol=self.atol, ts=self.ts, args=self.args, batch=self.batch,
            max_steps=self.max_steps,
        )  # fmt: skip


def reflow_coupling(
    field: VectorField,
    *,
    solver: dfx.AbstractSolver,
    steps: int | None = None,
    rtol: RealScalarLike | None = None,
    atol: RealScalarLike | None = None,
    ts: Float[ArrayLike, " N"] | None = None,
    args: Args = None,
    batch: str = "joint",
    max_steps: int = 4096,
) -> ReflowCoupling:
    r"""The reflow coupling of a teacher flow, for ``jfm.cfm_loss(..., coupling=...)``.

    Follows the coupling protocol ``coupling(x0, x1, *, key) -> (x0, x1')`` and ignores
    the data batch: ``x1' = Phi(x0)`` from :func:`reflow_pairs` (``key`` unused). Flow
    matching with it trains the next rectified flow; with the new model's field it gives
    the one after (k-RF). Each call integrates the teacher (its cost: ``steps`` times the
    solver's stages per batch); for a fixed data set, generate the pairs once with
    :func:`reflow_pairs` and pass them as ``x0``/``x1`` instead.

    Args:
        field: the per-example teacher field ``field(t, x, args)``.
        solver, steps, rtol, atol, ts, args, batch, max_steps: as in
            :func:`reflow_pairs` (checked when the coupling is called).

    Returns:
        A :class:`ReflowCoupling` (an equinox Module).

    Raises:
        TypeError: ``field`` not callable.

    Examples:
        >>> import diffrax as dfx, jax, jax.numpy as jnp, jfm
        >>> coupling = jfm.reflow_coupling(lambda t, x, a: -x, solver=dfx.Euler(), steps=2)
        >>> x0, x1 = coupling(jnp.ones((3, 2)), jnp.zeros((3, 2)), key=jax.random.key(0))
        >>> x1[0].tolist()
        [0.25, 0.25]
    """
    check_callable(field, "field")
    return ReflowCoupling(field, solver, steps, rtol, atol, ts, args, batch, max_steps)


__all__ = ["ReflowCoupling", "reflow_coupling", "reflow_pairs"]
