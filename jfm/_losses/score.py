r"""Score-matching losses on an affine path: DSM, noise (``eps``) and data (``x1``) prediction.

The three are one loss, the conditional regression core of ``regression.py``, with a target
parametrization and a default weight:

=================  ==========  ==================  =====================================
loss               target      default weighting   ``"likelihood"`` weight ``w(t)``
=================  ==========  ==================  =====================================
:func:`dsm_loss`   ``score``   ``"sigma2"``        ``g^2``
:func:`eps_loss`   ``x0``      ``"unit"``          ``g^2 / sigma^2``
:func:`x1_loss`    ``x1``      ``"unit"``          ``g^2 alpha^2 / sigma^4``
=================  ==========  ==================  =====================================

``g^2`` is the schedule's ``diffusion_sq`` (the squared diffusion of
:class:`jfm.DiffusionSDE`); with it the three losses are the same number for models that
are conversions of each other (``score = -x0 / sigma``, ``x1 = (x - sigma x0) / alpha``).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_name, check_scalar
from .._custom_types import ApplyFn, Args
from .._paths import AffinePath
from .regression import conditional_loss
from .time import uniform_time

WEIGHTINGS: tuple[str, ...] = ("unit", "sigma2", "likelihood")


def _weight_fn(path: AffinePath, weighting, target_kind: str):
    """``t[B] -> w[B]``: the weight on the squared error of parametrization ``target_kind``."""
    if callable(weighting):

        def user(t):
            w = jax.vmap(lambda ti: jnp.asarray(weighting(ti)))(t)
            if w.shape != t.shape:
                raise ValueError(
                    "`weighting` must map a scalar time to a scalar weight; got shape "
                    f"{w.shape[1:]}."
                )
            return w.astype(t.dtype)

        return user
    if not isinstance(weighting, str):
        raise TypeError(
            f"`weighting` must be one of {WEIGHTINGS} or a function lambda(t) -> scalar; got "
            f"{type(weighting)}."
        )
    check_name(weighting, "weighting", WEIGHTINGS)
    sch = path.schedule

    def named(t):
        if weighting == "unit":
            return jnp.ones_like(t)
        sigma = jax.vmap(sch.sigma)(t)
        if weighting == "sigma2":
            return (sigma**2).astype(t.dtype)
        g2 = jnp.maximum(jax.vmap(sch.diffusion_sq)(t), 0)
        if target_kind == "score":
            w = g2
        elif target_kind == "x0":
            w = g2 / sigma**2
        else:
            w = g2 * jax.vmap(sch.alpha)(t) ** 2 / sigma**4
        return w.astype(t.dtype)

    return named


def _score_family_loss(
    apply, params, x1, *, path, key, kind, target_kind, weighting, x0, args, time_sampler,
    t, t_max,
):  # fmt: skip
    if not isinstance(path, AffinePath):
        raise TypeError(
            "`path` must be a jfm.AffinePath (its schedule gives the weights; e.g. "
            f"jfm.AffinePath(jfm.VP())); got {type(path).__name__}."
        )
    with jax.ensure_compile_time_eval():  # range-checked when concrete, also under jit
        t_max = check_scalar(t_max, "t_max", lo=0.0, strict_lo=True, hi=1.0)
    weight_fn = _weight_fn(path, weighting, target_kind)
    return conditional_loss(
        apply, params, x1, path=path, key=key, kind=kind, target_kind=target_kind,
        weight_fn=weight_fn, x0=x0, args=args, time_sampler=time_sampler, t=t, t_max=t_max,
    )  # fmt: skip


def dsm_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " _batch *_event"],
    *,
    path: AffinePath,
    key: PRNGKeyArray,
    weighting: str | Callable[[Array], Array] = "sigma2",
    kind: str = "score",
    x0: Float[ArrayLike, " _batch *_event"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    t: Float[ArrayLike, " _batch"] | None = None,
    t_max: float | Float[ArrayLike, ""] = 1.0,
) -> Float[Array, " _batch"]:
    r"""Per-example denoising score matching loss with weighting ``lambda(t)``.

    With ``x_t = alpha_t x1 + sigma_t x0`` (``x0 ~ N(0, I)``), the conditional score
    ``grad log p_t(x_t | x1) = -x0 / sigma_t`` and the model's score ``s_theta`` (its
    output, converted from parametrization ``kind`` with ``path.convert`` if needed),

    .. math::
        \ell_i = \frac{\lambda(t_i)}{d} \Big\| s_\theta(t_i, x_{t,i}) +
                 \frac{x_{0,i}}{\sigma_{t_i}} \Big\|^2 ,

    whose expectation equals the explicit score matching loss
    ``E lambda ||s_theta - grad log p_t||^2 / d`` up to a constant (Vincent 2011): the
    minimiser is the marginal score for any ``lambda > 0``. Weightings: ``"sigma2"``
    (``lambda = sigma_t^2``, default; equal to the unit-weighted noise-prediction loss of
    :func:`jfm.eps_loss`), ``"unit"`` (``lambda = 1``), ``"likelihood"``
    (``lambda = g(t)^2``, the schedule's ``diffusion_sq``; the loss then bounds the
    negative log-likelihood, Song et al. 2021), or a function ``lambda(t)``.
    ``"unit"`` and ``"likelihood"`` have infinite variance where ``sigma -> 0``
    (``t = 1`` for CondOT and VP): train on ``t <= t_max < 1``.

    ``time_sampler`` times are multiplied by ``t_max``; ``key`` is split as in
    :func:`jfm.cfm_loss`. Pass it to :func:`jfm.make_train_step` as
    ``functools.partial(jfm.dsm_loss, path=path)``.

    Args:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]`` (batch-first).
        params: its parameters.
        x1: ``(B, *event)`` data batch.
        path: an :class:`jfm.AffinePath`.
        key: PRNG key (keyword-only, required).
        weighting: ``"sigma2"``, ``"unit"``, ``"likelihood"`` or ``lambda(t) -> scalar``.
        kind: the model's parametrization (``"score"``, ``"x0"``, ``"x1"`` or
            ``"velocity"``), converted to the score.
        x0, args, time_sampler, t: as in :func:`jfm.cfm_loss`.
        t_max: upper end of the training times, in ``(0, 1]``.

    Returns:
        ``(B,)`` losses in ``x1``'s dtype.

    Raises:
        TypeError: ``path`` not an ``AffinePath``; ``key`` missing; ``weighting`` neither
            a name nor callable.
        ValueError: unknown ``weighting`` or ``kind``; bad shapes (of ``x0``, ``t``, the
            model output, a ``weighting`` output); ``t_max`` outside ``(0, 1]``.

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
    return _score_family_loss(
        apply, params, x1, path=path, key=key, kind=kind, target_kind="score",
        weighting=weighting, x0=x0, args=args, time_sampler=time_sampler, t=t, t_max=t_max,
    )  # fmt: skip


