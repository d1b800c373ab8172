r"""Consistency models: a map ``f(x_t, t) -> x_1`` constant along the flow's trajectories.

In jfm's time (``t = 0`` noise, ``t = 1`` data) a consistency model maps any point of a
probability-flow trajectory to its end at the data, ``f(x_t, t) = x_1``. Its boundary
condition ``f(x, 1) = x`` holds by construction,

.. math::
    f_\theta(x, t) = c_{skip}(t)\, x + c_{out}(t)\, F_\theta(x, t),
    \qquad c_{skip}(1) = 1,\ c_{out}(1) = 0,

with ``F_theta`` the network. Training makes ``f`` agree at adjacent points of one
trajectory (discrete time) or makes its derivative along the flow vanish (continuous
time): ``d f / dt = d_x f . v + d_t f = 0``.
"""

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_callable, check_int, check_name, check_positive, is_concrete
from .._custom_types import ApplyFn, Args, VectorField
from .._losses.regression import training_times
from .._losses.time import uniform_time
from .._paths import AbstractPath
from .._sampling.control import check_grid, check_solver
from .common import (
    bcast,
    call,
    check_distance,
    distance,
    event_mean,
    on_path,
    start,
    teacher_velocity,
)

PARAMETRIZATIONS: tuple[str, ...] = ("velocity", "edm")


class ConsistencyMap(eqx.Module):
    r"""The batch-first consistency map ``f(params, t[B], x[B, *event], args) -> [B, *event]``.

    ``f = c_skip(t) x + c_out(t) F(params, t, x, args)`` with ``F = apply`` and, for
    ``s = 1 - t`` (the time left to the data end):

    - ``"velocity"``: ``c_skip = 1``, ``c_out = s``: ``F`` is a velocity and ``f`` the
      Euler step from ``t`` to 1 (``F`` is then the average velocity over ``[t, 1]``).
    - ``"edm"``: ``c_skip = sigma_d^2 / (s^2 + sigma_d^2)``, ``c_out = s sigma_d /
      sqrt(s^2 + sigma_d^2)`` (Song et al. 2023 with the noise level ``s``, as for
      CondOT's ``sigma(t) = 1 - t``).

    At ``t = 1`` exactly, ``s = 0``, so ``c_skip = 1`` and ``c_out = 0``: ``f(x, 1) = x``
    for any parameters. Use it wherever an ``apply`` goes (the consistency losses,
    :func:`jfm.field_from_model` for :func:`jfm.sample_few_step` with
    ``kind="consistency"``).

    Attributes:
        apply: the network ``F``, batch-first (static).
        parametrization: ``"velocity"`` or ``"edm"`` (static).
        sigma_data: ``sigma_d > 0`` of ``"edm"`` (static).
    """

    apply: ApplyFn = eqx.field(static=True)
    parametrization: str = eqx.field(static=True, default="velocity")
    sigma_data: float = eqx.field(static=True, default=0.5)

    def coefficients(self, t: Float[Array, " batch"]) -> tuple[Array, Array]:
        """``(c_skip(t), c_out(t))``, each ``(B,)`` in ``t``'s dtype."""
        s = 1 - t
        if self.parametrization == "velocity":
            return jnp.ones_like(t), s
        sd = jnp.asarray(self.sigma_data, t.dtype)
        norm = s**2 + sd**2
        return sd**2 / norm, s * sd / jnp.sqrt(norm)

    def combine(self, t: Array, x: Array, out: Array) -> Array:
        """``c_skip(t) x + c_out(t) out`` for a batch."""
        c_skip, c_out = self.coefficients(t.astype(x.dtype))
        return bcast(c_skip, x) * x + bcast(c_out, x) * out

    def __call__(
        self,
        params: PyTree,
        t: Float[ArrayLike, " batch"],
        x: Float[Array, " batch *event"],
        args: Args = None,
    ) -> Float[Array, " batch *event"]:
        x = jnp.asarray(x)
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        return self.combine(t, x, call(self.apply, params, t, x, args))


def consistency_map(
    apply: ApplyFn, *, parametrization: str = "velocity", sigma_data: float = 0.5
) -> ConsistencyMap:
    r"""Wrap a network into a consistency map with the boundary condition built in.

    Args:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]`` (e.g. from
            :func:`jfm.split_model`).
        parametrization: ``"velocity"`` (default, ``f = x + (1 - t) F``) or ``"edm"``.
        sigma_data: the data scale of ``"edm"``, ``> 0``.

    Returns:
        A :class:`ConsistencyMap`, itself an ``apply``.

    Raises:
        TypeError: ``apply`` not callable.
        ValueError: unknown ``parametrization``; ``sigma_data <= 0``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> f = jfm.consistency_map(lambda p, t, x, a: p * x + 3.0)
        >>> f(2.0, jnp.ones(2), jnp.ones((2, 1))).ravel().tolist()  # t = 1: the identity
        [1.0, 1.0]

    References:
        Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023.
    """
    check_callable(apply, "apply", "(params, t, x, args)")
    check_name(parametrization, "parametrization", PARAMETRIZATIONS)
    check_positive(sigma_data, "sigma_data")
    return ConsistencyMap(apply, parametrization, float(sigma_data))


