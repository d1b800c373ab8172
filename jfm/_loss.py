"""Conditional flow matching losses and time samplers (per example, optax style).

Losses return one value per example (shape ``(B,)``); the train step reduces them.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from ._checks import PARAMETRIZATIONS, check_array, check_key, check_name, is_concrete
from ._couplings import resolve_coupling
from ._custom_types import ApplyFn, Args
from ._misc import sample_flat
from ._paths import AbstractPath, AffinePath, DiffusionSDE, SchrodingerBridgePath


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"`n` must be a positive int (the number of times); got {type(n)}.")
    if n < 1:
        raise ValueError(f"`n` must be a positive int (the number of times); got n={n}.")
    return int(n)


def _float_dtype(dtype):
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    return dtype


def uniform_time(n: int, *, key: PRNGKeyArray, dtype: Any = None) -> Float[Array, " n"]:
    """``n`` times drawn independently from ``U[0, 1)``.

    Args:
        n: number of times, a positive int.
        key: PRNG key (keyword-only, required).
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``(n,)`` times in ``[0, 1)``.

    Raises:
        TypeError/ValueError: ``n`` not a positive int, bad ``key`` or ``dtype``.

    Examples:
        >>> import jax, jfm
        >>> jfm.uniform_time(3, key=jax.random.key(0)).shape
        (3,)
    """
    n = _check_n(n)
    check_key(key)
    return jr.uniform(key, (n,), _float_dtype(dtype))


def logit_normal_time(
    n: int,
    *,
    key: PRNGKeyArray,
    mean: float | Float[ArrayLike, ""] = 0.0,
    std: float | Float[ArrayLike, ""] = 1.0,
    dtype: Any = None,
) -> Float[Array, " n"]:
    r"""``n`` times from the logit-normal distribution, ``t = sigmoid(mean + std z)``,
    ``z ~ N(0, 1)``.

    Its density on ``(0, 1)`` is
    ``p(t) = exp(-(logit t - mean)^2 / (2 std^2)) / (std sqrt(2 pi) t (1 - t))``; it
    puts more weight on intermediate times than ``U[0, 1]`` (``mean > 0`` favours the data
    end ``t -> 1``, in jfm's time convention).

    Args:
        n: number of times, a positive int.
        key: PRNG key (keyword-only, required).
        mean: location of ``logit t`` (default 0).
        std: scale of ``logit t``, ``> 0`` (default 1).
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``(n,)`` times in ``(0, 1)`` (in floating point, ``0`` and ``1`` are reachable
        for extreme draws).

    Raises:
        TypeError/ValueError: ``n`` not a positive int; ``std <= 0``; bad ``key``.

    References:
        Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image
        Synthesis", ICML 2024.
    """
    n = _check_n(n)
    check_key(key)
    dtype = _float_dtype(dtype)
    if is_concrete(std) and not float(std) > 0:
        raise ValueError(f"`std` must be > 0; got std={float(std)}.")
    z = jr.normal(key, (n,), dtype)
    return jax.nn.sigmoid(jnp.asarray(mean, dtype) + jnp.asarray(std, dtype) * z)


def cfm_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path: AbstractPath,
    key: PRNGKeyArray,
    x0: Float[ArrayLike, " batch *event"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    pred: str = "velocity",
    sigma_min: float | Float[ArrayLike, ""] = 0.0,
    t: Float[ArrayLike, " batch"] | None = None,
    coupling: Callable[..., tuple[Array, Array]] | str | None = None,
) -> Float[Array, " batch"]:
    r"""Per-example conditional flow matching loss.

    For each example ``i``, with ``t_i`` from ``time_sampler`` and ``x0_i`` the source
    noise,

    .. math::
        x_{t,i} = \mathrm{path.sample}(t_i, x_{0,i}, x_{1,i}) + \sigma_{\min}\,\epsilon_i,
        \qquad
        \ell_i = \frac{1}{d}\,\big\| f_\theta(t_i, x_{t,i}) -
                 \mathrm{path.target}(t_i, x_{0,i}, x_{1,i}, \mathrm{pred}) \big\|^2,

    where ``d = prod(event)`` and ``f_theta = apply(params, ., ., args)`` (batch-first).
    With ``pred="velocity"`` the expectation equals the (intractable) marginal flow
    matching loss ``E ||f_theta(t, x_t) - u_t(x_t)||^2 / d`` up to a constant independent
    of ``theta``, so both have the same gradients (Lipman et al. 2023, Thm. 2); the
    same holds for the other parametrizations with their marginal targets.

    Noise: when ``x0`` is not given it is drawn as ``jax.random.normal`` (STANDARD normal)
    for a :class:`jfm.AffinePath`, whose ``x_t = alpha x1 + sigma x0`` takes standard
    noise and carries the source scale in ``sigma`` (``path.prior_sample`` would multiply
    by ``prior_std``, ``sigma_max`` for VE); for any other path it is
    ``path.prior_sample(x1.shape, key=...)``. ``sigma_min > 0`` adds independent
    Gaussian smoothing ``sigma_min * eps``, ``eps ~ N(0, I)``, to ``x_t`` with the target
    unchanged, as in torchcfm's ``ConditionalFlowMatcher(sigma=...)``: each conditional
    path becomes ``N(path.sample(t, x0, x1), sigma_min^2 I)``. ``key`` is split into
    independent keys for ``t``, ``x0`` and ``eps`` (the same three whether or not ``t``
    and ``x0`` are given).

    Args:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]`` (batch-first).
        params: the parameters (pytree); differentiate the mean of the result w.r.t. them.
        x1: ``(B, *event)`` data batch.
        path: a :class:`jfm.AbstractPath` with ``sample`` and ``target`` (keyword-only).
        key: PRNG key (keyword-only, required).
        x0: ``(B, *event)`` source noise (e.g. from an OT coupling), or ``None`` to draw it.
            Cast to ``x1``'s dtype.
        args: conditioning passed unchanged to ``apply`` (e.g. ``(B,)`` labels).
        time_sampler: ``time_sampler(n, *, key, dtype) -> (n,)`` times, e.g.
            :func:`uniform_time` (default) or :func:`logit_normal_time` (bind its options
            with ``functools.partial``).
        pred: the model's parametrization, one of ``"velocity"``, ``"x1"``, ``"x0"``,
            ``"score"`` (the regression target is ``path.target(..., kind=pred)``).
        sigma_min: standard deviation of the extra smoothing noise, ``>= 0`` (default 0).
        t: ``(B,)`` times in ``[0, 1]`` to use instead of ``time_sampler``; cast to
            ``x1``'s dtype.
        coupling: how ``(x0, x1)`` are paired before the path is sampled:
            ``coupling(x0, x1, *, key) -> (x0', x1')``, e.g. :func:`jfm.exact_ot_coupling`
            (OT-CFM), ``functools.partial(jfm.sinkhorn_coupling, epsilon=...)``,
            ``SchrodingerBridgePath.coupling`` (SB-CFM), or the names ``"independent"``,
            ``"exact_ot"``; ``None`` (default) keeps the pairs as given (independent).
            Its key is ``fold_in(key_x0, 1)`` of the ``x0`` key (results without a
            coupling are unchanged). The built-in couplings keep ``x1`` in place, so
            per-example ``args`` stay aligned; a custom coupling that re-orders ``x1``
            must not be combined with per-example ``args``.

    Schrodinger-bridge paths (:class:`jfm.SchrodingerBridgePath`) have noise in ``x_t``
    besides ``x0``: ``eps ~ N(0, I)`` is drawn with the ``eps`` key and passed to
    ``path.sample``/``path.target`` (``sigma_min`` must then be 0).

    Returns:
        ``(B,)`` losses in ``x1``'s dtype (the model output is cast to it).

    Raises:
        TypeError: ``path`` not a jfm path; ``key`` missing; ``x1`` not floating.
        ValueError: unknown ``pred``; ``sigma_min < 0``; ``x0``/``t``/model output of the
            wrong shape; times outside ``[0, 1]`` (when concrete).

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> apply = lambda p, t, x, args: p * x
        >>> x1 = jnp.ones((4, 2))
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> jfm.cfm_loss(apply, 1.0, x1, path=path, key=jax.random.key(0)).shape
        (4,)

    References:
        Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023; Tong et al.,
        "Improving and Generalizing Flow-Based Generative Models with Minibatch Optimal
        Transport", TMLR 2024 (``sigma_min``).
    """
    if not callable(apply):
        raise TypeError(f"`apply` must be callable apply(params, t, x, args); got {type(apply)}.")
    if not isinstance(path, AbstractPath):
        raise TypeError(
            f"`path` must be a jfm.AbstractPath (e.g. jfm.AffinePath(jfm.CondOT())); "
            f"got {type(path)}."
        )
    if not hasattr(path, "target"):
        raise TypeError(
            f"`path` must define target(t, x0, x1, kind=); {type(path).__name__} does not."
        )
    check_key(key)
    check_name(pred, "pred", PARAMETRIZATIONS)
    x1 = check_array(x1, "x1", min_ndim=1)
    dtype = x1.dtype
    batch = x1.shape[0]
    if is_concrete(sigma_min) and not float(sigma_min) >= 0:
        raise ValueError(f"`sigma_min` must be >= 0; got sigma_min={float(sigma_min)}.")
    smoothing = not (is_concrete(sigma_min) and float(sigma_min) == 0)

    key_t, key_x0, key_eps = jr.split(key, 3)
    if t is None:
        t = time_sampler(batch, key=key_t, dtype=dtype)
        name = "time_sampler output"
    else:
        name = "t"
    t = check_array(t, name)
    if t.shape != (batch,):
        raise ValueError(
            f"`{name}` must have shape (B,) = ({batch},) to match x1.shape={x1.shape}; "
            f"got shape {t.shape}."
        )
    t = t.astype(dtype)
    if is_concrete(t) and not bool(jnp.all((t >= 0) & (t <= 1))):
        raise ValueError(
            f"`{name}` must lie in [0, 1]; got values in [{float(t.min())}, {float(t.max())}]."
        )
    if x0 is None:
        if isinstance(path, AffinePath):
            x0 = sample_flat(jr.normal, key_x0, x1.shape, dtype)
        else:
            x0 = path.prior_sample(x1.shape, key=key_x0, dtype=dtype)
    x0 = check_array(x0, "x0")
    if x0.shape != x1.shape:
        raise ValueError(
            f"`x0` and `x1` must have equal shapes (B, *event); got x0.shape={x0.shape}, "
            f"x1.shape={x1.shape}."
        )
    x0 = x0.astype(dtype)
    if coupling is not None:
        x0, x1 = _apply_coupling(coupling, x0, x1, jr.fold_in(key_x0, 1))

    if isinstance(path, SchrodingerBridgePath):
        xt, target = _bridge_sample_target(path, t, x0, x1, key_eps, pred, smoothing)
        smoothing = False
    else:
        xt = jax.vmap(path.sample)(t, x0, x1)
        target = jax.vmap(lambda ti, a, b: path.target(ti, a, b, kind=pred))(t, x0, x1)
    if smoothing:
        eps = sample_flat(jr.normal, key_eps, x1.shape, dtype)
        xt = xt + jnp.asarray(sigma_min, dtype) * eps
    out = apply(params, t, xt, args)
    if not hasattr(out, "shape") or out.shape != x1.shape:
        raise ValueError(
            f"`apply` must return shape (B, *event) = {x1.shape}; "
            f"got {getattr(out, 'shape', type(out))}."
        )
    sq = (jnp.asarray(out).astype(dtype) - target) ** 2
    return jnp.mean(sq, axis=tuple(range(1, x1.ndim)))


# --- issue 4: score matching losses (DSM with weighting, noise and data prediction) ---

_WEIGHTINGS: tuple[str, ...] = ("unit", "sigma2", "likelihood")


def _loss_weight(path, t, weighting, kind, dtype):
    """Per-example weight ``w(t)`` on the squared error of parametrization ``kind``.

    ``"likelihood"`` is the weight that makes the loss equal to DSM with ``lambda = g^2``
    (``g`` the diffusion of :class:`jfm.DiffusionSDE`): ``g^2`` on the score error,
    ``g^2 / sigma^2`` on the noise error, ``g^2 alpha^2 / sigma^4`` on the data error.
    """
    if callable(weighting):
        w = jax.vmap(lambda ti: jnp.asarray(weighting(ti)))(t)
        if w.shape != t.shape:
            raise ValueError(
                f"`weighting` must map a scalar time to a scalar weight; got shape {w.shape[1:]}."
            )
        return w.astype(dtype)
    check_name(weighting, "weighting", _WEIGHTINGS)
    if weighting == "unit":
        return jnp.ones_like(t)
    sigma = jax.vmap(path.sigma)(t)
    if weighting == "sigma2":
        return (sigma**2).astype(dtype)
    g2 = jax.vmap(DiffusionSDE(path).diffusion)(t) ** 2
    if kind == "score":
        w = g2
    elif kind == "x0":
        w = g2 / sigma**2
    else:
        w = g2 * jax.vmap(path.alpha)(t) ** 2 / sigma**4
    return w.astype(dtype)


class _ToScore(eqx.Module):
    """A batch-first ``apply`` whose output (parametrization ``pred``) is converted to the
    score with ``path.convert``."""

    apply: Callable = eqx.field(static=True)
    path: AffinePath
    pred: str = eqx.field(static=True)

    def __call__(self, params, t, x, args):
        out = self.apply(params, t, x, args)
        if not hasattr(out, "shape") or out.shape != x.shape:
            raise ValueError(
                f"`apply` must return shape (B, *event) = {x.shape}; "
                f"got {getattr(out, 'shape', type(out))}."
            )
        conv = lambda ti, xi, oi: self.path.convert(ti, xi, oi, src=self.pred, dst="score")
        return jax.vmap(conv)(t, x, jnp.asarray(out).astype(x.dtype))


def _weighted_loss(
    apply, params, x1, *, path, key, kind, weighting, x0, args, time_sampler, t, t_max
):
    if not isinstance(path, AffinePath):
        raise TypeError(
            f"`path` must be a jfm.AffinePath (e.g. jfm.AffinePath(jfm.VP())); got {type(path)}."
        )
    check_key(key)
    x1 = check_array(x1, "x1", min_ndim=1)
    dtype = x1.dtype
    if is_concrete(t_max) and not 0 < float(t_max) <= 1:
        raise ValueError(f"`t_max` must lie in (0, 1]; got t_max={float(t_max)}.")
    key_t, key_rest = jr.split(key)
    if t is None:
        t = time_sampler(x1.shape[0], key=key_t, dtype=dtype)
        t = check_array(t, "time_sampler output") * jnp.asarray(t_max, dtype)
    t = check_array(t, "t")
    if t.shape != (x1.shape[0],):
        raise ValueError(
            f"`t` must have shape (B,) = ({x1.shape[0]},) to match x1.shape={x1.shape}; got "
            f"shape {t.shape}."
        )
    t = t.astype(dtype)
    losses = cfm_loss(apply, params, x1, path=path, key=key_rest, x0=x0, args=args, pred=kind, t=t)
    return _loss_weight(path, t, weighting, kind, dtype) * losses


def dsm_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path: AffinePath,
    key: PRNGKeyArray,
    weighting: str | Callable[[Array], Array] = "sigma2",
    pred: str = "score",
    x0: Float[ArrayLike, " batch *event"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    t: Float[ArrayLike, " batch"] | None = None,
    t_max: float | Float[ArrayLike, ""] = 1.0,
) -> Float[Array, " batch"]:
    r"""Per-example denoising score matching loss with weighting ``lambda(t)``.

    With ``x_t = alpha_t x1 + sigma_t x0`` (``x0 ~ N(0, I)``), the conditional score
    ``grad log p_t(x_t | x1) = -x0 / sigma_t`` and the model's score ``s_theta`` (its
    output, converted from parametrization ``pred`` with ``path.convert`` if needed),

    .. math::
        \ell_i = \frac{\lambda(t_i)}{d} \Big\| s_\theta(t_i, x_{t,i}) +
                 \frac{x_{0,i}}{\sigma_{t_i}} \Big\|^2 ,

    whose expectation equals the explicit score matching loss
    ``E lambda ||s_theta - grad log p_t||^2 / d`` up to a constant (Vincent 2011): the
    minimiser is the marginal score for any ``lambda > 0``. Weightings: ``"sigma2"``
    (``lambda = sigma_t^2``, default; equal to the unit-weighted noise-prediction loss of
    :func:`jfm.eps_loss`), ``"unit"`` (``lambda = 1``), ``"likelihood"``
    (``lambda = g(t)^2``, the diffusion of :class:`jfm.DiffusionSDE`; the loss then bounds
    the negative log-likelihood, Song et al. 2021), or a function ``lambda(t)``.
    ``"unit"`` and ``"likelihood"`` have infinite variance where ``sigma -> 0``
    (``t = 1`` for CondOT and VP): train on ``t <= t_max < 1``.

    ``time_sampler`` times are multiplied by ``t_max``; ``key`` is split into one key for
    ``t`` and one for :func:`jfm.cfm_loss`'s noise. Pass it to :func:`jfm.make_train_step`
    as ``functools.partial(jfm.dsm_loss, path=path)``.

    Args:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]`` (batch-first).
        params: its parameters.
        x1: ``(B, *event)`` data batch.
        path: an :class:`jfm.AffinePath`.
        key: PRNG key (keyword-only, required).
        weighting: ``"sigma2"``, ``"unit"``, ``"likelihood"`` or ``lambda(t) -> scalar``.
        pred: the model's parametrization (``"score"``, ``"x0"``, ``"x1"`` or
            ``"velocity"``), converted to the score.
        x0, args, time_sampler, t: as in :func:`jfm.cfm_loss`.
        t_max: upper end of the training times, in ``(0, 1]``.

    Returns:
        ``(B,)`` losses in ``x1``'s dtype.

    Raises:
        TypeError: ``path`` not an ``AffinePath``; ``key`` missing.
        ValueError: unknown ``weighting`` or ``pred``; bad shapes; ``t_max`` outside
            ``(0, 1]``.

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> apply = lambda p, t, x, args: -p * x
        >>> path = jfm.AffinePath(jfm.VP())
        >>> jfm.dsm_loss(apply, 1.0, jnp.ones((4, 2)), path=path, key=jax.random.key(0)).shape
        (4,)

    References:
        Vincent, "A Connection Between Score Matching and Denoising Autoencoders", Neural
        Computation 2011; Song, Durkan, Murray, Ermon, "Maximum Likelihood Training of
        Score-Based Diffusion Models", NeurIPS 2021.
    """
    check_name(pred, "pred", PARAMETRIZATIONS)
    if not callable(apply):
        raise TypeError(f"`apply` must be callable apply(params, t, x, args); got {type(apply)}.")
    if pred != "score":
        apply = _ToScore(apply, path, pred)
    return _weighted_loss(
        apply, params, x1, path=path, key=key, kind="score", weighting=weighting, x0=x0,
        args=args, time_sampler=time_sampler, t=t, t_max=t_max,
    )  # fmt: skip


def eps_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path: AffinePath,
    key: PRNGKeyArray,
    weighting: str | Callable[[Array], Array] = "unit",
    x0: Float[ArrayLike, " batch *event"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    t: Float[ArrayLike, " batch"] | None = None,
    t_max: float | Float[ArrayLike, ""] = 1.0,
) -> Float[Array, " batch"]:
    r"""Per-example noise-prediction (DDPM, ``eps``) loss for a model predicting ``x0``.

    .. math::
        \ell_i = \frac{w(t_i)}{d} \big\| \hat\epsilon_\theta(t_i, x_{t,i}) - x_{0,i} \big\|^2

    (``x0`` is the noise in jfm's naming). ``"unit"`` (default) is DDPM's simple loss;
    ``"likelihood"`` is ``w = g^2 / sigma^2``, which makes it the likelihood-weighted DSM
    loss of the score ``-eps / sigma``; ``"sigma2"`` is ``w = sigma^2``; or a function.
    Same arguments as :func:`jfm.dsm_loss` (the model predicts ``"x0"``).

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> apply = lambda p, t, x, args: p * x
        >>> path = jfm.AffinePath(jfm.VP())
        >>> jfm.eps_loss(apply, 1.0, jnp.ones((4, 2)), path=path, key=jax.random.key(0)).shape
        (4,)

    References:
        Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    """
    return _weighted_loss(
        apply, params, x1, path=path, key=key, kind="x0", weighting=weighting, x0=x0,
        args=args, time_sampler=time_sampler, t=t, t_max=t_max,
    )  # fmt: skip


def x1_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path: AffinePath,
    key: PRNGKeyArray,
    weighting: str | Callable[[Array], Array] = "unit",
    x0: Float[ArrayLike, " batch *event"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    t: Float[ArrayLike, " batch"] | None = None,
    t_max: float | Float[ArrayLike, ""] = 1.0,
) -> Float[Array, " batch"]:
    r"""Per-example data-prediction (denoiser, ``x1``) loss.

    .. math::
        \ell_i = \frac{w(t_i)}{d} \big\| \hat x_{1,\theta}(t_i, x_{t,i}) - x_{1,i} \big\|^2 ,

    minimised by the posterior mean ``E[x1 | x_t]``. ``"unit"`` (default);
    ``"likelihood"``: ``w = g^2 alpha^2 / sigma^4`` (the likelihood-weighted DSM loss of
    the score ``(alpha x1_hat - x) / sigma^2``); ``"sigma2"``: ``w = sigma^2``; or a
    function. Same arguments as :func:`jfm.dsm_loss` (the model predicts ``"x1"``).

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> apply = lambda p, t, x, args: p * x
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> jfm.x1_loss(apply, 1.0, jnp.ones((4, 2)), path=path, key=jax.random.key(0)).shape
        (4,)

    References:
        Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based
        Generative Models", NeurIPS 2022.
    """
    return _weighted_loss(
        apply, params, x1, path=path, key=key, kind="x1", weighting=weighting, x0=x0,
        args=args, time_sampler=time_sampler, t=t, t_max=t_max,
    )  # fmt: skip


__all__ = [
    "cfm_loss",
    "dsm_loss",
    "eps_loss",
    "logit_normal_time",
    "uniform_time",
    "x1_loss",
]


def _apply_coupling(coupling, x0, x1, key):
    """Pair ``(x0, x1)`` with ``coupling`` and check that it kept shapes and dtypes."""
    c0, c1 = resolve_coupling(coupling)(x0, x1, key=key)
    for name, new, old in (("x0", c0, x0), ("x1", c1, x1)):
        if getattr(new, "shape", None) != old.shape or new.dtype != old.dtype:
            raise ValueError(
                f"`coupling` must return (x0, x1) of the input shapes and dtypes; got {name} "
                f"{getattr(new, 'shape', type(new))} {getattr(new, 'dtype', '')}, expected "
                f"{old.shape} {old.dtype}."
            )
    return c0, c1


def _bridge_sample_target(path, t, x0, x1, key, pred, smoothing):
    """``x_t`` and the velocity target of a Schrodinger-bridge path (noise from ``key``)."""
    if smoothing:
        raise ValueError(
            "`sigma_min` must be 0 with a SchrodingerBridgePath: its x_t already carries "
            "the bridge noise sigma sqrt(t(1-t)) eps; set the noise level with its sigma."
        )
    check_name(pred, "pred", ("velocity",))
    eps = sample_flat(jr.normal, key, x1.shape, x1.dtype)
    xt = jax.vmap(path.sample)(t, x0, x1, eps)
    target = jax.vmap(lambda ti, a, b, e: path.target(ti, a, b, e, kind=pred))(t, x0, x1, eps)
    return xt, target


__all__ = ["cfm_loss", "logit_normal_time", "uniform_time"]
