r"""The Brownian-bridge path of Schrodinger-bridge conditional flow matching (SB-CFM)."""

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_array, check_key, check_name, check_positive, check_scalar_time
from .._couplings import sinkhorn_coupling
from .._custom_types import RealScalarLike
from .._misc import sample_flat
from .affine import _check_pair
from .base import AbstractPath, check_shape

_KINDS: tuple[str, ...] = ("velocity",)


def _bridge_rate(t):
    """``(1 - 2t) / (2 sqrt(t (1 - t)))`` for ``0 < t < 1``, else 0; finite gradients."""
    s = t * (1 - t)
    pos = s > 0
    root = jnp.sqrt(jnp.where(pos, s, jnp.ones_like(s)))  # double where: no inf * 0
    return jnp.where(pos, (1 - 2 * t) / (2 * root), jnp.zeros_like(s))


def _check_inputs(t, x0, x1, key):
    check_key(key)
    x0, x1 = _check_pair(x0, x1)
    return check_scalar_time(t).astype(x1.dtype), x0, x1


def _noise(key, x1):
    """The bridge's standard-normal noise ``eps``: ``jax.random.normal(key, x1.shape)``."""
    return sample_flat(jr.normal, key, x1.shape, x1.dtype)


def _std_normal(shape, key, dtype):
    check_key(key)
    shape = check_shape(shape)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    return sample_flat(jr.normal, key, shape, dtype)


