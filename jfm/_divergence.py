r"""Divergence of a per-example vector field: exact (forward mode) and Hutchinson estimators.

The divergence of ``f(t, ., args)`` at ``x`` is the trace of its Jacobian,
``div f = tr(df/dx) = sum_i df_i/dx_i``, taken over all event axes of ``x`` (an image
``(H, W, C)`` counts as ``D = H W C`` dimensions). Everything here acts on ONE example;
batch with :func:`jax.vmap`.

- :func:`divergence_exact`: ``D`` Jacobian-vector products with the basis vectors
  (``jax.jvp``, chunked so memory stays bounded), or ``jax.jacfwd`` for small ``D``.
- :func:`divergence_hutchinson`: the unbiased estimate ``u^T J u`` with random probes
  ``u`` (``E[u u^T] = I``), forward mode: one linearization shared by all probes
  (``method="vjp"``: the same estimator in reverse mode, ``(u^T J) u``, for comparison).

The estimators are also values, :class:`ExactDivergence` and :class:`HutchinsonDivergence`,
which the samplers take (``jfm.log_prob(..., divergence=jfm.HutchinsonDivergence(4))``).
"""

import abc
import math

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_array, check_callable, check_int, check_key, check_name, check_scalar
from ._custom_types import Args, RealScalarLike, VectorField
from ._misc import sample_flat

_METHODS: tuple[str, ...] = ("auto", "jvp", "jacfwd")
_NOISES: tuple[str, ...] = ("rademacher", "gaussian")
_HUTCHINSON_METHODS: tuple[str, ...] = ("jvp", "vjp")

#: ``method="auto"`` uses ``jax.jacfwd`` up to this many dimensions, chunked ``jax.jvp``
#: above. Measured in ``benchmarks/divergence.py`` (MLP field, batch 256, CPU): equal
#: times up to D = 8, chunked jvp faster from D = 16 on (jacfwd's D x D Jacobian per
#: example no longer stays in cache).
_JACFWD_MAX_DIM = 8
#: Default number of basis vectors per vmapped chunk of ``method="jvp"``. Measured on
#: CPU (same benchmark): chunks of 8-16 beat 64-128 (under a batch vmap each chunk
#: multiplies the batch; small chunks keep the activations in cache). On accelerators
#: larger chunks usually pay off: pass ``chunk=``.
_DEFAULT_CHUNK = 16


# -- argument checks ---------------------------------------------------------------------


def _check_field(f) -> None:
    check_callable(f, "f")


def check_t(t) -> Array:
    """A scalar time (any value: a field may be evaluated outside [0, 1])."""
    return check_scalar(t, "t")


def _flat_field(f, t, x, args):
    """``g(y) = f(t, y.reshape(event), args).ravel()`` in ``x``'s dtype, shape checked."""
    shape, dtype = x.shape, x.dtype

    def g(y):
        out = f(t, y.reshape(shape), args)
        if not hasattr(out, "shape") or out.shape != shape:
            got = getattr(out, "shape", type(out))
            raise ValueError(
                f"`f` must return an array of the shape of `x` {shape} (dx/dt of ONE "
                f"example); got {got}."
            )
        return jnp.asarray(out).astype(dtype).reshape(-1)

    return g


# -- exact -------------------------------------------------------------------------------


