r"""Sampling a discrete flow: a CTMC simulated on a time grid, and its model adapters.

The sampler is its own loop (a ``jax.lax.scan`` over the grid), not a diffrax solve: the
state is integer tokens and each step is a random jump. It returns a
:class:`DiscreteSolution`, the sibling of :class:`jfm.Solution` for token states, with
the exact count of denoiser evaluations.

Dtype policy. The denoiser's logits are cast to ``dtype`` before the softmax, and every
probability, rate and the Gumbel noise of the categorical draws are computed in it. The
default is float64 when ``jax_enable_x64`` is on, else float32: float32 Gumbel noise
is bounded by ``-log(-log(1 - 2^-24)) ~ 16.6``, so tokens whose logit is more than about
16 below the best one are never drawn, which biases long sequences (flow_matching
samples in float32 by default; its users report generative perplexities far from the
float64 ones). Pass ``dtype=jnp.float32`` for speed.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from .._checks import (
    check_callable,
    check_int,
    check_key,
    check_name,
    check_scalar,
    is_concrete,
)
from .._custom_types import ApplyFn, Args, RealScalarLike
from .._fields.model import _add_batch_axis
from .path import STEP_METHODS, MixtureDiscretePath, check_tokens

#: A per-example denoiser ``denoiser(t, x[L], args) -> logits [L, V]``.
Denoiser = Callable[[RealScalarLike, Array, Args], Array]


class DiscreteSolution(eqx.Module):
    """What :func:`sample_discrete` returns: the sibling of :class:`jfm.Solution` for tokens.

    Attributes:
        x1: ``[B, L]`` int32, the tokens at the end of the grid (the samples at ``t = 1``).
        nfe: int scalar, evaluations of the per-example denoiser per example (one per
            step; a guided denoiser counts once and costs two network evaluations).
        num_steps: int scalar, steps taken (``N``).
        ts: ``[N + 1]`` the grid.
        xs: ``[N + 1, B, L]`` the states at ``ts`` (time-major), or ``None``.
    """

    x1: Int[Array, "batch L"]
    nfe: Int[Array, ""]
    num_steps: Int[Array, ""]
    ts: Float[Array, " N"]
    xs: Int[Array, "N batch L"] | None = None


class ModelDenoiser(eqx.Module):
    """A per-example denoiser ``denoiser(t, x[L], args) -> logits [L, V]`` from a
    batch-first token model ``apply(params, t[B], x[B, L], args) -> [B, L, V]``.

    ``__call__`` adds a batch axis of 1 to ``t``, ``x`` and each leaf of ``args`` and
    removes it from the output (vmapping it gives the batched model call).

    Attributes:
        apply: the batch-first model (static).
        params: its parameters (leaves).
    """

    apply: ApplyFn = eqx.field(static=True)
    params: PyTree

    def __call__(
        self, t: RealScalarLike, x: Int[Array, " L"], args: Args = None
    ) -> Float[Array, "L V"]:
        x = jnp.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"`x` must be one sequence [L]; got shape {x.shape}.")
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.floating):
            t = t.astype(jnp.result_type(float))
        out = self.apply(self.params, t.reshape(1), x[None], _add_batch_axis(args))
        if getattr(out, "ndim", None) != 3 or out.shape[:2] != (1, x.shape[0]):
            raise ValueError(
                f"`apply` must return logits [B, L, V] = (1, {x.shape[0]}, V) for a batch of "
                f"one; got {getattr(out, 'shape', type(out))}."
            )
        return out[0]


def denoiser_from_model(apply: ApplyFn, params: PyTree) -> ModelDenoiser:
    """The per-example denoiser of a batch-first token model (e.g. :class:`jfm.models.TokenMLP`
    through :func:`jfm.split_model`), for :func:`sample_discrete`.

    Args:
        apply: ``apply(params, t[B], x[B, L], args) -> logits [B, L, V]``.
        params: its parameters.

    Returns:
        A :class:`ModelDenoiser`.

    Raises:
        TypeError: ``apply`` not callable.
    """
    check_callable(apply, "apply", "(params, t, x, args)")
    return ModelDenoiser(apply, params)


class DiscreteGuidance(eqx.Module):
    r"""Classifier-free guidance of a class-conditional denoiser (see
    :func:`discrete_guidance`).

    Attributes:
        denoiser: the conditional denoiser ``denoiser(t, x, label) -> logits [L, V]``.
        scale: the guidance weight ``w`` (a traced scalar).
        null_label: the null (unconditional) label.
    """

    denoiser: Denoiser
    scale: Float[Array, ""]
    null_label: Int[Array, ""]

    def __call__(
        self, t: RealScalarLike, x: Int[Array, " L"], args: Args = None
    ) -> Float[Array, "L V"]:
        cond = jnp.asarray(self.denoiser(t, x, args))
        null = jnp.asarray(self.denoiser(t, x, self.null_label))
        w = self.scale.astype(cond.dtype)
        mixed = (1 - w) * null + w * cond
        return jnp.where(w == 0, null, jnp.where(w == 1, cond, mixed))


def discrete_guidance(
    denoiser: Denoiser, scale: RealScalarLike, *, null_label: int | Int[ArrayLike, ""]
) -> DiscreteGuidance:
    r"""Classifier-free guidance for discrete flows, on the denoiser's log-probabilities.

    Per token,

    .. math::
        \log p^w_{1|t}(y \mid x, c) = (1 - w) \log p_{1|t}(y \mid x, \varnothing)
            + w \log p_{1|t}(y \mid x, c) - \log Z^i_w(x),

    a geometric interpolation (``w > 1``: extrapolation) of the unconditional and the
    conditional posteriors, renormalised per token (``Z`` sums over the vocabulary).
    The guided posterior then defines the velocity and the step as for any denoiser. The
    returned logits are ``(1 - w) z_null + w z_cond``: logits are defined up to a
    per-token constant, so ``Z`` is the sampler's softmax. ``w = 0`` returns the null
    logits and ``w = 1`` the conditional ones bit for bit (so the samples are those of
    the unguided samplers for the same key), also where logits are ``-inf``; other
    weights need finite logits. On the rates, this is the tilt
    ``u_w(y, x) = u_null^{1-w} u_cond^w / Z`` of the off-diagonal mixture rates
    ``kappa'/(1 - kappa) p_{1|t}(y)``, normalised so that the total jump rate stays the
    path's (Nisonoff et al. 2025 tilt the rates without the normalisation).

    Each call evaluates ``denoiser`` twice (conditional and null). ``flow_matching``
    switches guidance off for its discrete models.

    Args:
        denoiser: ``denoiser(t, x[L], label) -> logits [L, V]`` whose ``args`` is the
            class label (trained with label dropout to ``null_label``).
        scale: the weight ``w`` (a real scalar; traced values allowed).
        null_label: the null class label, keyword-only.

    Returns:
        A :class:`DiscreteGuidance` denoiser ``(t, x, label) -> logits [L, V]``.

    Raises:
        TypeError: ``denoiser`` not callable; ``scale`` not real; ``null_label`` not an
            integer.

    References:
        Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022; Nisonoff et al.,
        "Unlocking Guidance for Discrete State-Space Diffusion and Flow Models", ICLR 2025.
    """
    check_callable(denoiser, "denoiser", "(t, x, args)")
    scale = check_scalar(scale, "scale")
    if isinstance(null_label, bool) or not isinstance(
        null_label, (int, np.integer, np.ndarray, jax.Array)
    ):
        raise TypeError(f"`null_label` must be an integer label; got {type(null_label)}.")
    null = jnp.asarray(null_label)
    if not jnp.issubdtype(null.dtype, jnp.integer) or null.shape != ():
        raise TypeError(
            f"`null_label` must be an integer scalar; got dtype {null.dtype}, shape {null.shape}."
        )
    return DiscreteGuidance(denoiser, scale, null)


def _default_dtype():
    return jnp.result_type(float)  # float64 with jax_enable_x64, else float32


def _grid(steps, ts, dtype):
    if (steps is None) == (ts is None):
        raise ValueError(
            "Pass exactly one of `steps` (N uniform steps of [0, 1]) and `ts` (a grid "
            f"[N + 1], e.g. jfm.time_grid); got steps={steps!r}, ts given: {ts is not None}."
        )
    if steps is not None:
        n = check_int(steps, "steps")
        return jnp.linspace(0.0, 1.0, n + 1, dtype=dtype)
    if isinstance(ts, bool) or not isinstance(ts, (np.ndarray, jax.Array, list, tuple)):
        raise TypeError(f"`ts` must be a 1-d array of times; got {type(ts)}.")
    ts = jnp.asarray(ts)
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        raise TypeError(f"`ts` must be floating; got dtype {ts.dtype}.")
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"`ts` must have shape [N + 1] with N >= 1; got shape {ts.shape}.")
    if is_concrete(ts):
        tn = np.asarray(ts, dtype=np.float64)
        if not (np.all(np.isfinite(tn)) and tn[0] >= 0 and tn[-1] <= 1):
            raise ValueError(f"`ts` must lie in [0, 1]; got ts[0]={tn[0]}, ts[-1]={tn[-1]}.")
        if not np.all(np.diff(tn) > 0):
            raise ValueError(f"`ts` must be strictly increasing; got ts={tn}.")
    return ts.astype(dtype)


@eqx.filter_jit
def _run(denoiser, x0, ts, key, args, path, div_free, method, dtype, save_steps):
    n = ts.shape[0] - 1
    keys = jr.split(key, n)
    batched = jax.vmap(denoiser, in_axes=(None, 0, None))
    step_law = jax.vmap(
        lambda t, s, x, p, c: path.step_probs(t, s, x, p, div_free=c, method=method),
        in_axes=(None, None, 0, 0, None),
    )

    def body(x, inp):
        t, s, k = inp
        logits = batched(t, x, args)
        if logits.ndim != 3 or logits.shape[:2] != x.shape or logits.shape[2] != path.vocab_size:
            raise ValueError(
                f"`denoiser` must return logits [L, V] = ({x.shape[1]}, {path.vocab_size}) "
                f"per example; got {logits.shape[1:]} (batched {logits.shape})."
            )
        probs = jax.nn.softmax(logits.astype(dtype), axis=-1)
        c = div_free(t) if callable(div_free) else div_free
        law = step_law(t, s, x, probs, jnp.asarray(c, dtype))
        # Gumbel-max in `dtype`; log(0) = -inf is never drawn.
        x_new = jr.categorical(k, jnp.log(law), axis=-1).astype(x.dtype)
        return x_new, (x_new if save_steps else None)

    x1, xs = jax.lax.scan(body, x0, (ts[:-1], ts[1:], keys))
    if save_steps:
        xs = jnp.concatenate([x0[None], xs], axis=0)
    return x1, xs


def sample_discrete(
    denoiser: Denoiser,
    x0: Int[ArrayLike, "batch L"],
    *,
    path: MixtureDiscretePath,
    key: PRNGKeyArray,
    steps: int | None = None,
    ts: Float[ArrayLike, " N"] | None = None,
    args: Args = None,
    div_free: RealScalarLike | Callable[[Array], Array] = 0.0,
    method: str = "euler",
    dtype=None,
    save_steps: bool = False,
) -> DiscreteSolution:
    r"""Sample a discrete flow: simulate the CTMC of a mixture path from ``t0`` to ``t1``.

    At each step ``t_n -> t_{n+1}`` of the grid the denoiser gives the posterior
    ``p_{1|t_n}(. | x) = softmax(denoiser(t_n, x, args))`` per token, and every token
    moves independently with the law :meth:`jfm.MixtureDiscretePath.step_probs`
    (``"euler"``: ``delta_x + h u_t(., x)``, jump probabilities scaled down where they
    would exceed 1; ``"exponential"``: flow_matching's step), with the marginal velocity
    of :meth:`jfm.MixtureDiscretePath.velocity_from_posterior` and the optional
    divergence-free corrector ``div_free``. A step ending at ``t = 1`` draws the tokens
    from the posterior. One denoiser call per step: ``nfe = N``.

    Checklist: order 1 in the step size (the law of the samples converges to the
    model's with error ``O(h)``); fixed grid; stochastic (``key``); forward in time.

    Dtype: see the module docstring (probabilities and the categorical draws in
    ``dtype``, default float64 when x64 is on, else float32).

    Args:
        denoiser: ``denoiser(t, x[L], args) -> logits [L, V]`` (per example; e.g.
            :func:`denoiser_from_model`, :meth:`jfm.DiscreteMixture.denoiser`,
            :func:`discrete_guidance`); vmapped over the batch with ``args`` shared.
        x0: ``[B, L]`` integer source tokens (e.g. ``path.sample_source((B, L), key=...)``).
        path: the :class:`jfm.MixtureDiscretePath` the denoiser was trained on.
        key: PRNG key (keyword-only, required).
        steps: ``N`` uniform steps of ``[0, 1]``; or
        ts: a grid ``[N + 1]``, strictly increasing in ``[0, 1]`` (e.g.
            :func:`jfm.time_grid`; ``t0 > 0`` with ``div_free > 0``).
        args: conditioning passed to ``denoiser`` (shared by the batch).
        div_free: the corrector weight ``c >= 0``, a scalar or a function ``c(t)``.
        method: ``"euler"`` (default) or ``"exponential"``.
        dtype: floating dtype of the probabilities and draws (see above).
        save_steps: also return the states at every grid time in ``xs``.

    Returns:
        A :class:`DiscreteSolution`.

    Raises:
        TypeError: ``denoiser`` not callable; ``x0`` not integer; ``path`` not a
            :class:`jfm.MixtureDiscretePath`; ``key`` missing; ``dtype`` not floating.
        ValueError: ``x0`` not ``[B, L]`` or with tokens outside ``[0, S)`` (concrete);
            not exactly one of ``steps``/``ts``; a bad grid; unknown ``method``; the
            denoiser's logits not ``[L, V]``.

    Examples:
        >>> import jax, jfm
        >>> path = jfm.MixtureDiscretePath(jfm.CondOT(), vocab_size=8)
        >>> data = jfm.DiscreteMixture.checkerboard(8, cells=2)
        >>> x0 = path.sample_source((16, 2), key=jax.random.key(0))
        >>> sol = jfm.sample_discrete(data.denoiser(path), x0, path=path, steps=10,
        ...                           key=jax.random.key(1))
        >>> sol.x1.shape, int(sol.nfe), sol.x1.dtype
        ((16, 2), 10, dtype('int32'))
    """
    check_callable(denoiser, "denoiser", "(t, x, args)")
    if not isinstance(path, MixtureDiscretePath):
        raise TypeError(f"`path` must be a jfm.MixtureDiscretePath; got {type(path)}.")
    check_key(key)
    check_name(method, "method", STEP_METHODS)
    x0 = check_tokens(x0, "x0", path.num_states, ndim=2)
    dtype = _default_dtype() if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    if not callable(div_free):
        div_free = check_scalar(div_free, "div_free", dtype, lo=0.0)
    if not isinstance(save_steps, bool):
        raise TypeError(f"`save_steps` must be a bool; got {save_steps!r}.")
    ts = _grid(steps, ts, dtype)
    x1, xs = _run(
        denoiser, x0.astype(jnp.int32), ts, key, args, path, div_free, method, dtype, save_steps
    )
    n = jnp.asarray(ts.shape[0] - 1, jnp.int32)
    return DiscreteSolution(x1=x1, nfe=n, num_steps=n, ts=ts, xs=xs)


__all__ = [
    "DiscreteGuidance",
    "DiscreteSolution",
    "ModelDenoiser",
    "denoiser_from_model",
    "discrete_guidance",
    "sample_discrete",
]
