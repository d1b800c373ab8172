"""The marginal score of an affine path from its marginal velocity."""

import equinox as eqx
from jaxtyping import Array, ArrayLike

from .._checks import check_array, check_callable, check_scalar_time
from .._custom_types import Args, RealScalarLike, VectorField
from .._paths import AffinePath


class ScoreFromVelocity(eqx.Module):
    """The score ``grad log p_t`` of an affine path, computed from a velocity field.

    Built by :func:`jfm.score_from_velocity`; call as ``score(t, x, args)``.
    """

    velocity: VectorField
    path: AffinePath

    def __call__(self, t: RealScalarLike, x: ArrayLike, args: Args = None) -> Array:
        x = check_array(x, "x")
        t = check_scalar_time(t).astype(x.dtype)
        u = self.velocity(t, x, args)
        if u.shape != x.shape:
            raise ValueError(
                f"`velocity` must return an array of the shape of `x` {x.shape}; got {u.shape}."
            )
        return self.path.convert(t, x, u, src="velocity", dst="score")


def score_from_velocity(velocity: VectorField, path: AffinePath) -> ScoreFromVelocity:
    r"""The marginal score of an :class:`jfm.AffinePath` from its marginal velocity.

    For ``x_t = a x1 + s x0`` the marginal velocity and score are both linear in
    ``(E[x1 | x_t], E[x0 | x_t])``, so (``path.convert``, with ``a, s, a', s'`` at ``t``)

    .. math::
        \nabla \log p_t(x) = -\frac{E[x_0 | x]}{s}
        = \frac{a' x - a\, u_t(x)}{s\,(a s' - s a')} .

    One trained velocity model therefore gives both terms of :func:`jfm.sample_sde`'s
    drift; ``sample_sde(v, path, ...)`` uses this formula on the same evaluation of ``v``
    (one field call per drift evaluation, where passing this field would cost two).
    Singular where ``s = 0``
    (``t = 1`` for CondOT and VP): end the solve at ``t1 < 1`` or let ``g(t) -> 0`` there.

    Args:
        velocity: per-example velocity field ``v(t, x, args)`` of ``path``.
        path: the :class:`jfm.AffinePath` the velocity belongs to.

    Returns:
        A per-example field ``score(t, x, args)`` (an :class:`equinox.Module`).

    Raises:
        TypeError: ``velocity`` not callable or ``path`` not an ``AffinePath``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> gmm = jfm.GaussianMixture.isotropic(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
        >>> s = jfm.score_from_velocity(gmm.velocity_field(path), path)
        >>> bool(jnp.allclose(s(0.5, jnp.ones(2)), gmm.score_field(path)(0.5, jnp.ones(2))))
        True
    """
    check_callable(velocity, "velocity")
    if not isinstance(path, AffinePath):
        raise TypeError(f"`path` must be a jfm.AffinePath; got {type(path)}.")
    return ScoreFromVelocity(velocity, path)
