r"""Time grids for fixed-grid sampling, defined for any affine path by its own alpha/sigma.

A grid is an increasing array ``ts [N + 1]`` from ``t0`` to ``t1`` in jfm's time (noise at
0, data at 1), to pass as ``ts=`` to any sampler (a :class:`diffrax.StepTo` solve). The
named spacings are written in the path's log-SNR

.. math::  \lambda(t) = \log \alpha(t) - \log \sigma(t),

which increases from the noise end to the data end (``-inf`` where ``alpha = 0``,
``+inf`` where ``sigma = 0``), or in EDM's noise level ``rho = sigma / alpha =
exp(-lambda)``. Times at a given log-SNR are found by bisection on ``[t0, t1]``, so every
schedule works, closed form or not.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_int, check_name, check_positive, check_scalar, is_concrete
from .._custom_types import RealScalarLike
from .._paths import AffinePath

GRIDS: tuple[str, ...] = ("uniform", "edm", "logsnr", "shift", "cosine")

#: Bisection iterations: the bracket shrinks to 2^-64 of its width, below float64's ulp.
_BISECTION_STEPS = 64


def _check_path(path, who: str = "path") -> AffinePath:
    if not isinstance(path, AffinePath):
        raise TypeError(
            f"`{who}` must be a jfm.AffinePath (its alpha/sigma define the grid), e.g. "
            f"jfm.AffinePath(jfm.CondOT()); got {type(path).__name__}."
        )
    return path


def _real_array(x, name: str):
    """Real numbers of any shape (Python or NumPy scalars, arrays), as a floating array."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(
        x, (int, float, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(f"`{name}` must be a real number or array; got {type(x)}.")
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_ or not (
        jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
    ):
        raise TypeError(f"`{name}` must have a real (floating) dtype; got {x.dtype}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def log_snr(path: AffinePath, t: Float[ArrayLike, "*n"]) -> Float[Array, "*n"]:
    r"""The path's log signal-to-noise ratio ``lambda(t) = log alpha(t) - log sigma(t)``.

    Elementwise in ``t``; ``-inf`` where ``alpha = 0`` (the noise end of CondOT, cosine
    and polynomial schedules), ``+inf`` where ``sigma = 0`` (their data end).

    Args:
        path: a :class:`jfm.AffinePath`.
        t: times, any shape.

    Returns:
        ``lambda(t)``, the shape of ``t``.

    Raises:
        TypeError: ``path`` not an affine path; ``t`` not real numbers.
        ValueError: concrete ``t`` outside ``[0, 1]`` or NaN.
    """
    _check_path(path)
    t = _real_array(t, "t")
    if is_concrete(t):
        tn = np.asarray(t)
        bad = tn[~((tn >= 0) & (tn <= 1))]  # NaN fails too
        if bad.size:
            raise ValueError(
                f"`t` must lie in [0, 1] (and be finite); got {bad.size} entries outside, "
                f"e.g. t={bad.flat[0]}."
            )
    sch = path.schedule
    a = jax.vmap(sch.alpha)(t.reshape(-1)).reshape(t.shape)
    s = jax.vmap(sch.sigma)(t.reshape(-1)).reshape(t.shape)
    return (jnp.log(a) - jnp.log(s)).astype(t.dtype)


def _invert(fn, targets, lo, hi):
    """``t`` in ``[lo, hi]`` with ``fn(t) = target`` for an increasing ``fn``, by bisection.

    Targets beyond ``fn``'s range come back as ``lo`` or ``hi``.
    """
    lo = jnp.broadcast_to(lo, targets.shape).astype(targets.dtype)
    hi = jnp.broadcast_to(hi, targets.shape).astype(targets.dtype)

    def body(_, bracket):
        a, b = bracket
        m = 0.5 * (a + b)
        below = fn(m) < targets
        return jnp.where(below, m, a), jnp.where(below, b, m)

    a, b = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo, hi))
    return 0.5 * (a + b)


def time_at_log_snr(
    path: AffinePath,
    lam: Float[ArrayLike, "*n"],
    *,
    t0: RealScalarLike = 0.0,
    t1: RealScalarLike = 1.0,
) -> Float[Array, "*n"]:
    r"""The times ``t`` in ``[t0, t1]`` at which the path's log-SNR equals ``lam``.

    Inverts :func:`jfm.log_snr` (increasing in ``t`` for every schedule jfm ships) by
    bisection to the last bit; ``lam`` beyond the range of ``[t0, t1]`` gives ``t0`` or
    ``t1``. EDM/k-diffusion noise levels ``sigma`` convert with ``lam = -log(sigma)``,
    diffusers' flow sigmas with ``t = 1 - sigma`` on :class:`jfm.CondOT`.

    Args:
        path: a :class:`jfm.AffinePath`.
        lam: target log-SNRs, any shape (``+-inf`` allowed).
        t0, t1: the bracket, ``t0 < t1``.

    Returns:
        times of the shape of ``lam``, in ``lam``'s floating dtype.
    """
    _check_path(path)
    lam = _real_array(lam, "lam")
    # numpy on the concrete value (a jnp op on a constant inside a jit trace is traced)
    if is_concrete(lam) and np.isnan(np.asarray(lam)).any():
        raise ValueError("`lam` must not be NaN (+-inf are allowed: the ends of the range).")
    t0, t1 = _check_ends(t0, t1, lam.dtype)
    return _time_at(path, lam.reshape(-1), t0, t1).reshape(lam.shape)


