r"""Log-likelihood by the instantaneous change of variables, and bits per dimension.

Along the flow ``dx/dt = u_t(x)`` the density obeys ``d/dt log p_t(x_t) = -div u_t(x_t)``
(Chen et al., 2018), so for a data point ``x_1``

.. math::
    \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \mathrm{div}\, u_t(x_t)\, dt,

where ``x_0`` is ``x_1`` transported back to the source. :func:`log_prob` solves for
``x_0`` and the integral together, as one ODE on the augmented state ``(x, l)``.
"""

import math
import numbers

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from ._checks import check_array, check_key, check_name, is_concrete
from ._custom_types import Args, RealScalarLike, VectorField
from ._divergence import (
    _check_pos_int,
    _draw_probes,
    _resolve_method,
    _value_and_hutchinson_terms,
    _value_and_trace,
)
from ._misc import sample_flat
from ._paths import AbstractPath
from ._solver_utils import _check_int, _check_step_control, _check_time, solve_counted

_DIVERGENCES: tuple[str, ...] = ("exact", "hutchinson")
_NOISES: tuple[str, ...] = ("rademacher", "gaussian")
_BATCH_MODES: tuple[str, ...] = ("vmap", "joint")


class LogProbInfo(eqx.Module):
    """Solver statistics and error estimates returned by :func:`jfm.log_prob`.

    Counters are arrays ``[B]`` for ``batch="vmap"`` (one solve per example, the default)
    and scalars for ``batch="joint"``; ``*b`` below is ``(B,)`` or ``()`` accordingly.

    Attributes:
        x0: ``[B, *event]`` the data points transported back to ``t0`` (the source).
        nfe: ``*b`` int, evaluations of the augmented vector field per example, i.e.
            evaluations of ``field`` (each one also computes the divergence: ``D``
            tangent passes for ``"exact"``, ``K`` batched ones for ``"hutchinson"``).
            Computed from the solver's Butcher tableau and the step counts, as
            :attr:`jfm.ODEResult.nfe` (``-1`` where jfm cannot know it).
        num_steps: ``*b`` int, steps attempted (accepted + rejected).
        success: ``*b`` bool, diffrax reports success AND the log-density is finite.
        result: diffrax's :class:`diffrax.RESULTS` code, batched like the counters.
        stderr: ``[B]`` the Hutchinson standard error of each log-density over the ``K``
            probes (sample standard deviation of the ``K`` per-probe integrals
            ``/ sqrt(K)``) when ``divergence="hutchinson"`` and ``probes >= 2``; else
            ``None``. It covers the probe noise only, not the solver error.
    """

    x0: Float[Array, " batch *event"]
    nfe: Int[Array, "*b"]
    num_steps: Int[Array, "*b"]
    success: Bool[Array, "*b"]
    result: dfx.RESULTS
    stderr: Float[Array, " batch"] | None = None


class _Augmented(eqx.Module):
    """The augmented vector field of ONE example on ``y = (x.ravel(), l_1..l_K)``.

    ``dx/dt = field(t, x, args)`` and ``dl_k/dt = div field`` (``K = 1``, exact) or
    ``u_k^T J u_k`` (Hutchinson, one accumulator per probe). ``field_args`` is
    ``(field, args, probe)``: everything with arrays travels in diffrax's ``args`` so every
    adjoint sees it; only static configuration lives here.
    """

    event_shape: tuple[int, ...] = eqx.field(static=True)
    mode: str = eqx.field(static=True)  # "jacfwd", "jvp" or "hutchinson"
    chunk: int | None = eqx.field(static=True)

    def __call__(self, t, y, field_args):
        field, args, probe = field_args
        d = math.prod(self.event_shape)
        shape = self.event_shape
        x = y[:d]

        def g(z):
            out = field(t, z.reshape(shape), args)
            if out.shape != shape:
                raise ValueError(
                    f"`field` must return an array of the event shape {shape} (dx/dt of ONE "
                    f"example); got {out.shape}."
                )
            return out.astype(y.dtype).reshape(-1)

        if self.mode == "hutchinson":
            dx, terms = _value_and_hutchinson_terms(g, x, probe, "jvp")
        else:
            dx, div = _value_and_trace(g, x, self.mode, self.chunk)
            terms = div.reshape(1)
        return jnp.concatenate([dx, terms.astype(y.dtype)])


