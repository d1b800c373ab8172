r"""Exact discrete ground truth: pmfs whose posteriors under a mixture path are known.

Under :class:`jfm.MixtureDiscretePath`, ``p_t(x | x1) = prod_i p_t(x^i | x1^i)`` with
``p_t(z | y) = kappa_t delta_y(z) + (1 - kappa_t) p_0(z)``, so for data on a finite
support the posterior ``p_{1|t}(x1 | x)`` is a finite sum (:class:`DiscreteMixture`),
and for a Markov chain it is a hidden Markov model's smoothing posterior, exact by the
forward-backward recursion in ``O(L V^2)`` (:class:`MarkovChain`). The exact denoiser
(per-token posterior marginals), hence the exact rates and marginals, follow.
"""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._checks import check_int, check_key, check_scalar_time, is_concrete
from .._custom_types import Args, RealScalarLike
from .path import MixtureDiscretePath, check_probs_shape, check_tokens


def _check_path(path, vocab_size: int) -> MixtureDiscretePath:
    if not isinstance(path, MixtureDiscretePath):
        raise TypeError(f"`path` must be a jfm.MixtureDiscretePath; got {type(path)}.")
    if path.vocab_size != vocab_size:
        raise ValueError(
            f"`path.vocab_size` must equal the data's vocabulary size {vocab_size}; got "
            f"{path.vocab_size}."
        )
    return path


def _log_emission(path: MixtureDiscretePath, t, x: Array, dtype) -> Array:
    """``log p_t(x^i | y)`` for every data value ``y``: ``[L, V]``."""
    k = path.schedule.alpha(check_scalar_time(t)).astype(dtype)
    p0 = path.source_probs.astype(dtype)[x]  # [L]
    same = jax.nn.one_hot(x, path.vocab_size, dtype=dtype)  # zero rows for the mask
    return jnp.log(k * same + (1 - k) * p0[:, None])


def _fallback(x: Array, prior: Array, vocab_size: int) -> Array:
    """The denoiser's convention on states of probability zero under ``p_t`` (which a
    sampler step can reach, as it moves several tokens at once): tokens of the data
    vocabulary stay, masked ones get the data's marginal of their position, ``[L, V]``."""
    keep = jax.nn.one_hot(x, vocab_size, dtype=prior.dtype)
    return jnp.where((x < vocab_size)[:, None], keep, prior)


def _check_pmf(p, name: str) -> None:
    if is_concrete(p):
        pn = np.asarray(p, dtype=np.float64)
        if not (np.all(np.isfinite(pn)) and np.all(pn >= 0)):
            raise ValueError(f"`{name}` must be non-negative and finite.")
        s = pn.sum(-1)
        if np.any(np.abs(s - 1) > 1e-6):
            raise ValueError(
                f"`{name}` must sum to 1 (to within 1e-6) along its last axis; got sums "
                f"{s.ravel()[:4]}. Normalise it."
            )


class ExactDenoiser(eqx.Module):
    """The exact denoiser ``(t, x[L], args) -> log p_{1|t}(. | x) [L, V]`` of a ground
    truth under a path (``-inf`` for impossible tokens; ``args`` is ignored)."""

    data: eqx.Module
    path: MixtureDiscretePath

    def __call__(self, t: RealScalarLike, x: Int[Array, " L"], args: Args = None):
        return jnp.log(self.data.posterior(self.path, t, x))