@eqx.filter_jit
def _time_at(path, lam, t0, t1):
    t = _invert(lambda t: log_snr(path, t), lam, t0, t1)
    return jnp.where(lam == jnp.inf, t1, jnp.where(lam == -jnp.inf, t0, t))


@eqx.filter_jit
def _time_at_angle(path, target, t0, t1):
    sch = path.schedule
    return _invert(
        lambda t: jnp.arctan2(jax.vmap(sch.alpha)(t), jax.vmap(sch.sigma)(t)), target, t0, t1
    )


def _check_ends(t0, t1, dtype):
    t0 = check_scalar(t0, "t0", dtype, lo=0.0, hi=1.0)
    t1 = check_scalar(t1, "t1", dtype, lo=0.0, hi=1.0)
    if is_concrete((t0, t1)) and not float(t0) < float(t1):
        raise ValueError(
            f"`t0` must be below `t1` (grids run from noise to data); got t0={float(t0)}, "
            f"t1={float(t1)}."
        )
    return t0, t1


def time_grid(
    kind: str,
    steps: int,
    *,
    path: AffinePath | None = None,
    t0: RealScalarLike = 0.0,
    t1: RealScalarLike = 1.0,
    rho: RealScalarLike = 7.0,
    shift: RealScalarLike = 3.0,
    sigma_min: RealScalarLike = 0.002,
    sigma_max: RealScalarLike = 80.0,
    dtype=None,
) -> Float[Array, " n"]:
    r"""A named time grid ``ts [steps + 1]``, increasing from ``t0`` to ``t1`` (both kept).

    With ``u_i = i / steps``, ``lambda`` the path's log-SNR (:func:`jfm.log_snr`) and
    ``rho = sigma / alpha = exp(-lambda)`` its EDM noise level:

    - ``"uniform"``: ``t_i = t0 + u_i (t1 - t0)`` (no ``path`` needed).
    - ``"edm"``: Karras et al.'s spacing, ``rho_i = (r_hi^(1/p) + u (r_lo^(1/p) -
      r_hi^(1/p)))^p`` with ``p = rho`` (7 by default), from the noise level at ``t0``
      to the one at ``t1``.
    - ``"logsnr"``: uniform in ``lambda`` between its values at ``t0`` and ``t1``.
    - ``"shift"``: the SD3/Flux time shift: the uniform grid with every noise level
      multiplied by ``shift``, ``rho(t'_i) = shift * rho(t_i)``. On :class:`jfm.CondOT`
      this is ``t' = t / (t + shift (1 - t))``, SD3's ``s' = shift s / (1 + (shift - 1) s)``
      for the noise fraction ``s = 1 - t``; ``shift > 1`` puts more steps near the noise.
    - ``"cosine"``: uniform in the angle ``(2/pi) atan2(alpha, sigma)`` (the cosine
      schedule's time, so the uniform grid on :class:`jfm.Cosine`).

    The ends ``t0``, ``t1`` are always grid points. The ``"edm"``/``"logsnr"`` spacing
    spans the noise levels of the ends clipped to ``[sigma_min, sigma_max]`` (EDM's 0.002
    and 80), so that it is finite where ``alpha(t0) = 0`` or ``sigma(t1) = 0``: above
    ``sigma_max`` at the noise end, ``t0`` takes the place of the point at
    ``sigma_max``; below ``sigma_min`` at the data end, the spacing ends at ``sigma_min``
    on ``t_{N-1}`` and one last step goes to ``t_N = t1``, as EDM's grid does with its
    final step to ``sigma = 0``. On CondOT from 0 to 1 the ``"edm"`` grid is thus
    ``t0 = 0``, ``N - 2`` points spaced down to ``sigma_min``, then 1.

    Jit-safe (bisection in ``jax``); ``steps`` and ``kind`` are static.

    Args:
        kind: one of ``"uniform"``, ``"edm"``, ``"logsnr"``, ``"shift"``, ``"cosine"``.
        steps: number of steps ``N >= 1``.
        path: the :class:`jfm.AffinePath` whose alpha/sigma define the spacing (all
            kinds but ``"uniform"``).
        t0, t1: the ends, ``0 <= t0 < t1 <= 1``.
        rho: EDM's exponent, ``> 0``.
        shift: the time shift, ``> 0``.
        sigma_min, sigma_max: the noise levels that replace a zero or infinite one at an
            end (EDM's 0.002 and 80), ``0 < sigma_min < sigma_max``.
        dtype: floating dtype of the grid (default: JAX's default float).

    Returns:
        ``[steps + 1]`` strictly increasing times.

    Raises:
        ValueError: unknown ``kind``, ``steps < 1``, bad ends or parameters, or a grid that
            is not strictly increasing (e.g. a ``shift`` that pushes points past an end
            of a path with a finite noise range).
        TypeError: ``path`` is missing or not an affine path.

    Examples:
        >>> import jfm
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> [round(float(t), 4) for t in jfm.time_grid("shift", 4, path=path, shift=3.0)]
        [0.0, 0.1, 0.25, 0.5, 1.0]
    """
    given = (t0, t1, sigma_min, sigma_max)
    check_name(kind, "kind", GRIDS)
    steps = check_int(steps, "steps", 1)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    t0, t1 = _check_ends(t0, t1, dtype)
    u = jnp.arange(steps + 1, dtype=dtype) / steps
    if kind == "uniform":
        if path is not None:
            _check_path(path)
        return _finish(t0 + u * (t1 - t0), t0, t1, kind)
    if path is None:
        raise TypeError(f'`path` is required for the "{kind}" grid: its alpha/sigma define it.')
    _check_path(path)
    if kind == "shift":
        shift = check_positive(shift, "shift", dtype)
        lam = log_snr(path, t0 + u * (t1 - t0)) - jnp.log(shift)
        return _finish(time_at_log_snr(path, lam, t0=t0, t1=t1), t0, t1, kind)
    if kind == "cosine":
        sch = path.schedule
        angle = lambda t: jnp.arctan2(jax.vmap(sch.alpha)(t), jax.vmap(sch.sigma)(t))
        a = angle(jnp.stack([t0, t1]))
        target = a[0] + u * (a[1] - a[0])
        return _finish(_time_at_angle(path, target, t0, t1), t0, t1, kind)
    # "edm" and "logsnr": spaced between the (finite) noise levels at the ends.
    sigma_min = check_positive(sigma_min, "sigma_min", dtype)
    sigma_max = check_positive(sigma_max, "sigma_max", dtype)
    if is_concrete((sigma_min, sigma_max)) and not float(sigma_min) < float(sigma_max):
        raise ValueError(
            f"`sigma_min` must be below `sigma_max`; got {float(sigma_min)}, {float(sigma_max)}."
        )
    if not all(map(_concrete, given)):
        raise ValueError(
            f'The "{kind}" grid needs concrete t0, t1, sigma_min and sigma_max: its '
            "number of spaced points depends on the noise levels at the ends."
        )
    with jax.ensure_compile_time_eval():  # concrete also under jit
        t0c, t1c, sigma_min, sigma_max = (jnp.asarray(float(v), dtype) for v in given)
        ends = log_snr(path, jnp.stack([t0c, t1c]))
        lam_lo = jnp.maximum(ends[0], -jnp.log(sigma_max))
        lam_hi = jnp.minimum(ends[1], -jnp.log(sigma_min))
        extra = bool(ends[1] > lam_hi)  # the data end is below sigma_min: one more step
    last = steps - 1 if extra else steps  # the spaced points are t_0 .. t_last
    if last < 1:  # a single step to below sigma_min: just the ends
        return _finish(jnp.stack([t0, t1]), t0, t1, kind)
    v = jnp.arange(last + 1, dtype=dtype) / last
    if kind == "logsnr":
        lam = lam_lo + v * (lam_hi - lam_lo)
    else:
        rho = check_positive(rho, "rho", dtype)
        r_hi, r_lo = jnp.exp(-lam_lo / rho), jnp.exp(-lam_hi / rho)  # rho-th roots
        lam = -rho * jnp.log(r_hi + v * (r_lo - r_hi))
    inner = time_at_log_snr(path, lam, t0=t0, t1=t1)
    ts = jnp.concatenate([inner] + [t1[None]] * (steps - last))
    return _finish(ts, t0, t1, kind)


def _concrete(v) -> bool:
    return not isinstance(v, jax.core.Tracer)


def _finish(ts, t0, t1, kind):
    ts = ts.at[0].set(t0).at[-1].set(t1)
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError(
            f'The "{kind}" grid is not strictly increasing on this path and interval: '
            f"ts={ts}; use fewer steps, other ends t0/t1, or another spacing."
        )
    return ts
