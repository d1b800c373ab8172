"""The conditional flow matching loss (per example, optax style)."""

from collections.abc import Callable

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._custom_types import ApplyFn, Args
from .._paths import AbstractPath
from .regression import conditional_loss
from .time import uniform_time


def cfm_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " _batch *_event"],
    *,
    path: AbstractPath,
    key: PRNGKeyArray,
    x0: Float[ArrayLike, " _batch *_event"] | None = None,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    kind: str = "velocity",
    smoothing: float | Float[ArrayLike, ""] = 0.0,
    t: Float[ArrayLike, " _batch"] | None = None,
    coupling: Callable[..., tuple[Array, Array]] | str | None = None,
) -> Float[Array, " _batch"]:
    r"""Per-example conditional flow matching loss.

    For each example ``i``, with ``t_i`` from ``time_sampler``, ``x0_i`` the source draw
    (paired with ``x1_i`` by ``coupling``) and ``(x_{t,i}, y_i) =
    path.sample_and_target(t_i, x0_i, x1_i, key=k_i, kind=kind)``,

    .. math::
        \tilde x_{t,i} = x_{t,i} + \mathrm{smoothing}\cdot\epsilon_i, \qquad
        \ell_i = \frac{1}{d}\,\big\| f_\theta(t_i, \tilde x_{t,i}) - y_i \big\|^2,

    where ``d = prod(event)`` and ``f_theta = apply(params, ., ., args)`` (batch-first).
    For an :class:`jfm.AbstractFlowPath` (affine, Poisson, isotropic) ``x_t`` is
    ``path.sample(t, x0, x1)`` and ``y`` is ``path.target(t, x0, x1, kind=kind)``. With
    ``kind="velocity"`` the expectation equals the (intractable) marginal flow matching
    loss ``E ||f_theta(t, x_t) - u_t(x_t)||^2 / d`` up to a constant independent of
    ``theta``, so both have the same gradients (Lipman et al. 2023, Thm. 2); the same
    holds for the other parametrizations with their marginal targets.

    Noise: when ``x0`` is not given it is ``path.x0_sample(x1.shape, key=...)``: STANDARD
    normal for a :class:`jfm.AffinePath` (``x_t = alpha x1 + sigma x0`` carries the source
    scale in ``sigma``, e.g. ``sigma_max`` for VE), a prior draw for the radial paths.
    Paths whose ``x_t`` carries its own noise (:class:`jfm.SchrodingerBridgePath`) draw it
    from their per-example key inside ``sample_and_target``. ``smoothing > 0`` adds
    independent Gaussian noise ``smoothing * eps``, ``eps ~ N(0, I)``, to ``x_t`` with the
    target unchanged, as in torchcfm's ``ConditionalFlowMatcher(sigma=...)``: each
    conditional path becomes ``N(path.sample(t, x0, x1), smoothing^2 I)``. ``key`` is
    split into independent keys for ``t``, ``x0`` and the noise (the same three whether or
    not ``t`` and ``x0`` are given).

    Args:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]`` (batch-first).
        params: the parameters (pytree); differentiate the mean of the result w.r.t. them.
        x1: ``(B, *event)`` data batch.
        path: any :class:`jfm.AbstractPath` (keyword-only).
        key: PRNG key (keyword-only, required).
        x0: ``(B, *event)`` source draws (e.g. from an OT coupling), or ``None`` to draw
            them. Cast to ``x1``'s dtype.
        args: conditioning passed unchanged to ``apply`` (e.g. ``(B,)`` labels).
        time_sampler: ``time_sampler(n, *, key, dtype) -> (n,)`` times, e.g.
            :func:`jfm.uniform_time` (default) or :func:`jfm.logit_normal_time` (bind its
            options with ``functools.partial``).
        kind: the model's parametrization, one of ``"velocity"``, ``"x1"``, ``"x0"``,
            ``"score"`` that the path offers (the target is the path's of that kind).
        smoothing: standard deviation of the extra smoothing noise, ``>= 0`` (default 0);
            only for an :class:`jfm.AbstractFlowPath`.
        t: ``(B,)`` times in ``[0, 1]`` to use instead of ``time_sampler``; cast to
            ``x1``'s dtype.
        coupling: how ``(x0, x1)`` are paired before the path is sampled, any
            ``coupling(x0, x1, *, key) -> (x0', x1')``: e.g. :func:`jfm.exact_ot_coupling`
            (OT-CFM), ``functools.partial(jfm.sinkhorn_coupling, epsilon=...)``,
            ``jfm.label_ot_coupling(labels)``, ``SchrodingerBridgePath.coupling``
            (SB-CFM), or the names ``"independent"``, ``"exact_ot"``; ``None`` (default)
            keeps the pairs as given (independent). Its key is ``fold_in(key_x0, 1)`` of
            the ``x0`` key (results without a coupling are unchanged). The built-in
            couplings keep ``x1`` in place, so per-example ``args`` stay aligned; a custom
            coupling that re-orders ``x1`` must not be combined with per-example ``args``.

    Returns:
        ``(B,)`` losses in ``x1``'s dtype (the model output is cast to it).

    Raises:
        TypeError: ``apply`` not callable; ``path`` not a :class:`jfm.AbstractPath`;
            ``key`` missing; ``x1`` not floating; ``coupling`` neither callable nor a name.
        ValueError: unknown ``kind`` (or one the path does not offer); ``smoothing < 0``,
            or ``> 0`` on a path that is not an :class:`jfm.AbstractFlowPath`;
            ``x0``/``t``/model output/``coupling`` output of the wrong shape; times
            outside ``[0, 1]`` (when concrete); an unknown ``coupling`` name.

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
        Transport", TMLR 2024 (smoothing, couplings).
    """
    return conditional_loss(
        apply, params, x1, path=path, key=key, kind=kind, target_kind=kind, weight_fn=None,
        x0=x0, args=args, time_sampler=time_sampler, t=t, smoothing=smoothing,
        coupling=coupling,
    )  # fmt: skip


__all__ = ["cfm_loss"]
