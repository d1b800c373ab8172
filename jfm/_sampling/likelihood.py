r"""Log-likelihood by the instantaneous change of variables, and bits per dimension.

Along the flow ``dx/dt = u_t(x)`` the density obeys ``d/dt log p_t(x_t) = -div u_t(x_t)``
(Chen et al., 2018), so for a data point ``x_1``

.. math::
    \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \mathrm{div}\, u_t(x_t)\, dt,

where ``x_0`` is ``x_1`` transported back to the source. :func:`log_prob` solves for
``x_0`` and the integral together, as one ODE on the augmented state ``(x, l)``.
"""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_batch, check_callable, check_finite, check_int, check_key, is_concrete
from .._custom_types import Args, RealScalarLike, VectorField
from .._divergence import AbstractDivergence, resolve_divergence
from .._misc import sample_flat
from .._paths import AbstractPath
from .base import Solution, solution
from .control import check_common, check_solver, setup
from .core import finish, integrate


class _Augmented(eqx.Module):
    """The augmented field of ONE example on ``y = (x.ravel(), l_1..l_K)``.

    ``dx/dt = field(t, x, args)`` and ``dl_k/dt`` the ``k``-th divergence term (the
    divergence itself for the exact estimator, ``u_k^T J u_k`` for Hutchinson). The
    field travels inside this module, in diffrax's ``args``; the probes of the example
    come in the per-example part of the arguments.
    """

    field: VectorField
    divergence: AbstractDivergence
    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, t, y, args_probe):
        args, probe = args_probe
        shape = self.event_shape
        d = math.prod(shape)

        def g(z):
            out = self.field(t, z.reshape(shape), args)
            if out.shape != shape:
                raise ValueError(
                    f"`field` must return an array of the event shape {shape} (dx/dt of ONE "
                    f"example); got {out.shape}."
                )
            return out.astype(y.dtype).reshape(-1)

        dx, terms = self.divergence.terms(g, y[:d], probe)
        return jnp.concatenate([dx, terms.astype(y.dtype)])