# -- discrete time ---------------------------------------------------------------------------


def _grid(steps, ts, dtype):
    if (steps is None) == (ts is None):
        raise ValueError(
            "Pass exactly one of `steps` (N uniform intervals of [0, 1]) and `ts` (a grid "
            f"[N + 1] from 0 to 1, e.g. jfm.time_grid); got steps={steps!r}, ts given: "
            f"{ts is not None}."
        )
    if steps is not None:
        return jnp.linspace(0.0, 1.0, check_int(steps, "steps") + 1, dtype=dtype)
    ts = check_grid(ts).astype(dtype)
    grid = np.asarray(ts) if is_concrete(ts) else None  # host check, also under jit
    if grid is not None and not (np.all((grid >= 0) & (grid <= 1)) and np.all(np.diff(grid) > 0)):
        raise ValueError(f"`ts` must increase within [0, 1] (noise to data); got ts={ts}.")
    return ts


def _teacher_step(teacher, solver, t0, t1, x, args):
    """One step of ``solver`` on ``dx/dt = teacher(t, x, args)`` from ``t0`` to ``t1``,
    per example (diffrax's own ``solver.step``)."""
    term = dfx.ODETerm(teacher)

    def one(a, b, y):
        state = solver.init(term, a, b, y, args)
        return solver.step(term, a, b, y, args, state, made_jump=False)[0]

    return jax.vmap(one)(t0, t1, x)


def _discrete_loss(
    cmap, params, x1, *, path, key, steps, ts, teacher, solver, target_params, x0, args,
    distance_kind, huber_c,
):  # fmt: skip
    check_callable(cmap, "apply", "(params, t, x, args)")
    check_distance(distance_kind)
    x1, x0, key_t, _ = start(cmap, x1, path, key, x0)
    grid = _grid(steps, ts, x1.dtype)
    n = jr.randint(key_t, (x1.shape[0],), 0, grid.shape[0] - 1)
    t0, t1 = grid[n], grid[n + 1]
    xs = jax.vmap(path.sample)(t0, x0, x1)
    if teacher is None:  # consistency training: the same conditional path at t1
        xn = jax.vmap(path.sample)(t1, x0, x1)
    else:
        check_callable(teacher, "teacher")
        xn = _teacher_step(teacher, check_solver(solver, "dfx.Heun()"), t0, t1, xs, args)
    target_params = lax.stop_gradient(params if target_params is None else target_params)
    target = lax.stop_gradient(call(cmap, target_params, t1, xn.astype(x1.dtype), args))
    return distance(call(cmap, params, t0, xs, args), target, distance_kind, huber_c)


def consistency_training_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path: AbstractPath,
    key: PRNGKeyArray,
    steps: int | None = None,
    ts: Float[ArrayLike, " N"] | None = None,
    target_params: PyTree | None = None,
    x0: Float[ArrayLike, " batch *event"] | None = None,
    args: Args = None,
    distance: str = "l2",
    huber_c: float = 0.00054,
) -> Float[Array, " batch"]:
    r"""Consistency training (no teacher): agreement at adjacent times of one conditional path.

    With a grid ``0 = t_0 < ... < t_N = 1``, ``n ~ U{0, ..., N - 1}`` per example and the
    conditional path ``x_t = path.sample(t, x0, x1)`` (the unbiased one-sample estimate
    of the flow between adjacent times),

    .. math::
        \ell = d\big(f_\theta(x_{t_n}, t_n),\ \mathrm{sg}\, f_{\theta^-}(x_{t_{n+1}}, t_{n+1})\big),

    ``d`` the per-dimension squared error (``"l2"``) or pseudo-Huber
    ``sqrt(mean (a - b)^2 + c^2) - c`` (iCT's, with ``c = 0.00054`` per dimension). The
    target moves toward the data end, where the boundary condition anchors ``f``.

    Args:
        apply: a :class:`ConsistencyMap` (or any batch-first ``f(params, t, x, args)``).
        params: the parameters ``theta``.
        x1: ``[B, *event]`` data.
        path: an :class:`jfm.AbstractFlowPath` (e.g. ``jfm.AffinePath(jfm.CondOT())``).
        key: PRNG key (keyword-only): the noise ``x0`` and the grid indices.
        steps: ``N``, uniform grid; or ``ts``: a grid ``[N + 1]`` increasing in ``[0, 1]``.
        target_params: ``theta^-`` (e.g. EMA parameters); ``None``: ``stop_gradient(params)``.
        x0: ``[B, *event]`` noise, or ``None`` to draw it.
        args: conditioning passed to ``apply``.
        distance: ``"l2"`` or ``"pseudo_huber"``; huber_c: ``c`` of the latter.

    Returns:
        ``[B]`` per-example losses.

    Raises:
        TypeError: ``apply`` not callable, bad ``path`` or ``key``.
        ValueError: not exactly one of ``steps``/``ts``; bad grid; unknown ``distance``;
            shapes.

    References:
        Song et al., "Consistency Models", ICML 2023; Song & Dhariwal, "Improved
        Techniques for Training Consistency Models", ICLR 2024.
    """
    return _discrete_loss(
        apply, params, x1, path=path, key=key, steps=steps, ts=ts, teacher=None, solver=None,
        target_params=target_params, x0=x0, args=args, distance_kind=distance,
        huber_c=huber_c,
    )  # fmt: skip


