"""Tests for the shared helpers (jfm/_misc.py)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jfm._misc import sample_flat


# Small rank-4 and rank-5 shapes: the direct reference draw is the slow compile (~5 s for
# (2, 8, 8, 1) on 2 CPU cores, ~1.5 s for (2, 3, 2, 1)), and the claim does not depend on size.
@pytest.mark.slow
@pytest.mark.parametrize("shape", [(), (5,), (4, 3), (2, 3, 2, 1), (3, 2, 1, 2, 2)])
def test_sample_flat_draws_the_same_values(shape):
    # Drawn flat and reshaped, the values are those of a direct draw, bit for bit (only
    # the compile is cheaper), for every sampler jfm draws this way, jitted or not.
    key = jr.key(7)
    cases = [
        (jr.normal, (jnp.float64,), {}),
        (jr.uniform, (jnp.float32,), {}),
        (jr.rademacher, (), {"dtype": jnp.float64}),
    ]
    for sampler, args, kwargs in cases:
        ref = sampler(key, shape, *args, **kwargs)
        got = sample_flat(sampler, key, shape, *args, **kwargs)
        jitted = jax.jit(lambda k: sample_flat(sampler, k, shape, *args, **kwargs))(key)
        assert got.shape == ref.shape == shape and got.dtype == ref.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        np.testing.assert_array_equal(np.asarray(jitted), np.asarray(ref))
    # Under vmap (per-example noise of a batch of images) as well.
    keys = jr.split(key, 3)
    ref = jax.vmap(lambda k: jr.normal(k, shape))(keys)
    got = jax.vmap(lambda k: sample_flat(jr.normal, k, shape))(keys)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