def log_prob(
    field: VectorField,
    x: Float[ArrayLike, " batch *event"],
    *,
    solver: dfx.AbstractSolver,
    steps: int | None = None,
    rtol: RealScalarLike | None = None,
    atol: RealScalarLike | None = None,
    ts: Float[ArrayLike, " N"] | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: RealScalarLike | None = None,
    path: AbstractPath | None = None,
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
    r"""Log-density ``log p_1(x)`` of data under the flow of ``field`` (a CNF).

    Integrates the augmented ODE of ONE example backwards, from the data time ``t1`` to
    the source time ``t0``, in a single :func:`diffrax.diffeqsolve`:

    .. math::
        \frac{d}{dt}\begin{pmatrix} x \\ l \end{pmatrix} =
        \begin{pmatrix} u_t(x) \\ \mathrm{div}\, u_t(x) \end{pmatrix}, \quad
        x(t_1) = x, \; l(t_1) = 0, \qquad
        \log p_1(x) = \log p_0(x(t_0)) + l(t_0).

    The source log-density ``log p_0`` is ``path.prior_log_prob`` (``path=``, e.g. the
    path the field was trained on) or an explicit per-example ``prior_log_prob=`` (exactly
    one of the two). Exact for ``t0 = 0``; a ``t0 > 0`` evaluates the source density at
    ``x(t0)``, an approximation the caller owns.

    Divergence (``divergence=``, an estimator value; one evaluation of ``field`` per stage
    either way, the primal output of the forward-mode pass is the velocity):

    - :class:`jfm.ExactDivergence` (``"exact"``, default): about ``D`` tangent passes per
      stage.
    - :class:`jfm.HutchinsonDivergence` (``"hutchinson"`` is one Rademacher probe): ``K``
      probes per example drawn from ``key`` ONCE per trajectory, before the solve, and
      held fixed along it, which keeps the integrand smooth in ``t`` so adaptive control
      works (FFJORD's choice). Each probe has its own accumulator: the estimate is their
      mean, unbiased, and ``Solution.stderr`` its standard error (``K >= 2``; probe noise
      only, not solver error).

    Step control: as :func:`jfm.sample_ode` (exactly one of ``steps``, ``ts``,
    ``rtol``/``atol``, ``stepsize_controller``); a grid ``ts`` is given increasing, from
    ``t0`` to ``t1``, and integrated in reverse. The augmented state ``(x, l_1..l_K)`` is
    ONE state for the solver, so the error norm includes the accumulators: the
    log-density is integrated to the same tolerances as ``x``.

    Batching: ``batch="vmap"`` (default, unlike the samplers) solves each example on its
    own, so each log-density is a property of that example alone, independent of the
    batch it comes in (a joint solve shares step sizes, so each value would depend within
    tolerance on its batch companions). ``batch="joint"``: one ODE for the batch, fewer
    loop iterations on accelerators.

    Gradients: ``jax.grad`` with respect to ``x`` or to arrays inside an ``eqx.Module``
    field goes through ``adjoint`` (default ``dfx.RecursiveCheckpointAdjoint()``; or
    ``dfx.BacksolveAdjoint(...)``); both need second derivatives of ``field``.

    Args:
        field: per-example vector field ``field(t, x, args) -> dx/dt``.
        x: ``[B, *event]`` data points at ``t1`` (floating; sets the dtype).
        solver: a diffrax solver, e.g. ``dfx.Dopri5()``.
        steps, rtol, atol, ts, stepsize_controller, dt0: step control (``dt0`` negative).
        path: a :class:`jfm.AbstractPath` providing ``prior_log_prob``; or
        prior_log_prob: an explicit per-example ``log p_0(x) -> scalar``.
        divergence: an estimator (:class:`jfm.ExactDivergence`,
            :class:`jfm.HutchinsonDivergence`) or its name.
        key: PRNG key for a random estimator (required then; unused otherwise).
        args: passed to ``field`` unchanged.
        t0, t1: source and data times, ``t0 < t1`` (default 0 and 1, or the ends of ``ts``).
        batch: ``"vmap"`` or ``"joint"``.
        max_steps: bound on the steps attempted.
        throw: raise when a solve fails or a log-density is not finite; with ``False``
            check ``success``.
        adjoint: a diffrax adjoint.

    Returns:
        ``(logp, sol)``: ``logp`` ``[B]`` (nats, dtype of ``x``) and a
        :class:`jfm.Solution` whose ``x1`` holds the points transported to ``t0``, with
        ``log_prob`` (``logp``) and ``stderr`` set.

    Raises:
        TypeError: ``solver``/``adjoint``/``path``/``divergence`` of the wrong type,
            ``field`` or ``prior_log_prob`` not callable, ``x`` not floating, ``key``
            missing for a random estimator.
        ValueError: both or neither of ``path`` and ``prior_log_prob``; unknown
            ``batch`` or estimator name; ``x`` without batch axis; ``t0 >= t1``; the step
            options as in :func:`jfm.sample_ode`; ``field`` returning another shape.

    Examples:
        >>> import diffrax as dfx, jax.numpy as jnp, jfm
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> gmm = jfm.GaussianMixture.isotropic(jnp.array([[0.0, 0.0]]), 0.5)
        >>> logp, sol = jfm.log_prob(gmm.velocity_field(path), jnp.zeros((3, 2)),
        ...                          solver=dfx.Dopri5(), rtol=1e-6, atol=1e-6, path=path)
        >>> logp.shape, sol.nfe.shape
        ((3,), (3,))

    References:
        Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations",
        NeurIPS 2018. Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud, "FFJORD", ICLR 2019.
    """
    check_solver(solver, "dfx.Dopri5()")
    check_callable(field, "field")
    x = check_finite(check_batch(x, "x"), "x")
    if (path is None) == (prior_log_prob is None):
        raise ValueError(
            "Pass exactly one of `path` and `prior_log_prob` (the source density): "
            "path=<a jfm.AbstractPath> (uses path.prior_log_prob) or "
            "prior_log_prob=<callable, one example -> scalar>; got "
            f"path={'None' if path is None else type(path).__name__}, prior_log_prob="
            f"{'None' if prior_log_prob is None else 'a value'}."
        )
    if path is not None:
        if not isinstance(path, AbstractPath):
            raise TypeError(f"`path` must be a jfm.AbstractPath; got {type(path)}.")
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
    aug = _Augmented(field, divergence, tuple(x.shape[1:]))
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


@eqx.filter_jit
def _log_prob(aug, x, args, key, plan, prior, *, solver, batch, max_steps, throw, adjoint):
    b, dtype = x.shape[0], x.dtype
    d, k = math.prod(aug.event_shape), aug.divergence.num_terms
    probe = None
    if key is not None:  # [B, K, *event], drawn once per trajectory, before the solve
        draw = lambda kk: aug.divergence.draw(kk, aug.event_shape, dtype)
        probe = jax.vmap(draw)(jr.split(key, b))
    y0 = jnp.concatenate([x.reshape(b, d), jnp.zeros((b, k), dtype)], axis=1)
    # Backwards in time: from the data time t1 to the source time t0.
    y1, _, _, stats, result = integrate(
        aug,
        y0,
        plan.t_start,
        plan.t_end,
        args if probe is not None else (args, None),  # the field takes (args, probe)
        plan.control,
        solver=solver,
        batch=batch,
        max_steps=max_steps,
        adjoint=adjoint,
        each=probe,
    )
    x0 = y1[:, :d].reshape(x.shape)
    acc = y1[:, d:]  # [B, K]: l_k(t0)
    logp = jax.vmap(prior)(x0).astype(dtype) + jnp.mean(acc, axis=1)
    stderr = jnp.std(acc, axis=1, ddof=1) / math.sqrt(k) if k >= 2 else None
    finite = jnp.isfinite(logp)
    logp, success = finish(
        logp,
        result,
        jnp.all(finite) if batch == "joint" else finite,
        throw=throw,
        who="jfm.log_prob",
        max_steps=max_steps,
        end="t0",
        nonfinite_hint="a log-density is not finite: the field blows up, or the fixed step "
        "is too large for it",
    )
    return logp, solution(x0, success, result, stats, log_prob=logp, stderr=stderr)


# -- bits per dimension -------------------------------------------------------------------


def bits_per_dim(
    log_prob_fn,
    x_int: ArrayLike,
    *,
    bits: int,
    key: PRNGKeyArray,
    dtype=None,
) -> Float[Array, " batch"]:
    r"""Bits per dimension of integer data under a continuous model on ``[-1, 1]^D``.

    Uniform dequantization (Theis et al., 2016): for integer data
    ``x_int in {0, ..., 2^bits - 1}^D`` draw ``u ~ U[0, 1)^D`` and map

    .. math::
        z = x_{int} + u \in [0, 2^{bits})^D, \qquad
        x = 2 z / 2^{bits} - 1 \in [-1, 1)^D,

    the range jfm's image models are trained on. The density of ``z`` is
    ``p_z(z) = p_x(x) |dx/dz| = p_x(x) (2 / 2^bits)^D``, so

    .. math::
        \mathrm{bpd} = \frac{-\log p_z(z)}{D \log 2}
        = \frac{-\log p_x(x)}{D \log 2} + \mathrm{bits} - 1,

    an upper bound (in expectation over ``u``) on the discrete model's code length,
    ``-log2 P(x_int) / D``. A model uniform on ``[-1, 1]^D`` scores exactly ``bits``.
    Each example gets one dequantization draw; average the result over the batch (and
    over keys for a tighter estimate).

    Args:
        log_prob_fn: ``x [B, *event] -> [B]`` log-densities (nats) of the continuous
            model on ``[-1, 1]^D``, e.g.
            ``lambda x: jfm.log_prob(field, x, solver=..., rtol=..., atol=..., path=path)[0]``.
        x_int: ``[B, *event]`` integer-valued data in ``{0, ..., 2^bits - 1}`` (an integer
            dtype, e.g. uint8 images; values are checked when concrete).
        bits: bit depth, ``1 <= bits <= 16`` (8 for ordinary images).
        key: PRNG key for the dequantization noise.
        dtype: floating dtype of ``x`` handed to ``log_prob_fn`` (default JAX's default
            float).

    Returns:
        ``[B]`` bits per dimension in ``dtype``.

    Raises:
        TypeError: ``log_prob_fn`` not callable, ``x_int`` not an integer array, ``bits``
            not an int, ``key`` not a key.
        ValueError: ``x_int`` without a batch axis or empty, ``bits`` out of range, values outside
            ``{0, ..., 2^bits - 1}``, ``log_prob_fn`` returning another shape than ``[B]``.

    Examples:
        >>> import jax.numpy as jnp, jax.random as jr, jfm
        >>> uniform = lambda x: jnp.full(x.shape[:1], -x[0].size * jnp.log(2.0))
        >>> x_int = jnp.zeros((4, 8, 8, 1), jnp.uint8)
        >>> jfm.bits_per_dim(uniform, x_int, bits=8, key=jr.key(0))
        Array([8., 8., 8., 8.], dtype=float32)

    References:
        Theis, van den Oord, Bethge, "A note on the evaluation of generative models",
        ICLR 2016.
    """
    check_callable(log_prob_fn, "log_prob_fn", "(x[B, *event]) -> [B]")
    bits = check_int(bits, "bits")
    if not 1 <= bits <= 16:
        raise ValueError(f"`bits` must lie in [1, 16]; got bits={bits}.")
    if not isinstance(x_int, (np.ndarray, jax.Array)):
        raise TypeError(f"`x_int` must be an integer array; got {type(x_int)}.")
    x_int = jnp.asarray(x_int)
    if not jnp.issubdtype(x_int.dtype, jnp.integer):
        raise TypeError(
            f"`x_int` must have an integer dtype (raw pixel values in 0..2^bits - 1); got "
            f"{x_int.dtype}. Convert [-1, 1] images back first, e.g. "
            "jnp.round((x + 1) / 2 * (2**bits - 1)).astype(jnp.int32)."
        )
    if x_int.ndim < 1:
        raise ValueError(f"`x_int` must have a batch axis [B, *event]; got shape {x_int.shape}.")
    if x_int.size == 0:
        raise ValueError(
            f"`x_int` must hold at least one example of at least one dimension (bits per "
            f"dimension of nothing is undefined); got shape {x_int.shape}."
        )
    if is_concrete(x_int):
        lo, hi = int(jnp.min(x_int)), int(jnp.max(x_int))
        if lo < 0 or hi > 2**bits - 1:
            raise ValueError(
                f"`x_int` values must lie in {{0, ..., {2**bits - 1}}} for bits={bits}; got "
                f"min={lo}, max={hi}."
            )
    check_key(key)
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    b = x_int.shape[0]
    d = math.prod(x_int.shape[1:])
    u = sample_flat(jr.uniform, key, x_int.shape, dtype)
    levels = 2.0**bits
    x = 2 * (x_int.astype(dtype) + u) / levels - 1
    logp = jnp.asarray(log_prob_fn(x))
    if logp.shape != (b,):
        raise ValueError(
            f"`log_prob_fn` must return one log-density per example, shape ({b},); got "
            f"{logp.shape}."
        )
    logp = logp.astype(dtype)
    return -logp / (d * math.log(2)) + (bits - 1)