def consistency_distillation_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    teacher: VectorField,
    solver: dfx.AbstractSolver,
    path: AbstractPath,
    key: PRNGKeyArray,
    steps: int | None = None,
    ts: Float[ArrayLike, " N"] | None = None,
    target_params: PyTree | None = None,
    x0: Float[ArrayLike, " batch *event"] | None = None,
    args: Args = None,
    distance: str = "l2",
    huber_c: float = 0.00054,
) -> Float[Array, " batch"]:
    r"""Consistency distillation: agreement across ONE ODE step of a teacher flow.

    As :func:`consistency_training_loss`, with the point at ``t_{n+1}`` from one step of
    ``solver`` on the teacher's ODE ``dx/dt = teacher(t, x, args)`` from
    ``x_{t_n} = path.sample(t_n, x0, x1)``:

    .. math::
        \hat x_{t_{n+1}} = \mathrm{step}(x_{t_n}, t_n \to t_{n+1}), \qquad
        \ell = d\big(f_\theta(x_{t_n}, t_n),\
               \mathrm{sg}\, f_{\theta^-}(\hat x_{t_{n+1}}, t_{n+1})\big).

    Args:
        teacher: the per-example teacher field ``teacher(t, x, args)``.
        solver: the diffrax solver of that step (e.g. ``dfx.Heun()``, the paper's; its
            ``step`` is called once per example).
        others: as :func:`consistency_training_loss`.

    Returns:
        ``[B]`` per-example losses.

    Raises:
        TypeError: ``teacher`` not callable, ``solver`` not a diffrax solver; as
            :func:`consistency_training_loss`.
        ValueError: as :func:`consistency_training_loss`.
    """
    check_callable(teacher, "teacher")
    check_solver(solver, "dfx.Heun()")
    return _discrete_loss(
        apply, params, x1, path=path, key=key, steps=steps, ts=ts, teacher=teacher,
        solver=solver, target_params=target_params, x0=x0, args=args, distance_kind=distance,
        huber_c=huber_c,
    )  # fmt: skip


# -- continuous time -------------------------------------------------------------------------


def consistency_tangent(
    cmap: ConsistencyMap,
    params: PyTree,
    t: Float[Array, " batch"],
    x: Float[Array, " batch *event"],
    v: Float[Array, " batch *event"],
    args: Args = None,
) -> tuple[Array, Array, Array]:
    r"""``(F, f, df/dt)`` at ``(x, t)`` along the flow ``dx/dt = v``: ONE ``jax.jvp``.

    .. math::
        \frac{d f}{dt} = \partial_x f\, v + \partial_t f ,

    the tangent of ``(x, t) -> f(x, t)`` along ``(v, 1)``; ``F`` is the network output
    (the primal, differentiable in ``params``). All ``[B, *event]``.
    """

    def both(xx, tt):
        out = call(cmap.apply, params, tt, xx, args)
        return out, cmap.combine(tt, xx, out)

    (out, f), (_, df) = jax.jvp(both, (x, t), (v, jnp.ones_like(t)))
    return out, f, df


