r"""One few-step sampler for every few-step model, on the sampling core.

Each kind of model gives a jump from ``t_n`` to ``t_{n+1}`` on a time grid
``0 = t_0 < ... < t_N = 1``, ONE model evaluation per step:

- ``"velocity"`` (a (re)flow ``v(t, x)``): Euler, ``x + h v(t_n, x)``;
- ``"mean_flow"`` (``u(t, r, x)``, average velocity over ``[t, r]``):
  ``x + h u(t_n, t_{n+1}, x)``;
- ``"shortcut"`` (``s(t, d, x)``, step-size conditioned): ``x + h s(t_n, h, x)``;
- ``"consistency"`` (``f(t, x) ~ x_1``): multistep consistency sampling,
  ``x_{t_{n+1}} = alpha(t_{n+1}) f(t_n, x) + sigma(t_{n+1}) eps``, ``eps ~ N(0, I)``
  fresh per step (Song et al. 2023, Alg. 1, in jfm's time); the last step, to ``t = 1``
  where ``sigma = 0``, returns ``f`` itself.

with ``h = t_{n+1} - t_n``. The jump is a diffrax solver (:class:`FewStepSolver`), so the
sampler is the core's solve with ``diffrax.StepTo`` on the grid: same batching, same
:class:`jfm.Solution`, ``nfe = N`` exactly.
"""

from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import (
    check_array,
    check_batch,
    check_callable,
    check_finite,
    check_key,
    check_name,
)
from .._custom_types import ApplyFn, Args, RealScalarLike
from .._fields.model import _add_batch_axis
from .._paths import AffinePath
from .._sampling.base import AbstractCountedSolver, Noise, Solution, unit_noise, unsafe_brownian
from .._sampling.control import check_common, setup
from .._sampling.core import run

KINDS: tuple[str, ...] = ("velocity", "consistency", "mean_flow", "shortcut")
_TWO_TIME = ("mean_flow", "shortcut")
_MIN_BOUND = 64


def _ode_term(terms):
    return terms.terms[0] if isinstance(terms, dfx.MultiTerm) else terms


class FewStepSolver(AbstractCountedSolver, dfx.AbstractItoSolver):
    """The jump of a few-step model as a diffrax solver (see the module docstring).

    The term's vector field is the model: ``vf(t, x, args)`` for the one-time kinds,
    ``vf([t, s], x, args)`` for the two-time ones (``s = t_{n+1}`` for ``"mean_flow"``,
    ``s = h`` for ``"shortcut"``). ``"consistency"`` reads its fresh noise from the
    Brownian increment of the control term, ``eps = dW / sqrt(h)``.

    Attributes:
        kind: one of ``"velocity"``, ``"consistency"``, ``"mean_flow"``, ``"shortcut"``.
        path: the :class:`jfm.AffinePath` of the re-noising (``"consistency"`` only).
    """

    kind: str = eqx.field(static=True)
    path: AffinePath | None = None

    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def __check_init__(self):
        check_name(self.kind, "kind", KINDS)
        if self.kind == "consistency" and not isinstance(self.path, AffinePath):
            raise TypeError(
                '`path` must be a jfm.AffinePath for kind="consistency" (it re-noises '
                f"x_t = alpha(t) f + sigma(t) eps); got {type(self.path).__name__}."
            )

    @property
    def stochastic(self) -> bool:
        return self.kind == "consistency"

    @property
    def evaluations_per_step(self) -> int:
        return 1

    def order(self, terms):
        return 1

    def init(self, terms, t0, t1, y0, args):
        return None

    def func(self, terms, t0, y0, args):
        return _ode_term(terms).vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        vf = _ode_term(terms).vf
        h = t1 - t0
        if self.kind == "velocity":
            y1 = y0 + h * vf(t0, y0, args)
        elif self.kind == "mean_flow":
            y1 = y0 + h * vf(jnp.stack([t0, t1]), y0, args)
        elif self.kind == "shortcut":
            y1 = y0 + h * vf(jnp.stack([t0, h]), y0, args)
        else:
            x1_hat = vf(t0, y0, args)
            eps = terms.terms[1].contr(t0, t1) / jnp.sqrt(jnp.abs(h)).astype(y0.dtype)
            sch = self.path.schedule
            y1 = sch.alpha(t1).astype(y0.dtype) * x1_hat + sch.sigma(t1).astype(y0.dtype) * eps
        y1 = y1.astype(y0.dtype)
        return y1, None, dict(y0=y0, y1=y1), None, dfx.RESULTS.successful