def divergence_exact(
    f: VectorField,
    t: RealScalarLike,
    x: ArrayLike,
    args: Args = None,
    *,
    chunk: int | None = None,
    method: str = "auto",
) -> Float[Array, ""]:
    r"""The exact divergence ``div f(t, x) = tr(d f(t, x, args) / dx)`` of ONE example.

    Forward mode throughout (one column of the Jacobian per tangent):

    - ``method="jvp"``: ``x`` is linearized once (:func:`jax.linearize`) and the linear
      map is applied to the basis vectors ``e_i`` in chunks of ``chunk`` vectors
      (:func:`jax.vmap` inside a chunk, :func:`jax.lax.map` over the
      ``ceil(D / chunk)`` chunks), keeping ``(J e_i)_i``. Memory: one linearization plus
      ``chunk`` tangent passes, whatever ``D``; time: about ``D`` tangent passes.
    - ``method="jacfwd"``: ``jnp.trace(jax.jacfwd(f))``, all ``D`` tangents in one vmap
      (memory ``O(D^2)`` plus ``D`` tangent passes). Fastest for small ``D``.
    - ``method="auto"`` (default): ``"jacfwd"`` when ``D <= 8``, else ``"jvp"`` (the
      measured crossover on CPU, ``benchmarks/divergence.py``); ``"jvp"`` whenever
      ``chunk`` is given.

    Cost: about ``D`` forward passes, so this is meant for small ``D`` (2-D toys, tests)
    and as the reference for :func:`jfm.divergence_hutchinson`.

    Args:
        f: per-example field ``f(t, x, args) -> dx/dt`` (same shape as ``x``).
        t: scalar time.
        x: ``(*event,)`` one example, floating (any event shape; all axes count).
        args: passed to ``f`` unchanged.
        chunk: ``method="jvp"`` only: basis vectors per vmapped chunk, ``>= 1``
            (default ``min(D, 16)``, measured best on CPU). Memory grows with it; on
            accelerators larger chunks are usually faster.
        method: ``"auto"``, ``"jvp"`` or ``"jacfwd"``.

    Returns:
        A scalar in the dtype of ``x``. Works under ``jax.jit``, ``jax.vmap`` and
        ``jax.grad`` (gradients of the divergence need second derivatives of ``f``).

    Raises:
        TypeError: ``f`` not callable, ``x`` not a floating array, ``chunk`` not an int.
        ValueError: ``t`` not a scalar, unknown ``method``, ``chunk < 1``, ``chunk``
            given with ``method="jacfwd"``, ``f`` returning another shape than ``x``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> f = lambda t, x, args: jnp.array([[1.0, 2.0], [3.0, 4.0]]) @ x
        >>> jfm.divergence_exact(f, 0.5, jnp.ones(2), None)
        Array(5., dtype=float32)
    """
    _check_field(f)
    t = check_t(t)
    x = check_array(x, "x")
    check_name(method, "method", _METHODS)
    d = x.size
    if chunk is not None:
        chunk = check_int(chunk, "chunk")
        if method == "jacfwd":
            raise ValueError(
                f"`chunk` applies to method='jvp' only (jacfwd takes all {d} tangents at "
                f"once); got chunk={chunk} with method='jacfwd'."
            )
    method = _resolve_method(method, chunk, d)
    _, div = _value_and_trace(_flat_field(f, t, x, args), x.reshape(-1), method, chunk)
    return div


def _value_and_trace(g, xf, method: str, chunk: int | None):
    """``(g(xf), tr dg/dx)`` for a flat ``g: (D,) -> (D,)``, one primal evaluation."""
    d = xf.shape[0]
    if method == "jacfwd":
        # The primal rides along as aux: jacfwd's vmapped jvp evaluates it once.
        def both(y):
            out = g(y)
            return out, out

        jac, out = jax.jacfwd(both, has_aux=True)(xf)
        return out, jnp.trace(jac)

    c = min(d, _DEFAULT_CHUNK if chunk is None else chunk)
    n_chunks = math.ceil(d / c)
    out, g_lin = jax.linearize(g, xf)
    rows = jnp.arange(c)

    def chunk_trace(start):
        idx = start + rows  # may run past D in the last chunk: those tangents are zero
        basis = jax.nn.one_hot(idx, d, dtype=xf.dtype)  # (c, D), zero rows for idx >= D
        cols = jax.vmap(g_lin)(basis)  # (c, D): row k is J e_{idx_k}
        diag = cols[rows, jnp.minimum(idx, d - 1)]
        return jnp.sum(jnp.where(idx < d, diag, jnp.zeros_like(diag)))

    if n_chunks == 1:
        return out, chunk_trace(0)
    starts = jnp.arange(n_chunks) * c
    return out, jnp.sum(lax.map(chunk_trace, starts))


def _resolve_method(method: str, chunk: int | None, d: int) -> str:
    if method == "auto":
        return "jvp" if (chunk is not None or d > _JACFWD_MAX_DIM) else "jacfwd"
    return method


# -- Hutchinson --------------------------------------------------------------------------


def _draw_probes(key, k: int, shape: tuple[int, ...], noise: str, dtype) -> Array:
    """``k`` probes of ``shape``: Rademacher (+-1) or standard normal, ``E[u u^T] = I``."""
    if noise == "rademacher":
        return sample_flat(jr.rademacher, key, (k, *shape), dtype=dtype)
    return sample_flat(jr.normal, key, (k, *shape), dtype)


