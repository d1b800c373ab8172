r"""The factorized mixture path of discrete flow matching, on token sequences.

A state is a sequence ``x`` of ``L`` tokens, each in ``{0, ..., S - 1}``; the data use the
first ``V`` of them (the vocabulary) and ``S = V + 1`` for the masked source (token ``V``
is the mask), ``S = V`` otherwise. With ``x0 ~ p_0`` (i.i.d. per token) and ``x1 ~ q``,

.. math::
    p_t(x \mid x_0, x_1) = \prod_i \big[\kappa_t\,\delta_{x_1^i}(x^i)
        + (1 - \kappa_t)\,\delta_{x_0^i}(x^i)\big],

``kappa_t`` increasing from ``kappa_0 = 0`` to ``kappa_1 = 1``: each token jumps once,
from its source value to its data value, at a time with CDF ``kappa``. ``kappa`` is the
``alpha`` of a continuous schedule (:class:`jfm.CondOT` ``t``, :class:`jfm.Polynomial`
``t^n``, :class:`jfm.Cosine` ``sin(pi t / 2)``), with its derivative.

Probability velocities are per token ``u^i(y, x)``, ``[L, S]`` arrays whose row ``i`` is
the rate from the current ``x`` to a sequence that differs from ``x`` in token ``i`` only,
where it is ``y`` (the diagonal entry ``y = x^i`` is minus the sum of the others, so each
row sums to zero). A process with these rates moves one token at a time.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._checks import check_int, check_key, check_scalar, check_scalar_time, is_concrete
from .._custom_types import RealScalarLike
from .._paths import AbstractSchedule

SOURCES: tuple[str, ...] = ("mask", "uniform")
STEP_METHODS: tuple[str, ...] = ("euler", "exponential")


def check_tokens(x, name: str, num_states: int, *, ndim: int | None = 1):
    """An integer token array (values in ``[0, num_states)``, checked when concrete)."""
    if isinstance(x, bool) or not isinstance(x, (np.ndarray, jax.Array, np.generic, int)):
        raise TypeError(f"`{name}` must be an integer token array; got {type(x)}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype (token ids); got {x.dtype}.")
    if ndim is not None and x.ndim != ndim:
        what = "[L] (one sequence; batch with jax.vmap)" if ndim == 1 else f"{ndim} axes"
        raise ValueError(f"`{name}` must have shape {what}; got shape {x.shape}.")
    if x.size and is_concrete(x):
        with jax.ensure_compile_time_eval():
            lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= num_states:
            raise ValueError(
                f"`{name}` must hold token ids in [0, {num_states}); got values in [{lo}, {hi}]."
            )
    return x


def check_probs_shape(p, name: str, shape: tuple[int, ...]):
    """A floating array of the given shape."""
    if not isinstance(p, (np.ndarray, jax.Array)):
        raise TypeError(f"`{name}` must be a floating array; got {type(p)}.")
    p = jnp.asarray(p)
    if not jnp.issubdtype(p.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype; got {p.dtype}.")
    if p.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}; got shape {p.shape}.")
    return p


class MixtureDiscretePath(eqx.Module):
    r"""The factorized mixture path ``kappa_t delta_{x1} + (1 - kappa_t) delta_{x0}`` per token.

    Per example: ``x``, ``x0``, ``x1`` are ``[L]`` integer sequences, ``t`` a scalar;
    batch with ``jax.vmap``. Posteriors (denoisers) ``p_{1|t}(. | x)`` are ``[L, V]``
    per-token probabilities over the vocabulary; velocities are ``[L, S]`` over the
    states (see the module docstring).

    The marginal probability velocity of the path, given the posterior ``p_{1|t}`` (Gat
    et al. 2024, Thm. 3, and their corrector), is

    .. math::
        u_t^i(y, x) = (1 + c)\,\frac{\dot\kappa_t}{1 - \kappa_t}
            \big[p^i_{1|t}(y \mid x) - \delta_{x^i}(y)\big]
            - c\,\frac{\dot\kappa_t}{\kappa_t}\big[\delta_{x^i}(y) - p_0(y)\big],

    with ``c = div_free >= 0``: the second part is the velocity of the time-reversed path
    (which generates the same ``p_t``), so ``c`` adds a divergence-free term that moves
    tokens back towards the source while keeping every marginal ``p_t``; ``c = 0`` is
    the plain mixture velocity. Every off-diagonal rate is ``>= 0`` for ``c >= 0``.

    Args:
        schedule: ``kappa_t = schedule.alpha(t)``, ``d kappa / dt = schedule.d_alpha(t)``;
            it must have ``kappa_0 = 0`` and ``kappa_1 = 1`` (checked when concrete):
            :class:`jfm.CondOT`, :class:`jfm.Polynomial`, :class:`jfm.Cosine`.
        vocab_size: ``V``, the number of data tokens (a Python int ``>= 2``).
        source: ``"mask"`` (absorbing: every source token is the mask ``V``, ``S = V +
            1``; the default), ``"uniform"`` (uniform over the ``V`` tokens) or a pmf
            ``[V]`` (non-negative, summing to 1) from which source tokens are drawn
            i.i.d.

    Attributes:
        source_probs: ``[S]`` the per-token source pmf ``p_0``.
        masked: whether the source is the mask (static).

    References:
        Gat et al., "Discrete Flow Matching", NeurIPS 2024; Shaul et al., "Flow Matching
        with General Discrete Paths: A Kinetic-Optimal Perspective", ICLR 2025; Campbell
        et al., "Generative Flows on Discrete State-Spaces", ICML 2024.

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> path = jfm.MixtureDiscretePath(jfm.CondOT(), vocab_size=4)
        >>> path.num_states, path.mask_token
        (5, 4)
        >>> x1 = jnp.array([0, 1, 2])
        >>> path.sample(1.0, path.sample_source((3,), key=jax.random.key(0)), x1,
        ...             key=jax.random.key(1)).tolist()
        [0, 1, 2]
    """

    schedule: AbstractSchedule
    vocab_size: int = eqx.field(static=True)
    source_probs: Float[Array, " S"]
    masked: bool = eqx.field(static=True)

    def __init__(
        self,
        schedule: AbstractSchedule,
        vocab_size: int,
        source: str | Float[ArrayLike, " V"] = "mask",
    ):
        if not isinstance(schedule, AbstractSchedule):
            raise TypeError(
                "`schedule` must be a jfm.AbstractSchedule whose alpha(t) is kappa_t (e.g. "
                f"jfm.CondOT(), jfm.Polynomial(2.0), jfm.Cosine()); got {type(schedule)}."
            )
        self.schedule = schedule
        self.vocab_size = check_int(vocab_size, "vocab_size", lo=2)
        v = self.vocab_size
        if isinstance(source, str):
            if source not in SOURCES:
                raise ValueError(
                    f"`source` must be one of {SOURCES} or a pmf array [V]; got {source!r}."
                )
            self.masked = source == "mask"
            dtype = jnp.result_type(float)
            if self.masked:
                self.source_probs = jnp.zeros(v + 1, dtype).at[v].set(1)
            else:
                self.source_probs = jnp.full((v,), 1.0 / v, dtype)
        else:
            p = check_probs_shape(
                np.asarray(source) if isinstance(source, (list, tuple)) else source,
                "source",
                (v,),
            )
            if is_concrete(p):
                pn = np.asarray(p, dtype=np.float64)
                if not (np.all(np.isfinite(pn)) and np.all(pn >= 0)):
                    raise ValueError(f"`source` must be a non-negative finite pmf; got {pn}.")
                if abs(pn.sum() - 1) > 1e-5:
                    raise ValueError(
                        f"`source` must sum to 1 (to within 1e-5); got sum={pn.sum()}. "
                        "Normalise it: p / p.sum()."
                    )
            self.masked = False
            self.source_probs = p
        if is_concrete(schedule):
            with jax.ensure_compile_time_eval():
                k0 = float(schedule.alpha(jnp.asarray(0.0)))
                k1 = float(schedule.alpha(jnp.asarray(1.0)))
            if not (abs(k0) <= 1e-6 and abs(k1 - 1) <= 1e-6):
                raise ValueError(
                    "`schedule` must have kappa_0 = alpha(0) = 0 and kappa_1 = alpha(1) = 1 "
                    f"(a mixture path from source to data); got alpha(0)={k0}, alpha(1)={k1}. "
                    "Use jfm.CondOT(), jfm.Polynomial(n) or jfm.Cosine()."
                )

    # -- the schedule ---------------------------------------------------------------------

    @property
    def num_states(self) -> int:
        """``S``: the token values a state can take (``V + 1`` with the mask, else ``V``)."""
        return self.vocab_size + 1 if self.masked else self.vocab_size

    @property
    def mask_token(self) -> int | None:
        """The mask token id ``V`` for the masked source, else ``None``."""
        return self.vocab_size if self.masked else None

    def kappa(self, t: RealScalarLike) -> Float[Array, ""]:
        """``kappa_t``: the probability that a token has jumped to its data value by ``t``."""
        return self.schedule.alpha(check_scalar_time(t))

    def d_kappa(self, t: RealScalarLike) -> Float[Array, ""]:
        """``d kappa_t / dt``."""
        return self.schedule.d_alpha(check_scalar_time(t))

    def jump_rate(self, t: RealScalarLike) -> Float[Array, ""]:
        r"""``kappa'_t / (1 - kappa_t)``: the hazard rate of a token's jump (``inf`` at 1)."""
        t = check_scalar_time(t)
        return self.schedule.d_alpha(t) / (1 - self.schedule.alpha(t))

    # -- sampling -------------------------------------------------------------------------

    def sample_source(self, shape: tuple[int, ...], *, key: PRNGKeyArray) -> Int[Array, "*shape"]:
        """I.i.d. source tokens of the given shape (e.g. ``(B, L)``), ``int32``.

        Args:
            shape: a tuple of ints.
            key: PRNG key (keyword-only, required).
        """
        check_key(key)
        if not isinstance(shape, tuple) or not all(isinstance(s, int) for s in shape):
            raise TypeError(f"`shape` must be a tuple of ints, e.g. (B, L); got {shape!r}.")
        if self.masked:
            return jnp.full(shape, self.vocab_size, jnp.int32)
        logp = jnp.log(self.source_probs)
        return jr.categorical(key, logp, shape=shape).astype(jnp.int32)

    def sample(
        self,
        t: RealScalarLike,
        x0: Int[ArrayLike, " L"],
        x1: Int[ArrayLike, " L"],
        *,
        key: PRNGKeyArray,
    ) -> Int[Array, " L"]:
        """A draw of ``x_t ~ p_t(. | x0, x1)``: each token is ``x1^i`` with probability
        ``kappa_t``, else ``x0^i``, independently.

        Args:
            t: scalar time in ``[0, 1]``.
            x0: ``[L]`` source tokens (in ``[0, S)``).
            x1: ``[L]`` data tokens (in ``[0, V)``).
            key: PRNG key (keyword-only, required).

        Returns:
            ``[L]`` tokens, ``x1``'s dtype.
        """
        check_key(key)
        t = check_scalar_time(t)
        x0 = check_tokens(x0, "x0", self.num_states)
        x1 = check_tokens(x1, "x1", self.vocab_size)
        if x0.shape != x1.shape:
            raise ValueError(
                f"`x0` and `x1` must have equal shapes; got {x0.shape} and {x1.shape}."
            )
        jumped = jr.uniform(key, x1.shape, t.dtype) < self.schedule.alpha(t)
        return jnp.where(jumped, x1, x0.astype(x1.dtype))

    def conditional_probs(
        self, t: RealScalarLike, x1: Int[ArrayLike, " L"], dtype=None
    ) -> Float[Array, "L S"]:
        r"""``p_t(. | x1)`` per token, the source marginalised:
        ``kappa_t delta_{x1^i} + (1 - kappa_t) p_0``, ``[L, S]``.

        Args:
            t: scalar time in ``[0, 1]``.
            x1: ``[L]`` data tokens.
            dtype: floating dtype of the result (default ``source_probs``'s).
        """
        t = check_scalar_time(t)
        x1 = check_tokens(x1, "x1", self.vocab_size)
        dtype = self.source_probs.dtype if dtype is None else dtype
        k = self.schedule.alpha(t).astype(dtype)
        p0 = self.source_probs.astype(dtype)[None, :]
        return k * jax.nn.one_hot(x1, self.num_states, dtype=dtype) + (1 - k) * p0

    # -- velocities -----------------------------------------------------------------------

    def conditional_velocity(
        self, t: RealScalarLike, x: Int[ArrayLike, " L"], x1: Int[ArrayLike, " L"], dtype=None
    ) -> Float[Array, "L S"]:
        r"""The conditional probability velocity
        ``u_t^i(y, x | x1) = kappa'/(1 - kappa) [delta_{x1^i}(y) - delta_{x^i}(y)]``.

        It generates ``p_t(. | x0, x1)`` (and ``p_t(. | x1)``) for ``t < 1``.

        Args:
            t: scalar time in ``[0, 1)``.
            x: ``[L]`` current tokens; ``x1``: ``[L]`` data tokens.
            dtype: floating dtype of the result (default: ``t``'s float dtype).

        Returns:
            ``[L, S]``, rows summing to zero.
        """
        t = check_scalar_time(t)
        x = check_tokens(x, "x", self.num_states)
        x1 = check_tokens(x1, "x1", self.vocab_size)
        dtype = t.dtype if dtype is None else dtype
        rate = (self.schedule.d_alpha(t) / (1 - self.schedule.alpha(t))).astype(dtype)
        s = self.num_states
        return rate * (jax.nn.one_hot(x1, s, dtype=dtype) - jax.nn.one_hot(x, s, dtype=dtype))

    def _pad(self, probs: Array) -> Array:
        """``[L, V] -> [L, S]`` (zero probability of the mask)."""
        if self.masked:
            return jnp.pad(probs, ((0, 0), (0, 1)))
        return probs

    def velocity_from_posterior(
        self,
        t: RealScalarLike,
        x: Int[ArrayLike, " L"],
        probs: Float[ArrayLike, "L V"],
        *,
        div_free: RealScalarLike = 0.0,
    ) -> Float[Array, "L S"]:
        r"""The marginal probability velocity from the posterior ``p_{1|t}(. | x)``.

        ``u_t^i(y, x)`` of the class docstring; with ``div_free = 0``,
        ``kappa'/(1 - kappa) [p^i_{1|t}(y | x) - delta_{x^i}(y)]``. Exact marginal rates
        when ``probs`` is the exact posterior (e.g. :meth:`jfm.DiscreteMixture.posterior`).

        Args:
            t: scalar time in ``[0, 1)`` (``(0, 1)`` with ``div_free > 0``: the corrector's
                ``kappa'/kappa`` is infinite at ``t = 0``, where it is dropped; ``p_0`` is
                then exact and the dropped term is divergence-free).
            x: ``[L]`` current tokens.
            probs: ``[L, V]`` per-token posterior probabilities (rows summing to 1).
            div_free: the corrector weight ``c >= 0`` (a scalar; traced values allowed).

        Returns:
            ``[L, S]`` in ``probs``' dtype, rows summing to zero.
        """
        t = check_scalar_time(t)
        x = check_tokens(x, "x", self.num_states)
        probs = check_probs_shape(probs, "probs", (x.shape[0], self.vocab_size))
        c = check_scalar(div_free, "div_free", probs.dtype, lo=0.0)
        dtype = probs.dtype
        k = self.schedule.alpha(t).astype(dtype)
        dk = self.schedule.d_alpha(t).astype(dtype)
        dx = jax.nn.one_hot(x, self.num_states, dtype=dtype)
        u = (1 + c) * dk / (1 - k) * (self._pad(probs) - dx)
        back = dx - self.source_probs.astype(dtype)[None, :]
        coef = jnp.where(k > 0, c * dk / jnp.where(k > 0, k, 1), 0)
        return u - coef * back

    def posterior_from_velocity(
        self, t: RealScalarLike, x: Int[ArrayLike, " L"], velocity: Float[ArrayLike, "L S"]
    ) -> Float[Array, "L V"]:
        r"""The posterior ``p_{1|t}(. | x)`` from a mixture velocity (``div_free = 0``):
        ``p^i = delta_{x^i} + (1 - kappa) / kappa' u^i``, restricted to the vocabulary.

        The inverse of :meth:`velocity_from_posterior` with ``div_free = 0`` where
        ``kappa'_t > 0``.

        Args:
            t: scalar time in ``[0, 1)``.
            x: ``[L]`` current tokens.
            velocity: ``[L, S]``.

        Returns:
            ``[L, V]`` in ``velocity``'s dtype.
        """
        t = check_scalar_time(t)
        x = check_tokens(x, "x", self.num_states)
        u = check_probs_shape(velocity, "velocity", (x.shape[0], self.num_states))
        dtype = u.dtype
        k = self.schedule.alpha(t).astype(dtype)
        dk = self.schedule.d_alpha(t).astype(dtype)
        p = jax.nn.one_hot(x, self.num_states, dtype=dtype) + (1 - k) / dk * u
        return p[:, : self.vocab_size]

    def step_probs(
        self,
        t: RealScalarLike,
        t_next: RealScalarLike,
        x: Int[ArrayLike, " L"],
        probs: Float[ArrayLike, "L V"],
        *,
        div_free: RealScalarLike = 0.0,
        method: str = "euler",
    ) -> Float[Array, "L S"]:
        r"""The law of one sampler step from ``x`` at ``t`` to ``t_next = t + h``: ``[L, S]``.

        With the off-diagonal rates ``r^i(y) = u_t^i(y, x)`` (``y != x^i``, from
        :meth:`velocity_from_posterior`) and their sum ``R^i``:

        - ``"euler"``: ``P^i(y) = h r^i(y)``, ``P^i(x^i) = 1 - h R^i`` (tau-leaping to first
          order, one jump per token at most); where ``h R^i > 1`` the jump probabilities
          are scaled to sum to 1 (``P^i(y) = r^i(y) / R^i``).
        - ``"exponential"``: the step of ``flow_matching``'s ``MixtureDiscreteEulerSolver``,
          marginalised over its draw of ``x_1 ~ p_{1|t}``: given ``x_1``, the token jumps
          with probability ``1 - exp(-h lambda)`` (``lambda`` its total conditional
          rate) to a state drawn from its conditional rates. The same law in closed form,
          without the draw of ``x_1``.

        A step that ends at ``t_next = 1`` draws the data: ``P^i = p^i_{1|t}`` (the limit of
        both as ``kappa -> 1``; exactly Euler's for :class:`jfm.CondOT`).

        Args:
            t, t_next: scalar times, ``0 <= t < t_next <= 1``.
            x: ``[L]`` current tokens.
            probs: ``[L, V]`` posterior probabilities ``p_{1|t}(. | x)``.
            div_free: the corrector weight ``c >= 0`` (see :meth:`velocity_from_posterior`).
            method: ``"euler"`` (default) or ``"exponential"``.

        Returns:
            ``[L, S]`` probabilities in ``probs``' dtype, rows summing to 1.
        """
        if method not in STEP_METHODS:
            raise ValueError(f"`method` must be one of {STEP_METHODS}; got {method!r}.")
        t = check_scalar_time(t)
        t_next = check_scalar_time(t_next, "t_next")
        if is_concrete((t, t_next)) and not float(t_next) > float(t):
            raise ValueError(f"`t_next` must be > t; got t={float(t)}, t_next={float(t_next)}.")
        x = check_tokens(x, "x", self.num_states)
        probs = check_probs_shape(probs, "probs", (x.shape[0], self.vocab_size))
        dtype = probs.dtype
        h = (t_next - t).astype(dtype)
        dx = jax.nn.one_hot(x, self.num_states, dtype=dtype)
        p1 = self._pad(probs)
        if method == "euler":
            u = self.velocity_from_posterior(t, x, probs, div_free=div_free)
            r = jnp.maximum(jnp.where(dx > 0, 0, u), 0)
            big = r.sum(-1, keepdims=True)
            scale = jnp.where(h * big > 1, 1 / jnp.where(big > 0, big, 1), h)
            step = scale * r + (1 - scale * big) * dx
        else:
            c = check_scalar(div_free, "div_free", dtype, lo=0.0)
            k = self.schedule.alpha(t).astype(dtype)
            dk = self.schedule.d_alpha(t).astype(dtype)
            a = (1 + c) * dk / (1 - k)
            b = jnp.where(k > 0, c * dk / jnp.where(k > 0, k, 1), 0)
            p0 = jnp.broadcast_to(self.source_probs.astype(dtype), dx.shape)
            p0x = (p0 * dx).sum(-1, keepdims=True)
            px = (p1 * dx).sum(-1, keepdims=True)
            lam0, lam1 = b * (1 - p0x), a + b * (1 - p0x)

            def phi(lam):  # (1 - exp(-h lam)) / lam, = h at lam = 0
                z = h * lam
                return jnp.where(z > 0, -jnp.expm1(-z) / jnp.where(z > 0, lam, 1), h)

            off = px * phi(lam0) * b * p0 + phi(lam1) * (a * p1 + b * p0 * (1 - px))
            off = jnp.where(dx > 0, 0, off)
            step = off + (1 - off.sum(-1, keepdims=True)) * dx
        return jnp.where(t_next >= 1, p1, step)


__all__ = ["MixtureDiscretePath"]
