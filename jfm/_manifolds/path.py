r"""The geodesic conditional path of Riemannian flow matching and its loss."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_callable, check_finite, check_key, check_scalar_time, is_concrete
from .._custom_types import ApplyFn, Args, RealScalarLike
from .._losses import uniform_time
from .._paths import AbstractSchedule, CondOT
from .base import AbstractManifold, batch_map, require_manifold
from .distributions import AbstractManifoldDistribution, ManifoldUniform


class GeodesicPath(eqx.Module):
    r"""The geodesic conditional path on a manifold (Chen & Lipman, 2024).

    .. math::
        x_t = \exp_{x_0}\big(\kappa_t \log_{x_0}(x_1)\big), \qquad
        u_t(x_t \mid x_0, x_1) = \frac{d}{dt} x_t \ \ (\texttt{jax.jvp} \text{ in } t),

    with ``kappa_t = schedule.alpha(t)`` (``kappa_0 = 0``, ``kappa_1 = 1``: ``CondOT``
    gives constant-speed geodesics, ``|u_t| = d(x_0, x_1)``). ``x_0`` comes from the
    source distribution, part of the path as for jfm's Euclidean paths: the uniform law
    of a compact manifold by default, or ``source=`` any
    :class:`jfm.AbstractManifoldDistribution` (a sampler with a log-density w.r.t. the
    volume measure). Given ``x_1`` and ``x = x_t`` alone the conditional field is
    ``u_t(x | x_1) = kappa'_t / (1 - kappa_t) log_x(x_1)`` (:meth:`conditional_velocity`).

    Not a :class:`jfm.AbstractPath`: points live on the manifold and densities are
    w.r.t. its volume, not Lebesgue measure; sample with :func:`jfm.sample_ode` and a
    manifold solver, evaluate with :func:`jfm.manifold_log_prob`.

    All methods act on ONE example (points of ``manifold.event_shape``, scalar ``t``).

    Args:
        manifold: a :class:`jfm.AbstractManifold`.
        schedule: a jfm schedule whose ``alpha`` runs from 0 to 1 (default
            ``jfm.CondOT()``; ``jfm.Cosine()``, ``jfm.Polynomial(n)`` also qualify).
        source: the source distribution, or ``None`` for the uniform law (compact
            manifolds only).

    Raises:
        TypeError: ``manifold``/``schedule``/``source`` of the wrong type.
        ValueError: a schedule with ``alpha(0) != 0`` or ``alpha(1) != 1``; no source on a
            non-compact manifold; a source on another manifold.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> path = jfm.GeodesicPath(jfm.Sphere(2))
        >>> x0, x1 = jnp.array([1.0, 0, 0]), jnp.array([0.0, 1, 0])
        >>> path.sample(0.5, x0, x1).round(4)
        Array([0.7071, 0.7071, 0.    ], dtype=float32)

    References:
        Chen, Lipman, "Flow Matching on General Geometries", ICLR 2024.
    """

    manifold: AbstractManifold
    schedule: AbstractSchedule = CondOT()
    source: AbstractManifoldDistribution | None = None

    def __check_init__(self):
        require_manifold(self.manifold)
        if not isinstance(self.schedule, AbstractSchedule):
            raise TypeError(
                f"`schedule` must be a jfm.AbstractSchedule (e.g. jfm.CondOT()); got "
                f"{type(self.schedule).__name__}."
            )
        if is_concrete(self.schedule):
            a0 = float(self.schedule.alpha(jnp.zeros(())))
            a1 = float(self.schedule.alpha(jnp.ones(())))
            if abs(a0) > 1e-6 or abs(a1 - 1) > 1e-6:
                raise ValueError(
                    f"`schedule.alpha` must run from 0 at t=0 to 1 at t=1 (it is kappa_t of "
                    f"the geodesic path), e.g. jfm.CondOT() or jfm.Cosine(); got alpha(0)="
                    f"{a0}, alpha(1)={a1} for {type(self.schedule).__name__}."
                )
        if self.source is None:
            if not self.manifold.compact:
                raise ValueError(
                    f"{type(self.manifold).__name__} is not compact (no uniform law): pass "
                    "source=<a jfm.AbstractManifoldDistribution>."
                )
        elif not isinstance(self.source, AbstractManifoldDistribution):
            raise TypeError(
                f"`source` must be a jfm.AbstractManifoldDistribution or None; got "
                f"{type(self.source).__name__}."
            )
        elif self.source.manifold.event_shape != self.manifold.event_shape:
            raise ValueError(
                f"`source` lives on {self.source.manifold!r}, points of shape "
                f"{self.source.manifold.event_shape}; the path's manifold has "
                f"{self.manifold.event_shape}."
            )

    @property
    def prior(self) -> AbstractManifoldDistribution:
        """The source distribution (uniform unless ``source`` was given)."""
        return ManifoldUniform(self.manifold) if self.source is None else self.source

    def kappa(self, t: RealScalarLike) -> Float[Array, ""]:
        """``kappa_t = schedule.alpha(t)``."""
        return self.schedule.alpha(t)

    def _check(self, t, *points):
        t = check_scalar_time(t)
        for name, p in points:
            self.manifold.check_point(p, name)
        return t

    def sample(self, t: RealScalarLike, x0: Float[Array, "*e"], x1: Float[Array, "*e"]):
        """``x_t = exp_{x0}(kappa_t log_{x0}(x1))`` for one example."""
        t = self._check(t, ("x0", x0), ("x1", x1))
        m = self.manifold
        k = self.kappa(t).astype(x0.dtype)
        return m.exp(x0, k * m.log(x0, x1))

    def target(self, t, x0, x1, kind: str = "velocity"):
        """``u_t = d x_t / dt`` at ``sample(t, x0, x1)`` (``jax.jvp`` in ``t``); only
        ``kind="velocity"``."""
        if kind != "velocity":
            raise ValueError(f"A GeodesicPath offers kind='velocity' only; got kind={kind!r}.")
        return self.sample_and_target(t, x0, x1)[1]

    def sample_and_target(self, t, x0, x1, *, key=None, kind: str = "velocity"):
        """``(x_t, u_t)`` from one forward-mode pass; ``key`` is unused (deterministic)."""
        del key
        if kind != "velocity":
            raise ValueError(f"A GeodesicPath offers kind='velocity' only; got kind={kind!r}.")
        t = self._check(t, ("x0", x0), ("x1", x1)).astype(x0.dtype)
        m = self.manifold
        v = m.log(x0, x1)
        xt, ut = jax.jvp(
            lambda s: m.exp(x0, self.kappa(s).astype(x0.dtype) * v), (t,), (jnp.ones_like(t),)
        )
        return xt, ut

    def conditional_velocity(self, t, x, x1):
        """``u_t(x | x_1) = kappa'_t / (1 - kappa_t) log_x(x_1)``, for ``t < 1``."""
        t = self._check(t, ("x", x), ("x1", x1)).astype(x.dtype)
        k, dk = jax.jvp(self.kappa, (t,), (jnp.ones_like(t),))
        return (dk / (1 - k)).astype(x.dtype) * self.manifold.log(x, x1)

    def prior_sample(self, shape, *, key: PRNGKeyArray, dtype=None):
        """Source draws of ``shape = (n, *event)`` (or an int ``n``)."""
        n = shape if isinstance(shape, int) else shape[0]
        out = self.prior.sample(n, key=key, dtype=dtype)
        return out

    x0_sample = prior_sample

    def prior_log_prob(self, x: Float[Array, "*e"]) -> Float[Array, ""]:
        """Source log-density of ONE point (w.r.t. the volume measure)."""
        return self.prior.log_prob(x)


