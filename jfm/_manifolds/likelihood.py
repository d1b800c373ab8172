r"""Likelihood on a manifold: the instantaneous change of variables with the Riemannian
divergence, on jfm's likelihood machinery.

Along ``dx/dt = u_t(x)`` on ``M`` the density w.r.t. the volume measure obeys
``d/dt log p_t(x_t) = -div_M u_t(x_t)`` (Mathieu & Nickel 2020; Chen & Lipman 2024). For
a manifold embedded with ``proj`` whose derivative on ``M`` is the tangent projector
``P`` (all of jfm's), the Riemannian divergence of a tangent field is an ambient trace:

.. math::
    \mathrm{div}_M u(x) = \sum_i \langle \nabla_{e_i} u, e_i \rangle
    = \mathrm{tr}(P J P) = \mathrm{tr}\, \frac{\partial}{\partial y}
      \big[P_{\mathrm{proj}\, y}\, u(\mathrm{proj}\, y)\big]_{y = x},

(``e_i`` an orthonormal tangent basis, ``J`` the ambient Jacobian), because ``P^2 = P``,
the second fundamental form is normal, and ``tr`` is invariant under cycling. A constant
scale of the metric (``SO(3)``'s ``tr(U^T V) / 2``) does not change it. Hutchinson's
estimator uses tangent probes ``z = P eps`` (``E[z z^T] = P``), unbiased for the same
trace with less variance than ambient probes.
"""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_callable, check_finite, check_key
from .._custom_types import Args, RealScalarLike, VectorField
from .._divergence import AbstractDivergence, resolve_divergence
from .._sampling import Solution
from .._sampling.control import check_common, check_solver, setup
from .._sampling.likelihood import _log_prob
from .base import AbstractManifold, require_manifold
from .path import GeodesicPath
from .solvers import AbstractManifoldSolver, ProjectedSolver


def _tangent_field(manifold, field, t, x_shape, args, dtype):
    """``g(z) = P_{proj z} field(t, proj z)``, flat ``(n,) -> (n,)``."""

    def g(z):
        p = manifold.proj(z.reshape(x_shape))
        out = field(t, p, args)
        if getattr(out, "shape", None) != x_shape:
            raise ValueError(
                f"`field` must return a tangent vector of the point shape {x_shape}; got "
                f"{getattr(out, 'shape', type(out))}."
            )
        return manifold.proj_tangent(p, out.astype(dtype)).reshape(-1)

    return g


def _tangent_probes(manifold, x, probe):
    """The probes ``[K, *event]`` projected to ``T_x M`` (``None`` for exact)."""
    if probe is None:
        return None
    eps = probe.reshape(probe.shape[0], *manifold.event_shape)
    return jax.vmap(lambda e: manifold.proj_tangent(x, e))(eps)


def manifold_divergence(
    manifold: AbstractManifold,
    field: VectorField,
    t: RealScalarLike,
    x: Float[ArrayLike, "*event"],
    args: Args = None,
    *,
    divergence: AbstractDivergence | str = "exact",
    key: PRNGKeyArray | None = None,
) -> Float[Array, ""]:
    r"""The Riemannian divergence ``div_M u_t(x)`` of ONE point ``x`` on ``manifold``.

    ``tr(P J P)`` of the field projected to the tangent space (see the module notes):
    exactly with ``divergence="exact"`` (:class:`jfm.ExactDivergence`, about ``n``
    forward tangent passes, ``n`` the ambient size), or by Hutchinson
    (:class:`jfm.HutchinsonDivergence`) with TANGENT probes ``P eps`` (``key=``
    required), unbiased.

    Args:
        manifold: the :class:`jfm.AbstractManifold`.
        field: ``field(t, x, args) -> (*event)`` (projected to ``T_x M`` here).
        t: scalar time.
        x: one point ``(*event)`` on the manifold.
        args: passed to ``field``.
        divergence: an estimator value or ``"exact"``/``"hutchinson"``.
        key: PRNG key for Hutchinson's probes.

    Returns:
        A scalar in ``x``'s dtype.

    Raises:
        TypeError: bad ``manifold``/``field``/``divergence``, ``key`` missing when needed.
        ValueError: ``x`` of another shape than the manifold's points.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> s = jfm.Sphere(2)
        >>> up = lambda t, x, args: jnp.array([0.0, 0, 1])  # projected: P e_z
        >>> float(jfm.manifold_divergence(s, up, 0.0, jnp.array([1.0, 0, 0])))  # -2 x_3
        0.0
    """
    require_manifold(manifold)
    check_callable(field, "field")
    x = manifold.check_point(x, "x")
    divergence = resolve_divergence(divergence)
    probe = None
    if divergence.needs_key:
        check_key(key)
        probe = divergence.draw(key, manifold.event_shape, x.dtype)
    t = jnp.asarray(t, x.dtype)
    g = _tangent_field(manifold, field, t, x.shape, args, x.dtype)
    _, terms = divergence.terms(g, x.reshape(-1), _tangent_probes(manifold, x, probe))
    return jnp.mean(terms).astype(x.dtype)


