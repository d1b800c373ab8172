"""The affine Gaussian path ``x_t = alpha(t) x1 + sigma(t) x0`` and its parametrizations."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import (
    check_array,
    check_key,
    check_parametrization,
    check_scalar_time,
    is_concrete,
)
from .._custom_types import RealScalarLike
from .._misc import sample_flat
from .base import AbstractConvertiblePath, check_event_shape, check_shape, split_prior_shape
from .schedule import AbstractSchedule, check_schedule


def _check_pair(x0, x1, a="x0", b="x1"):
    x0 = check_array(x0, a)
    x1 = check_array(x1, b)
    if x0.shape != x1.shape:
        raise ValueError(
            f"`{a}` and `{b}` must have equal shapes; got {a}.shape={x0.shape}, "
            f"{b}.shape={x1.shape}. jfm's path maths is per example: batch with jax.vmap."
        )
    return x0, x1


class AffinePath(AbstractConvertiblePath):
    r"""The affine Gaussian probability path.

    .. math::
        x_t = \alpha_t x_1 + \sigma_t x_0, \qquad x_0 \sim N(0, I),\; x_1 \sim p_{data},

    so ``p_t(x | x1) = N(alpha_t x1, sigma_t^2 I)``. Four parametrizations of what a model
    predicts are supported, and converted into each other given ``(t, x_t)``:

    - ``"velocity"``: ``u = alpha'_t x1 + sigma'_t x0`` (the flow-matching target);
    - ``"x1"``: the data (a.k.a. denoiser, ``x_0``-prediction in DDPM time);
    - ``"x0"``: the noise (a.k.a. ``eps``-prediction);
    - ``"score"``: ``grad_x log p_t(x | x1) = -x0 / sigma_t``.

    The marginal versions (conditional expectations given ``x_t``) obey the same linear
    relations, so ``convert`` applies to model outputs too.

    Checklist: per example (event-shaped ``x``), scalar ``t`` in ``[0, 1]``; ``t = 0`` noise,
    ``t = 1`` data. The source is ``N(0, prior_std^2 I)`` (``prior_std = 1`` except
    for :class:`jfm.VE`, where it is ``sigma_max``).

    Implements :class:`jfm.AbstractConvertiblePath` (so the whole path interface): the
    conditional law ``p_t(. | x1)`` (``sample_conditional``, ``conditional_velocity``,
    ``conditional_log_density``), the source (``prior_sample``, ``prior_log_prob``),
    ``x0_sample`` (standard normal: the source's scale lives in ``sigma``) and
    ``sample_and_target`` (``key`` unused). The forward-SDE view of the path is
    :class:`jfm.DiffusionSDE`, from the schedule's ``drift_coeff``/``diffusion_sq``.

    Args:
        schedule: an :class:`jfm.AbstractSchedule`, e.g. ``jfm.CondOT()``. Validated on a
            grid of times when its parameters are concrete.
        event_shape: optional event shape; when given, ``prior_sample``/``x0_sample``
            check that ``shape`` ends with it.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> x0, x1 = jnp.zeros(2), jnp.ones(2)
        >>> path.sample(0.25, x0, x1)
        Array([0.25, 0.25], dtype=float32)
        >>> path.target(0.25, x0, x1, kind="velocity")
        Array([1., 1.], dtype=float32)
    """

    schedule: AbstractSchedule
    event_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.schedule, AbstractSchedule):
            raise TypeError(
                f"`schedule` must be a jfm schedule (e.g. jfm.CondOT()); got {type(self.schedule)}."
            )
        if is_concrete(self.schedule):
            check_schedule(self.schedule)
        check_event_shape(self.event_shape)

    # -- coefficients -------------------------------------------------------------------

    def alpha(self, t: RealScalarLike) -> Float[Array, ""]:
        """``alpha(t)``, the signal coefficient (scalar)."""
        return self.schedule.alpha(check_scalar_time(t))

    def sigma(self, t: RealScalarLike) -> Float[Array, ""]:
        """``sigma(t)``, the noise coefficient (scalar)."""
        return self.schedule.sigma(check_scalar_time(t))

    def d_alpha(self, t: RealScalarLike) -> Float[Array, ""]:
        """``d alpha/dt`` (closed form where the schedule has one, else ``jax.jvp``)."""
        return self.schedule.d_alpha(check_scalar_time(t))

    def d_sigma(self, t: RealScalarLike) -> Float[Array, ""]:
        """``d sigma/dt`` (closed form where the schedule has one, else ``jax.jvp``)."""
        return self.schedule.d_sigma(check_scalar_time(t))

    @property
    def prior_std(self) -> float:
        """Standard deviation of the source ``N(0, prior_std^2 I)``."""
        return self.schedule.prior_std

    # -- conditional path ---------------------------------------------------------------

    def sample(
        self, t: RealScalarLike, x0: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, "*_dims"]:
        """``x_t = alpha(t) x1 + sigma(t) x0`` for one example.

        Args:
            t: scalar time in ``[0, 1]``.
            x0: ``(*dims,)`` standard-normal noise.
            x1: ``(*dims,)`` data point.

        Returns:
            ``(*dims,)``, same dtype as ``x1``.
        """
        x0, x1 = _check_pair(x0, x1)
        t = check_scalar_time(t)
        return (self.schedule.alpha(t) * x1 + self.schedule.sigma(t) * x0).astype(x1.dtype)

    def target(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*_dims"],
        x1: Float[Array, "*_dims"],
        kind: str = "velocity",
    ) -> Float[Array, "*_dims"]:
        """The conditional regression target of parametrization ``kind`` at ``x_t``.

        ``velocity``: ``alpha'(t) x1 + sigma'(t) x0``; ``x1``: ``x1``; ``x0``: ``x0``;
        ``score``: ``-x0 / sigma(t)`` (infinite at ``t = 1`` where ``sigma = 0``).

        Args:
            t: scalar time in ``[0, 1]``.
            x0: ``(*dims,)`` source noise; x1: ``(*dims,)`` data.
            kind: one of ``"velocity"``, ``"x1"``, ``"x0"``, ``"score"``.

        Returns:
            ``(*dims,)``.
        """
        check_parametrization(kind)
        x0, x1 = _check_pair(x0, x1)
        t = check_scalar_time(t)
        return self._from_pair(t, x1, x0, kind).astype(x1.dtype)

    def convert(
        self,
        t: RealScalarLike,
        x: Float[Array, "*_dims"],
        pred: Float[Array, "*_dims"],
        *,
        src: str,
        dst: str,
    ) -> Float[Array, "*_dims"]:
        r"""Convert a prediction at ``(t, x)`` from parametrization ``src`` to ``dst``.

        With ``a, s, a', s'`` the schedule and its derivatives at ``t``:

        - from ``x1``: ``x0 = (x - a x1) / s``;
        - from ``x0``: ``x1 = (x - s x0) / a``;
        - from ``score``: ``x0 = -s * score``, ``x1 = (x + s^2 score) / a``;
        - from ``velocity``: solving ``[a s; a' s'] [x1; x0] = [x; v]``,
          ``x1 = (s' x - s v) / (a s' - s a')``, ``x0 = (a v - a' x) / (a s' - s a')``;

        then ``velocity = a' x1 + s' x0``, ``score = -x0 / s``. Conversions that need
        ``1/a`` are singular at ``t = 0`` (CondOT, cosine, polynomial), those that need
        ``1/s`` at ``t = 1``; there the result is ``inf``/``nan`` (no hidden epsilon):
        evaluate on ``[t_min, 1 - t_min]``.

        Args:
            t: scalar time; x: ``(*dims,)`` the point ``x_t``; pred: ``(*dims,)``.
            src, dst: parametrizations, each one of ``"velocity"``, ``"x1"``, ``"x0"``,
                ``"score"``.

        Returns:
            ``(*dims,)`` the prediction in parametrization ``dst``.
        """
        check_parametrization(src, "src")
        check_parametrization(dst, "dst")
        x, pred = _check_pair(x, pred, "x", "pred")
        t = check_scalar_time(t)
        if src == dst:
            return pred
        sch = self.schedule
        a, s = sch.alpha(t), sch.sigma(t)
        if src == "x1":
            x1, x0 = pred, (x - a * pred) / s
        elif src == "x0":
            x1, x0 = (x - s * pred) / a, pred
        elif src == "score":
            x1, x0 = (x + s**2 * pred) / a, -s * pred
        else:  # velocity
            da, ds = sch.d_alpha(t), sch.d_sigma(t)
            det = a * ds - s * da
            x1, x0 = (ds * x - s * pred) / det, (a * pred - da * x) / det
        return self._from_pair(t, x1, x0, dst).astype(pred.dtype)

    def _from_pair(self, t, x1, x0, kind):
        if kind == "x1":
            return x1
        if kind == "x0":
            return x0
        if kind == "score":
            return -x0 / self.schedule.sigma(t)
        return self.schedule.d_alpha(t) * x1 + self.schedule.d_sigma(t) * x0

    # -- source distribution ------------------------------------------------------------

    def _normal(self, shape, key, dtype):
        check_key(key)
        shape = check_shape(shape)
        if self.event_shape is not None:
            split_prior_shape(self.event_shape, shape)  # checks that shape ends with it
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
        return sample_flat(jr.normal, key, shape, dtype)

    def prior_sample(
        self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None
    ) -> Float[Array, "..."]:
        """Draw from the source ``N(0, prior_std^2 I)``.

        Args:
            shape: ``(*batch, *event)``.
            key: PRNG key (keyword-only, required).
            dtype: floating dtype (default: JAX's default float).

        Returns:
            An array of ``shape``.

        Raises:
            TypeError: ``key`` not a PRNG key; ``shape`` not a tuple of ints; ``dtype`` not
                floating.
            ValueError: ``shape`` not ending with the path's ``event_shape`` (when set).
        """
        z = self._normal(shape, key, dtype)
        return jnp.asarray(self.prior_std, z.dtype) * z

    def x0_sample(
        self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None
    ) -> Float[Array, "..."]:
        """Standard-normal draws of ``x0`` for :meth:`sample` (``x_t = alpha x1 + sigma x0``).

        The source's scale lives in ``sigma`` (``sigma(0) = sigma_max`` for
        :class:`jfm.VE`), so ``x0 ~ N(0, I)`` whatever ``prior_std`` is; same arguments
        and errors as :meth:`prior_sample`.
        """
        return self._normal(shape, key, dtype)

    def prior_log_prob(self, x: Float[Array, "*_dims"]) -> Float[Array, ""]:
        """``log N(x; 0, prior_std^2 I)`` of ONE example ``x`` (all axes are event axes)."""
        x = check_array(x, "x")
        std = jnp.asarray(self.prior_std, x.dtype)
        d = x.size
        return -0.5 * jnp.sum((x / std) ** 2) - d * (jnp.log(std) + 0.5 * jnp.log(2 * jnp.pi))

    # -- the conditional law given x1 ----------------------------------------------------

    def sample_conditional(
        self, t: RealScalarLike, x1: Float[Array, "*_dims"], *, key: PRNGKeyArray
    ) -> Float[Array, "*_dims"]:
        """One draw ``x_t = alpha(t) x1 + sigma(t) eps``, ``eps ~ N(0, I)``, of ``p_t(. | x1)``.

        Args:
            t: scalar time in ``[0, 1]``; x1: ``(*dims,)`` data point.
            key: PRNG key (keyword-only, required).

        Returns:
            ``(*dims,)`` in ``x1``'s dtype.
        """
        check_key(key)
        x1 = check_array(x1, "x1")
        return self.sample(t, sample_flat(jr.normal, key, x1.shape, x1.dtype), x1)

    def conditional_velocity(
        self, t: RealScalarLike, x: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, "*_dims"]:
        """The conditional field ``alpha' x1 + sigma' (x - alpha x1) / sigma`` at ``(t, x)``.

        Equal to ``target(t, x0, x1)`` at ``x = sample(t, x0, x1)``; singular where
        ``sigma = 0`` (``t = 1``).

        Args:
            t: scalar time in ``[0, 1)``; x: ``(*dims,)``; x1: ``(*dims,)`` data point.

        Returns:
            ``(*dims,)`` in ``x``'s dtype.
        """
        x, x1 = _check_pair(x, x1, "x", "x1")
        t = check_scalar_time(t).astype(x.dtype)
        sch = self.schedule
        a, s = sch.alpha(t), sch.sigma(t)
        out = sch.d_alpha(t) * x1 + sch.d_sigma(t) * (x - a * x1) / s
        return out.astype(x.dtype)

    def conditional_log_density(
        self, t: RealScalarLike, x: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, ""]:
        """``log N(x; alpha(t) x1, sigma(t)^2 I)`` (all axes are event axes).

        Args:
            t: scalar time in ``[0, 1)``; x: ``(*dims,)``; x1: ``(*dims,)`` data point.

        Returns:
            A scalar in ``x``'s dtype.
        """
        x, x1 = _check_pair(x, x1, "x", "x1")
        t = check_scalar_time(t).astype(x.dtype)
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        z = (x - a * x1) / s
        return (-0.5 * jnp.sum(z * z) - x.size * (jnp.log(s) + 0.5 * jnp.log(2 * jnp.pi))).astype(
            x.dtype
        )


__all__ = ["AffinePath"]
