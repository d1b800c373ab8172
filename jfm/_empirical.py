r"""The empirical (Green's function) marginal field of a data set.

For data ``{y_i}`` (the empirical distribution) and any path with a conditional density
``p_t(x | y)`` and field ``f_t(x | y)``, the marginal field that transports the marginal
``p_t(x) = mean_i p_t(x | y_i)`` is

.. math::
    u_t(x) = \frac{\sum_i p_t(x \mid y_i)\, f_t(x \mid y_i)}{\sum_i p_t(x \mid y_i)}
           = \sum_i w_i(t, x)\, f_t(x \mid y_i), \qquad w = \mathrm{softmax}_i \log p_t(x \mid y_i).

In the general ODE construction ``G = (p, p f)`` is the Green's function; this is the
data average of ``G_{>1}`` divided by the average of ``G_1`` (``dx/dt = u_{>1} / u_1``):
PFGM's empirical field over the batch, normalized by its time component. (PFGM itself
normalizes the ``N + 1``-dimensional field to a fixed norm and integrates in another
variable; dividing by the time component gives jfm's velocity directly.) The loss that
regresses a model on it is :func:`jfm.empirical_field_loss`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._checks import check_array, check_name
from ._custom_types import Args, RealScalarLike
from ._paths import AbstractPath
from ._paths.base import require_path

#: The parametrizations of an empirical field: the marginal velocity or posterior mean.
EMPIRICAL_KINDS: tuple[str, ...] = ("velocity", "x1")


class EmpiricalField(eqx.Module):
    """The marginal field of the empirical distribution of ``data`` (see module docs).

    Attributes:
        path: any :class:`jfm.AbstractPath` (its ``conditional_log_density`` and
            ``conditional_velocity`` are used).
        data: ``[M, *event]`` the data points.
        kind: ``"velocity"`` (the marginal field) or ``"x1"`` (the posterior mean
            ``sum_i w_i y_i``), static.
    """

    path: AbstractPath
    data: Float[Array, " _M *_event"]
    kind: str = eqx.field(static=True, default="velocity")

    def __check_init__(self):
        require_path(self.path)
        check_name(self.kind, "kind", EMPIRICAL_KINDS)

    def __call__(
        self, t: RealScalarLike, x: Float[Array, "*_event"], args: Args = None
    ) -> Float[Array, "*_event"]:
        """``u_t(x)`` for ONE example ``x`` (``args`` unused). Returns ``x``'s dtype."""
        x = check_array(x, "x")
        if x.shape != self.data.shape[1:]:
            raise ValueError(
                f"`x` must have the event shape of `data` {self.data.shape[1:]}; got {x.shape}."
            )
        data = self.data.astype(x.dtype)
        logp = jax.vmap(self.path.conditional_log_density, in_axes=(None, None, 0))(t, x, data)
        w = jax.nn.softmax(logp)
        if self.kind == "x1":
            return jnp.tensordot(w, data, axes=1).astype(x.dtype)
        v = jax.vmap(self.path.conditional_velocity, in_axes=(None, None, 0))(t, x, data)
        # A data point whose density underflowed has weight 0 and may have a 0/0 field.
        v = jnp.where((w > 0).reshape(w.shape + (1,) * x.ndim), v, jnp.zeros_like(v))
        return jnp.tensordot(w, v, axes=1).astype(x.dtype)


def empirical_field(
    path: AbstractPath, data: Float[ArrayLike, " _M *_event"], *, kind: str = "velocity"
) -> EmpiricalField:
    r"""The exact marginal field of the empirical distribution of ``data`` under ``path``.

    ``u_t(x) = sum_i w_i f_t(x | y_i)`` with ``w = softmax_i log p_t(x | y_i)`` (stable in
    log space). For :class:`jfm.PoissonPath` this is the (normalized) Poisson field of
    the data charges; integrating it with :func:`jfm.sample_ode` from prior draws lands on
    the data points. ``kind="x1"`` returns the posterior mean ``sum_i w_i y_i`` instead.
    Cost: ``M`` conditional evaluations per call.

    Args:
        path: any :class:`jfm.AbstractPath` (e.g. :class:`jfm.AffinePath`,
            :class:`jfm.PoissonPath`, :class:`jfm.IsotropicPath`).
        data: ``[M, *event]`` data points.
        kind: ``"velocity"`` or ``"x1"``.

    Returns:
        A per-example field ``field(t, x, args)`` (an :class:`jfm.EmpiricalField`).

    Raises:
        TypeError: ``path`` not a :class:`jfm.AbstractPath`; ``data`` not floating.
        ValueError: unknown ``kind``; ``data`` not ``[M, *event]`` with ``M >= 1``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> field = jfm.empirical_field(jfm.PoissonPath(r_max=5.0), jnp.zeros((3, 2)))
        >>> field(0.5, jnp.ones(2), None)
        Array([-2., -2.], dtype=float32)
    """
    require_path(path)
    check_name(kind, "kind", EMPIRICAL_KINDS)
    data = check_array(data, "data")
    if data.ndim < 2 or data.shape[0] == 0:
        raise ValueError(f"`data` must have shape [M, *event] with M >= 1; got {data.shape}.")
    return EmpiricalField(path, data, kind)


__all__ = ["EmpiricalField", "empirical_field"]
