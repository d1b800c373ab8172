"""Two-dimensional toy distributions, as pure functions of a PRNG key.

Every generator returns ``n`` i.i.d. rows of a fixed distribution on the plane, shaped
``[n, 2]``, in the dtype asked for (default: JAX's default float, i.e. float64 when
``jax_enable_x64`` is on, else float32). They are written in ``jax.numpy``: jit-able with
``n`` static (``jax.jit(jfm.data.moons, static_argnums=0)``), deterministic given the
key, and free of NumPy / scikit-learn randomness.

Scales follow the toy sets of FFJORD (Grathwohl et al., 2019), which torchcfm and Meta's
``flow_matching`` examples reuse: every set lies (up to its noise tails) in ``[-4, 4]^2``
with per-coordinate standard deviations between about 1 and 2.3. Each docstring states
the exact construction, mean and variance.
"""

import math
from collections.abc import Callable

import jax.numpy as jnp
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_int, check_key, check_name, check_scalar, is_concrete
from .._custom_types import RealScalarLike

# -- argument checks and shared steps ----------------------------------------------------


def float_dtype(dtype) -> jnp.dtype:
    """A floating dtype; ``None`` means JAX's default float."""
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype (e.g. jnp.float32); got {dtype}.")
    return dtype


def _setup(n, key, dtype, **params):
    """Check ``n`` (rows, a Python int >= 0), ``key``, ``dtype`` and scalar ``params >= 0``.

    Returns ``(n, key, dtype, *params)``, each parameter a 0-d array of ``dtype``.
    """
    n = check_int(n, "n", lo=0)
    key, dtype = check_key(key), float_dtype(dtype)
    return n, key, dtype, *(check_scalar(v, name, dtype, lo=0.0) for name, v in params.items())


def _with_noise(p: Array, noise: Array, key: PRNGKeyArray) -> Array:
    """``p + noise * N(0, I)`` for ``[n, 2]`` points ``p``."""
    return p + noise * jr.normal(key, p.shape, p.dtype)


def _row(*values, dtype) -> Array:
    """A ``(1, 2)`` row (explicit rank for ``jax_numpy_rank_promotion="raise"``)."""
    return jnp.asarray(values, dtype).reshape(1, 2)


# -- generators ------------------------------------------------------------------------


def moons(
    n: int, *, key: PRNGKeyArray, noise: RealScalarLike = 0.05, dtype: DTypeLike | None = None
) -> Float[Array, "n 2"]:
    r"""Two interleaving half circles (scikit-learn's ``make_moons``, random angles).

    With a fair coin per row and :math:`\theta \sim U[0, \pi]`, a point of the upper moon
    is :math:`(\cos\theta, \sin\theta)`, of the lower moon :math:`(1 - \cos\theta,
    \tfrac12 - \sin\theta)`; Gaussian noise of std ``noise`` is added in these
    (scikit-learn) coordinates, then the set is centred and doubled:

    .. math:: x = 2\,\big(p + \text{noise}\,\varepsilon - (\tfrac12, \tfrac14)\big).

    Mean ``(0, 0)``; per-coordinate variance ``(3 + 4 noise^2, 9/4 - 4/pi + 4 noise^2)``,
    about ``(3.01, 0.98)`` at the default noise. Range about ``[-3, 3] x [-1.5, 1.5]``.

    Args:
        n: number of rows (a Python int; static under ``jax.jit``).
        key: PRNG key.
        noise: std of the isotropic Gaussian noise in scikit-learn's units (the returned
            points carry ``2 * noise``). ``0`` puts every point on the two arcs.
        dtype: floating dtype of the result; default JAX's default float.

    Returns:
        ``[n, 2]`` samples of ``dtype``.

    Raises:
        TypeError: ``n`` not an int, ``key`` not a PRNG key, ``dtype`` not floating.
        ValueError: ``n < 0`` or ``noise < 0``.

    Examples:
        >>> import jax, jfm
        >>> jfm.data.moons(256, key=jax.random.key(0)).shape
        (256, 2)
    """
    n, key, dtype, noise = _setup(n, key, dtype, noise=noise)
    k_moon, k_theta, k_eps = jr.split(key, 3)
    upper = jr.bernoulli(k_moon, 0.5, (n,))
    theta = jr.uniform(k_theta, (n,), dtype, 0.0, math.pi)
    c, s = jnp.cos(theta), jnp.sin(theta)
    p = jnp.stack([jnp.where(upper, c, 1 - c), jnp.where(upper, s, 0.5 - s)], axis=-1)
    return 2 * (_with_noise(p, noise, k_eps) - _row(0.5, 0.25, dtype=dtype))