def riemannian_cfm_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path: GeodesicPath,
    key: PRNGKeyArray,
    x0: Float[ArrayLike, " batch *event"] | None = None,
    t: Float[ArrayLike, " batch"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
) -> Float[Array, " batch"]:
    r"""Per-example Riemannian conditional flow matching loss.

    With ``t_i`` from ``time_sampler``, ``x0_i`` from the path's source and
    ``(x_t, u_t) = path.sample_and_target(t_i, x0_i, x1_i)``,

    .. math::
        \ell_i = \frac{1}{\dim M} \big\| P_{x_t} f_\theta(t_i, x_t) - u_t \big\|^2_{g_{x_t}},

    the squared norm in the manifold's metric (``inner``) of the difference between the
    model output projected to the tangent space and the geodesic path's velocity,
    divided by the intrinsic dimension (as :func:`jfm.cfm_loss` divides by ``d``). Its
    expectation equals the marginal Riemannian flow matching loss up to a constant
    independent of ``theta`` (Chen & Lipman 2024, Thm. 3.1).

    Args:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]`` (batch-first;
            e.g. from :func:`jfm.split_model` of a :class:`jfm.models.ManifoldMLP`).
        params: the parameters.
        x1: ``[B, *event]`` data on the manifold.
        path: a :class:`jfm.GeodesicPath`.
        key: PRNG key (split for ``t`` and ``x0``).
        x0: ``[B, *event]`` source points, or ``None`` to draw them from the path.
        t: ``[B]`` times in ``[0, 1]``, or ``None`` to draw them.
        args: passed to ``apply``.
        time_sampler: ``time_sampler(n, *, key, dtype) -> [n]`` (default uniform).

    Returns:
        ``[B]`` losses in ``x1``'s dtype.

    Raises:
        TypeError: ``apply`` not callable, ``path`` not a GeodesicPath, ``key`` missing.
        ValueError: shapes of ``x1``/``x0``/``t``/model output.

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> path = jfm.GeodesicPath(jfm.Sphere(2))
        >>> x1 = path.prior_sample((4, 3), key=jax.random.key(1))
        >>> apply = lambda p, t, x, args: jnp.zeros_like(x)
        >>> jfm.riemannian_cfm_loss(apply, None, x1, path=path, key=jax.random.key(0)).shape
        (4,)
    """
    check_callable(apply, "apply", "(params, t, x, args)")
    if not isinstance(path, GeodesicPath):
        raise TypeError(f"`path` must be a jfm.GeodesicPath; got {type(path).__name__}.")
    check_key(key)
    m = path.manifold
    x1 = check_finite(m.check_point(x1, "x1", batch=True), "x1")
    b, dtype = x1.shape[0], x1.dtype
    kt, k0 = jr.split(key)
    if t is None:
        t = time_sampler(b, key=kt, dtype=dtype)
    t = jnp.asarray(t).astype(dtype)
    if t.shape != (b,):
        raise ValueError(f"`t` must have shape ({b},); got {t.shape}.")
    if x0 is None:
        x0 = path.prior_sample(b, key=k0, dtype=dtype)
    x0 = m.check_point(x0, "x0", batch=True).astype(dtype)
    if x0.shape != x1.shape:
        raise ValueError(f"`x0` must have the shape of `x1` {x1.shape}; got {x0.shape}.")
    xt, ut = jax.vmap(path.sample_and_target)(t, x0, x1)
    out = jnp.asarray(apply(params, t, xt, args))
    if out.shape != x1.shape:
        raise ValueError(
            f"`apply` must return one tangent vector per example, shape {x1.shape}; got "
            f"{out.shape}."
        )
    diff = batch_map(m.proj_tangent, 1)(xt, out.astype(dtype)) - ut
    return batch_map(m.inner, 1)(xt, diff, diff) / m.dim