class _TwoTimeVF(eqx.Module):
    """The core's field for the two-time kinds (the model is a pytree field, so its
    arrays are traced): ``vf([t, s], x, args) = model_fn(t, s, x, args)``, the jump; at a
    scalar ``t`` (diffrax's term check, ``solver.func``) the model's instantaneous
    velocity, ``model_fn(t, t, x, args)`` (MeanFlow, ``r = t``) or ``model_fn(t, 0, x,
    args)`` (shortcut, ``d = 0``)."""

    model_fn: PyTree
    kind: str = eqx.field(static=True)

    def __call__(self, tt, x, args):
        if jnp.ndim(tt) == 0:
            s = tt if self.kind == "mean_flow" else jnp.zeros_like(tt)
            return self.model_fn(tt, s, x, args)
        return self.model_fn(tt[0], tt[1], x, args)


class TwoTimeField(eqx.Module):
    """A per-example two-time model ``model_fn(t, s, x, args)`` from a batch-first one.

    ``apply(params, [[t, s]], x[None], args[None])[0]``: a batch of one (every leaf of
    ``args`` gets a leading axis of 1), the same adapter as :class:`jfm.ModelField`.

    Attributes:
        apply: ``apply(params, tt[B, 2], x[B, *event], args)`` (static).
        params: its parameters (leaves).
    """

    apply: ApplyFn = eqx.field(static=True)
    params: PyTree

    def __call__(
        self, t: RealScalarLike, s: RealScalarLike, x: Float[Array, "*event"], args: Args = None
    ) -> Float[Array, "*event"]:
        x = check_array(x, "x")
        tt = jnp.stack([jnp.asarray(t, x.dtype), jnp.asarray(s, x.dtype)])[None]
        out = self.apply(self.params, tt, x[None], _add_batch_axis(args))
        if getattr(out, "shape", None) != (1, *x.shape):
            raise ValueError(
                f"`apply` must return shape {(1, *x.shape)} for a batch of one; got "
                f"{getattr(out, 'shape', type(out))}."
            )
        return out[0]


def two_time_field(apply: ApplyFn, params: PyTree) -> TwoTimeField:
    """The per-example ``model_fn(t, s, x, args)`` of a batch-first two-time model, for
    :func:`sample_few_step` with ``kind="mean_flow"`` or ``"shortcut"``.

    Args:
        apply: ``apply(params, tt[B, 2], x[B, *event], args)``, ``tt = [t, s]`` (e.g.
            :func:`jfm.split_model` of ``jfm.models.MLP(..., extra_time_inputs=1)``).
        params: its parameters.

    Returns:
        A :class:`TwoTimeField`.

    Raises:
        TypeError: ``apply`` not callable.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> m = jfm.two_time_field(lambda p, tt, x, a: x * tt[:, 1:] , None)
        >>> m(0.0, 0.5, jnp.ones(2)).tolist()
        [0.5, 0.5]
    """
    check_callable(apply, "apply", "(params, tt, x, args)")
    return TwoTimeField(apply, params)


