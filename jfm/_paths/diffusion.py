r"""The forward (noising) diffusion SDE of an affine path, in jfm's time convention.

An affine path ``x_t = alpha(t) x1 + sigma(t) x0`` (``t = 0`` noise, ``t = 1`` data) is the
marginal law of a linear forward SDE run in *diffusion time* ``s = 1 - t`` (data at
``s = 0``):

.. math::
    dX = f(t)\, X\, ds + g(t)\, dW_s, \qquad
    f(t) = -\frac{\alpha'(t)}{\alpha(t)}, \qquad
    g(t)^2 = 2 \frac{\alpha'(t)}{\alpha(t)} \sigma(t)^2 - 2 \sigma(t) \sigma'(t),

(``'`` is ``d/dt``; the signs come from ``ds = -dt``). The coefficients live on the
schedule (``schedule.drift_coeff``, ``schedule.diffusion_sq``): :class:`jfm.VP` gives
score-SDE's VP SDE, ``f = -beta/2``, ``g^2 = beta`` and :class:`jfm.VE` the VE SDE,
``f = 0``, ``g^2 = d sigma^2 / ds``, both in closed form. Callers never see diffusion
time: every method takes the jfm time ``t``.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_array, check_scalar_time
from .._custom_types import Args, RealScalarLike, VectorField
from .affine import AffinePath


class DiffusionSDE(eqx.Module):
    r"""The forward diffusion SDE of an :class:`jfm.AffinePath`, its reverse and its ODE.

    Forward (noising, diffusion time ``s = 1 - t``):
    ``dX = f(t) X ds + g(t) dW_s`` with ``f``, ``g`` as in the module docstring, so that
    ``X_s`` has the path's marginal ``p_t`` at ``t = 1 - s``. In jfm's time (``dt = -ds``,
    integrating ``t: 0 -> 1``, noise to data), with ``score = grad log p_t``:

    - the **reverse-time SDE** (Anderson 1982) ``dX = [-f X + g^2 score] dt + g dW_t``
      (:meth:`reverse_drift`);
    - the **probability-flow ODE** ``dX/dt = -f X + g^2/2 score`` (:meth:`probability_flow`),
      which equals the path's marginal velocity ``u_t``.

    Both have the marginals ``p_t``; the reverse SDE is :func:`jfm.sample_sde` with
    ``diffusion=sde.diffusion`` and velocity ``sde.probability_flow(score)`` (the drift is
    ``u + g^2/2 score``).

    Checklist: per example, scalar jfm time ``t`` (``t = 0`` noise, ``t = 1`` data).
    ``f`` and ``g^2`` are the schedule's ``drift_coeff``/``diffusion_sq``: closed forms
    for every built-in schedule (e.g. :class:`jfm.VP`: ``f = -beta/2``, ``g = sqrt(beta)``;
    :class:`jfm.VE`: ``f = 0``, ``g = sigma sqrt(2 log(sigma_max / sigma_min))``), the
    general formula with ``jax.jvp`` derivatives for :class:`jfm.CustomSchedule`. Both
    divide by ``alpha``: infinite at ``t = 0`` for CondOT-like schedules
    (``alpha(0) = 0``).

    Args:
        path: an :class:`jfm.AffinePath`, e.g. ``jfm.AffinePath(jfm.VP())``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> sde = jfm.DiffusionSDE(jfm.AffinePath(jfm.VP(0.1, 20.0)))
        >>> float(sde.diffusion(1.0) ** 2)  # beta at the data end (diffusion time 0)
        0.1...

    References:
        Song et al., "Score-Based Generative Modeling through Stochastic Differential
        Equations", ICLR 2021; Anderson, "Reverse-time diffusion equation models",
        Stochastic Processes and their Applications 12, 1982.
    """

    path: AffinePath

    def __check_init__(self):
        if not isinstance(self.path, AffinePath):
            raise TypeError(
                "`path` must be a jfm.AffinePath (e.g. jfm.AffinePath(jfm.VP())); got "
                f"{type(self.path)}."
            )

    def drift_coeff(self, t: RealScalarLike) -> Float[Array, ""]:
        """``f(t) = -alpha'(t) / alpha(t)``, the forward drift coefficient (diffusion time):
        ``path.schedule.drift_coeff(t)``."""
        return self.path.schedule.drift_coeff(check_scalar_time(t))

    def diffusion(self, t: RealScalarLike) -> Float[Array, ""]:
        """``g(t) >= 0``, the diffusion coefficient of the forward (and reverse) SDE:
        ``sqrt(max(path.schedule.diffusion_sq(t), 0))`` (the clip removes round-off)."""
        g2 = self.path.schedule.diffusion_sq(check_scalar_time(t))
        return jnp.sqrt(jnp.maximum(g2, 0))

    def drift(self, t: RealScalarLike, x: Float[ArrayLike, "*_event"]) -> Float[Array, "*_event"]:
        """The forward drift ``f(t) x`` (per diffusion time ``s``) of ONE example."""
        x = check_array(x, "x")
        return (self.drift_coeff(t) * x).astype(x.dtype)

    def reverse_drift(self, score: VectorField) -> VectorField:
        """The drift ``-f(t) x + g(t)^2 score(t, x, args)`` of the reverse-time SDE in jfm
        time (a per-example field ``(t, x, args) -> dx/dt``)."""
        return _SDEField(self, score, 1.0)

    def probability_flow(self, score: VectorField) -> VectorField:
        """The probability-flow ODE ``-f(t) x + g(t)^2/2 score(t, x, args)`` in jfm time (a
        per-example field; equal to the path's marginal velocity when ``score`` is exact)."""
        return _SDEField(self, score, 0.5)


class _SDEField(eqx.Module):
    """``-f(t) x + weight * g(t)^2 * score(t, x, args)`` (see :class:`DiffusionSDE`)."""

    sde: DiffusionSDE
    score: VectorField
    weight: float = eqx.field(static=True)

    def __check_init__(self):
        if not callable(self.score):
            raise TypeError(
                f"`score` must be callable as score(t, x, args); got {type(self.score)}."
            )

    def __call__(self, t: RealScalarLike, x: ArrayLike, args: Args = None) -> Array:
        x = check_array(x, "x")
        t = check_scalar_time(t).astype(x.dtype)
        s = jnp.asarray(self.score(t, x, args))
        if s.shape != x.shape:
            raise ValueError(f"`score` must return the shape of `x` {x.shape}; got {s.shape}.")
        g = self.sde.diffusion(t)
        out = -self.sde.drift_coeff(t) * x + (self.weight * g**2) * s.astype(x.dtype)
        return out.astype(x.dtype)


__all__ = ["DiffusionSDE"]