def eps_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " _batch *_event"],
    *,
    path: AffinePath,
    key: PRNGKeyArray,
    weighting: str | Callable[[Array], Array] = "unit",
    x0: Float[ArrayLike, " _batch *_event"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    t: Float[ArrayLike, " _batch"] | None = None,
    t_max: float | Float[ArrayLike, ""] = 1.0,
) -> Float[Array, " _batch"]:
    r"""Per-example noise-prediction (DDPM, ``eps``) loss for a model predicting ``x0``.

    .. math::
        \ell_i = \frac{w(t_i)}{d} \big\| \hat\epsilon_\theta(t_i, x_{t,i}) - x_{0,i} \big\|^2

    (``x0`` is the noise in jfm's naming). ``"unit"`` (default) is DDPM's simple loss;
    ``"likelihood"`` is ``w = g^2 / sigma^2``, which makes it the likelihood-weighted DSM
    loss of the score ``-eps / sigma``; ``"sigma2"`` is ``w = sigma^2``; or a function.
    :func:`jfm.dsm_loss` with ``kind="x0"`` and the target ``"x0"``: same arguments
    (without ``kind``: the model predicts ``"x0"``) and errors.

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> apply = lambda p, t, x, args: p * x
        >>> path = jfm.AffinePath(jfm.VP())
        >>> jfm.eps_loss(apply, 1.0, jnp.ones((4, 2)), path=path, key=jax.random.key(0)).shape
        (4,)

    References:
        Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    """
    return _score_family_loss(
        apply, params, x1, path=path, key=key, kind="x0", target_kind="x0",
        weighting=weighting, x0=x0, args=args, time_sampler=time_sampler, t=t, t_max=t_max,
    )  # fmt: skip


def x1_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " _batch *_event"],
    *,
    path: AffinePath,
    key: PRNGKeyArray,
    weighting: str | Callable[[Array], Array] = "unit",
    x0: Float[ArrayLike, " _batch *_event"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    t: Float[ArrayLike, " _batch"] | None = None,
    t_max: float | Float[ArrayLike, ""] = 1.0,
) -> Float[Array, " _batch"]:
    r"""Per-example data-prediction (denoiser, ``x1``) loss.

    .. math::
        \ell_i = \frac{w(t_i)}{d} \big\| \hat x_{1,\theta}(t_i, x_{t,i}) - x_{1,i} \big\|^2 ,

    minimised by the posterior mean ``E[x1 | x_t]``. ``"unit"`` (default);
    ``"likelihood"``: ``w = g^2 alpha^2 / sigma^4`` (the likelihood-weighted DSM loss of
    the score ``(alpha x1_hat - x) / sigma^2``); ``"sigma2"``: ``w = sigma^2``; or a
    function. :func:`jfm.dsm_loss` with ``kind="x1"`` and the target ``"x1"``: same
    arguments (without ``kind``: the model predicts ``"x1"``) and errors.

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
    return _score_family_loss(
        apply, params, x1, path=path, key=key, kind="x1", target_kind="x1",
        weighting=weighting, x0=x0, args=args, time_sampler=time_sampler, t=t, t_max=t_max,
    )  # fmt: skip


__all__ = ["dsm_loss", "eps_loss", "x1_loss"]