def _resolve_probes(key, probes, noise, probe, x) -> Array:
    """Check the Hutchinson options and return the probes ``(K, *event)`` in x's dtype."""
    check_name(noise, "noise", _NOISES)
    if probes is not None:
        probes = check_int(probes, "probes")
    if probe is None:
        if key is None:
            raise TypeError(
                "`key` is required when no `probe` is given: pass key=jax.random.key(0) "
                "(or fixed probes with probe=...)."
            )
        check_key(key)
        return _draw_probes(key, 1 if probes is None else probes, x.shape, noise, x.dtype)
    probe = check_array(probe, "probe")
    if probe.shape[1:] != x.shape or probe.ndim != x.ndim + 1:
        raise ValueError(
            f"`probe` must have shape (K, *event) = (K, {', '.join(map(str, x.shape))}) for "
            f"x.shape={x.shape}; got shape {probe.shape}."
        )
    if probe.shape[0] < 1:
        raise ValueError(f"`probe` must hold at least one probe; got shape {probe.shape}.")
    if probes is not None and probes != probe.shape[0]:
        raise ValueError(
            f"`probes`={probes} does not match the {probe.shape[0]} probes in `probe` "
            f"(shape {probe.shape}); leave probes=None when passing probe=."
        )
    return probe.astype(x.dtype)


def _reduce(est: Array, return_stderr: bool):
    """Mean over probes and, on request, its standard error ``sd / sqrt(K)``."""
    mean = jnp.mean(est)
    if not return_stderr:
        return mean
    k = est.shape[0]
    if k < 2:
        raise ValueError(
            "`return_stderr` needs at least 2 probes (the standard error is the sample "
            f"standard deviation over probes / sqrt(K)); got {k} probe(s)."
        )
    return mean, jnp.std(est, ddof=1) / math.sqrt(k)


def _value_and_hutchinson_terms(g, xf, u, mode: str):
    """``(g(xf), [u_k^T J u_k]_k)`` for a flat ``g``, probes ``u`` ``(K, *event)``."""
    uf = u.reshape(u.shape[0], -1)
    if mode == "jvp":
        out, g_lin = jax.linearize(g, xf)
        ju = jax.vmap(g_lin)(uf)  # (K, D): J u_k, one linearization for all probes
        return out, jnp.sum(uf * ju, axis=1)
    out, g_vjp = jax.vjp(g, xf)
    (uj,) = jax.vmap(g_vjp)(uf)  # (K, D): u_k^T J, a vmapped backward pass
    return out, jnp.sum(uj * uf, axis=1)


def _hutchinson(f, t, x, args, key, probes, noise, probe, return_stderr, mode):
    _check_field(f)
    check_name(mode, "method", _HUTCHINSON_METHODS)
    t = check_t(t)
    x = check_array(x, "x")
    if not isinstance(return_stderr, bool):
        raise TypeError(f"`return_stderr` must be a bool; got {return_stderr!r}.")
    u = _resolve_probes(key, probes, noise, probe, x)
    _, est = _value_and_hutchinson_terms(_flat_field(f, t, x, args), x.reshape(-1), u, mode)
    return _reduce(est, return_stderr)


