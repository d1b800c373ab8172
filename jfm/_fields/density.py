r"""Field transforms: density (mode-seeking) guidance.

A field transform takes a per-example field ``v(t, x, args)`` and returns a new one with
the same signature, so it composes with :func:`jfm.sample_ode` and :func:`jfm.log_prob`.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_array, check_callable, check_key, check_scalar
from .._custom_types import Args, RealScalarLike, VectorField
from .._divergence import AbstractDivergence, HutchinsonDivergence, check_t, resolve_divergence


def _time_key(key, t):
    """A key for time ``t``: ``fold_in(key, bits of float32(t))``; pure in ``(key, t)``."""
    bits = lax.bitcast_convert_type(jnp.asarray(t).astype(jnp.float32), jnp.uint32)
    return jr.fold_in(key, bits)


class _DensityGuidedField(eqx.Module):
    """``v + scale * grad_x(-div v)``; built by :func:`jfm.density_guidance`."""

    field: VectorField
    scale: Float[Array, ""]
    divergence: AbstractDivergence
    key: PRNGKeyArray | None

    def __call__(self, t: RealScalarLike, x: ArrayLike, args: Args = None) -> Array:
        t = check_t(t)
        x = check_array(x, "x")
        shape, dtype = x.shape, x.dtype
        field = self.field

        def g(y):
            out = field(t, y.reshape(shape), args)
            if out.shape != shape:
                raise ValueError(
                    f"`field` must return an array of the shape of `x` {shape}; got {out.shape}."
                )
            return out.astype(dtype).reshape(-1)

        key = None if self.key is None else _time_key(self.key, t)
        probe = self.divergence.draw(key, shape, dtype)

        def neg_div(y):
            v, terms = self.divergence.terms(g, y, probe)
            return -jnp.mean(terms), v

        # Reverse over the forward-mode estimator: one backward pass through one
        # linearization, whatever D (no D backward passes); v rides along as aux.
        grad, v = jax.grad(neg_div, has_aux=True)(x.reshape(-1))
        return (v + self.scale.astype(dtype) * grad).reshape(shape)


def density_guidance(
    field: VectorField,
    scale: RealScalarLike,
    *,
    divergence: AbstractDivergence | str = HutchinsonDivergence(),
    key: PRNGKeyArray | None = None,
) -> VectorField:
    r"""Density (mode-seeking) guidance: the field ``v + scale * grad_x(-div v)``.

    Along the flow of ``v``, ``d/dt log p_t(x_t) = -div v_t(x_t)``; moving the sample up
    the gradient of ``-div v`` therefore steers it to where the flow contracts, i.e.
    towards regions the flow makes denser (modes). The guided field

    .. math::
        \tilde v_t(x) = v_t(x) + s\, \nabla_x\big(-\mathrm{div}\, v_t(x)\big)

    is no longer the marginal velocity: samples trade diversity for density (``s = 0``
    is ``v``; ``s < 0`` seeks low-density regions). Scale ``s`` has units of
    ``length^2 / time``; useful values depend on the field.

    Estimators of ``grad(-div v)``:

    - ``divergence=jfm.ExactDivergence()`` (or ``"exact"``): the gradient of
      :func:`jfm.divergence_exact` (about ``D`` tangent passes plus their backward pass);
      for small ``D``.
    - ``divergence=jfm.HutchinsonDivergence(probes=K)`` (default ``K = 1``): the gradient of
      the forward-mode Hutchinson estimate
      ``-(1/K) sum_k u_k^T J u_k`` (:func:`jfm.divergence_hutchinson`): ``jax.grad``
      over one ``jax.linearize``, i.e. one forward, ``K`` batched tangent and one
      backward pass, whatever ``D``. Unbiased for ``grad(-div v)`` at each ``(t, x)``.

    Randomness: the probes must not be hidden state, yet a per-example field only sees
    ``(t, x, args)``. Here they are a pure function of ``(key, t)``: ``u = draw(
    fold_in(key, bits of float32(t)))``, so the field is deterministic (same key, same
    samples; every solver stage at a new ``t`` gets fresh probes) and jit/vmap-safe. All
    examples of a batch share the probes at a given ``t`` (each example's estimate is
    still unbiased); for independent probes across examples ``jax.vmap`` over fields
    built with different keys. Because the guided field is random in ``t``, use it with
    fixed-step solvers (adaptive error control would chase the probe noise).

    Args:
        field: per-example velocity field ``v(t, x, args) -> dx/dt``.
        scale: guidance weight ``s`` (a real scalar; traced, so changing it does not
            recompile).
        divergence: the estimator of ``div v`` (:class:`jfm.HutchinsonDivergence`, default
            one Rademacher probe, or :class:`jfm.ExactDivergence`), or its name.
        key: PRNG key for a random estimator (required then; must be ``None`` for the
            exact one).

    Returns:
        A per-example field ``f(t, x, args)`` (an :class:`equinox.Module`, so its arrays,
        including ``scale`` and ``key``, are traced by ``eqx.filter_jit``), returning the
        dtype of ``x``. Each evaluation costs one evaluation of ``field`` plus its
        derivatives (see above): a few forward passes for Hutchinson with ``K = 1``
        (measured in ``benchmarks/divergence.py``).

    Raises:
        TypeError: ``field`` not callable, ``scale`` not a real scalar, ``divergence`` not
            an estimator, ``key`` missing (random estimator) or not a key.
        ValueError: ``key`` given with a deterministic estimator; unknown estimator name.

    Examples:
        >>> import jax.numpy as jnp, jax.random as jr, jfm
        >>> gmm = jfm.GaussianMixture.isotropic(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
        >>> v = gmm.velocity_field(jfm.AffinePath(jfm.CondOT()))
        >>> guided = jfm.density_guidance(v, 0.1, key=jr.key(0))
        >>> guided(0.5, jnp.zeros(2), None).shape
        (2,)

    References:
        Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud, "FFJORD", ICLR 2019
        (Hutchinson's estimator in continuous normalizing flows).
    """
    check_callable(field, "field")
    scale = check_scalar(scale, "scale")
    divergence = resolve_divergence(divergence)
    if divergence.needs_key:
        check_key(key)
    elif key is not None:
        raise ValueError(
            "`key` is unused with a deterministic estimator (the exact divergence); pass "
            "key=None, or divergence=jfm.HutchinsonDivergence() for Hutchinson guidance."
        )
    return _DensityGuidedField(field, scale, divergence, key)