def eight_gaussians(
    n: int,
    *,
    key: PRNGKeyArray,
    radius: RealScalarLike = 2 * math.sqrt(2),
    std: RealScalarLike = 0.5 / math.sqrt(2),
    dtype: DTypeLike | None = None,
) -> Float[Array, "n 2"]:
    r"""An equal-weight mixture of eight isotropic Gaussians on a circle.

    Centres :math:`\mu_k = r(\cos(k\pi/4), \sin(k\pi/4))`, ``k = 0..7``, each row picks one
    uniformly and adds ``std * N(0, I)``. The defaults are FFJORD's "8gaussians" (centres
    at radius ``4/sqrt(2)``, std ``0.5/sqrt(2)``). Mean ``(0, 0)``; per-coordinate variance
    ``radius^2 / 2 + std^2`` (4.125 at the defaults).

    Args:
        n: number of rows (static).
        key: PRNG key.
        radius: distance of the centres from the origin (``>= 0``).
        std: standard deviation of each component, per coordinate (``>= 0``).
        dtype: floating dtype of the result; default JAX's default float.

    Returns:
        ``[n, 2]`` samples of ``dtype``.

    Raises:
        TypeError: ``n`` not an int, ``key`` not a PRNG key, ``dtype`` not floating.
        ValueError: ``n < 0``, ``radius < 0`` or ``std < 0``.
    """
    n, key, dtype, radius, std = _setup(n, key, dtype, radius=radius, std=std)
    k_comp, k_eps = jr.split(key)
    angle = jr.randint(k_comp, (n,), 0, 8).astype(dtype) * (math.pi / 4)
    centres = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return _with_noise(centres, std, k_eps)


def checkerboard(
    n: int, *, key: PRNGKeyArray, dtype: DTypeLike | None = None
) -> Float[Array, "n 2"]:
    r"""Uniform on the eight "black" squares of a 4 x 4 checkerboard covering ``[-4, 4]^2``.

    Squares have side 2; a point ``x`` is in a black square iff
    ``floor(x_1 / 2) + floor(x_2 / 2)`` is even (so the square ``[0, 2)^2`` is black). This
    is FFJORD's "checkerboard" (and, up to the factor ``2`` vs ``1/0.45``, Meta
    ``flow_matching``'s). Mean ``(0, 0)``; each coordinate is marginally ``U[-4, 4]``,
    variance ``16/3``. No noise: the density is piecewise constant.

    Args:
        n: number of rows (static).
        key: PRNG key.
        dtype: floating dtype of the result; default JAX's default float.

    Returns:
        ``[n, 2]`` samples of ``dtype``.

    Raises:
        TypeError: ``n`` not an int, ``key`` not a PRNG key, ``dtype`` not floating.
        ValueError: ``n < 0``.
    """
    n, key, dtype = _setup(n, key, dtype)
    k1, k2, k_row = jr.split(key, 3)
    x1 = jr.uniform(k1, (n,), dtype, -2.0, 2.0)
    # In units of one square: a column floor(x1) gets rows of the same parity as it.
    x2 = jr.uniform(k2, (n,), dtype) - 2 * jr.bernoulli(k_row, 0.5, (n,)).astype(dtype)
    x2 = x2 + jnp.floor(x1) % 2
    return 2 * jnp.stack([x1, x2], axis=-1)


