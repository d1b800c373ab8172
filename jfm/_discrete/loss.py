r"""Training losses of discrete flow matching on a mixture path, per example (``[B]``)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._checks import check_array, check_callable, check_key, check_name
from .._custom_types import ApplyFn, Args
from .._losses import uniform_time
from .path import MixtureDiscretePath, check_tokens

KINDS: tuple[str, ...] = ("cross_entropy", "generalized_kl")


def dfm_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Int[Array, "batch L"],
    *,
    path: MixtureDiscretePath,
    key: PRNGKeyArray,
    kind: str = "cross_entropy",
    x0: Int[Array, "batch L"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    t: Float[Array, " batch"] | None = None,
    dtype=None,
) -> Float[Array, " batch"]:
    r"""Per-example discrete flow matching loss of a denoiser ``p_theta = softmax(logits)``.

    With ``t_b`` from ``time_sampler``, ``x0_b ~ p_0``, ``x_{t,b} ~ p_t(. | x0_b, x1_b)``
    (:meth:`jfm.MixtureDiscretePath.sample`) and ``logits = apply(params, t, x_t, args)``
    ``[B, L, V]``, the loss of example ``b`` is the mean over its ``L`` tokens of

    - ``"cross_entropy"``: ``-log p_theta^i(x1^i | x_t)``. Its expectation is minimised
      by the exact posterior, where it equals the conditional entropy
      ``(1/L) sum_i E_t H(X_1^i | X_t)``;
    - ``"generalized_kl"`` (Shaul et al. 2025; ``flow_matching``'s
      ``MixturePathGeneralizedKL``): the generalised KL divergence
      ``sum_{y != x^i} [u log(u / u_theta) - u + u_theta]`` between the conditional rates
      ``u = kappa'/(1 - kappa) delta_{x1^i}(y)`` and the model's
      ``u_theta = kappa'/(1 - kappa) p_theta^i(y | x_t)``, i.e.

      .. math::
          \frac{\dot\kappa_t}{1 - \kappa_t}\Big[\delta_{x_1^i}(x_t^i)
              - p_\theta^i(x_t^i \mid x_t)
              - \big(1 - \delta_{x_1^i}(x_t^i)\big) \log p_\theta^i(x_1^i \mid x_t)\Big],

      minimised by the exact posterior too, where its expectation is
      ``E (kappa'/(1 - kappa)) H_{-x^i}`` with ``H_{-x}(q) = -sum_{y != x} q(y) log q(y)``.
      Its weight ``kappa'/(1 - kappa)`` (``1 / (1 - t)`` for CondOT) is unbounded at
      ``t -> 1``: draw ``t`` from ``[0, 1 - eps]`` (e.g. ``time_sampler=lambda n, *,
      key, dtype: (1 - 1e-3) * jfm.uniform_time(n, key=key, dtype=dtype)``).

    ``key`` splits into independent keys for ``t``, ``x0`` and ``x_t`` (the same three
    whether or not ``t`` and ``x0`` are given).

    Args:
        apply: ``apply(params, t[B], x[B, L], args) -> logits [B, L, V]`` (batch-first,
            e.g. :class:`jfm.models.TokenMLP` through :func:`jfm.split_model`).
        params: its parameters; differentiate the mean of the result w.r.t. them.
        x1: ``[B, L]`` integer data tokens in ``[0, V)``.
        path: a :class:`jfm.MixtureDiscretePath` (keyword-only).
        key: PRNG key (keyword-only, required).
        kind: ``"cross_entropy"`` (default) or ``"generalized_kl"``.
        x0: ``[B, L]`` source tokens, or ``None`` to draw them from the path's source.
        args: conditioning passed to ``apply`` unchanged (e.g. ``(B,)`` labels).
        time_sampler: ``time_sampler(n, *, key, dtype) -> (n,)`` times.
        t: ``(B,)`` times to use instead of ``time_sampler``.
        dtype: the float dtype of the times (default JAX's default float).

    Returns:
        ``[B]`` per-example losses in the logits' dtype.

    Raises:
        TypeError: ``apply`` not callable; ``path`` not a mixture path; tokens not
            integers; ``key`` missing.
        ValueError: unknown ``kind``; bad shapes; tokens out of range (concrete);
            logits not ``[B, L, V]``.

    References:
        Gat et al., "Discrete Flow Matching", NeurIPS 2024; Shaul et al., "Flow Matching
        with General Discrete Paths: A Kinetic-Optimal Perspective", ICLR 2025.
    """
    check_callable(apply, "apply", "(params, t, x, args)")
    if not isinstance(path, MixtureDiscretePath):
        raise TypeError(f"`path` must be a jfm.MixtureDiscretePath; got {type(path)}.")
    check_name(kind, "kind", KINDS)
    check_key(key)
    x1 = check_tokens(x1, "x1", path.vocab_size, ndim=2)
    b, length = x1.shape
    dtype = jnp.result_type(float) if dtype is None else dtype
    key_x0, key_t, key_xt = jr.split(key, 3)
    if x0 is None:
        x0 = path.sample_source((b, length), key=key_x0)
    x0 = check_tokens(x0, "x0", path.num_states, ndim=2)
    if x0.shape != x1.shape:
        raise ValueError(f"`x0` must have x1's shape {x1.shape}; got {x0.shape}.")
    if t is None:
        t = time_sampler(b, key=key_t, dtype=dtype)
    t = check_array(t, "t", ndim=1)
    if t.shape != (b,):
        raise ValueError(f"`t` must have shape (B,) = ({b},); got {t.shape}.")
    xt = jax.vmap(lambda ti, a, c, k: path.sample(ti, a, c, key=k))(t, x0, x1, jr.split(key_xt, b))
    logits = apply(params, t, xt, args)
    if getattr(logits, "shape", None) != (b, length, path.vocab_size):
        raise ValueError(
            f"`apply` must return logits [B, L, V] = {(b, length, path.vocab_size)}; got "
            f"{getattr(logits, 'shape', type(logits))}."
        )
    logp = jax.nn.log_softmax(logits, axis=-1)
    logp_x1 = jnp.take_along_axis(logp, x1[..., None], axis=-1)[..., 0]
    if kind == "cross_entropy":
        return -jnp.mean(logp_x1, axis=-1)
    valid = xt < path.vocab_size  # the mask has posterior probability 0
    p_xt = jnp.take_along_axis(jnp.exp(logp), jnp.where(valid, xt, 0)[..., None], axis=-1)[..., 0]
    p_xt = jnp.where(valid, p_xt, 0)
    same = (xt == x1).astype(logp.dtype)
    rate = jax.vmap(lambda ti: path.schedule.d_alpha(ti) / (1 - path.schedule.alpha(ti)))(t)
    per = rate.astype(logp.dtype)[:, None] * (same - p_xt - (1 - same) * logp_x1)
    return jnp.mean(per, axis=-1)


__all__ = ["dfm_loss"]
