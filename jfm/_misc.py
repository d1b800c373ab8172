"""Small shared numerical helpers."""

import math


def sample_flat(sampler, key, shape, *args, **kwargs):
    """``sampler(key, shape, *args, **kwargs)`` (a ``jax.random`` sampler), drawn flat.

    The values are identical (threefry's counters, JAX's default PRNG, are the row-major
    flat index, so a flat draw reshaped is the same array bit for bit; any other PRNG
    implementation still gives i.i.d. draws of the same law), but the compile is not: on
    XLA:CPU with JAX 0.10, a rank-4 draw such as an image batch ``[B, H, W, C]`` or a
    conv kernel takes 1-15 s to compile per new shape, a flat one ~0.3 s.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        return sampler(key, shape, *args, **kwargs)
    return sampler(key, (math.prod(shape),), *args, **kwargs).reshape(shape)