def _joint(aug: _Augmented):
    """The augmented field of a whole batch ``Y [B, D + K]`` (probes batched, ``[B, K, ...]``)."""

    def vf(t, y, field_args):
        field, args, probe = field_args
        in_axes = (None, 0, (None, None, None if probe is None else 0))
        return jax.vmap(aug, in_axes=in_axes)(t, y, field_args)

    return vf


def log_prob(
    field: VectorField,
    x: ArrayLike,
    *,
    solver: dfx.AbstractSolver,
    steps: int | None = None,
    rtol: RealScalarLike | None = None,
    atol: RealScalarLike | None = None,
    path: AbstractPath | None = None,
    prior_log_prob=None,
    divergence: str = "exact",
    key: PRNGKeyArray | None = None,
    probes: int = 1,
    noise: str = "rademacher",
    chunk: int | None = None,
    args: Args = None,
    t0: RealScalarLike = 0.0,
    t1: RealScalarLike = 1.0,
    batch: str = "vmap",
    dt0: RealScalarLike | None = None,
    max_steps: int = 4096,
    throw: bool = True,
    adjoint: dfx.AbstractAdjoint | None = None,
) -> tuple[Float[Array, " batch"], LogProbInfo]:
    r"""Log-density ``log p_1(x)`` of data under the flow of ``field`` (a CNF).

    Integrates the augmented ODE of ONE example backwards, from the data time ``t1`` to
    the source time ``t0``, in a single :func:`diffrax.diffeqsolve`:

    .. math::
        \frac{d}{dt}\begin{pmatrix} x \\ l \end{pmatrix} =
        \begin{pmatrix} u_t(x) \\ \mathrm{div}\, u_t(x) \end{pmatrix}, \quad
        x(t_1) = x, \; l(t_1) = 0, \qquad
        \log p_1(x) = \log p_0(x(t_0)) + l(t_0),

    since ``l(t0) = -int_{t0}^{t1} div u dt`` and ``d/dt log p_t(x_t) = -div u_t(x_t)``.
    The source log-density ``log p_0`` is ``path.prior_log_prob`` (pass ``path=``, a
    :class:`jfm.AbstractPath`, e.g. the path the field was trained on) or an explicit
    per-example callable ``prior_log_prob=`` (exactly one of the two). The formula is
    exact for ``t0 = 0``; a ``t0 > 0`` (e.g. to avoid a singular field) evaluates the
    source density at ``x(t0)``, an approximation the caller owns. Likewise ``t1 < 1``
    gives the density of ``p_{t1}``.

    Divergence (one evaluation of ``field`` per stage in both cases: the primal output of
    the forward-mode pass is the velocity):

    - ``"exact"``: :func:`jfm.divergence_exact` (``method="auto"``: jacfwd for small
      ``D``, else ``jax.jvp`` in chunks of ``chunk``); each stage costs about ``D``
      forward passes.
    - ``"hutchinson"``: ``K = probes`` probes per example (``noise``), drawn from ``key``
      ONCE per trajectory, before the solve, and held fixed along it (they travel in the
      solver's ``args``), which keeps the integrand a smooth function of ``t`` so adaptive
      step control works (FFJORD's choice). Each probe gets its own accumulator ``l_k``:
      the estimate is the mean over probes and :attr:`LogProbInfo.stderr` its standard
      error (``K >= 2``). Unbiased: ``E[log p] = `` the exact value (up to solver error).
      A per-step redraw is deliberately not offered: diffrax evaluates the field at
      several stages per step (and retries rejected steps), so a probe redrawn per
      evaluation makes the integrand discontinuous in ``t``, which breaks both the
      Runge-Kutta order and the error estimate.

    Step control: the augmented state ``(x, l_1..l_K)`` is ONE state for the solver, so
    the adaptive controller's error norm (RMS over all ``D + K`` components of
    ``err / (atol + rtol |y|)``) includes the divergence accumulators: the log-density is
    integrated to the same tolerances as ``x``. Fixed steps: ``steps=N``. The rules for
    ``steps``/``rtol``/``atol``/``dt0``/``max_steps`` are those of :func:`jfm.sample_ode`
    (adaptive with ``dt0=None`` uses diffrax's initial-step heuristic on a bare
    :class:`diffrax.ODETerm`, 2 extra evaluations).

    Batching: ``batch="vmap"`` (default) solves each example on its own (own step sizes),
    so each log-density is independent of the other examples in the batch; under
    ``vmap`` the loop runs until the slowest example is done. ``batch="joint"`` solves
    the batch as one ODE (shared steps, error norm over the whole batch): fewer loop
    iterations on accelerators, but every example takes the steps of the hardest one and
    each value depends (within tolerance) on its batch companions.

    Gradients: ``jax.grad`` of the result with respect to ``x`` or to arrays inside an
    ``eqx.Module`` field (e.g. model parameters, the means of a
    :class:`jfm.MixtureField`) goes through ``adjoint``:
    ``dfx.RecursiveCheckpointAdjoint()`` (default: exact gradient of the discrete solve)
    or ``dfx.BacksolveAdjoint(...)`` (continuous adjoint, ``O(1)`` memory, solver-error
    accurate). Both need second derivatives of ``field`` (the divergence is a first
    derivative).

    Compilation: one :func:`equinox.filter_jit` as in :func:`jfm.sample_ode`: arrays
    (``x``, tolerances, times, ``key``, ``args`` and arrays inside Module fields/paths)
    are traced, the rest is static; a second call with the same shapes does not
    recompile.

    Args:
        field: per-example vector field ``field(t, x, args) -> dx/dt``.
        x: ``[B, *event]`` data points at ``t1`` (floating; sets the dtype of everything).
        solver: a diffrax solver, e.g. ``dfx.Dopri5()``.
        steps: fixed number of steps; or
        rtol, atol: tolerances of the adaptive controller (both).
        path: a :class:`jfm.AbstractPath` providing ``prior_log_prob`` (one example).
        prior_log_prob: or an explicit per-example ``log p_0(x) -> scalar``.
        divergence: ``"exact"`` or ``"hutchinson"``.
        key: PRNG key for the Hutchinson probes (required for ``"hutchinson"``, unused
            for ``"exact"``).
        probes: Hutchinson probes per example, ``K >= 1``.
        noise: Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        chunk: exact divergence: basis vectors per vmapped chunk (see
            :func:`jfm.divergence_exact`); ``None`` for the default.
        args: passed to ``field`` unchanged.
        t0: source time (the end of the backward solve), default 0.
        t1: data time (where ``x`` lives), default 1; ``t0 < t1``.
        batch: ``"vmap"`` or ``"joint"`` (see above).
        dt0: adaptive mode: first step size (negative: the solve runs backwards);
            ``None`` for the heuristic.
        max_steps: bound on the steps attempted.
        throw: raise (at run time, also under ``jax.jit``) when a solve fails or a
            log-density is not finite; with ``False`` check ``info.success``.
        adjoint: a diffrax adjoint (default ``dfx.RecursiveCheckpointAdjoint()``).

    Returns:
        ``(logp, info)``: ``logp`` ``[B]`` in the dtype of ``x`` (nats) and a
        :class:`jfm.LogProbInfo`.

    Raises:
        TypeError: ``solver``/``adjoint``/``path`` of the wrong type, ``field`` or
            ``prior_log_prob`` not callable, ``x`` not floating, ``key`` missing for
            Hutchinson or not a key, non-int ``probes``/``steps``/``chunk``.
        ValueError: both or neither of ``path`` and ``prior_log_prob``; unknown
            ``divergence``/``noise``/``batch``; ``probes < 1``; ``x`` without batch axis;
            ``t0 >= t1``; the step options as in :func:`jfm.sample_ode`; ``field``
            returning another shape.

    Examples:
        >>> import diffrax as dfx, jax.numpy as jnp, jfm
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> gmm = jfm.GaussianMixture.isotropic(jnp.array([[0.0, 0.0]]), 0.5)
        >>> logp, info = jfm.log_prob(gmm.velocity_field(path), jnp.zeros((3, 2)),
        ...                           solver=dfx.Dopri5(), rtol=1e-6, atol=1e-6, path=path)
        >>> logp.shape, info.nfe.shape
        ((3,), (3,))

    References:
        Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations",
        NeurIPS 2018. Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud, "FFJORD", ICLR 2019.
    """
    # -- argument checks (Python, at trace time) ------------------------------------------
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(
            f"`solver` must be a diffrax solver instance, e.g. solver=dfx.Dopri5(); got "
            f"{solver!r} ({type(solver).__name__})."
        )
    if not callable(field):
        raise TypeError(
            f"`field` must be callable as field(t, x, args) -> dx/dt; got {type(field)}."
        )
    x = check_array(x, "x")
    if x.ndim < 1:
        raise ValueError(
            f"`x` must have a batch axis: shape [B, *event]; got shape {x.shape}. For a "
            "single example pass x[None]."
        )
    dtype = x.dtype
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
        if not callable(prior_log_prob):
            raise TypeError(
                f"`prior_log_prob` must be callable (one example -> scalar log-density); got "
                f"{type(prior_log_prob)}."
            )
        prior = prior_log_prob
    check_name(divergence, "divergence", _DIVERGENCES)
    check_name(batch, "batch", _BATCH_MODES)
    event_shape = tuple(x.shape[1:])
    d = math.prod(event_shape)
    if divergence == "hutchinson":
        check_name(noise, "noise", _NOISES)
        probes = _check_pos_int(probes, "probes")
        check_key(key)
        if chunk is not None:
            raise ValueError(
                f"`chunk` applies to divergence='exact' only; got chunk={chunk!r} with "
                "divergence='hutchinson'."
            )
        mode = "hutchinson"
    else:
        if chunk is not None:
            chunk = _check_pos_int(chunk, "chunk")
        mode = _resolve_method("auto", chunk, d)
    t0 = _check_time(t0, "t0", dtype)
    t1 = _check_time(t1, "t1", dtype)
    if is_concrete((t0, t1)) and not float(t0) < float(t1):
        raise ValueError(
            f"`t0` (source) must be smaller than `t1` (data); got t0={float(t0)}, "
            f"t1={float(t1)}. log_prob integrates from t1 back to t0 itself."
        )
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {throw!r}.")
    max_steps = _check_int(max_steps, "max_steps", 1)
    if adjoint is None:
        adjoint = dfx.RecursiveCheckpointAdjoint()
    elif not isinstance(adjoint, dfx.AbstractAdjoint):
        raise TypeError(f"`adjoint` must be a diffrax adjoint or None; got {type(adjoint)}.")
    steps, rtol, atol, dt0, adaptive = _check_step_control(
        solver, steps, rtol, atol, dt0, max_steps, t1, t0, dtype
    )

    messages = (
        f"jfm.log_prob: max_steps={max_steps} reached before t0; raise max_steps or loosen "
        "rtol/atol (or pass throw=False to inspect the partial result).",
        "jfm.log_prob: the diffrax solve failed (see LogProbInfo.result with throw=False).",
        "jfm.log_prob: a log-density is not finite (inf/NaN): the field blows up, or the "
        "fixed step is too large for it; check the field, use more steps or an adaptive "
        "solver (pass throw=False to inspect).",
    )
    steps_arr = None if steps is None else jnp.asarray(steps, dtype)
    return _log_prob(
        field,
        x,
        t0,
        t1,
        args,
        key,
        steps_arr,
        rtol,
        atol,
        dt0,
        prior,
        solver=solver,
        aug=_Augmented(event_shape, mode, chunk),
        probes=probes if mode == "hutchinson" else 1,
        noise=noise,
        adaptive=adaptive,
        batch=batch,
        max_steps=max_steps,
        throw=throw,
        adjoint=adjoint,
        messages=messages,
    )


