r"""ODE solvers that keep the state on a manifold, written as diffrax solvers.

They go through jfm's one sampling core like any diffrax solver: pass them to
:func:`jfm.sample_ode` (``steps=``, ``ts=``, or ``rtol``/``atol`` where the solver has an
error estimate) and to :func:`jfm.manifold_log_prob`. The state is a batch of points
``[B, *event]`` (one joint solve) or one point (``batch="vmap"``); every field
evaluation sees a point of the manifold and its output projected to the tangent space.

- :class:`GeodesicEuler`: ``x <- exp_x(h P_x f(t, x))``, order 1, one evaluation per
  step.
- :class:`ProjectedSolver`: the projection method (Hairer, Lubich & Wanner, *Geometric
  Numerical Integration*, Sec. IV.4) around any explicit diffrax Runge-Kutta solver:
  the field is extended off the manifold by ``f~(t, y) = P f(t, proj(y))``, the inner
  solver takes its step in the ambient space, and the result is projected. On the
  manifold ``f~`` is the field and the manifold is invariant for ``f~``, so the inner
  method's order is kept, FSAL stays valid (``f~`` at the unprojected end equals ``f``
  at the projected one) and its error estimate drives adaptive steps.
"""

import dataclasses
import math
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp

from .._sampling import AbstractCountedSolver
from .base import AbstractManifold, batch_map, require_manifold


class _ManifoldState(eqx.Module):
    """How a solver state ``y`` holds points: ``[*batch, *event]``, or flat
    ``[*batch, n + augment]`` with ``augment`` trailing scalars per example (the
    likelihood's accumulators), carried unprojected."""

    manifold: AbstractManifold
    augment: int = eqx.field(static=True)

    def split(self, y):
        ev = self.manifold.event_shape
        if self.augment:
            n = math.prod(ev)
            if y.shape[-1] != n + self.augment:
                raise ValueError(
                    f"The solver state must have {n} + {self.augment} entries per example; "
                    f"got shape {y.shape}."
                )
            x = y[..., :n].reshape(*y.shape[:-1], *ev)
            return x, y[..., n:], y.ndim - 1
        if tuple(y.shape[y.ndim - len(ev) :]) != ev:
            raise ValueError(
                f"The solver state must hold points of shape {ev} (of {self.manifold!r}); "
                f"got shape {y.shape}. Pass x0 of shape [B, *event]."
            )
        return y, None, y.ndim - len(ev)

    def join(self, x, rest, nb):
        if rest is None:
            return x
        return jnp.concatenate([x.reshape(*x.shape[:nb], -1), rest.astype(x.dtype)], axis=-1)

    def proj(self, y):
        x, rest, nb = self.split(y)
        return self.join(batch_map(self.manifold.proj, nb)(x), rest, nb)

    def proj_tangent(self, y, v):
        x, _, nb = self.split(y)
        vx, vrest, _ = self.split(v)
        return self.join(batch_map(self.manifold.proj_tangent, nb)(x, vx), vrest, nb)

    def exp(self, y, v):
        x, rest, nb = self.split(y)
        vx, vrest, _ = self.split(v)
        xe = batch_map(self.manifold.exp, nb)(x, vx)
        return self.join(xe, None if rest is None else rest + vrest, nb)