def continuous_consistency_loss(
    apply: ConsistencyMap,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path: AbstractPath,
    key: PRNGKeyArray,
    teacher: VectorField | None = None,
    target_params: PyTree | None = None,
    x0: Float[ArrayLike, " batch *event"] | None = None,
    args: Args = None,
    time_sampler=uniform_time,
    tangent_normalization: float | None = None,
) -> Float[Array, " batch"]:
    r"""Continuous-time consistency, in flow-matching form: regress ``F`` on ``F + df/dt``.

    The limit of consistency distillation as the grid is refined: the consistency map must
    be constant along the flow, ``df/dt = d_x f . v + d_t f = 0``. With the tangent
    ``g = df_{theta^-}/dt`` (:func:`consistency_tangent`, one ``jax.jvp`` along ``(v, 1)``)

    .. math::
        \ell = \tfrac1d \big\| F_\theta(x_t, t)
               - \mathrm{sg}\big(F_{\theta^-}(x_t, t) + g\big) \big\|^2 ,

    whose gradient at ``theta^- = theta`` is ``-2 g . grad F / d``, the continuous
    consistency gradient (sCM's, up to its tangent normalisation). For the ``"velocity"``
    parametrization ``f = x + (1 - t) F`` the target is the flow-matching target
    ``v + (1 - t) dF/dt``: plain flow matching at ``t = 1``, and MeanFlow's identity with
    ``r = 1`` (``F`` is the average velocity from ``t`` to the data end). ``v`` is the
    teacher's velocity (distillation) or, without a teacher, the conditional velocity of
    ``path`` (training). The loss VALUE is ``|g|^2 / d``, the squared rate at which ``f``
    drifts along the flow.

    With ``tangent_normalization=c`` the tangent is normalised per example as in sCM,
    ``g -> g / (|g| + c)`` (``|g|`` the Euclidean norm over the event): each example's
    gradient keeps its direction and its size stays below ``2 |grad F| / d``, which keeps
    training stable where ``df/dt`` is large (near the noise end).

    Args:
        apply: a :class:`ConsistencyMap` (its ``apply`` gives ``F``).
        params: the parameters ``theta``.
        x1: ``[B, *event]`` data.
        path: an :class:`jfm.AbstractFlowPath`: ``x_t = path.sample(t, x0, x1)``.
        key: PRNG key (keyword-only): times and noise.
        teacher: per-example teacher field ``teacher(t, x, args)``, or ``None``.
        target_params: ``theta^-``; ``None``: ``stop_gradient(params)`` (one jvp in all).
        x0: ``[B, *event]`` noise or ``None``.
        args: conditioning passed to the network and the teacher.
        time_sampler: ``time_sampler(n, *, key, dtype) -> (n,)`` (default uniform).
        tangent_normalization: ``c > 0`` to normalise the tangent (sCM uses 0.1), or
            ``None`` (default) for the raw tangent.

    Returns:
        ``[B]`` per-example losses.

    Raises:
        TypeError: ``apply`` not a :class:`ConsistencyMap`; bad ``path``, ``key``,
            ``teacher``.
        ValueError: shapes; times outside ``[0, 1]``; ``tangent_normalization <= 0``.

    References:
        Song et al. 2023 (continuous-time consistency); Lu & Song, "Simplifying,
        Stabilizing and Scaling Continuous-Time Consistency Models", ICLR 2025.
    """
    if not isinstance(apply, ConsistencyMap):
        raise TypeError(
            "`apply` must be a jfm.ConsistencyMap (from jfm.consistency_map(net_apply)): the "
            f"loss needs its c_skip/c_out; got {type(apply).__name__}."
        )
    if tangent_normalization is not None:
        check_positive(tangent_normalization, "tangent_normalization")
    x1, x0, key_t, _ = start(apply, x1, path, key, x0)
    t = training_times(time_sampler, x1.shape[0], key=key_t, dtype=x1.dtype)
    xt, v = on_path(path, t, x0, x1)
    if teacher is not None:
        v = teacher_velocity(teacher, t, xt, args)
    if target_params is None:
        out, _, g = consistency_tangent(apply, params, t, xt, v, args)
        out_t = out
    else:
        tp = lax.stop_gradient(target_params)
        out_t, _, g = consistency_tangent(apply, tp, t, xt, v, args)
        out = call(apply.apply, params, t, xt, args)
    if tangent_normalization is not None:
        norm = jnp.sqrt(jnp.sum(g**2, axis=tuple(range(1, g.ndim)), keepdims=True))
        g = g / (norm + jnp.asarray(tangent_normalization, g.dtype))
    target = lax.stop_gradient(out_t + g)
    return event_mean((out - target) ** 2)


__all__ = [
    "ConsistencyMap",
    "consistency_distillation_loss",
    "consistency_map",
    "consistency_tangent",
    "consistency_training_loss",
    "continuous_consistency_loss",
]