@eqx.filter_jit
def _log_prob(
    field,
    x,
    t0,
    t1,
    args,
    key,
    steps,
    rtol,
    atol,
    dt0,
    prior,
    *,
    solver,
    aug,
    probes,
    noise,
    adaptive,
    batch,
    max_steps,
    throw,
    adjoint,
    messages,
):
    b, dtype = x.shape[0], x.dtype
    d = math.prod(aug.event_shape)
    hutch = aug.mode == "hutchinson"
    # Probes drawn once per trajectory, before the solve: [B, K, *event].
    probe = (
        jax.vmap(lambda k: _draw_probes(k, probes, aug.event_shape, noise, dtype))(jr.split(key, b))
        if hutch
        else None
    )
    y0 = jnp.concatenate([x.reshape(b, d), jnp.zeros((b, probes), dtype)], axis=1)
    common = dict(solver=solver, adaptive=adaptive, max_steps=max_steps, adjoint=adjoint)
    # Backwards in time: from the data time t1 to the source time t0.
    tail = (steps, rtol, atol, dt0)
    if batch == "joint":
        y1, _, stats, result = solve_counted(
            _joint(aug), y0, t1, t0, (field, args, probe), *tail, **common
        )
    else:

        def one(y0_i, probe_i):
            return solve_counted(aug, y0_i, t1, t0, (field, args, probe_i), *tail, **common)

        y1, _, stats, result = jax.vmap(one)(y0, probe)
    x0 = y1[:, :d].reshape(x.shape)
    acc = y1[:, d:]  # [B, K]: l_k(t0) = -int div (per probe)
    logp = jax.vmap(prior)(x0).astype(dtype) + jnp.mean(acc, axis=1)
    stderr = jnp.std(acc, axis=1, ddof=1) / math.sqrt(probes) if probes >= 2 else None
    finite = jnp.isfinite(logp)
    ok = result == dfx.RESULTS.successful
    success = ok & (jnp.all(finite) if batch == "joint" else finite)
    if throw:
        msg_max, msg_other, msg_nonfinite = messages
        logp = eqx.error_if(logp, result == dfx.RESULTS.max_steps_reached, msg_max)
        logp = eqx.error_if(logp, ~ok, msg_other)
        logp = eqx.error_if(logp, ~finite, msg_nonfinite)
    info = LogProbInfo(
        x0=x0,
        nfe=stats["nfe"],
        num_steps=stats["num_steps"],
        success=success,
        result=result,
        stderr=stderr,
    )
    return logp, info


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
        ValueError: ``x_int`` without a batch axis, ``bits`` out of range, values outside
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
    if not callable(log_prob_fn):
        raise TypeError(
            f"`log_prob_fn` must be callable as log_prob_fn(x[B, *event]) -> [B]; got "
            f"{type(log_prob_fn)}."
        )
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"`bits` must be a Python int; got {bits!r} ({type(bits).__name__}).")
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
    if is_concrete(x_int) and x_int.size:
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


__all__ = ["LogProbInfo", "bits_per_dim", "log_prob"]
