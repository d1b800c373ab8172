r"""The rotation group ``SO(3)`` as 3x3 matrices, with its bi-invariant metric."""

import math

import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr

from .base import AbstractManifold, sinc, vnorm

#: Newton iterations of the polar decomposition in ``SO3.proj`` (quadratic convergence;
#: with Higham's scaling 8 reach round-off from any well-conditioned matrix).
_POLAR_ITERS = 8


def hat(w):
    """``(3,) -> (3, 3)``: the skew matrix ``[w]_x`` with ``[w]_x u = w x u``."""
    z = jnp.zeros_like(w[0])
    return jnp.stack(
        [
            jnp.stack([z, -w[2], w[1]]),
            jnp.stack([w[2], z, -w[0]]),
            jnp.stack([-w[1], w[0], z]),
        ]
    )


def vee(a):
    """``(3, 3) -> (3,)``: the inverse of :func:`hat` on the skew part of ``a``."""
    return 0.5 * jnp.stack([a[2, 1] - a[1, 2], a[0, 2] - a[2, 0], a[1, 0] - a[0, 1]])


def expm_so3(w):
    """Rodrigues' formula ``Exp(w) = I + sinc(t) W + (1/2) sinc(t/2)^2 W^2``, ``t = |w|``."""
    t = vnorm(w)
    wh = hat(w)
    half = sinc(0.5 * t)
    return jnp.eye(3, dtype=w.dtype) + sinc(t) * wh + 0.5 * half * half * (wh @ wh)


def logm_so3(r):
    """``Log(R) in R^3`` with ``|Log R| in [0, pi]``, accurate near 0 and near ``pi``.

    ``theta = atan2(|s|, c)`` with ``s = vee(R - R^T) / 2 = sin(theta) a`` and
    ``c = (tr R - 1) / 2``; ``w = s / sinc(theta)`` except near ``pi`` (``c < -0.9``),
    where the axis comes from the symmetric part ``(R + R^T)/2 - c I = (1 - c) a a^T``
    (its largest column), signed by ``s``.
    """
    s = vee(r)
    c = 0.5 * (jnp.trace(r) - 1)
    theta = jnp.arctan2(vnorm(s), c)
    near = c < -0.9
    w_main = s / jnp.where(near, jnp.ones_like(theta), sinc(theta))
    b = 0.5 * (r + r.T) - c * jnp.eye(3, dtype=r.dtype)
    j = jnp.argmax(jnp.diagonal(b))
    col = b[:, j]
    den = jnp.sqrt(jnp.maximum((1 - c) * b[j, j], jnp.finfo(r.dtype).tiny))
    a = col / den
    a = a / vnorm(a)
    a = jnp.where(jnp.sum(a * s) < 0, -a, a)
    return jnp.where(near, theta * a, w_main)


def _polar(x):
    """The orthogonal polar factor of ``x`` (``det x > 0``) by scaled Newton iterations
    ``X <- (g X + X^{-T} / g) / 2``, ``g = (|X^{-1}|_F / |X|_F)^{1/2}`` (Higham 1986)."""

    def body(_, xk):
        inv = jnp.linalg.inv(xk)
        g = jnp.sqrt(jnp.linalg.norm(inv) / jnp.linalg.norm(xk))
        return 0.5 * (g * xk + inv.T / g)

    return lax.fori_loop(0, _POLAR_ITERS, body, x)


class SO3(AbstractManifold):
    r"""The rotation group ``SO(3)``, points as rotation matrices (shape ``(3, 3)``).

    Matrices, not unit quaternions: a matrix is one rotation (quaternions double-cover
    ``SO(3)``, so a density on them must be symmetrized and geodesics chosen between
    ``q`` and ``-q``), and models output a Lie-algebra vector ``w`` whose tangent vector
    is ``R [w]_x`` directly (:class:`jfm.models.ManifoldMLP`).

    Tangent vectors at ``R`` are ``V = R [w]_x`` (``[w]_x`` the skew matrix of
    ``w in R^3``); the bi-invariant metric ``g_R(U, V) = tr(U^T V) / 2`` makes
    ``|R [w]_x| = |w|`` and the distance the rotation angle,
    ``d(R, Q) = |Log(R^T Q)| in [0, pi]``. Geodesics are ``R Exp(t w)``:

    .. math::
        \exp_R(V) = R\, \mathrm{Exp}(\mathrm{vee}(R^T V)), \qquad
        \log_R(Q) = R\, [\mathrm{Log}(R^T Q)]_\times,

    with Rodrigues' formula for ``Exp`` (series near 0) and ``Log`` accurate near 0 and
    near ``pi`` (at angle ``pi`` exactly the two opposite axes are both shortest; one is
    returned). ``proj`` is the orthogonal polar factor (the closest rotation in the
    Frobenius norm, for matrices with positive determinant), by scaled Newton
    iterations: differentiable, and its derivative on ``SO(3)`` is the tangent projector
    ``V -> R skew(R^T V)``. Parallel transport along ``R Exp(t xi)`` maps ``R [u]_x`` to
    ``Q [Exp(-xi/2) u]_x``. ``vol(SO(3)) = 8 pi^2`` for this metric; uniform draws (Haar)
    come from normalized 4-d Gaussians read as unit quaternions.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> so3 = jfm.SO3()
        >>> r = so3.exp(jnp.eye(3), so3.proj_tangent(jnp.eye(3), jnp.ones((3, 3))))
        >>> float(jnp.abs(r.T @ r - jnp.eye(3)).max()) < 1e-6
        True
    """

    @property
    def event_shape(self):
        return (3, 3)

    @property
    def dim(self):
        return 3

    @property
    def compact(self):
        return True

    @property
    def log_volume(self):
        return math.log(8 * math.pi**2)

    def exp(self, x, v):
        return x @ expm_so3(vee(x.T @ v))

    def log(self, x, y):
        return x @ hat(logm_so3(x.T @ y))

    def dist(self, x, y):
        r = x.T @ y
        return jnp.arctan2(vnorm(vee(r)), 0.5 * (jnp.trace(r) - 1))

    def proj(self, x):
        return _polar(x)

    def proj_tangent(self, x, v):
        a = x.T @ v
        return x @ (0.5 * (a - a.T))

    def inner(self, x, u, v):
        return 0.5 * jnp.sum(u * v)

    def transport(self, x, y, v):
        xi = logm_so3(x.T @ y)
        u = vee(x.T @ v)
        return y @ hat(expm_so3(-0.5 * xi) @ u)

    def _uniform(self, key, dtype):
        q = jr.normal(key, (4,), dtype)
        w, i, j, k = q / jnp.linalg.norm(q)
        return jnp.stack(
            [
                jnp.stack([1 - 2 * (j * j + k * k), 2 * (i * j - k * w), 2 * (i * k + j * w)]),
                jnp.stack([2 * (i * j + k * w), 1 - 2 * (i * i + k * k), 2 * (j * k - i * w)]),
                jnp.stack([2 * (i * k - j * w), 2 * (j * k + i * w), 1 - 2 * (i * i + j * j)]),
            ]
        )