class _ManifoldAugmented(eqx.Module):
    """The augmented field on ``y = (x.ravel(), l_1..l_K)`` of ONE example: ``dx/dt`` the
    tangent-projected field, ``dl_k/dt`` the Riemannian divergence terms."""

    field: VectorField
    divergence: AbstractDivergence
    manifold: AbstractManifold
    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, t, y, args_probe):
        args, probe = args_probe
        shape = self.event_shape
        n = math.prod(shape)
        x = y[:n].reshape(shape)
        g = _tangent_field(self.manifold, self.field, t, shape, args, y.dtype)
        dx, terms = self.divergence.terms(g, y[:n], _tangent_probes(self.manifold, x, probe))
        return jnp.concatenate([dx, terms.astype(y.dtype)])


def manifold_log_prob(
    field: VectorField,
    x: Float[ArrayLike, " batch *event"],
    *,
    manifold: AbstractManifold,
    solver: dfx.AbstractSolver,
    steps: int | None = None,
    rtol: RealScalarLike | None = None,
    atol: RealScalarLike | None = None,
    ts: Float[ArrayLike, " N"] | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: RealScalarLike | None = None,
    path: GeodesicPath | None = None,
    prior_log_prob=None,
    divergence: AbstractDivergence | str = "exact",
    key: PRNGKeyArray | None = None,
    args: Args = None,
    t0: RealScalarLike | None = None,
    t1: RealScalarLike | None = None,
    batch: str = "vmap",
    max_steps: int = 4096,
    throw: bool = True,
    adjoint: dfx.AbstractAdjoint | None = None,
) -> tuple[Float[Array, " batch"], Solution]:
    r"""Log-density of points on a manifold under the flow of ``field``, w.r.t. the
    manifold's volume measure.

    Integrates, from ``t1`` back to ``t0``, the augmented ODE of each example

    .. math::
        \dot x = P_x u_t(x), \quad \dot l = \mathrm{div}_M u_t(x), \qquad
        \log p_1(x) = \log p_0(x(t_0)) + l(t_0),

    through the same machinery as :func:`jfm.log_prob` (one ``diffeqsolve``, probes drawn
    once per trajectory, ``Solution.stderr`` with 2+ Hutchinson probes), with a manifold
    solver that keeps ``x`` on the manifold and carries ``l`` unprojected. ``solver``: a
    manifold solver (:class:`jfm.GeodesicEuler`, :class:`jfm.ProjectedSolver`) or a plain
    explicit diffrax solver (wrapped in ``ProjectedSolver(manifold, solver)``). The
    divergence is :func:`jfm.manifold_divergence`'s (exact, or Hutchinson with tangent
    probes). The source density is ``path.prior_log_prob`` (a :class:`jfm.GeodesicPath`)
    or ``prior_log_prob=`` (exactly one). Step control, batching, failure reporting and
    gradients as in :func:`jfm.log_prob`.

    Args:
        field: per-example ``field(t, x, args) -> (*event)``.
        x: ``[B, *event]`` points on ``manifold`` at ``t1``.
        manifold: the :class:`jfm.AbstractManifold`.
        solver: a manifold solver or an explicit diffrax solver.
        steps, rtol, atol, ts, stepsize_controller, dt0: step control (one).
        path: a :class:`jfm.GeodesicPath` (its source density); or
        prior_log_prob: ``(x) -> scalar`` for one point.
        divergence: :class:`jfm.ExactDivergence`/:class:`jfm.HutchinsonDivergence` or a
            name.
        key: PRNG key for Hutchinson.
        args: passed to ``field``.
        t0, t1: source and data times (default 0 and 1).
        batch: ``"vmap"`` (default) or ``"joint"``.
        max_steps, throw, adjoint: as in :func:`jfm.log_prob`.

    Returns:
        ``(logp [B], sol)``: nats w.r.t. the volume measure, and a :class:`jfm.Solution`
        whose ``x1`` holds the points transported to ``t0`` (on the manifold).

    Raises:
        TypeError: bad ``manifold``/``solver``/``path``/``divergence``, missing ``key``.
        ValueError: both or neither of ``path`` and ``prior_log_prob``; a path or solver
            on another manifold; ``x`` of the wrong shape; step options as in
            :func:`jfm.sample_ode`.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> s = jfm.Sphere(2)
        >>> rot = lambda t, x, args: jnp.cross(jnp.array([0.0, 0, 1]), x)
        >>> logp, sol = jfm.manifold_log_prob(rot, jnp.array([[0.0, 0.6, 0.8]]), manifold=s,
        ...     solver=jfm.GeodesicEuler(s), steps=4, path=jfm.GeodesicPath(s))
        >>> float(logp[0])  # -log(4 pi): rotations preserve the uniform law
        -2.53102...
    """
    require_manifold(manifold)
    check_solver(solver, "jfm.ProjectedSolver(manifold, dfx.Midpoint())")
    check_callable(field, "field")
    x = check_finite(manifold.check_point(x, "x", batch=True), "x")
    if not isinstance(solver, AbstractManifoldSolver):
        solver = ProjectedSolver(manifold, solver)
    elif solver.manifold.event_shape != manifold.event_shape:
        raise ValueError(f"`solver` works on {solver.manifold!r} but `manifold` is {manifold!r}.")
    if (path is None) == (prior_log_prob is None):
        raise ValueError(
            "Pass exactly one of `path` (a jfm.GeodesicPath, whose source density is used) "
            "and `prior_log_prob` (one point -> scalar)."
        )
    if path is not None:
        if not isinstance(path, GeodesicPath):
            raise TypeError(f"`path` must be a jfm.GeodesicPath; got {type(path).__name__}.")
        if path.manifold.event_shape != manifold.event_shape:
            raise ValueError(f"`path` lives on {path.manifold!r}, not on {manifold!r}.")
        prior = path.prior_log_prob
    else:
        prior = check_callable(prior_log_prob, "prior_log_prob", "(x) -> scalar")
    divergence = resolve_divergence(divergence)
    if divergence.needs_key:
        check_key(key)
    max_steps, adjoint = check_common(batch, throw, max_steps, adjoint)
    plan = setup(
        solver,
        x,
        steps=steps,
        rtol=rtol,
        atol=atol,
        ts=ts,
        stepsize_controller=stepsize_controller,
        dt0=dt0,
        t0=t0,
        t1=t1,
        max_steps=max_steps,
        forward_only=True,
        reverse=True,
    )
    solver = solver.with_augment(divergence.num_terms)
    aug = _ManifoldAugmented(field, divergence, manifold, tuple(x.shape[1:]))
    return _log_prob(
        aug,
        x,
        args,
        key if divergence.needs_key else None,
        plan,
        prior,
        solver=solver,
        batch=batch,
        max_steps=max_steps,
        throw=throw,
        adjoint=adjoint,
    )