def circles(
    n: int,
    *,
    key: PRNGKeyArray,
    noise: RealScalarLike = 0.05,
    factor: RealScalarLike = 0.5,
    dtype: DTypeLike | None = None,
) -> Float[Array, "n 2"]:
    r"""Two concentric circles (scikit-learn's ``make_circles``, random angles), times 3.

    A fair coin per row picks the outer circle (radius 1) or the inner one (radius
    ``factor``), :math:`\theta \sim U[0, 2\pi)`; Gaussian noise of std ``noise`` is added
    in these units, then everything is multiplied by 3 (as in FFJORD):

    .. math:: x = 3\,\big(r(\cos\theta, \sin\theta) + \text{noise}\,\varepsilon\big),
       \quad r \in \{1, \text{factor}\}.

    Radii are 3 and ``3 * factor`` (1.5 by default). Mean ``(0, 0)``; per-coordinate
    variance ``9 ((1 + factor^2) / 4 + noise^2)`` (about 2.83 at the defaults).

    Args:
        n: number of rows (static).
        key: PRNG key.
        noise: std of the Gaussian noise in scikit-learn's units (``3 * noise`` in the
            output).
        factor: inner radius over outer radius, in ``(0, 1)``.
        dtype: floating dtype of the result; default JAX's default float.

    Returns:
        ``[n, 2]`` samples of ``dtype``.

    Raises:
        TypeError: ``n`` not an int, ``key`` not a PRNG key, ``dtype`` not floating.
        ValueError: ``n < 0``, ``noise < 0`` or ``factor`` outside ``(0, 1)``.
    """
    n, key, dtype, noise = _setup(n, key, dtype, noise=noise)
    factor = check_scalar(factor, "factor", dtype, lo=0.0, strict_lo=True, hi=1.0)
    if is_concrete(factor) and float(factor) == 1.0:
        raise ValueError("`factor` must be < 1 (inner radius over outer); got factor=1.0.")
    k_circ, k_theta, k_eps = jr.split(key, 3)
    r = jnp.where(jr.bernoulli(k_circ, 0.5, (n,)), jnp.ones((), dtype), factor)
    theta = jr.uniform(k_theta, (n,), dtype, 0.0, 2 * math.pi)
    p = r[:, None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    return 3 * _with_noise(p, noise, k_eps)


def spirals(
    n: int, *, key: PRNGKeyArray, noise: RealScalarLike = 0.1, dtype: DTypeLike | None = None
) -> Float[Array, "n 2"]:
    r"""Two interleaved Archimedean spirals (FFJORD's "2spirals", without its jitter).

    With :math:`u \sim U[0, 1]`, :math:`\theta = 3\pi\sqrt{u}` (one and a half turns) and a
    fair sign :math:`s = \pm 1` per row,

    .. math:: x = s\,\frac{\theta}{3}\,(-\cos\theta, \sin\theta) + \text{noise}\,\varepsilon.

    So the radius is ``|x| = theta / 3 <= pi`` and ``(|x| / pi)^2 ~ U[0, 1]`` (points are
    uniform per unit area of the disc they sweep); the two arms are point reflections of
    each other. Mean ``(0, 0)``; per-coordinate variance ``pi^2 / 4 + noise^2`` (about
    2.48 at the default).

    Args:
        n: number of rows (static).
        key: PRNG key.
        noise: std of the Gaussian noise added to the returned points (output units).
        dtype: floating dtype of the result; default JAX's default float.

    Returns:
        ``[n, 2]`` samples of ``dtype``.

    Raises:
        TypeError: ``n`` not an int, ``key`` not a PRNG key, ``dtype`` not floating.
        ValueError: ``n < 0`` or ``noise < 0``.
    """
    n, key, dtype, noise = _setup(n, key, dtype, noise=noise)
    k_arm, k_u, k_eps = jr.split(key, 3)
    sign = 2 * jr.bernoulli(k_arm, 0.5, (n,)).astype(dtype) - 1
    theta = 3 * math.pi * jnp.sqrt(jr.uniform(k_u, (n,), dtype))
    p = (sign * theta / 3)[:, None] * jnp.stack([-jnp.cos(theta), jnp.sin(theta)], axis=-1)
    return _with_noise(p, noise, k_eps)


def s_curve(
    n: int, *, key: PRNGKeyArray, noise: RealScalarLike = 0.05, dtype: DTypeLike | None = None
) -> Float[Array, "n 2"]:
    r"""The S curve (scikit-learn's ``make_s_curve`` seen along its flat axis), times 1.5.

    With :math:`t \sim U[-3\pi/2, 3\pi/2]`, the 2-D projection (scikit-learn's columns 0
    and 2) is :math:`p = (\sin t, \operatorname{sign}(t)(\cos t - 1))`, i.e. two
    three-quarter unit circles centred at ``(0, -1)`` (``t >= 0``) and ``(0, 1)``
    (``t < 0``). Noise of std ``noise`` is added in these units, then

    .. math:: x = 1.5\,(p + \text{noise}\,\varepsilon).

    Mean ``(0, 0)``; per-coordinate variance ``2.25 (1/2 + noise^2, 3/2 + 4/(3 pi) +
    noise^2)``, about ``(1.13, 4.33)`` at the default. Range about ``[-1.5, 1.5] x [-3, 3]``.

    Args:
        n: number of rows (static).
        key: PRNG key.
        noise: std of the Gaussian noise in scikit-learn's units (``1.5 * noise`` in the
            output).
        dtype: floating dtype of the result; default JAX's default float.

    Returns:
        ``[n, 2]`` samples of ``dtype``.

    Raises:
        TypeError: ``n`` not an int, ``key`` not a PRNG key, ``dtype`` not floating.
        ValueError: ``n < 0`` or ``noise < 0``.
    """
    n, key, dtype, noise = _setup(n, key, dtype, noise=noise)
    k_t, k_eps = jr.split(key)
    t = jr.uniform(k_t, (n,), dtype, -1.5 * math.pi, 1.5 * math.pi)
    p = jnp.stack([jnp.sin(t), jnp.sign(t) * (jnp.cos(t) - 1)], axis=-1)
    return 1.5 * _with_noise(p, noise, k_eps)


def swiss_roll(
    n: int, *, key: PRNGKeyArray, noise: RealScalarLike = 1.0, dtype: DTypeLike | None = None
) -> Float[Array, "n 2"]:
    r"""The Swiss roll (scikit-learn's ``make_swiss_roll`` seen along its axis), over 5.

    With :math:`t \sim U[3\pi/2, 9\pi/2]` (one and a half turns), the 2-D projection
    (scikit-learn's columns 0 and 2) is the spiral :math:`p = t(\cos t, \sin t)`; noise of
    std ``noise`` is added in these units, then (as FFJORD)

    .. math:: x = (p + \text{noise}\,\varepsilon) / 5.

    So ``5 |x| = t`` (noise-free) and the angle of ``x`` equals ``t`` mod ``2 pi``. Not
    centred: mean ``(2/5, 2/(15 pi)) ~ (0.40, 0.04)``; variance about ``(1.75, 1.93)`` plus
    ``noise^2 / 25`` per coordinate. Range about ``[-2.9, 2.9]^2``.

    Args:
        n: number of rows (static).
        key: PRNG key.
        noise: std of the Gaussian noise in scikit-learn's units (``noise / 5`` in the
            output). The turns are ``2 pi`` apart in these units.
        dtype: floating dtype of the result; default JAX's default float.

    Returns:
        ``[n, 2]`` samples of ``dtype``.

    Raises:
        TypeError: ``n`` not an int, ``key`` not a PRNG key, ``dtype`` not floating.
        ValueError: ``n < 0`` or ``noise < 0``.
    """
    n, key, dtype, noise = _setup(n, key, dtype, noise=noise)
    k_t, k_eps = jr.split(key)
    t = jr.uniform(k_t, (n,), dtype, 1.5 * math.pi, 4.5 * math.pi)
    p = t[:, None] * jnp.stack([jnp.cos(t), jnp.sin(t)], axis=-1)
    return _with_noise(p, noise, k_eps) / 5


# -- registry ----------------------------------------------------------------------------

#: Name -> generator ``fn(n, *, key, dtype=None, **params) -> [n, 2]``.
DATASETS: dict[str, Callable[..., Array]] = {
    "moons": moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "circles": circles,
    "spirals": spirals,
    "s_curve": s_curve,
    "swiss_roll": swiss_roll,
}


def sample(
    name: str, n: int, *, key: PRNGKeyArray, dtype: DTypeLike | None = None, **params
) -> Float[Array, "n 2"]:
    """Draw ``n`` rows from the toy set registered as ``name`` in :data:`DATASETS`.

    Args:
        name: one of ``DATASETS`` (``"moons"``, ``"eight_gaussians"``, ``"checkerboard"``,
            ``"circles"``, ``"spirals"``, ``"s_curve"``, ``"swiss_roll"``).
        n: number of rows (static).
        key: PRNG key.
        dtype: floating dtype of the result; default JAX's default float.
        **params: the generator's own keyword parameters (e.g. ``noise=0.1``).

    Returns:
        ``[n, 2]`` samples, identical to ``DATASETS[name](n, key=key, dtype=dtype, ...)``.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones).

    Examples:
        >>> import jax, jfm
        >>> jfm.data.sample("checkerboard", 8, key=jax.random.key(0)).shape
        (8, 2)
    """
    return DATASETS[check_name(name, "name", tuple(DATASETS))](n, key=key, dtype=dtype, **params)