class SchrodingerBridgePath(AbstractPath):
    r"""Brownian bridge between ``x0`` and ``x1`` with diffusion ``sigma`` (SB-CFM).

    .. math::
        x_t = t\,x_1 + (1 - t)\,x_0 + \sigma\sqrt{t(1-t)}\;\varepsilon,
        \qquad \varepsilon \sim N(0, I),

    the law at time ``t`` of a Brownian motion ``sigma W`` pinned at ``x0`` (``t = 0``)
    and ``x1`` (``t = 1``). Its conditional velocity (the generator of the bridge's
    probability-flow ODE) is the derivative of the mean plus the bridge term

    .. math::
        u_t(x \mid x_0, x_1) = (x_1 - x_0) + \frac{1 - 2t}{2t(1-t)}\,
            \big(x - t x_1 - (1-t) x_0\big)
          = (x_1 - x_0) + \sigma\,\frac{1 - 2t}{2\sqrt{t(1-t)}}\;\varepsilon,

    i.e. ``d/dt`` of ``x_t`` at fixed ``eps`` (checked by ``jax.jvp`` in the tests). At
    ``t in {0, 1}`` the bridge term is ``0 * inf``; it is set to 0 there (the limit of
    the first form at ``x = mean``, as torchcfm's implementation gives), so the target
    stays finite for every ``t`` a time sampler can draw.

    Paired by the entropic OT plan with ``epsilon = 2 sigma^2`` (absolute), the marginal
    flow matches the Schrodinger bridge between the two distributions for the Brownian
    reference of variance ``sigma^2`` (Tong et al. 2024, Prop. 3.4):
    :meth:`coupling` is that plan (``cfm_loss(..., coupling=path.coupling)``).
    ``sigma -> 0`` gives OT-CFM with the straight path.

    **The path interface.** ``x_t`` depends on noise besides ``x0`` and ``x1``, so this is
    an :class:`jfm.AbstractPath` but not an :class:`jfm.AbstractFlowPath`: the noise
    comes from a keyword-only, required ``key``, as ``eps = jax.random.normal(key,
    x1.shape, x1.dtype)``. :meth:`sample`, :meth:`target` and :meth:`sample_and_target`
    with the same ``key`` use the same ``eps`` (so ``target`` is ``d/dt sample`` at fixed
    ``key``); :func:`jfm.cfm_loss` calls :meth:`sample_and_target` with one key per
    example. Only the ``"velocity"`` parametrization is defined. The source is
    ``N(0, I)`` (``prior_sample``, ``x0_sample``; any source may be coupled instead).

    **The conditional law given x1 alone** (``x0 ~ N(0, I)`` independent of ``x1``, as
    :func:`jfm.empirical_field` and :func:`jfm.check_continuity` need it) is Gaussian,

    .. math::
        p_t(x \mid x_1) = N\big(t x_1,\ s_t^2 I\big), \qquad
        s_t^2 = (1 - t)^2 + \sigma^2 t (1 - t), \qquad
        u_t(x \mid x_1) = x_1 + \frac{\tfrac12 \tfrac{d}{dt} s_t^2}{s_t^2} (x - t x_1),

    with ``d/dt s_t^2 / 2 = -(1 - t) + sigma^2 (1 - 2t) / 2``; ``u_t(. | x1)`` is
    ``E[u_t(x | x0, x1) | x_t = x, x1]``. Singular at ``t = 1`` (``s_1 = 0``).

    Attributes:
        sigma: bridge diffusion ``sigma >= 0`` (a scalar leaf).

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> path = jfm.SchrodingerBridgePath(0.5)
        >>> x0, x1, key = jnp.zeros(2), jnp.ones(2), jax.random.key(0)
        >>> xt, ut = path.sample_and_target(0.5, x0, x1, key=key)
        >>> eps = jax.random.normal(key, (2,))
        >>> bool(jnp.allclose(xt, 0.5 + 0.5 * jnp.sqrt(0.25) * eps))
        True
        >>> ut.tolist()  # bridge term vanishes at t = 1/2
        [1.0, 1.0]

    References:
        Tong, Malkin, Fatras, Atanackov, Zhang, Huguet, Wolf, Bengio, "Improving and
        Generalizing Flow-Based Generative Models with Minibatch Optimal Transport",
        TMLR 2024, Sec. 3.4.
    """

    sigma: Float[Array, ""]

    def __init__(self, sigma: RealScalarLike):
        with jax.ensure_compile_time_eval():  # range-checked when concrete, also under jit
            self.sigma = check_positive(sigma, "sigma", allow_zero=True)

    def std(self, t: RealScalarLike) -> Float[Array, ""]:
        """``sigma sqrt(t (1 - t))``, the bridge's standard deviation at ``t``."""
        t = check_scalar_time(t)
        return self.sigma.astype(t.dtype) * jnp.sqrt(t * (1 - t))

    def sample_and_target(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*_dims"],
        x1: Float[Array, "*_dims"],
        *,
        key: PRNGKeyArray,
        kind: str = "velocity",
    ) -> tuple[Float[Array, "*_dims"], Float[Array, "*_dims"]]:
        """``(x_t, u_t)`` for one example, both with the noise ``eps`` drawn from ``key``.

        ``x_t = t x1 + (1 - t) x0 + sigma sqrt(t (1 - t)) eps`` and
        ``u_t = x1 - x0 + sigma (1 - 2t) / (2 sqrt(t (1 - t))) eps`` (0 bridge term at
        ``t in {0, 1}``), ``eps = jax.random.normal(key, x1.shape, x1.dtype)``.

        Args:
            t: scalar time in ``[0, 1]``.
            x0: ``(*dims,)`` source point; x1: ``(*dims,)`` data point.
            key: PRNG key for ``eps`` (keyword-only, required).
            kind: ``"velocity"`` (the only parametrization of this path).

        Returns:
            ``(x_t, u_t)``, each ``(*dims,)`` in ``x1``'s dtype.

        Raises:
            ValueError: ``kind`` other than ``"velocity"``; shape mismatches.
            TypeError: missing or bad ``key``.
        """
        check_name(kind, "kind", _KINDS)
        t, x0, x1 = _check_inputs(t, x0, x1, key)
        eps = _noise(key, x1)
        sigma = self.sigma.astype(x1.dtype)
        xt = t * x1 + (1 - t) * x0 + sigma * jnp.sqrt(t * (1 - t)) * eps
        # d/dt [sigma sqrt(t (1 - t))] = sigma (1 - 2t) / (2 sqrt(t (1 - t))).
        ut = x1 - x0 + sigma * _bridge_rate(t) * eps
        return xt.astype(x1.dtype), ut.astype(x1.dtype)

    def sample(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*_dims"],
        x1: Float[Array, "*_dims"],
        *,
        key: PRNGKeyArray,
    ) -> Float[Array, "*_dims"]:
        """``x_t = t x1 + (1 - t) x0 + sigma sqrt(t (1 - t)) eps``: the first output of
        :meth:`sample_and_target` (same arguments, ``eps`` from ``key``)."""
        return self.sample_and_target(t, x0, x1, key=key)[0]

    def target(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*_dims"],
        x1: Float[Array, "*_dims"],
        *,
        key: PRNGKeyArray,
        kind: str = "velocity",
    ) -> Float[Array, "*_dims"]:
        """The conditional velocity at ``sample(t, x0, x1, key=key)``: the second output of
        :meth:`sample_and_target` (same arguments and errors)."""
        return self.sample_and_target(t, x0, x1, key=key, kind=kind)[1]

    def coupling(self, x0, x1, *, key: PRNGKeyArray):
        """The entropic OT coupling with ``epsilon = 2 sigma^2`` (absolute).

        ``jfm.sinkhorn_coupling(x0, x1, key=key, epsilon=2 sigma^2,
        relative_epsilon=None)``; see there for shapes. ``sigma`` must be ``> 0``.
        """
        return sinkhorn_coupling(x0, x1, key=key, epsilon=2 * self.sigma**2, relative_epsilon=None)

    # -- source ------------------------------------------------------------------------

    def prior_sample(
        self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None
    ) -> Float[Array, "..."]:
        """Standard-normal draws of ``shape = (*batch, *event)`` (key keyword-only, required;
        ``dtype`` floating, default JAX's default float)."""
        return _std_normal(shape, key, dtype)

    def x0_sample(
        self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None
    ) -> Float[Array, "..."]:
        """Draws of ``x0`` for :meth:`sample_and_target`: the source ``N(0, I)``, as
        :meth:`prior_sample`."""
        return _std_normal(shape, key, dtype)

    def prior_log_prob(self, x: Float[Array, "*_dims"]) -> Float[Array, ""]:
        """Log-density of ``N(0, I)`` at one example."""
        x = check_array(x, "x")
        return -0.5 * jnp.sum(x * x) - 0.5 * x.size * jnp.log(2 * jnp.pi).astype(x.dtype)

    # -- the conditional law given x1 (independent N(0, I) source) ----------------------

    def _marginal_std2(self, t):
        """``(s_t^2, d/dt s_t^2 / 2)`` of ``p_t(. | x1) = N(t x1, s_t^2 I)``."""
        sig2 = self.sigma.astype(t.dtype) ** 2
        return (1 - t) ** 2 + sig2 * t * (1 - t), -(1 - t) + 0.5 * sig2 * (1 - 2 * t)

    def sample_conditional(
        self, t: RealScalarLike, x1: Float[Array, "*_dims"], *, key: PRNGKeyArray
    ) -> Float[Array, "*_dims"]:
        """One draw of ``p_t(. | x1) = N(t x1, s_t^2 I)`` (see the class): ``x0 ~ N(0, I)``
        and ``eps`` from two halves of ``key``, then :meth:`sample`.

        Args:
            t: scalar time in ``[0, 1]``; x1: ``(*dims,)`` data point.
            key: PRNG key (keyword-only, required).

        Returns:
            ``(*dims,)`` in ``x1``'s dtype.
        """
        check_key(key)
        x1 = check_array(x1, "x1")
        key_x0, key_eps = jr.split(key)
        return self.sample(t, _noise(key_x0, x1), x1, key=key_eps)

    def conditional_velocity(
        self, t: RealScalarLike, x: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, "*_dims"]:
        """``u_t(x | x1) = x1 + (d/dt s_t^2 / 2) / s_t^2 (x - t x1)`` (see the class).

        Args:
            t: scalar time in ``[0, 1)``; x: ``(*dims,)``; x1: ``(*dims,)`` data point.

        Returns:
            ``(*dims,)`` in ``x``'s dtype.
        """
        x, x1 = _check_pair(x, x1, "x", "x1")
        t = check_scalar_time(t).astype(x.dtype)
        s2, half_ds2 = self._marginal_std2(t)
        return (x1 + (half_ds2 / s2) * (x - t * x1)).astype(x.dtype)

    def conditional_log_density(
        self, t: RealScalarLike, x: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, ""]:
        """``log N(x; t x1, s_t^2 I)`` (all axes are event axes; see the class).

        Args:
            t: scalar time in ``[0, 1)``; x: ``(*dims,)``; x1: ``(*dims,)`` data point.

        Returns:
            A scalar in ``x``'s dtype.
        """
        x, x1 = _check_pair(x, x1, "x", "x1")
        t = check_scalar_time(t).astype(x.dtype)
        s2, _ = self._marginal_std2(t)
        z2 = jnp.sum((x - t * x1) ** 2) / s2
        return (-0.5 * z2 - 0.5 * x.size * (jnp.log(s2) + jnp.log(2 * jnp.pi))).astype(x.dtype)


__all__ = ["SchrodingerBridgePath"]