class DiscreteMixture(eqx.Module):
    r"""A pmf on a finite set of sequences: ``q = sum_k w_k delta_{s_k}``, exact under
    a mixture path.

    With ``e_k(x) = prod_i p_t(x^i | s_k^i)`` the path's likelihood of ``x`` given
    ``x1 = s_k``, the posterior over the support is ``w_k e_k(x) / sum_j w_j e_j(x)``;
    its per-token marginals are the exact denoiser, the velocity follows with
    :meth:`jfm.MixtureDiscretePath.velocity_from_posterior`, and ``p_t(x) = sum_k w_k
    e_k(x)`` is the exact marginal. Per example (``x`` an ``[L]`` sequence); costs
    ``O(K L)``.

    Args:
        support: ``[K, L]`` distinct integer sequences with tokens in ``[0, V)``.
        weights: ``[K]`` non-negative, summing to 1.
        vocab_size: ``V`` (default: ``max(support) + 1``).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> q = jfm.DiscreteMixture(jnp.array([[0, 1], [1, 0]]), jnp.array([0.25, 0.75]))
        >>> round(float(q.entropy()), 4), float(q.log_prob(jnp.array([0, 0])))
        (0.5623, -inf)
    """

    support: Int[Array, "K L"]
    log_weights: Float[Array, " K"]
    vocab_size: int = eqx.field(static=True)

    def __init__(
        self,
        support: Int[ArrayLike, "K L"],
        weights: Float[ArrayLike, " K"],
        vocab_size: int | None = None,
    ):
        support = np.asarray(support) if isinstance(support, (list, tuple)) else support
        if vocab_size is None:
            if not is_concrete(support):
                raise ValueError("`vocab_size` is required when `support` is traced.")
            vocab_size = int(np.asarray(support).max()) + 1
        self.vocab_size = check_int(vocab_size, "vocab_size", lo=2)
        support = check_tokens(support, "support", self.vocab_size, ndim=2)
        weights = np.asarray(weights) if isinstance(weights, (list, tuple)) else weights
        weights = check_probs_shape(weights, "weights", (support.shape[0],))
        _check_pmf(weights, "weights")
        self.support = support.astype(jnp.int32)
        self.log_weights = jnp.log(weights)

    @classmethod
    def checkerboard(cls, vocab_size: int, *, cells: int = 4) -> "DiscreteMixture":
        """The discrete 2-d checkerboard: uniform on the grid points ``(i, j)``,
        ``0 <= i, j < V``, whose cell ``(i // c, j // c)`` (``c = V / cells``) has an even
        index sum; sequences of length 2, half of the ``V^2`` points.

        Args:
            vocab_size: ``V``, divisible by ``cells``.
            cells: number of cells per axis (default 4).
        """
        v = check_int(vocab_size, "vocab_size", lo=2)
        n = check_int(cells, "cells", lo=2)
        if v % n:
            raise ValueError(f"`vocab_size` must be divisible by `cells`; got {v} and {n}.")
        c = v // n
        i, j = np.meshgrid(np.arange(v), np.arange(v), indexing="ij")
        keep = ((i // c + j // c) % 2) == 0
        support = np.stack([i[keep], j[keep]], axis=-1).astype(np.int32)
        w = np.full(support.shape[0], 1.0 / support.shape[0])
        return cls(jnp.asarray(support), jnp.asarray(w, jnp.result_type(float)), v)

    @classmethod
    def markov_chain(
        cls, initial: Float[ArrayLike, " V"], transition: Float[ArrayLike, "V V"], length: int
    ) -> "DiscreteMixture":
        """A Markov chain on sequences of ``length`` tokens, enumerated (``V^L <= 2^20``).

        ``q(x) = initial[x^0] prod_i transition[x^{i-1}, x^i]``; sequences of
        probability zero are left out of the support. The independent check of
        :class:`MarkovChain`'s forward-backward posterior.
        """
        init = np.asarray(initial, dtype=np.float64)
        trans = np.asarray(transition, dtype=np.float64)
        v = init.shape[0]
        length = check_int(length, "length")
        if v**length > 2**20:
            raise ValueError(f"V^L = {v}^{length} is too large to enumerate (max 2^20).")
        seqs = np.array(list(itertools.product(range(v), repeat=length)), dtype=np.int32)
        p = init[seqs[:, 0]] * np.prod(trans[seqs[:, :-1], seqs[:, 1:]], axis=1)
        keep = p > 0
        return cls(jnp.asarray(seqs[keep]), jnp.asarray(p[keep] / p[keep].sum()), v)

    @property
    def weights(self) -> Float[Array, " K"]:
        return jnp.exp(self.log_weights)

    @property
    def length(self) -> int:
        return self.support.shape[1]

    def _index(self, x: Array) -> Array:
        """``[K]`` bool, which support point equals ``x``."""
        return jnp.all(self.support == x.astype(self.support.dtype)[None, :], axis=-1)

    def log_prob(self, x: Int[ArrayLike, " L"]) -> Float[Array, ""]:
        """``log q(x)`` of one sequence ``[L]`` (``-inf`` off the support)."""
        x = check_tokens(x, "x", self.vocab_size)
        hit = self._index(x)
        return jnp.max(jnp.where(hit, self.log_weights, -jnp.inf))

    def log_prob_batch(self, x: Int[ArrayLike, "B L"]) -> Float[Array, " B"]:
        """``log q`` of a batch ``[B, L]`` (tokens outside ``[0, V)``, e.g. left masked,
        give ``-inf``)."""
        x = jnp.asarray(x)
        ok = jnp.all((x >= 0) & (x < self.vocab_size), axis=-1)
        lp = jax.vmap(lambda xi: jnp.max(jnp.where(self._index(xi), self.log_weights, -jnp.inf)))(x)
        return jnp.where(ok, lp, -jnp.inf)

    def sample(self, n: int, *, key: PRNGKeyArray) -> Int[Array, "n L"]:
        """``n`` i.i.d. sequences ``[n, L]`` (int32)."""
        n = check_int(n, "n")
        check_key(key)
        idx = jr.categorical(key, self.log_weights, shape=(n,))
        return self.support[idx]

    def entropy(self) -> Float[Array, ""]:
        """``H(q) = -sum_k w_k log w_k`` (nats)."""
        w = self.weights
        return -jnp.sum(jnp.where(w > 0, w * self.log_weights, 0))

    def histogram(self, x: Int[ArrayLike, "B L"]) -> Float[Array, " K+1"]:
        """The empirical pmf of samples ``[B, L]`` on the support, ``[K + 1]``: entry
        ``K`` is the fraction of samples off the support."""
        x = jnp.asarray(x)
        hit = jax.vmap(self._index)(x)  # [B, K]
        counts = hit.sum(0).astype(self.log_weights.dtype)
        off = (~hit.any(-1)).sum().astype(counts.dtype)
        return jnp.concatenate([counts, off[None]]) / x.shape[0]

    def total_variation(self, x: Int[ArrayLike, "B L"]) -> Float[Array, ""]:
        """TV distance between the empirical pmf of ``x [B, L]`` and ``q``:
        ``(1/2) sum |hat q - q|``, the off-support mass included."""
        h = self.histogram(x)
        q = jnp.concatenate([self.weights, jnp.zeros(1, self.log_weights.dtype)])
        return 0.5 * jnp.abs(h - q).sum()

    def tv_floor(self, n: int, *, key: PRNGKeyArray, repeats: int = 64) -> Float[Array, ""]:
        """The expected TV of ``n`` exact samples to ``q`` (mean of ``repeats`` multinomial
        draws): the noise floor of :meth:`total_variation` at sample size ``n``."""
        n, repeats = check_int(n, "n"), check_int(repeats, "repeats")
        check_key(key)

        def one(k):
            idx = jr.categorical(k, self.log_weights, shape=(n,))
            counts = jnp.zeros(self.support.shape[0], self.log_weights.dtype).at[idx].add(1)
            return 0.5 * jnp.abs(counts / n - self.weights).sum()

        return jnp.mean(jax.vmap(one)(jr.split(key, repeats)))

    # -- under a path ----------------------------------------------------------------------

    def marginal_log_prob(
        self, path: MixtureDiscretePath, t: RealScalarLike, x: Int[ArrayLike, " L"]
    ) -> Float[Array, ""]:
        r"""``log p_t(x) = log sum_k w_k prod_i p_t(x^i | s_k^i)``, exact."""
        _check_path(path, self.vocab_size)
        return jax.nn.logsumexp(self._joint(path, t, x))

    def _joint(self, path, t, x) -> Array:
        """``log w_k + log e_k(x)``, ``[K]``."""
        x = check_tokens(x, "x", path.num_states)
        if x.shape != (self.length,):
            raise ValueError(f"`x` must have shape [L] = ({self.length},); got {x.shape}.")
        le = _log_emission(path, t, x, self.log_weights.dtype)  # [L, V]
        per = le[jnp.arange(self.length)[None, :], self.support]  # [K, L]
        return self.log_weights + per.sum(-1)

    def posterior_weights(
        self, path: MixtureDiscretePath, t: RealScalarLike, x: Int[ArrayLike, " L"]
    ) -> Float[Array, " K"]:
        """``p_{1|t}(x1 = s_k | x)`` over the support, ``[K]``."""
        _check_path(path, self.vocab_size)
        return jax.nn.softmax(self._joint(path, t, x))

    def posterior(
        self, path: MixtureDiscretePath, t: RealScalarLike, x: Int[ArrayLike, " L"]
    ) -> Float[Array, "L V"]:
        """The exact denoiser: per-token posterior marginals ``p^i_{1|t}(. | x)``, ``[L, V]``.

        Where ``p_t(x) = 0`` (a state off the data's reach, which a sampler step that moves
        several tokens at once can produce) the posterior is undefined; the convention is
        then: tokens in the vocabulary stay (``delta_{x^i}``), masked tokens get the data
        marginal of their position.
        """
        _check_path(path, self.vocab_size)
        joint = self._joint(path, t, x)
        onehot = jax.nn.one_hot(self.support, self.vocab_size, dtype=joint.dtype)  # [K, L, V]
        post = jnp.einsum("k,klv->lv", jax.nn.softmax(joint), onehot)
        prior = jnp.einsum("k,klv->lv", self.weights, onehot)
        return jnp.where(jnp.isfinite(joint).any(), post, _fallback(x, prior, self.vocab_size))

    def denoiser(self, path: MixtureDiscretePath) -> ExactDenoiser:
        """The exact denoiser as ``(t, x, args) -> log p_{1|t} [L, V]`` for
        :func:`jfm.sample_discrete`."""
        _check_path(path, self.vocab_size)
        return ExactDenoiser(self, path)

    def velocity(
        self,
        path: MixtureDiscretePath,
        t: RealScalarLike,
        x: Int[ArrayLike, " L"],
        *,
        div_free: RealScalarLike = 0.0,
    ) -> Float[Array, "L S"]:
        """The exact marginal probability velocity ``u_t^i(y, x)``, ``[L, S]``."""
        return path.velocity_from_posterior(t, x, self.posterior(path, t, x), div_free=div_free)


class MarkovChain(eqx.Module):
    r"""A Markov chain on token sequences: exact posteriors for long sequences.

    ``q(x) = pi_0(x^0) prod_{i >= 1} P(x^{i-1}, x^i)``. Under a mixture path the noisy
    ``x`` is a hidden Markov model's observation of ``x1`` (emission ``p_t(x^i |
    x1^i)``), so the exact denoiser ``p^i_{1|t}(. | x)`` is the smoothing posterior of the
    forward-backward recursion (normalised at every position; ``O(L V^2)``).

    Args:
        initial: ``[V]`` the law of the first token (summing to 1).
        transition: ``[V, V]`` row-stochastic.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> mc = jfm.MarkovChain(jnp.array([0.5, 0.5]), jnp.array([[0.9, 0.1], [0.1, 0.9]]))
        >>> round(float(mc.entropy_rate()), 4)
        0.3251
    """

    initial: Float[Array, " V"]
    transition: Float[Array, "V V"]

    def __init__(self, initial: Float[ArrayLike, " V"], transition: Float[ArrayLike, "V V"]):
        initial = check_probs_shape(jnp.asarray(initial), "initial", jnp.shape(initial))
        if initial.ndim != 1 or initial.shape[0] < 2:
            raise ValueError(f"`initial` must have shape [V], V >= 2; got {initial.shape}.")
        v = initial.shape[0]
        transition = check_probs_shape(jnp.asarray(transition), "transition", (v, v))
        _check_pmf(initial, "initial")
        _check_pmf(transition, "transition")
        self.initial = initial
        self.transition = transition.astype(initial.dtype)

    @property
    def vocab_size(self) -> int:
        return self.initial.shape[0]

    def stationary(self) -> Float[Array, " V"]:
        """The stationary law ``pi = pi P`` (eigenvector of ``P^T`` at eigenvalue 1)."""
        p = np.asarray(self.transition, dtype=np.float64)
        vals, vecs = np.linalg.eig(p.T)
        pi = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
        return jnp.asarray(pi / pi.sum(), self.initial.dtype)

    def log_prob(self, x: Int[ArrayLike, " L"]) -> Float[Array, ""]:
        """``log q(x)`` of one sequence ``[L]``."""
        x = check_tokens(x, "x", self.vocab_size)
        return jnp.log(self.initial[x[0]]) + jnp.log(self.transition[x[:-1], x[1:]]).sum()

    def log_prob_batch(self, x: Int[ArrayLike, "B L"]) -> Float[Array, " B"]:
        """``log q`` of a batch ``[B, L]``; tokens outside ``[0, V)`` give ``-inf``."""
        x = jnp.asarray(x)
        ok = jnp.all((x >= 0) & (x < self.vocab_size), axis=-1)
        xc = jnp.clip(x, 0, self.vocab_size - 1)
        lp = jnp.log(self.initial[xc[:, 0]]) + jnp.log(self.transition[xc[:, :-1], xc[:, 1:]]).sum(
            -1
        )
        return jnp.where(ok, lp, -jnp.inf)

    def sample(self, n: int, length: int, *, key: PRNGKeyArray) -> Int[Array, "n length"]:
        """``n`` sequences of ``length`` tokens, ``[n, length]`` int32."""
        n, length = check_int(n, "n"), check_int(length, "length")
        check_key(key)
        k0, k1 = jr.split(key)
        x0 = jr.categorical(k0, jnp.log(self.initial), shape=(n,))
        logp = jnp.log(self.transition)

        def body(x, k):
            nxt = jr.categorical(k, logp[x], axis=-1)
            return nxt, nxt

        _, rest = jax.lax.scan(body, x0, jr.split(k1, length - 1))
        return jnp.concatenate([x0[:, None], rest.T], axis=1).astype(jnp.int32)

    def entropy_rate(self) -> Float[Array, ""]:
        r"""``H = -sum_a pi(a) sum_b P(a, b) log P(a, b)`` (nats per token), ``pi``
        stationary."""
        p = self.transition
        row = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0), axis=-1)
        return jnp.dot(self.stationary(), row)

    def entropy(self, length: int) -> Float[Array, ""]:
        r"""``H(X^0, ..., X^{L-1}) = H(pi_0) + sum_{i >= 1} sum_a p_{i-1}(a) H(P(a, .))``,
        exact (nats), with ``p_i = pi_0 P^i``."""
        length = check_int(length, "length")
        p = self.transition
        xlogx = lambda q: jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1)), 0)  # noqa: E731
        row = -xlogx(p).sum(-1)
        h0 = -xlogx(self.initial).sum()

        def body(pi, _):
            return pi @ p, jnp.dot(pi, row)

        _, terms = jax.lax.scan(body, self.initial, None, length=length - 1)
        return h0 + terms.sum()

    def posterior(
        self, path: MixtureDiscretePath, t: RealScalarLike, x: Int[ArrayLike, " L"]
    ) -> Float[Array, "L V"]:
        """The exact denoiser ``p^i_{1|t}(. | x)``, ``[L, V]``, by forward-backward (with
        :meth:`DiscreteMixture.posterior`'s convention where ``p_t(x) = 0``)."""
        _check_path(path, self.vocab_size)
        x = check_tokens(x, "x", path.num_states)
        dtype = self.initial.dtype
        e = jnp.exp(_log_emission(path, t, x, dtype))  # [L, V]
        p = self.transition

        def fwd(a, ei):
            a = (a @ p) * ei
            return a / a.sum(), a / a.sum()

        a0 = self.initial * e[0]
        a0 = a0 / a0.sum()
        _, alphas = jax.lax.scan(fwd, a0, e[1:])
        alphas = jnp.concatenate([a0[None], alphas])

        def bwd(b, ei):
            b = p @ (ei * b)
            return b / b.sum(), b / b.sum()

        bl = jnp.ones_like(self.initial)
        _, betas = jax.lax.scan(bwd, bl, e[1:], reverse=True)
        betas = jnp.concatenate([betas, bl[None]])
        post = alphas * betas
        post = post / post.sum(-1, keepdims=True)

        def marg(pi, _):
            return pi @ p, pi

        _, prior = jax.lax.scan(marg, self.initial, None, length=x.shape[0])
        ok = jnp.all(jnp.isfinite(post))
        return jnp.where(ok, post, _fallback(x, prior, self.vocab_size))

    def denoiser(self, path: MixtureDiscretePath) -> ExactDenoiser:
        """The exact denoiser ``(t, x, args) -> log p_{1|t} [L, V]``."""
        _check_path(path, self.vocab_size)
        return ExactDenoiser(self, path)


__all__ = ["DiscreteMixture", "ExactDenoiser", "MarkovChain"]
