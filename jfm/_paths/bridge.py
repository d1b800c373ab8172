r"""The Brownian-bridge path of Schrodinger-bridge conditional flow matching (SB-CFM)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_name, check_scalar, check_scalar_time, is_concrete
from .._couplings import sinkhorn_coupling
from .._custom_types import RealScalarLike
from .._misc import sample_flat
from .affine import _check_pair
from .base import AbstractPath


def _bridge_rate(t):
    """``(1 - 2t) / (2 sqrt(t (1 - t)))`` for ``0 < t < 1``, else 0; finite gradients."""
    s = t * (1 - t)
    pos = s > 0
    root = jnp.sqrt(jnp.where(pos, s, jnp.ones_like(s)))  # double where: no inf * 0
    return jnp.where(pos, (1 - 2 * t) / (2 * root), jnp.zeros_like(s))


def _check_inputs(t, x0, x1, eps):
    x0, x1 = _check_pair(x0, x1)
    _, eps = _check_pair(x0, eps, "x0", "eps")
    return check_scalar_time(t).astype(x1.dtype), x0, x1, eps


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

    Unlike :class:`jfm.AffinePath`, ``x_t`` depends on noise besides ``x0`` and ``x1``:
    :meth:`sample` and :meth:`target` take the standard-normal ``eps``
    (:func:`jfm.cfm_loss` draws it). Only the ``"velocity"`` parametrization is defined.
    Source ``N(0, I)`` for :meth:`prior_sample` (any source may be coupled instead).

    Attributes:
        sigma: bridge diffusion ``sigma >= 0`` (a scalar leaf).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> path = jfm.SchrodingerBridgePath(0.5)
        >>> x0, x1, eps = jnp.zeros(2), jnp.ones(2), jnp.ones(2)
        >>> path.sample(0.5, x0, x1, eps).tolist()  # 0.5 + 0.5 * sqrt(0.25)
        [0.75, 0.75]
        >>> path.target(0.5, x0, x1, eps).tolist()  # bridge term vanishes at t = 1/2
        [1.0, 1.0]

    References:
        Tong, Malkin, Fatras, Atanackov, Zhang, Huguet, Wolf, Bengio, "Improving and
        Generalizing Flow-Based Generative Models with Minibatch Optimal Transport",
        TMLR 2024, Sec. 3.4.
    """

    sigma: Float[Array, ""]

    def __init__(self, sigma: RealScalarLike):
        sigma = check_scalar(sigma, "sigma")
        if is_concrete(sigma) and not float(sigma) >= 0:
            raise ValueError(f"`sigma` must be >= 0; got sigma={float(sigma)}.")
        self.sigma = sigma

    def std(self, t: RealScalarLike) -> Float[Array, ""]:
        """``sigma sqrt(t (1 - t))``, the bridge's standard deviation at ``t``."""
        t = check_scalar_time(t)
        return self.sigma.astype(t.dtype) * jnp.sqrt(t * (1 - t))

    def sample(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*dims"],
        x1: Float[Array, "*dims"],
        eps: Float[Array, "*dims"],
    ) -> Float[Array, "*dims"]:
        """``x_t = t x1 + (1 - t) x0 + sigma sqrt(t (1 - t)) eps`` for one example.

        Args:
            t: scalar time in ``[0, 1]``.
            x0: ``(*dims,)`` source point; x1: ``(*dims,)`` data point.
            eps: ``(*dims,)`` standard-normal noise.

        Returns:
            ``(*dims,)`` in ``x1``'s dtype.
        """
        t, x0, x1, eps = _check_inputs(t, x0, x1, eps)
        std = self.sigma.astype(x1.dtype) * jnp.sqrt(t * (1 - t))
        return (t * x1 + (1 - t) * x0 + std * eps).astype(x1.dtype)

    def target(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*dims"],
        x1: Float[Array, "*dims"],
        eps: Float[Array, "*dims"],
        kind: str = "velocity",
    ) -> Float[Array, "*dims"]:
        """The conditional velocity at ``x_t = sample(t, x0, x1, eps)`` (see the class).

        Args:
            t: scalar time in ``[0, 1]``.
            x0, x1, eps: ``(*dims,)`` as in :meth:`sample`.
            kind: ``"velocity"`` (the only parametrization of this path).

        Returns:
            ``(*dims,)`` in ``x1``'s dtype.

        Raises:
            ValueError: ``kind`` other than ``"velocity"``; shape mismatches.
        """
        check_name(kind, "kind", ("velocity",))
        t, x0, x1, eps = _check_inputs(t, x0, x1, eps)
        # d/dt [sigma sqrt(t (1 - t))] = sigma (1 - 2t) / (2 sqrt(t (1 - t))).
        d_std = self.sigma.astype(x1.dtype) * _bridge_rate(t)
        return (x1 - x0 + d_std * eps).astype(x1.dtype)

    def coupling(self, x0, x1, *, key: PRNGKeyArray):
        """The entropic OT coupling with ``epsilon = 2 sigma^2`` (absolute).

        ``jfm.sinkhorn_coupling(x0, x1, key=key, epsilon=2 sigma^2,
        relative_epsilon=None)``; see there for shapes. ``sigma`` must be ``> 0``.
        """
        return sinkhorn_coupling(x0, x1, key=key, epsilon=2 * self.sigma**2, relative_epsilon=None)

    def prior_sample(self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None) -> Array:
        """Standard-normal draws of shape ``(*batch, *event)``."""
        return sample_flat(
            jax.random.normal, key, shape, jnp.result_type(float) if dtype is None else dtype
        )

    def prior_log_prob(self, x: Float[Array, "*dims"]) -> Float[Array, ""]:
        """Log-density of ``N(0, I)`` at one example."""
        x = jnp.asarray(x)
        return -0.5 * jnp.sum(x * x) - 0.5 * x.size * jnp.log(2 * jnp.pi).astype(x.dtype)


__all__ = ["SchrodingerBridgePath"]