def sample_few_step(
    model_fn,
    x0: Float[ArrayLike, " batch *event"],
    *,
    kind: str,
    steps: int | None = None,
    ts: Float[ArrayLike, " N"] | None = None,
    path: AffinePath | None = None,
    args: Args = None,
    key: PRNGKeyArray | None = None,
    batch: str = "joint",
    throw: bool = True,
) -> Solution:
    r"""Sample a few-step model from noise at ``t = 0`` to data at ``t = 1``.

    Checklist: order 1 in the grid (each step is one jump of the model); fixed steps;
    deterministic except ``kind="consistency"``; forward in time only.

    Args:
        model_fn: the per-example model: ``model_fn(t, x, args)`` for ``"velocity"`` (a
            field, e.g. :func:`jfm.field_from_model`) and ``"consistency"`` (the map
            ``f(t, x) ~ x_1``, e.g. ``jfm.field_from_model(jfm.consistency_map(apply),
            params)``); ``model_fn(t, s, x, args)`` for ``"mean_flow"`` (``s = r``, the
            end of the jump) and ``"shortcut"`` (``s = d``, the step size), e.g.
            :func:`jfm.two_time_field`.
        x0: ``[B, *event]`` noise.
        kind: ``"velocity"``, ``"consistency"``, ``"mean_flow"`` or ``"shortcut"``.
        steps: ``N`` uniform steps of ``[0, 1]`` (``1``, ``2``, ``4``, ...); or
        ts: a grid ``[N + 1]`` increasing from ``t0`` to ``t1`` (e.g. :func:`jfm.time_grid`).
        path: the :class:`jfm.AffinePath` for ``"consistency"``'s re-noising.
        args: conditioning passed to ``model_fn``.
        key: PRNG key, for ``"consistency"`` only (required there).
        batch: ``"joint"`` (one solve of the batch) or ``"vmap"`` (one per example).
        throw: raise on non-finite results (at run time), or report in ``success``.

    Returns:
        A :class:`jfm.Solution`; ``x1`` the samples, ``nfe == num_steps == N``.

    Raises:
        TypeError: ``model_fn`` not callable; ``x0`` not floating; ``path`` not an
            :class:`jfm.AffinePath` (``"consistency"``); ``key`` missing there.
        ValueError: unknown ``kind``; non-finite (concrete) ``x0``; not exactly one of
            ``steps``/``ts``; a bad grid;
            ``key`` given for a deterministic kind.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> u = lambda t, r, x, args: jnp.ones_like(x)  # average velocity 1
        >>> sol = jfm.sample_few_step(u, jnp.zeros((3, 2)), kind="mean_flow", steps=2)
        >>> sol.x1[0].tolist(), int(sol.nfe)
        ([1.0, 1.0], 2)
    """
    check_name(kind, "kind", KINDS)
    check_callable(model_fn, "model_fn", "(t, s, x, args)" if kind in _TWO_TIME else "(t, x, args)")
    x0 = check_finite(check_batch(x0, "x0"), "x0")
    if (steps is None) == (ts is None):
        raise ValueError(
            f"Pass exactly one of `steps` (N uniform steps) and `ts` (a grid [N + 1], e.g. "
            f"jfm.time_grid); got steps={steps!r}, ts given: {ts is not None}."
        )
    solver = FewStepSolver(kind, path if kind == "consistency" else None)
    adjoint = None
    if solver.stochastic:
        check_key(key)
        adjoint = dfx.ForwardMode()  # UnsafeBrownianPath supports forward mode only
    elif key is not None:
        raise ValueError(f'`key` is for kind="consistency" only; kind="{kind}" is deterministic.')
    # The step count is a traced value of the plan; the loop bound is static. A bound of
    # at least 64 lets 1, 2, 4, ... 64 steps share one compiled sampler.
    n = steps if ts is None else int(jnp.shape(ts)[0]) - 1
    max_steps = max(_MIN_BOUND, n if isinstance(n, int) and not isinstance(n, bool) else 1)
    max_steps, adjoint = check_common(batch, throw, max_steps, adjoint)
    plan = setup(solver, x0, steps=steps, ts=ts, max_steps=max_steps, forward_only=True)
    if solver.stochastic:
        plan = eqx.tree_at(
            lambda p: p.noise, plan, Noise(unit_noise, unsafe_brownian), is_leaf=lambda v: v is None
        )
    field = _TwoTimeVF(model_fn, kind) if kind in _TWO_TIME else model_fn
    return run(
        field, x0, key, args, plan, solver=solver, batch=batch, max_steps=max_steps,
        throw=throw, adjoint=adjoint, who="jfm.sample_few_step",
    )  # fmt: skip


__all__ = ["FewStepSolver", "TwoTimeField", "sample_few_step", "two_time_field"]
