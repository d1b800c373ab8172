r"""Noise schedules ``(alpha_t, sigma_t)`` for the affine Gaussian path.

Convention (jfm-wide): ``t = 0`` is the noise end and ``t = 1`` the data end, and the
path is ``x_t = alpha(t) * x1 + sigma(t) * x0`` with ``x0 ~ N(0, I)``. A schedule is a
frozen pytree (an :class:`equinox.Module`); its parameters are leaves, so a schedule can
be built inside ``jax.jit`` and differentiated with respect to its parameters.

Time derivatives default to forward-mode autodiff (``jax.jvp``); schedules with a
closed form override ``d_alpha``/``d_sigma`` (each is tested against ``jax.jvp``).

Each schedule also carries the SDE view of its path: the affine path is the marginal law
of the linear forward (noising) SDE ``dX = f(t) X ds + g(t) dW_s`` run in diffusion time
``s = 1 - t`` (data at ``s = 0``), with

.. math::
    f(t) = -\frac{\alpha'(t)}{\alpha(t)}, \qquad
    g(t)^2 = 2 \frac{\alpha'(t)}{\alpha(t)} \sigma(t)^2 - 2 \sigma(t) \sigma'(t)

(``'`` is ``d/dt``; the signs come from ``ds = -dt``): ``drift_coeff`` and
``diffusion_sq``, closed forms where known (VP: ``f = -beta/2``, ``g^2 = beta``; VE:
``f = 0``, ``g^2 = 2 sigma^2 log(sigma_max / sigma_min)``), else this formula from the
schedule's derivatives. :class:`jfm.DiffusionSDE` uses them.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_scalar, is_concrete


def _jvp_scalar(fn, t):
    t = jnp.asarray(t)
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]


class AbstractSchedule(eqx.Module):
    """A schedule: two scalar functions ``alpha(t)`` (signal) and ``sigma(t)`` (noise).

    Subclasses implement ``alpha`` and ``sigma`` for a scalar ``t`` (shape ``()``) and may
    give closed-form ``d_alpha``/``d_sigma``. ``prior_std`` is the standard deviation of
    the source distribution ``N(0, prior_std^2 I)`` that sampling starts from at ``t=0``.

    Requirements (checked by :class:`jfm.AffinePath` when the values are concrete):
    ``alpha(1) = 1``; ``alpha >= 0`` non-decreasing; ``sigma > 0`` on ``[0, 1)``,
    non-increasing; the signal-to-noise ratio ``alpha/sigma`` strictly increasing.
    """

    @abc.abstractmethod
    def alpha(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """Signal coefficient at time ``t`` (scalar)."""

    @abc.abstractmethod
    def sigma(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """Noise coefficient at time ``t`` (scalar)."""

    def d_alpha(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """``d alpha / dt`` at ``t`` (by ``jax.jvp`` unless overridden with a closed form)."""
        return _jvp_scalar(self.alpha, t)

    def d_sigma(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """``d sigma / dt`` at ``t`` (by ``jax.jvp`` unless overridden with a closed form)."""
        return _jvp_scalar(self.sigma, t)

    def drift_coeff(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """``f(t) = -alpha'(t) / alpha(t)``, the drift coefficient of the forward SDE
        ``dX = f X ds + g dW_s`` (diffusion time ``s = 1 - t``); infinite where
        ``alpha = 0``."""
        return -self.d_alpha(t) / self.alpha(t)

    def diffusion_sq(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """``g(t)^2 = 2 (alpha'/alpha) sigma^2 - 2 sigma sigma'``, the squared diffusion of
        the forward SDE (see the module docstring); infinite where ``alpha = 0``."""
        a, s = self.alpha(t), self.sigma(t)
        return 2 * self.d_alpha(t) / a * s**2 - 2 * s * self.d_sigma(t)

    @property
    def prior_std(self) -> float:
        """Standard deviation of the source distribution ``N(0, prior_std^2 I)``."""
        return 1.0


class CondOT(AbstractSchedule):
    """Conditional optimal transport (rectified flow): ``alpha = t``, ``sigma = 1 - t``.

    The conditional velocity is constant, ``x1 - x0``. Source ``N(0, I)``.

    References:
        Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023;
        Liu et al., "Flow Straight and Fast", ICLR 2023.
    """

    def alpha(self, t):
        return jnp.asarray(t)

    def sigma(self, t):
        return 1 - jnp.asarray(t)

    def d_alpha(self, t):
        return jnp.ones_like(jnp.asarray(t))

    def d_sigma(self, t):
        return -jnp.ones_like(jnp.asarray(t))

    def drift_coeff(self, t):
        return -1 / jnp.asarray(t)  # -alpha'/alpha = -1/t

    def diffusion_sq(self, t):
        t = jnp.asarray(t)
        return 2 * (1 - t) / t  # 2 (1-t)^2 / t + 2 (1 - t)


class Cosine(AbstractSchedule):
    """Trigonometric (variance-preserving) schedule: ``alpha = sin(pi t / 2)``,
    ``sigma = cos(pi t / 2)``, so ``alpha^2 + sigma^2 = 1``. Source ``N(0, I)``.

    References:
        Albergo & Vanden-Eijnden, "Building Normalizing Flows with Stochastic
        Interpolants", ICLR 2023.
    """

    def alpha(self, t):
        return jnp.sin(0.5 * jnp.pi * jnp.asarray(t))

    def sigma(self, t):
        return jnp.cos(0.5 * jnp.pi * jnp.asarray(t))

    def d_alpha(self, t):
        return 0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * jnp.asarray(t))

    def d_sigma(self, t):
        return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * jnp.asarray(t))

    def drift_coeff(self, t):
        u = 0.5 * jnp.pi * jnp.asarray(t)
        return -0.5 * jnp.pi * jnp.cos(u) / jnp.sin(u)

    def diffusion_sq(self, t):
        # pi cot(u) cos^2(u) + pi sin(u) cos(u) = pi cot(u), u = pi t / 2.
        u = 0.5 * jnp.pi * jnp.asarray(t)
        return jnp.pi * jnp.cos(u) / jnp.sin(u)


class Polynomial(AbstractSchedule):
    """Polynomial convex schedule: ``alpha = t^n``, ``sigma = 1 - t^n`` (``n > 0``).

    ``n = 1`` is :class:`CondOT`. Source ``N(0, I)``.

    Args:
        n: the exponent, a positive number.
    """

    n: float | Float[Array, ""]

    def __check_init__(self):
        check_scalar(self.n, "n")  # a finite real scalar (the value read below)
        if is_concrete(self.n) and not float(self.n) > 0:
            raise ValueError(f"`n` must be positive; got n={float(self.n)}.")

    def alpha(self, t):
        return jnp.asarray(t) ** self.n

    def sigma(self, t):
        return 1 - jnp.asarray(t) ** self.n

    def d_alpha(self, t):
        t = jnp.asarray(t)
        return self.n * t ** (self.n - 1)

    def d_sigma(self, t):
        return -self.d_alpha(t)

    def drift_coeff(self, t):
        return -self.n / jnp.asarray(t)

    def diffusion_sq(self, t):
        # 2 (n / t) (1 - t^n)^2 + 2 (1 - t^n) n t^(n-1) = 2 n (1 - t^n) / t.
        t = jnp.asarray(t)
        return 2 * self.n * (1 - t**self.n) / t


class VP(AbstractSchedule):
    """Variance-preserving diffusion (score-SDE's VP SDE / DDPM), in jfm's time.

    The forward SDE ``dX = -beta(s)/2 X ds + sqrt(beta(s)) dW`` runs in diffusion time
    ``s = 1 - t`` (data at ``s = 0``) with ``beta(s) = beta_min + s (beta_max - beta_min)``.
    Its marginals are ``x = alpha x1 + sigma x0`` with

        log alpha(t) = -s^2 (beta_max - beta_min) / 4 - s beta_min / 2,   s = 1 - t,
        sigma(t) = sqrt(1 - alpha(t)^2).

    ``alpha(0) = exp(-(beta_max + beta_min)/4)`` is small but not zero (0.0066 for the
    defaults); the source is taken to be ``N(0, I)``, as in score-SDE. ``sigma`` has an
    infinite derivative at ``t = 1``, so ODE sampling should stop at ``t1 = 1 - eps``.

    Args:
        beta_min: ``beta`` at the data end, ``>= 0`` (default 0.1).
        beta_max: ``beta`` at the noise end, ``> beta_min`` (default 20.0).

    References:
        Song et al., "Score-Based Generative Modeling through Stochastic Differential
        Equations", ICLR 2021.
    """

    beta_min: float | Float[Array, ""] = 0.1
    beta_max: float | Float[Array, ""] = 20.0

    def __check_init__(self):
        check_scalar(self.beta_min, "beta_min")
        check_scalar(self.beta_max, "beta_max")
        if is_concrete((self.beta_min, self.beta_max)):
            bmin, bmax = float(self.beta_min), float(self.beta_max)
            if not (bmin >= 0 and bmax > bmin):
                raise ValueError(
                    f"`beta_min`, `beta_max` must satisfy 0 <= beta_min < beta_max; got "
                    f"beta_min={bmin}, beta_max={bmax}."
                )

    def log_alpha(self, t):
        s = 1 - jnp.asarray(t)
        return -0.25 * s**2 * (self.beta_max - self.beta_min) - 0.5 * s * self.beta_min

    def beta(self, t):
        """``beta`` of the forward SDE at jfm time ``t`` (diffusion time ``1 - t``)."""
        s = 1 - jnp.asarray(t)
        return self.beta_min + s * (self.beta_max - self.beta_min)

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2 * self.log_alpha(t)))

    def d_alpha(self, t):
        # d log alpha / dt = beta(s) / 2, s = 1 - t.
        return 0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        a = self.alpha(t)
        return -a * self.d_alpha(t) / self.sigma(t)

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def diffusion_sq(self, t):
        return self.beta(t)


class VE(AbstractSchedule):
    """Variance-exploding diffusion (score-SDE's VE SDE / NCSN), in jfm's time.

    ``alpha = 1`` and ``sigma(t) = sigma_min (sigma_max / sigma_min)^(1 - t)``: the data
    end carries residual noise ``sigma_min``, and the source is ``N(0, sigma_max^2 I)``.

    Args:
        sigma_min: noise at the data end, ``> 0`` (default 0.01).
        sigma_max: noise at the noise end, ``> sigma_min`` (default 50.0).

    References:
        Song et al., "Score-Based Generative Modeling through Stochastic Differential
        Equations", ICLR 2021.
    """

    sigma_min: float | Float[Array, ""] = 0.01
    sigma_max: float | Float[Array, ""] = 50.0

    def __check_init__(self):
        check_scalar(self.sigma_min, "sigma_min")
        check_scalar(self.sigma_max, "sigma_max")
        if is_concrete((self.sigma_min, self.sigma_max)):
            lo, hi = float(self.sigma_min), float(self.sigma_max)
            if not (0 < lo < hi):
                raise ValueError(
                    f"`sigma_min`, `sigma_max` must satisfy 0 < sigma_min < sigma_max; got "
                    f"sigma_min={lo}, sigma_max={hi}."
                )

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t))

    def sigma(self, t):
        t = jnp.asarray(t)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (1 - t)

    def d_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t))

    def d_sigma(self, t):
        return -self.sigma(t) * jnp.log(self.sigma_max / self.sigma_min)

    def drift_coeff(self, t):
        return jnp.zeros_like(jnp.asarray(t))

    def diffusion_sq(self, t):
        # d sigma^2 / ds = 2 sigma^2 log(sigma_max / sigma_min), s = 1 - t.
        return 2 * self.sigma(t) ** 2 * jnp.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self):
        return self.sigma_max


class CustomSchedule(AbstractSchedule):
    """A schedule from two user functions ``alpha(t)``, ``sigma(t)`` (scalar -> scalar).

    Derivatives come from ``jax.jvp``. The functions must be jit-traceable.

    Args:
        alpha_fn: ``t -> alpha(t)``.
        sigma_fn: ``t -> sigma(t)``.
        source_std: standard deviation of the source distribution (default 1.0).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> sched = jfm.CustomSchedule(lambda t: t**2, lambda t: 1 - t**2)
        >>> path = jfm.AffinePath(sched)
        >>> float(path.d_alpha(0.5))
        1.0
    """

    alpha_fn: Callable = eqx.field(static=True)
    sigma_fn: Callable = eqx.field(static=True)
    source_std: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        for name in ("alpha_fn", "sigma_fn"):
            if not callable(getattr(self, name)):
                raise TypeError(f"`{name}` must be callable t -> scalar.")
        if not (isinstance(self.source_std, (int, float)) and self.source_std > 0):
            raise ValueError(f"`source_std` must be a positive float; got {self.source_std!r}.")

    def alpha(self, t):
        return jnp.asarray(self.alpha_fn(jnp.asarray(t)))

    def sigma(self, t):
        return jnp.asarray(self.sigma_fn(jnp.asarray(t)))

    @property
    def prior_std(self):
        return float(self.source_std)


def check_schedule(schedule: AbstractSchedule, num: int = 257) -> None:
    """Validate a schedule on a grid of ``num`` times in ``[0, 1]`` (host-side, concrete).

    Raises:
        ValueError: naming the first violated requirement (see :class:`AbstractSchedule`).
    """
    import numpy as np

    ts = np.linspace(0.0, 1.0, num)
    with jax.ensure_compile_time_eval():
        a = np.asarray(jax.vmap(schedule.alpha)(jnp.asarray(ts)), dtype=np.float64)
        s = np.asarray(jax.vmap(schedule.sigma)(jnp.asarray(ts)), dtype=np.float64)
    name = type(schedule).__name__
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(s))):
        raise ValueError(f"`schedule` {name}: alpha/sigma are not finite on [0, 1].")
    tol = 1e-6
    if abs(a[-1] - 1.0) > 1e-5:
        raise ValueError(f"`schedule` {name}: alpha(1) must be 1 (data end); got {a[-1]}.")
    if np.any(a < -tol):
        raise ValueError(f"`schedule` {name}: alpha must be >= 0 on [0, 1]; min is {a.min()}.")
    if np.any(s[:-1] <= 0) or s[-1] < -tol:
        raise ValueError(
            f"`schedule` {name}: sigma must be > 0 on [0, 1) and >= 0 at t=1; "
            f"min on [0, 1) is {s[:-1].min()}."
        )
    if np.any(np.diff(a) < -tol):
        i = int(np.argmin(np.diff(a)))
        raise ValueError(
            f"`schedule` {name}: alpha must be non-decreasing in t; it decreases near t={ts[i]}."
        )
    if np.any(np.diff(s) > tol):
        i = int(np.argmax(np.diff(s)))
        raise ValueError(
            f"`schedule` {name}: sigma must be non-increasing in t; it increases near t={ts[i]}."
        )
    snr = a[:-1] / s[:-1]
    if np.any(np.diff(snr) <= 0):
        i = int(np.argmin(np.diff(snr)))
        raise ValueError(
            f"`schedule` {name}: the signal-to-noise ratio alpha/sigma must increase strictly "
            f"in t (else parametrizations cannot be converted); it does not near t={ts[i]}."
        )


__all__ = [
    "AbstractSchedule",
    "CondOT",
    "Cosine",
    "CustomSchedule",
    "Polynomial",
    "VE",
    "VP",
    "check_schedule",
]
