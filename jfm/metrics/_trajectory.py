r"""Trajectory metrics: path energy, normalized path energy and straightness.

They take time-major states ``[T, N, *event]`` as :func:`jfm.sample_ode` saves them
(image-shaped events are flattened) and the ``[T]`` increasing times they were saved at.
Everything is jit-able, vmap-able and differentiable.
"""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_array, check_finite, is_concrete
from ._samples import w2


def _check_trajectory(xs, ts):
    xs = check_finite(check_array(xs, "xs"), "xs")
    ts = check_finite(check_array(ts, "ts", ndim=1), "ts")
    if xs.ndim < 3:
        raise ValueError(
            f"`xs` must be a trajectory [T, N, *event] (time-major, as Solution.xs) with at "
            f"least 3 dimensions; got shape {xs.shape}."
        )
    if ts.shape[0] != xs.shape[0] or ts.shape[0] < 2:
        raise ValueError(
            f"`ts` must hold the T >= 2 times of `xs` (shape ({xs.shape[0]},)); got shape "
            f"{ts.shape}."
        )
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("`ts` must be strictly increasing.")
    return xs.reshape(xs.shape[0], xs.shape[1], -1), ts.astype(xs.dtype)


def path_energy(xs: Float[ArrayLike, "T n ..."], ts: Float[ArrayLike, " _T"]) -> Float[Array, ""]:
    r"""Kinetic energy of sampled trajectories, averaged over the samples.

    .. math::
        \mathrm{PE} = \frac1N \sum_{i=1}^N \sum_{k=0}^{T-2}
            \frac{|x_{k+1,i} - x_{k,i}|^2}{t_{k+1} - t_k}
        \;\approx\; \mathbb{E} \int_{t_0}^{t_{T-1}} |v_t(x_t)|^2\, dt,

    the energy of the piecewise-linear interpolation of the saved states: exact for the
    Euler solver saved at its steps (``v`` is constant on each step), and a lower bound
    of the continuous energy otherwise (Cauchy-Schwarz on each interval). By
    Benamou-Brenier, ``PE >= W_2^2(x_0, x_{T-1})`` over ``[0, 1]`` (the trajectories are a
    coupling of their ends), with equality for straight, constant-speed OT paths.

    Args:
        xs: ``[T, N, *event]`` states at times ``ts`` (time-major, like
            :attr:`jfm.Solution.xs`).
        ts: ``[T]`` strictly increasing times, ``T >= 2``.

    Returns:
        Scalar of the dtype of ``xs``.

    Raises:
        ValueError: ``xs`` with fewer than 3 dimensions, ``ts`` not matching ``T`` or not
            increasing.
        TypeError: non-floating inputs.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> ts = jnp.linspace(0.0, 1.0, 5)
        >>> xs = ts[:, None, None] * jnp.array([[[3.0, 4.0]]])  # straight, speed 5
        >>> float(jfm.metrics.path_energy(xs, ts))
        25.0

    References:
        Benamou and Brenier (2000), A computational fluid mechanics solution to the
        Monge-Kantorovich mass transfer problem. Numer. Math. 84.
    """
    xs, ts = _check_trajectory(xs, ts)
    dx = xs[1:] - xs[:-1]
    dt = (ts[1:] - ts[:-1]).reshape(-1, 1)
    return jnp.sum(jnp.mean(jnp.sum(dx * dx, axis=-1), axis=-1) / dt[:, 0])