class _ProjectedTerm(dfx.AbstractTerm):
    """``f~(t, y) = P_{proj y} f(t, proj y)``: the term extended off the manifold."""

    term: dfx.AbstractTerm
    state: _ManifoldState

    def vf(self, t, y, args):
        p = self.state.proj(y)
        return self.state.proj_tangent(p, self.term.vf(t, p, args))

    def contr(self, t0, t1, **kwargs):
        return self.term.contr(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.term.prod(vf, control)


class AbstractManifoldSolver(AbstractCountedSolver):
    """A diffrax solver whose states stay on ``manifold``.

    ``augment`` (static, default 0): trailing scalars per example carried along
    unprojected (set by :func:`jfm.manifold_log_prob` for its accumulators).
    """

    manifold: AbstractManifold
    augment: int = eqx.field(static=True, default=0, kw_only=True)

    def __check_init__(self):
        require_manifold(self.manifold)

    @property
    def _state(self):
        return _ManifoldState(self.manifold, self.augment)

    def with_augment(self, augment: int):
        """The same solver carrying ``augment`` unprojected scalars per example."""
        return dataclasses.replace(self, augment=augment)

    def _term(self, terms):
        if isinstance(terms, dfx.MultiTerm):
            raise ValueError("Manifold solvers integrate ODEs (one ODETerm), not SDEs.")
        return _ProjectedTerm(terms, self._state)


class GeodesicEuler(AbstractManifoldSolver):
    r"""Geodesic Euler: ``x_{n+1} = exp_{x_n}(h P_{x_n} f(t_n, x_n))``.

    Checklist: order 1; fixed steps only (``steps=``/``ts=``); deterministic; either time
    direction; one field evaluation per step; points on the manifold to round-off
    (every step ends with ``exp``, exact on the manifold).

    Args:
        manifold: the :class:`jfm.AbstractManifold` of the state.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> s = jfm.Sphere(2)
        >>> rot = lambda t, x, args: jnp.cross(jnp.array([0.0, 0, 1]), x)
        >>> sol = jfm.sample_ode(rot, jnp.array([[1.0, 0, 0]]), solver=jfm.GeodesicEuler(s),
        ...                      steps=10)
        >>> float(jnp.linalg.norm(sol.x1))
        1.0
    """

    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    @property
    def evaluations_per_step(self) -> int:
        return 1

    def order(self, terms):
        return 1

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        term = self._term(terms)
        disp = term.vf_prod(t0, y0, args, term.contr(t0, t1))
        y1 = self._state.exp(y0, disp)
        return y1, None, dict(y0=y0, y1=y1), None, dfx.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return self._term(terms).vf(t0, y0, args)


class ProjectedSolver(AbstractManifoldSolver, dfx.AbstractAdaptiveSolver):
    r"""Any explicit diffrax Runge-Kutta solver made to stay on a manifold by projection.

    The inner solver steps the ambient ODE ``dy/dt = P_{proj y} f(t, proj y)`` and the
    end point is projected, ``y_{n+1} = proj(y~_{n+1})``; every stage evaluates the field
    at a point of the manifold.

    Checklist: the inner solver's order (e.g. 2 for ``dfx.Midpoint()``, 5 for
    ``dfx.Tsit5()``, measured in the tests); adaptive when the inner solver has an error
    estimate (``dfx.Heun()``, ``dfx.Tsit5()``, ``dfx.Dopri5()``): the estimate of the
    ambient step; deterministic; either time direction; the inner solver's evaluations
    per step (FSAL counted as diffrax's); points on the manifold to round-off after every
    step.

    Args:
        manifold: the :class:`jfm.AbstractManifold` of the state.
        solver: an explicit diffrax solver (``dfx.Euler()``, ``dfx.Midpoint()``,
            ``dfx.Ralston()``, or an adaptive one: ``dfx.Heun()``, ``dfx.Tsit5()``...).

    Raises:
        TypeError: ``solver`` not an explicit Runge-Kutta diffrax solver (or Euler).

    Examples:
        >>> import diffrax as dfx, jax.numpy as jnp, jfm
        >>> s = jfm.Sphere(2)
        >>> rot = lambda t, x, args: jnp.cross(jnp.array([0.0, 0, 1]), x)
        >>> sol = jfm.sample_ode(rot, jnp.array([[1.0, 0, 0]]),
        ...                      solver=jfm.ProjectedSolver(s, dfx.Midpoint()), steps=8)
        >>> int(sol.nfe)
        16
    """

    solver: dfx.AbstractSolver

    term_structure: ClassVar = dfx.AbstractTerm

    def __check_init__(self):
        require_manifold(self.manifold)
        if not isinstance(self.solver, (dfx.Euler, dfx.AbstractERK)):
            raise TypeError(
                f"`solver` must be an explicit diffrax Runge-Kutta solver (e.g. dfx.Midpoint(), "
                f"dfx.Tsit5()) or dfx.Euler(); got {type(self.solver).__name__}."
            )

    @property
    def interpolation_cls(self):  # type: ignore[override]
        return self.solver.interpolation_cls

    @property
    def has_error_estimate(self) -> bool:
        """Whether adaptive steps are possible (the inner solver estimates its error)."""
        return isinstance(self.solver, dfx.AbstractAdaptiveSolver)

    @property
    def evaluations_per_step(self) -> int:
        if isinstance(self.solver, dfx.Euler):
            return 1
        return int(self.solver.tableau.num_stages)

    @property
    def fsal(self) -> bool:
        return isinstance(self.solver, dfx.AbstractERK) and bool(self.solver.tableau.fsal)

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(self._term(terms), t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, err, dense, state, result = self.solver.step(
            self._term(terms), t0, t1, y0, args, solver_state, made_jump
        )
        y1 = self._state.proj(y1)
        if isinstance(dense, dict) and "y1" in dense:
            dense = dict(dense, y1=y1)
        return y1, err, dense, state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(self._term(terms), t0, y0, args)
