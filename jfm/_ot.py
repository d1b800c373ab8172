"""Exact optimal assignment between two equal-size point sets (shared by couplings and metrics).

The squared-Euclidean cost matrix is formed from direct differences (never as
``|x|^2 + |y|^2 - 2 x.y``, which loses the precision of close points) in blocks of rows,
and the assignment is :func:`optax.assignment.hungarian_algorithm` (exact, jit-able,
``O(N^3)``).
"""

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

#: Block size, in elements of a ``[chunk, N, D]`` difference block (as in jfm.metrics).
_CHUNK_ELEMENTS = 2**25


def sq_cost(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, "n m"]:
    """``C_ij = |x_i - y_j|^2`` from direct differences, in blocks of rows of ``x``."""

    def row(xi):
        d = xi.reshape(1, -1) - y
        return jnp.sum(d * d, axis=-1)

    n, m, dim = x.shape[0], y.shape[0], x.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // max(m * dim, 1))
    if chunk >= n:
        return jax.vmap(row)(x)
    return jax.lax.map(row, x, batch_size=chunk)


def exact_assignment(cost: Float[Array, "n n"]) -> Int[Array, " n"]:
    """The permutation ``perm`` minimising ``sum_i cost[i, perm[i]]`` (square ``cost``).

    Ties are broken by the Hungarian algorithm's order (deterministic). Not
    differentiable (integer output); gradients of a transport cost flow through
    ``cost[i, perm[i]]`` at the fixed optimal assignment (the envelope theorem).
    """
    n = cost.shape[0]
    # optax's potentials use the default float dtype: with x64 on and a float32 cost,
    # strict dtype promotion would reject its mixed arithmetic (the output is integer).
    with jax.numpy_dtype_promotion("standard"):
        rows, cols = optax.assignment.hungarian_algorithm(jax.lax.stop_gradient(cost))
    return jnp.zeros((n,), cols.dtype).at[rows].set(cols)