def divergence_hutchinson(
    f: VectorField,
    t: RealScalarLike,
    x: ArrayLike,
    args: Args = None,
    *,
    key: PRNGKeyArray | None = None,
    probes: int | None = None,
    noise: str = "rademacher",
    probe: ArrayLike | None = None,
    return_stderr: bool = False,
    method: str = "jvp",
) -> Float[Array, ""] | tuple[Float[Array, ""], Float[Array, ""]]:
    r"""Hutchinson's unbiased estimate of ``div f(t, x)``, in forward mode by default.

    - ``method="jvp"`` (default): ``x`` is linearized once (:func:`jax.linearize`: one
      forward pass, its residuals kept) and the ``K`` Jacobian-vector products
      ``J u_k`` are batched with :func:`jax.vmap` over that one linearization. Cost:
      about one forward pass plus ``K`` batched tangent passes; no backward pass.
    - ``method="vjp"``: reverse mode, for comparison (the estimator of FFJORD and of
      PyTorch implementations): one forward pass with its reverse-mode tape
      (:func:`jax.vjp`), then ``K`` vector-Jacobian products ``u_k^T J`` batched with
      :func:`jax.vmap`, and ``(u_k^T J) u_k``. Same probes, same estimate up to
      floating-point rounding; usually slower (a backward pass costs more than a
      tangent pass, and the tape is stored).

    The estimator: with ``K`` probes ``u_k`` (``E[u u^T] = I``) and ``J = df/dx``,

    .. math::
        \widehat{\mathrm{div}} = \frac1K \sum_k u_k^T J u_k, \qquad
        E[\widehat{\mathrm{div}}] = \mathrm{tr}\, J,

    and with ``S = (J + J^T)/2`` the variance of one probe is ``2 ||S||_F^2`` (Gaussian)
    or ``2 (||S||_F^2 - sum_i S_ii^2)`` (Rademacher: never larger; zero for a diagonal
    ``J``). The mean over ``K`` probes has ``1/K`` of it. Probes have the event shape of
    ``x``; all event axes are flattened.

    Randomness: probes come from ``key`` (``K = probes``), or are given by the caller as
    ``probe`` (e.g. :func:`jfm.log_prob` holds them fixed along a trajectory). Same key,
    same probes, same estimate.

    Args:
        f: per-example field ``f(t, x, args) -> dx/dt`` (same shape as ``x``).
        t: scalar time.
        x: ``(*event,)`` one example, floating.
        args: passed to ``f`` unchanged.
        key: PRNG key for the probes; required unless ``probe`` is given.
        probes: number of probes ``K >= 1`` drawn from ``key`` (default 1). With
            ``probe=`` leave it ``None`` (``K = probe.shape[0]``) or pass the same K.
        noise: ``"rademacher"`` (default: lower variance) or ``"gaussian"``; ignored when
            ``probe`` is given.
        probe: ``(K, *event)`` fixed probes, used instead of drawing from ``key``.
        return_stderr: also return the standard error of the mean over probes (sample
            standard deviation over the K estimates ``/ sqrt(K)``); needs ``K >= 2``.
        method: ``"jvp"`` (forward mode) or ``"vjp"`` (reverse mode), see above.

    Returns:
        The estimate, a scalar in the dtype of ``x``; with ``return_stderr`` a tuple
        ``(estimate, stderr)``. Works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

    Raises:
        TypeError: ``f`` not callable, ``x``/``probe`` not floating arrays, ``key`` missing
            (without ``probe``) or not a PRNG key, ``probes`` not an int.
        ValueError: ``t`` not a scalar, ``probes < 1``, unknown ``noise`` or ``method``,
            ``probe`` of the wrong shape or disagreeing with ``probes``,
            ``return_stderr`` with ``K < 2``, ``f`` returning another shape than ``x``.

    Examples:
        >>> import jax.numpy as jnp, jax.random as jr, jfm
        >>> f = lambda t, x, args: jnp.array([[1.0, 2.0], [3.0, 4.0]]) @ x
        >>> est = jfm.divergence_hutchinson(f, 0.5, jnp.ones(2), key=jr.key(0), probes=8)
        >>> est.shape
        ()
    """
    return _hutchinson(f, t, x, args, key, probes, noise, probe, return_stderr, method)


# -- estimators as values -----------------------------------------------------------------


class AbstractDivergence(eqx.Module):
    """A divergence estimator, as a value: what :func:`jfm.log_prob` and
    :func:`jfm.density_guidance` take as ``divergence=``.

    ``terms(g, xf, probe)`` returns ``(g(xf), terms [K])`` for a flat per-example field
    ``g: (D,) -> (D,)``, one primal evaluation; the estimate is ``mean(terms)``.
    """

    @property
    @abc.abstractmethod
    def num_terms(self) -> int:
        """``K``: the number of terms (accumulators) of one estimate."""

    @property
    @abc.abstractmethod
    def needs_key(self) -> bool:
        """Whether the estimator is random (then a PRNG ``key`` is required)."""

    @abc.abstractmethod
    def draw(self, key: PRNGKeyArray | None, shape: tuple[int, ...], dtype) -> Array | None:
        """The probes ``(K, *shape)`` for one example (``None`` for a deterministic one)."""

    @abc.abstractmethod
    def terms(self, g, xf: Array, probe: Array | None) -> tuple[Array, Array]:
        """``(g(xf), terms [K])``."""


