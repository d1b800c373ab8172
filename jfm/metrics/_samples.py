r"""Distances between two sample sets: energy distance, MMD and the exact W2.

Energy distance and MMD compare an ``[N, *event]`` set ``x`` with an ``[M, *event]`` set
``y`` (image-shaped events are flattened to ``D = prod(event)`` features) through all
``N x M`` (and ``N x N``, ``M x M``) pairwise Euclidean distances. Pairwise differences
are formed directly (never as ``|x|^2 + |y|^2 - 2 x.y``, which loses all precision for
close points) in blocks of rows, so memory is ``O(chunk * M * D)`` and the ``N x M``
matrix is never stored; time is ``O((N + M)^2 D)``, comfortable up to ``N, M ~ 10^4`` on
one device. :func:`w2` needs equal sizes and stores the ``N x N`` cost matrix for its
exact assignment (``O(N^3)`` time). Everything is jit-able, vmap-able and
differentiable (``chunk`` is static).
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_array, check_bool, check_finite, check_int, is_concrete
from .._custom_types import RealScalarLike
from .._ot import exact_assignment, sq_cost

#: Default block size, in elements of the ``[chunk, M, D]`` difference block (128 MiB in
#: float32). A memory/speed knob only: results do not depend on it beyond round-off.
_CHUNK_ELEMENTS = 2**25


def _as_sets(x, y):
    """Check two sample sets and flatten them to ``[N, D]``, ``[M, D]``."""
    x = check_finite(check_array(x, "x"), "x")
    y = check_finite(check_array(y, "y"), "y")
    for name, a in (("x", x), ("y", y)):
        if a.ndim < 2:
            raise ValueError(
                f"`{name}` must have shape [num_samples, *event] (at least 2 dimensions); got "
                f"shape {a.shape}. For 1-D samples pass {name}[:, None]."
            )
        if a.shape[0] == 0:
            raise ValueError(f"`{name}` must hold at least one sample; got shape {a.shape}.")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"`x` and `y` must have the same event (feature) shape; got x.shape={x.shape}, "
            f"y.shape={y.shape}."
        )
    if x.dtype != y.dtype:
        raise TypeError(
            f"`x` and `y` must have the same dtype; got x.dtype={x.dtype}, y.dtype={y.dtype}."
        )
    return x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)


def _pair_sum(x, y, fn: Callable[[Array], Array], chunk: int | None) -> Array:
    r"""``sum_{i,j} fn(|x_i - y_j|^2)`` with ``fn`` elementwise; blocks of rows of ``x``."""

    def row(xi):
        d = xi.reshape(1, -1) - y
        return jnp.sum(fn(jnp.sum(d * d, axis=-1)))

    n, m, dim = x.shape[0], y.shape[0], x.shape[1]
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMENTS // max(m * dim, 1))
    if chunk >= n:
        return jnp.sum(jax.vmap(row)(x))
    # Rematerialise each block in the backward pass: keeps reverse mode at O(chunk*M*D).
    return jnp.sum(jax.lax.map(jax.checkpoint(row), x, batch_size=chunk))


def _safe_sqrt(sq: Array) -> Array:
    """``sqrt(sq)`` with a zero (not NaN) gradient at ``sq = 0`` (coincident points)."""
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, jnp.ones_like(sq))), jnp.zeros_like(sq))


def _check_options(x, y, unbiased: bool, chunk: int | None):
    """``chunk``: ``None`` or an int ``>= 1``; ``unbiased`` needs 2 samples per set."""
    if chunk is not None:
        check_int(chunk, "chunk")
    if check_bool(unbiased, "unbiased"):
        for name, a in (("x", x), ("y", y)):
            if a.shape[0] < 2:
                raise ValueError(
                    f"`{name}` must hold at least 2 samples for the unbiased (U-statistic) "
                    "estimate; got 1. Pass unbiased=False."
                )


def _within_mean(total: Array, n: int, diag: Array | float, unbiased: bool) -> Array:
    """Mean over pairs of one set: all ``n^2`` (V) or the ``n (n - 1)`` off-diagonal (U)."""
    if not unbiased:
        return total / float(n * n)
    return (total - diag) / float(n * (n - 1))


def energy_distance(
    x: Float[ArrayLike, "n ..."],
    y: Float[ArrayLike, "m ..."],
    *,
    unbiased: bool = False,
    chunk: int | None = None,
) -> Float[Array, ""]:
    r"""Energy distance between two sample sets (the squared form, :math:`D^2 \ge 0`).

    .. math::
        D^2(x, y) = \frac{2}{NM}\sum_{i,j} |x_i - y_j|
                  - \frac{1}{N^2}\sum_{i,i'} |x_i - x_{i'}|
                  - \frac{1}{M^2}\sum_{j,j'} |y_j - y_{j'}|

    with Euclidean norms (Székely & Rizzo). This V-statistic is the energy distance of the
    two empirical distributions: ``>= 0`` (up to round-off), ``0`` iff they are equal
    (e.g. one set is a permutation of the other), symmetric. Its mean overestimates the
    population value ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` by ``E|X-X'|/N + E|Y-Y'|/M``;
    ``unbiased=True`` averages the within-set terms over ``i != i'`` instead (a
    U-statistic in those terms, unbiased, and possibly slightly negative). Coincident
    points (the diagonal, or ``x_i == y_j``) contribute 0 with a zero gradient, never NaN.

    Args:
        x: ``[N, *event]`` samples (``[N, D]`` points or ``[N, H, W, C]`` images).
        y: ``[M, *event]`` samples, same event shape and dtype as ``x``.
        unbiased: exclude the ``i = i'`` terms from the within-set means.
        chunk: rows of ``x`` (and of ``y`` for its own term) handled at once, a Python
            int ``>= 1``; default (``None``) chooses blocks of about ``2^25`` elements of
            ``[chunk, M, D]``. Static; the result does not depend on it beyond round-off.

    Returns:
        Scalar of the dtype of ``x``.

    Raises:
        ValueError: fewer than 2 dimensions, an empty set, mismatched event shapes,
            ``chunk < 1``, or (``unbiased``) a set of one sample.
        TypeError: non-floating or mismatched dtypes; ``chunk`` not an int or
            ``unbiased`` not a bool.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> x = jnp.array([[0.0], [1.0]])
        >>> float(jfm.metrics.energy_distance(x, x))
        0.0
        >>> float(jfm.metrics.energy_distance(x, x + 1))  # 2 * 1 - 1/2 - 1/2
        1.0

    References:
        Székely, G. J. and Rizzo, M. L. (2013). Energy statistics: a class of statistics
        based on distances. J. Stat. Plan. Inference 143(8).
    """
    x, y = _as_sets(x, y)
    _check_options(x, y, unbiased, chunk)
    return _energy_distance(x, y, unbiased, chunk)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _energy_distance(x, y, unbiased, chunk):
    # Jitted after the Python-side checks: one compilation per shape instead of eager
    # dispatch of every primitive (seconds per new shape); inlined under an outer jit.
    n, m = x.shape[0], y.shape[0]
    exy = _pair_sum(x, y, _safe_sqrt, chunk) / float(n * m)
    exx = _within_mean(_pair_sum(x, x, _safe_sqrt, chunk), n, 0.0, unbiased)
    eyy = _within_mean(_pair_sum(y, y, _safe_sqrt, chunk), m, 0.0, unbiased)
    return 2 * exy - exx - eyy


def _check_bandwidth(bandwidth, dtype) -> Array:
    """Bandwidth(s) as a 1-D array of ``dtype``, checked ``> 0`` when concrete."""
    if isinstance(bandwidth, (list, tuple)):
        if not bandwidth:
            raise ValueError("`bandwidth` must be a positive float or a non-empty sequence.")
        bandwidth = np.asarray(bandwidth) if is_concrete(bandwidth) else jnp.stack(bandwidth)
    if isinstance(bandwidth, bool) or not isinstance(
        bandwidth, (int, float, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(
            f"`bandwidth` must be a positive float or a sequence of them; got {type(bandwidth)}."
        )
    bw = jnp.asarray(bandwidth)
    if bw.ndim > 1 or bw.size == 0:
        raise ValueError(
            f"`bandwidth` must be a positive float or a non-empty 1-D sequence; got shape "
            f"{bw.shape}."
        )
    if not jnp.issubdtype(bw.dtype, jnp.floating) and not jnp.issubdtype(bw.dtype, jnp.integer):
        raise TypeError(f"`bandwidth` must be real; got dtype {bw.dtype}.")
    if is_concrete(bw):
        vals = np.asarray(bw, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(vals) & (vals > 0)):
            raise ValueError(f"`bandwidth` must be finite and > 0; got {vals.tolist()}.")
    return bw.reshape(-1).astype(dtype)


def mmd(
    x: Float[ArrayLike, "n ..."],
    y: Float[ArrayLike, "m ..."],
    *,
    bandwidth: RealScalarLike | Sequence[RealScalarLike] | Float[ArrayLike, "*_k"],
    unbiased: bool = False,
    chunk: int | None = None,
) -> Float[Array, ""]:
    r"""Squared maximum mean discrepancy with a (multi-scale) Gaussian RBF kernel.

    .. math::
        \mathrm{MMD}^2 = \frac{1}{N^2}\sum_{i,i'} k(x_i, x_{i'})
                       + \frac{1}{M^2}\sum_{j,j'} k(y_j, y_{j'})
                       - \frac{2}{NM}\sum_{i,j} k(x_i, y_j),
        \qquad k(a, b) = \sum_{\ell} \exp\!\Big(-\frac{|a - b|^2}{2\ell^2}\Big),

    the sum running over the bandwidths ``bandwidth`` (one or several; a sum of RBF
    kernels is a characteristic kernel, robust to a poorly chosen single scale). This
    V-statistic (biased, ``>= 0``: it is the squared RKHS distance between the empirical
    mean embeddings) is the default; ``unbiased=True`` gives the U-statistic of Gretton
    et al. (2012), which drops the ``i = i'`` and ``j = j'`` terms, is unbiased for the
    population ``MMD^2``, and can be slightly negative.

    Args:
        x: ``[N, *event]`` samples (``[N, D]`` points or ``[N, H, W, C]`` images).
        y: ``[M, *event]`` samples, same event shape and dtype as ``x``.
        bandwidth: kernel length scale ``l > 0``, or a sequence / 1-D array of them
            (multi-scale sum). In the units of the (flattened) features; required: the
            right scale depends on the data (the median pairwise distance is a common
            choice).
        unbiased: U-statistic instead of V-statistic.
        chunk: rows handled at once (see :func:`energy_distance`). Static.

    Returns:
        Scalar ``MMD^2`` of the dtype of ``x``.

    Raises:
        ValueError: fewer than 2 dimensions, an empty set, mismatched event shapes, a
            bandwidth ``<= 0`` or non-finite, ``chunk < 1``, or (``unbiased``) a set of
            one sample.
        TypeError: non-floating or mismatched dtypes; ``chunk`` not an int or
            ``unbiased`` not a bool.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> x = jnp.array([[0.0], [1.0]])
        >>> float(jfm.metrics.mmd(x, x, bandwidth=1.0))
        0.0

    References:
        Gretton, A. et al. (2012). A kernel two-sample test. JMLR 13.
    """
    x, y = _as_sets(x, y)
    _check_options(x, y, unbiased, chunk)
    return _mmd(x, y, _check_bandwidth(bandwidth, x.dtype), unbiased, chunk)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _mmd(x, y, bw, unbiased, chunk):
    scale = (-0.5 / bw**2).reshape(1, -1)

    def kernel(sq):  # sq [M] -> [M]: sum over bandwidths
        return jnp.sum(jnp.exp(sq.reshape(-1, 1) * scale), axis=-1)

    n, m = x.shape[0], y.shape[0]
    k_diag = float(bw.shape[0])  # k(a, a) = number of bandwidths, exactly
    kxy = _pair_sum(x, y, kernel, chunk) / float(n * m)
    kxx = _within_mean(_pair_sum(x, x, kernel, chunk), n, n * k_diag, unbiased)
    kyy = _within_mean(_pair_sum(y, y, kernel, chunk), m, m * k_diag, unbiased)
    return kxx + kyy - 2 * kxy


def w2(
    x: Float[ArrayLike, "n ..."],
    y: Float[ArrayLike, "_n ..."],
    *,
    squared: bool = False,
) -> Float[Array, ""]:
    r"""Exact 2-Wasserstein distance between two equal-size sample sets (uniform weights).

    .. math::
        W_2(x, y) = \Big(\min_{\pi \in S_N} \frac{1}{N} \sum_{i=1}^N
                    |x_i - y_{\pi(i)}|^2\Big)^{1/2}

    between the empirical measures ``(1/N) sum_i delta_{x_i}`` and
    ``(1/N) sum_j delta_{y_j}``. For equal sizes and uniform weights an optimal plan is a
    permutation (Birkhoff-von Neumann), found exactly by the Hungarian algorithm
    (:func:`optax.assignment.hungarian_algorithm`, ``O(N^3)`` time, ``O(N^2)`` memory
    for the cost matrix, whose entries are formed from direct differences). No entropic
    blur: this is the value POT's ``ot.emd2`` gives (as used by torchcfm's benchmark),
    square-rooted. Symmetric; ``0`` iff ``y`` is a permutation of ``x``.

    Gradients (with respect to ``x`` and ``y``) are those of the transport cost at the
    fixed optimal permutation, the envelope theorem; at ``W_2 = 0`` the gradient of the
    square root is set to 0 (not NaN).

    Args:
        x: ``[N, *event]`` samples (``[N, D]`` points or ``[N, H, W, C]`` images,
            flattened to ``D`` features).
        y: ``[N, *event]`` samples: the same number ``N``, event shape and dtype as ``x``.
        squared: return ``W_2^2`` instead of ``W_2``.

    Returns:
        Scalar of the dtype of ``x``.

    Raises:
        ValueError: fewer than 2 dimensions, an empty set, mismatched event shapes, or a
            different number of samples in ``x`` and ``y``.
        TypeError: non-floating or mismatched dtypes, ``squared`` not a bool.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> x = jnp.array([[0.0], [1.0]])
        >>> float(jfm.metrics.w2(x, x[::-1]))
        0.0
        >>> float(jfm.metrics.w2(x, x + 3.0))  # a translation moves every point by 3
        3.0

    References:
        Villani, C. (2009). Optimal Transport, Old and New. Springer. Kuhn, H. W. (1955).
        The Hungarian method for the assignment problem. Naval Res. Logist. Q. 2.
    """
    x, y = _as_sets(x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`x` and `y` must hold the same number of samples for the exact W2 of uniform "
            f"empirical measures; got x.shape[0]={x.shape[0]}, y.shape[0]={y.shape[0]}. "
            "Subsample the larger set to the size of the smaller."
        )
    sq = _w2_squared(x, y)
    return sq if check_bool(squared, "squared") else _safe_sqrt(sq)


@jax.jit
def _w2_squared(x, y):
    # One compilation per shape for both W2 and W2^2 (the root is taken outside).
    cost = sq_cost(x, y)
    perm = exact_assignment(cost)
    return jnp.mean(cost[jnp.arange(x.shape[0]), perm])