def normalized_path_energy(
    xs: Float[ArrayLike, "T n ..."],
    ts: Float[ArrayLike, " _T"],
    x1: Float[ArrayLike, "_n ..."] | None = None,
    *,
    w2_squared: Float[ArrayLike, ""] | None = None,
) -> Float[Array, ""]:
    r"""Normalized path energy ``NPE = |PE - W_2^2(q_0, q_1)| / W_2^2(q_0, q_1)``.

    ``PE`` is :func:`path_energy` of the trajectories and ``W_2^2(q_0, q_1)`` the exact
    squared 2-Wasserstein distance between the source samples ``xs[0]`` and reference
    data ``x1`` (:func:`w2`), the least energy any flow between the two needs (over unit
    time). ``NPE = 0`` for a flow along the OT displacement interpolation; Tong et al.
    (2024) report it to compare how close to OT the learned flows are.

    Args:
        xs: ``[T, N, *event]`` trajectories from the source ``xs[0]`` (over unit time).
        ts: ``[T]`` increasing times.
        x1: ``[N, *event]`` data samples (as many as ``xs[0]``), or ``None`` when
            ``w2_squared`` is given.
        w2_squared: a precomputed ``W_2^2(xs[0], x1)`` (e.g. shared by several models
            evaluated from the same sources), instead of ``x1``.

    Returns:
        Scalar of the dtype of ``xs``.

    Raises:
        ValueError: both or neither of ``x1`` and ``w2_squared``; the checks of
            :func:`path_energy` and :func:`w2`.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> ts = jnp.linspace(0.0, 1.0, 3)
        >>> x0 = jnp.array([[0.0], [1.0]])
        >>> xs = x0[None] + ts[:, None, None] * 2.0  # a translation by 2, straight
        >>> float(jfm.metrics.normalized_path_energy(xs, ts, x0 + 2.0))
        0.0

    References:
        Tong et al., "Improving and Generalizing Flow-Based Generative Models with
        Minibatch Optimal Transport", TMLR 2024.
    """
    if (x1 is None) == (w2_squared is None):
        raise ValueError(
            "Pass exactly one of `x1` (data samples) and `w2_squared` (a precomputed "
            f"W2^2 between xs[0] and the data); got x1={'None' if x1 is None else 'array'}, "
            f"w2_squared={w2_squared!r}."
        )
    pe = path_energy(xs, ts)
    if w2_squared is None:
        x0 = jnp.asarray(xs)[0]
        x1 = check_finite(check_array(x1, "x1"), "x1")
        if x1.shape != x0.shape:
            raise ValueError(
                f"`x1` must be data samples shaped like the sources xs[0], {x0.shape}; got "
                f"shape {x1.shape}."
            )
        if x1.dtype != x0.dtype:
            raise TypeError(f"`x1` must have the dtype of `xs`, {x0.dtype}; got {x1.dtype}.")
        w2_squared = w2(x0, x1, squared=True)
    w2_squared = jnp.asarray(w2_squared).astype(pe.dtype)
    return jnp.abs(pe - w2_squared) / w2_squared


def straightness(xs: Float[ArrayLike, "T n ..."], ts: Float[ArrayLike, " _T"]) -> Float[Array, ""]:
    r"""Straightness ``S`` of trajectories (Liu et al. 2023): 0 iff straight at constant speed.

    .. math::
        S = \mathbb{E} \int_{t_0}^{t_1} \Big|\frac{x_{t_1} - x_{t_0}}{t_1 - t_0}
            - \dot x_t\Big|^2 dt
          = \mathrm{PE} - \frac{\mathbb{E}|x_{t_1} - x_{t_0}|^2}{t_1 - t_0} \;\ge 0,

    computed on the piecewise-linear interpolation of the saved states (the identity
    holds exactly there). A flow with ``S = 0`` is integrated exactly by one Euler step.

    Args:
        xs: ``[T, N, *event]`` trajectories; ts: ``[T]`` increasing times.

    Returns:
        Scalar of the dtype of ``xs`` (``>= 0`` up to round-off).

    Raises:
        ValueError, TypeError: as :func:`path_energy`.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> ts = jnp.linspace(0.0, 1.0, 3)
        >>> xs = jnp.array([[[0.0]], [[2.0]], [[2.0]]])  # all the motion in the first half
        >>> float(jfm.metrics.straightness(xs, ts))  # 8 - 4
        4.0

    References:
        Liu, Gong, Liu, "Flow Straight and Fast: Learning to Generate and Transfer Data
        with Rectified Flow", ICLR 2023.
    """
    flat, tsc = _check_trajectory(xs, ts)
    d = flat[-1] - flat[0]
    return path_energy(xs, ts) - jnp.mean(jnp.sum(d * d, axis=-1)) / (tsc[-1] - tsc[0])
