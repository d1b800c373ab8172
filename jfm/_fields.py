r"""Field transforms: density (mode-seeking) guidance.

A field transform takes a per-example field ``v(t, x, args)`` and returns a new one with
the same signature, so it composes with :func:`jfm.sample_ode` and :func:`jfm.log_prob`.
"""

import numbers

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_array, check_key, check_name
from ._custom_types import Args, RealScalarLike, VectorField
from ._divergence import (
    _check_pos_int,
    _check_t,
    _draw_probes,
    _resolve_method,
    _value_and_hutchinson_terms,
    _value_and_trace,
)

_NOISES: tuple[str, ...] = ("rademacher", "gaussian")


def _time_key(key, t):
    """A key for time ``t``: ``fold_in(key, bits of float32(t))``; pure in ``(key, t)``."""
    bits = lax.bitcast_convert_type(jnp.asarray(t).astype(jnp.float32), jnp.uint32)
    return jr.fold_in(key, bits)


class _DensityGuidedField(eqx.Module):
    """``v + scale * grad_x(-div v)``; built by :func:`jfm.density_guidance`."""

    field: VectorField
    scale: Float[Array, ""]
    key: PRNGKeyArray | None
    probes: int = eqx.field(static=True)
    noise: str = eqx.field(static=True)
    exact: bool = eqx.field(static=True)

    def __call__(self, t: RealScalarLike, x: ArrayLike, args: Args = None) -> Array:
        t = _check_t(t)
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

        if self.exact:
            method = _resolve_method("auto", None, x.size)

            def neg_div(y):
                v, div = _value_and_trace(g, y, method, None)
                return -div, v

        else:
            probe = _draw_probes(_time_key(self.key, t), self.probes, shape, self.noise, dtype)

            def neg_div(y):
                v, terms = _value_and_hutchinson_terms(g, y, probe, "jvp")
                return -jnp.mean(terms), v

        # Reverse over the forward-mode estimator: one backward pass through one
        # linearization, whatever D (no D backward passes); v rides along as aux.
        grad, v = jax.grad(neg_div, has_aux=True)(x.reshape(-1))
        return (v + self.scale.astype(dtype) * grad).reshape(shape)


def density_guidance(
    field: VectorField,
    scale: RealScalarLike,
    *,
    key: PRNGKeyArray | None = None,
    probes: int = 1,
    noise: str = "rademacher",
    exact: bool = False,
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

    - ``exact=True``: the gradient of :func:`jfm.divergence_exact` (about ``D`` tangent
      passes plus their backward pass); for small ``D``.
    - ``exact=False`` (default): the gradient of the forward-mode Hutchinson estimate
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
        key: PRNG key for the Hutchinson probes; required unless ``exact=True`` (where it
            must be ``None``).
        probes: Hutchinson probes ``K >= 1`` per evaluation.
        noise: ``"rademacher"`` or ``"gaussian"``.
        exact: use the exact divergence instead of Hutchinson.

    Returns:
        A per-example field ``f(t, x, args)`` (an :class:`equinox.Module`, so its arrays,
        including ``scale`` and ``key``, are traced by ``eqx.filter_jit``), returning the
        dtype of ``x``. Each evaluation costs one evaluation of ``field`` plus its
        derivatives (see above): a few forward passes for Hutchinson with ``K = 1``
        (measured in ``benchmarks/divergence.py``).

    Raises:
        TypeError: ``field`` not callable, ``scale`` not a real scalar, ``key`` missing
            (Hutchinson) or not a key, ``probes`` not an int, ``exact`` not a bool.
        ValueError: ``probes < 1``, unknown ``noise``, ``key`` given with ``exact=True``.

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
    if not callable(field):
        raise TypeError(
            f"`field` must be callable as field(t, x, args) -> dx/dt; got {type(field)}."
        )
    if isinstance(scale, bool) or not isinstance(
        scale, (numbers.Real, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(f"`scale` must be a real scalar; got {type(scale)}.")
    scale = jnp.asarray(scale)
    if scale.shape != ():
        raise ValueError(f"`scale` must be a scalar; got shape {scale.shape}.")
    if not jnp.issubdtype(scale.dtype, jnp.floating):
        scale = scale.astype(jnp.result_type(float))
    if not isinstance(exact, bool):
        raise TypeError(f"`exact` must be a bool; got {exact!r}.")
    check_name(noise, "noise", _NOISES)
    probes = _check_pos_int(probes, "probes")
    if exact:
        if key is not None:
            raise ValueError(
                "`key` is unused with exact=True (the exact divergence is deterministic); "
                "pass key=None, or exact=False for Hutchinson guidance."
            )
    else:
        check_key(key)
    return _DensityGuidedField(field, scale, key, probes, noise, exact)


__all__ = ["density_guidance"]
