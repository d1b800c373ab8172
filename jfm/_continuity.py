r"""A numerical check of the continuity equation for a path's conditional density and field.

For every conditional path ``p_t(x | x1)`` with conditional field ``f_t(x | x1)``,

.. math::
    \partial_t p_t(x \mid x_1) + \nabla\cdot\big(p_t(x \mid x_1) f_t(x \mid x_1)\big) = 0

must hold (this is what makes the marginal field transport the marginal density).
:func:`check_continuity` evaluates the left-hand side with autodiff at sampled points.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_array, check_finite, check_int, check_key, is_concrete
from ._divergence import divergence_exact
from ._paths import AbstractPath
from ._paths.base import require_path


class ContinuityReport(eqx.Module):
    r"""What :func:`jfm.check_continuity` returns (arrays over the ``n`` checked points).

    All terms are those of the equation divided by ``p_t(x | x1)`` at the point (a positive
    constant per point, which leaves the relative residual unchanged and avoids
    under/overflow of ``p``).

    Attributes:
        t: ``[n]`` jfm times; x: ``[n, *event]`` points; x1: ``[n, *event]`` data points.
        dp_dt: ``[n]`` ``(d/dt p) / p`` (``jax.jvp`` in ``t``).
        div_pf: ``[n]`` ``div(p f) / p`` (:func:`jfm.divergence_exact` of ``p f``).
        residual: ``[n]`` ``dp_dt + div_pf``.
        scale: ``[n]`` ``|d_t log p| + |div f| + |f . grad log p|``, the size of the terms
            whose sum is the residual.
        relative: ``[n]`` ``|residual| / scale``: round-off (``~1e-13`` in float64) for a
            correct path, ``O(1)`` for a wrong field or density.
    """

    t: Float[Array, " n"]
    x: Float[Array, " n *event"]
    x1: Float[Array, " n *event"]
    dp_dt: Float[Array, " n"]
    div_pf: Float[Array, " n"]
    residual: Float[Array, " n"]
    scale: Float[Array, " n"]
    relative: Float[Array, " n"]

    @property
    def max_relative(self) -> Float[Array, ""]:
        """The largest relative residual over the checked points."""
        return jnp.max(self.relative)


def _one_point(path, t, x, x1):
    logp0 = path.conditional_log_density(t, x, x1)

    def q(s, y):  # p / p(t, x): the equation is linear in p, so this is exact scaling
        return jnp.exp(path.conditional_log_density(s, y, x1) - logp0)

    def pf(s, y, args):
        return q(s, y) * path.conditional_velocity(s, y, x1)

    def f(s, y, args):
        return path.conditional_velocity(s, y, x1)

    _, dq_dt = jax.jvp(lambda s: q(s, x), (t,), (jnp.ones_like(t),))
    div_pf = divergence_exact(pf, t, x, None)
    div_f = divergence_exact(f, t, x, None)
    grad_logp = jax.grad(lambda y: path.conditional_log_density(t, y, x1))(x)
    f_grad = jnp.sum(f(t, x, None) * grad_logp)
    residual = dq_dt + div_pf
    scale = jnp.abs(dq_dt) + jnp.abs(div_f) + jnp.abs(f_grad)
    return dq_dt, div_pf, residual, scale


@eqx.filter_jit
def _check(path, x1, t, keys):
    xs = jax.vmap(lambda ti, yi, k: path.sample_conditional(ti, yi, key=k))(t, x1, keys)
    dq_dt, div_pf, residual, scale = jax.vmap(lambda ti, xi, yi: _one_point(path, ti, xi, yi))(
        t, xs, x1
    )
    return ContinuityReport(t, xs, x1, dq_dt, div_pf, residual, scale, jnp.abs(residual) / scale)


def check_continuity(
    path: AbstractPath,
    x1: Float[Array, " _batch *_event"],
    *,
    key: PRNGKeyArray,
    n: int,
    t_min: float = 0.05,
    t_max: float = 0.95,
) -> ContinuityReport:
    r"""Residual of ``d/dt p_t(x|x1) + div(p_t(x|x1) f_t(x|x1))`` at ``n`` sampled points.

    Point ``k`` takes the data point ``x1[k % B]``, a time ``t_k ~ U[t_min, t_max]`` (jfm
    time) and ``x_k ~ p_{t_k}(. | x1)`` (``path.sample_conditional``). With
    ``p = exp(path.conditional_log_density)`` and ``f = path.conditional_velocity``,
    ``d p/dt`` comes from ``jax.jvp`` in ``t`` and ``div(p f)`` from
    :func:`jfm.divergence_exact` (forward mode, exact), both divided by ``p(t_k, x_k)``
    (see :class:`jfm.ContinuityReport`). A path whose field does not transport its
    density (a wrong sign, a wrong factor, a wrong density) gives relative residuals of
    order one; a correct one gives round-off. Cost: about ``d`` forward passes of the
    path's maths per point (for small ``d``).

    Works for any :class:`jfm.AbstractPath` (its ``sample_conditional(t, x1, key=)``,
    ``conditional_velocity(t, x, x1)`` and ``conditional_log_density(t, x, x1)``), e.g.
    :class:`jfm.AffinePath`, :class:`jfm.PoissonPath`, :class:`jfm.IsotropicPath`,
    :class:`jfm.SchrodingerBridgePath`. The computation is wrapped in
    :func:`equinox.filter_jit`.

    Args:
        path: the :class:`jfm.AbstractPath` to check.
        x1: ``[B, *event]`` data points (the Green's function sources).
        key: PRNG key (keyword-only, required).
        n: number of points, ``>= 1``.
        t_min, t_max: the time range, ``0 <= t_min < t_max <= 1`` (default
            ``[0.05, 0.95]``, away from the singular ends).

    Returns:
        A :class:`jfm.ContinuityReport`; ``report.max_relative`` is the summary.

    Raises:
        TypeError: ``path`` not a :class:`jfm.AbstractPath`; ``x1`` not floating; bad
            ``key``; ``n`` not an int.
        ValueError: ``x1`` without a batch axis; ``n < 1``; bad time range.

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> rep = jfm.check_continuity(path, jnp.ones((1, 2)), key=jax.random.key(0), n=4)
        >>> bool(rep.max_relative < 1e-4)
        True
    """
    require_path(path)
    check_key(key)
    x1 = check_finite(check_array(x1, "x1"), "x1")
    if x1.ndim < 2 or x1.shape[0] == 0:
        raise ValueError(
            f"`x1` must have shape [B, *event] with B >= 1; got shape {x1.shape}. For one "
            "data point pass x1[None]."
        )
    n = check_int(n, "n")
    if not (is_concrete((t_min, t_max)) and 0 <= float(t_min) < float(t_max) <= 1):
        raise ValueError(
            f"`t_min`, `t_max` must be concrete with 0 <= t_min < t_max <= 1; got "
            f"t_min={t_min!r}, t_max={t_max!r}."
        )
    dtype = x1.dtype
    key_t, key_x = jr.split(key)
    t = jr.uniform(key_t, (n,), dtype, minval=t_min, maxval=t_max)
    data = x1[jnp.arange(n) % x1.shape[0]]
    return _check(path, data, t, jr.split(key_x, n))


__all__ = ["ContinuityReport", "check_continuity"]