class ExactDivergence(AbstractDivergence):
    """The exact divergence :func:`jfm.divergence_exact` as an estimator value.

    Attributes:
        chunk: basis vectors per vmapped chunk (``method="jvp"``), or ``None``.
        method: ``"auto"``, ``"jvp"`` or ``"jacfwd"`` (see :func:`jfm.divergence_exact`).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> f = lambda t, x, args: 2.0 * x
        >>> jfm.ExactDivergence()(f, 0.5, jnp.ones(3))
        Array(6., dtype=float32)
    """

    chunk: int | None = eqx.field(default=None, static=True)
    method: str = eqx.field(default="auto", static=True)

    def __check_init__(self):
        check_name(self.method, "method", _METHODS)
        if self.chunk is not None:
            check_int(self.chunk, "chunk")
            if self.method == "jacfwd":
                raise ValueError("`chunk` applies to method='jvp' only; got method='jacfwd'.")

    @property
    def num_terms(self) -> int:
        return 1

    @property
    def needs_key(self) -> bool:
        return False

    def draw(self, key, shape, dtype):
        return None

    def terms(self, g, xf, probe):
        method = _resolve_method(self.method, self.chunk, xf.shape[0])
        out, div = _value_and_trace(g, xf, method, self.chunk)
        return out, div.reshape(1)

    def __call__(self, f: VectorField, t: RealScalarLike, x: ArrayLike, args: Args = None):
        """``div f(t, x)`` of one example (as :func:`jfm.divergence_exact`)."""
        return divergence_exact(f, t, x, args, chunk=self.chunk, method=self.method)


class HutchinsonDivergence(AbstractDivergence):
    """Hutchinson's estimator :func:`jfm.divergence_hutchinson` as a value.

    Attributes:
        probes: ``K >= 1`` probes per estimate.
        noise: ``"rademacher"`` (default: lower variance) or ``"gaussian"``.
        method: ``"jvp"`` (forward mode, default) or ``"vjp"`` (reverse mode).

    Examples:
        >>> import jax.numpy as jnp, jax.random as jr, jfm
        >>> f = lambda t, x, args: 2.0 * x
        >>> est = jfm.HutchinsonDivergence(probes=4)
        >>> est(f, 0.5, jnp.ones(3), key=jr.key(0))
        Array(6., dtype=float32)
    """

    probes: int = eqx.field(default=1, static=True)
    noise: str = eqx.field(default="rademacher", static=True)
    method: str = eqx.field(default="jvp", static=True)

    def __check_init__(self):
        check_int(self.probes, "probes")
        check_name(self.noise, "noise", _NOISES)
        check_name(self.method, "method", _HUTCHINSON_METHODS)

    @property
    def num_terms(self) -> int:
        return self.probes

    @property
    def needs_key(self) -> bool:
        return True

    def draw(self, key, shape, dtype):
        return _draw_probes(key, self.probes, tuple(shape), self.noise, dtype)

    def terms(self, g, xf, probe):
        return _value_and_hutchinson_terms(g, xf, probe, self.method)

    def __call__(
        self,
        f: VectorField,
        t: RealScalarLike,
        x: ArrayLike,
        args: Args = None,
        *,
        key: PRNGKeyArray,
        return_stderr: bool = False,
    ):
        """The estimate of ``div f(t, x)`` of one example (:func:`jfm.divergence_hutchinson`)."""
        return divergence_hutchinson(
            f, t, x, args, key=key, probes=self.probes, noise=self.noise,
            return_stderr=return_stderr, method=self.method,
        )  # fmt: skip


def resolve_divergence(divergence) -> AbstractDivergence:
    """An estimator value, or its name: ``"exact"`` or ``"hutchinson"`` (one probe)."""
    if isinstance(divergence, AbstractDivergence):
        return divergence
    if isinstance(divergence, str):
        check_name(divergence, "divergence", ("exact", "hutchinson"))
        return ExactDivergence() if divergence == "exact" else HutchinsonDivergence()
    raise TypeError(
        "`divergence` must be an estimator, e.g. jfm.ExactDivergence() or "
        f"jfm.HutchinsonDivergence(probes=4), or 'exact'/'hutchinson'; got {type(divergence)}."
    )
