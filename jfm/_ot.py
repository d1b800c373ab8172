r"""Exact optimal assignment between two equal-size point sets (shared by couplings and metrics).

The squared-Euclidean cost matrix is formed from direct differences (never as
``|x|^2 + |y|^2 - 2 x.y``, which loses the precision of close points) in blocks of rows.
The assignment ``min_perm sum_i C[i, perm[i]]`` is solved by one of three methods
(:data:`METHODS`), chosen by :func:`resolve_method` from the backend and the size:

- ``"scipy"`` (exact): a few annealed log-domain Sinkhorn sweeps on the device give column
  potentials ``g`` (float32, a warm start only); on the host,
  :func:`scipy.optimize.linear_sum_assignment` solves the reduced cost
  ``R_ij = C_ij - g_j - min_k (C_ik - g_k) >= 0`` in float64, through
  :func:`jax.pure_callback`. Subtracting row and column constants changes every
  permutation's cost by the same amount, so the optimum of ``R`` is the optimum of ``C``
  whatever ``g`` is; good potentials only make the shortest augmenting paths short. Cost:
  ``S`` sweeps of ``O(n^2)`` exponentials on the device plus a transfer of ``n^2`` floats and
  the host solve (``O(n^3)`` worst case; measured ``O(n^2)``-like when warm: 10x-30x faster
  than a cold solve of the same matrix at ``n = 512 ... 2048``).
- ``"auction"`` (within ``n * eps``): Bertsekas' forward auction with epsilon scaling,
  Jacobi-style (every unassigned row bids at once), warm-started from the same Sinkhorn
  potentials, entirely in ``lax`` (on the device, vmappable). Each round costs ``O(n^2)``
  elementwise work and one scatter; rounds are sequential. An assignment satisfying
  ``eps``-complementary slackness costs at most ``n * eps`` more than the optimum; the
  final ``eps`` is ``AUCTION_EPS_ULPS * finfo(dtype).eps * max|C|`` (16 ulps of the largest
  cost; raised to 4 ulps of the largest price if the prices outgrow the costs, so that
  every bid still raises a price): the gap is at the resolution of the prices.
- ``"hungarian"`` (exact): :func:`optax.assignment.hungarian_algorithm`, ``O(n^3)`` in
  ``lax`` loops (sequential).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

#: Block size, in elements of a ``[chunk, N, D]`` difference block (as in jfm.metrics).
_CHUNK_ELEMENTS = 2**25

#: The assignment methods; ``"auto"`` picks one of the others (:func:`resolve_method`).
METHODS: tuple[str, ...] = ("auto", "scipy", "auction", "hungarian")

#: On a CPU backend, ``"auto"`` uses the Hungarian algorithm up to this size (no host
#: round trip) and the warm-started host solver above it (measured crossover, see
#: benchmarks/ot_assignment.py).
CPU_HUNGARIAN_MAX_N = 32

#: Warm-start schedule: epsilon relative to the mean cost, one Sinkhorn sweep at each.
_WARM_SCHEDULE: tuple[float, ...] = tuple(float(r) for r in np.geomspace(0.3, 0.001, 16))

#: The auction's final epsilon in units of ``finfo(dtype).eps * max|C|``.
AUCTION_EPS_ULPS = 16.0


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


def resolve_method(method: str, n: int, backend: str | None = None) -> str:
    """The method that ``method="auto"`` means for an ``n x n`` problem on ``backend``.

    Cost model (measured on a 2-core CPU, benchmarks/ot_assignment.py): on a CPU backend
    the Hungarian algorithm in ``lax`` costs ``O(n^3)`` sequential steps, the host solver a
    fixed ~0.1 ms round trip plus ``O(n^2)``-like warm work, so ``"hungarian"`` for
    ``n <= CPU_HUNGARIAN_MAX_N`` and ``"scipy"`` above. On an accelerator (GPU/TPU) the
    host solver pays a device-to-host copy of ``n^2`` floats and runs on one host core,
    while the auction's rounds are ``O(n^2)`` parallel work that stays on the device:
    ``"auction"``.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
    if method != "auto":
        return method
    backend = jax.default_backend() if backend is None else backend
    if backend == "cpu":
        return "hungarian" if n <= CPU_HUNGARIAN_MAX_N else "scipy"
    return "auction"


def exact_assignment(
    cost: Float[Array, "n n"],
    *,
    method: str = "auto",
    allowed: Bool[Array, "n n"] | None = None,
) -> Int[Array, " n"]:
    """The permutation ``perm`` minimising ``sum_i cost[i, perm[i]]`` (square ``cost``).

    ``allowed`` (optional) forbids the pairs where it is ``False`` (a feasible
    permutation must exist, e.g. the identity). ``method`` as in :data:`METHODS`. Ties:
    every method is deterministic (same input, same permutation), but different methods
    may return different optimal permutations of a degenerate cost. Not differentiable
    (integer output); gradients of a transport cost flow through ``cost[i, perm[i]]`` at
    the fixed optimal assignment (the envelope theorem). Works under ``jit`` and ``vmap``.
    """
    n = cost.shape[-1]
    method = resolve_method(method, n)
    cost = jax.lax.stop_gradient(cost)
    if method == "hungarian":
        return _hungarian(cost, allowed)
    g = _warm_potentials(cost, allowed)
    if method == "scipy":
        return _host_assignment(cost, g, allowed)
    return _auction(cost, g, allowed)[0]


# -- Hungarian (optax) ---------------------------------------------------------------------


def _hungarian(cost, allowed):
    n = cost.shape[0]
    if allowed is not None:
        # Any assignment through a forbidden pair costs more than n * max C + 1 > the cost
        # of any allowed one, so the optimum stays allowed (and optimal among those).
        penalty = n * jnp.max(jnp.where(allowed, cost, 0)) + 1
        cost = jnp.where(allowed, cost, penalty)
    # optax's potentials use the default float dtype: with x64 on and a float32 cost,
    # strict dtype promotion would reject its mixed arithmetic (the output is integer).
    with jax.numpy_dtype_promotion("standard"):
        rows, cols = optax.assignment.hungarian_algorithm(cost)
    return jnp.zeros((n,), jnp.int32).at[rows].set(cols.astype(jnp.int32))


# -- warm start: annealed Sinkhorn potentials ----------------------------------------------


def _warm_potentials(cost, allowed) -> Float[Array, " n"]:
    """Column potentials ``g`` of a few annealed log-domain Sinkhorn sweeps (float32).

    Uniform marginals; ``f_i = -e LSE_j((g_j - C_ij) / e)``, ``g_j = -e LSE_i((f_i - C_ij)
    / e)``, one sweep at each ``e = r * mean C``, ``r`` from 0.3 down to 0.001 geometrically
    in 16 steps. A heuristic warm start only: nothing
    downstream depends on its accuracy for correctness.
    """
    c = cost.astype(jnp.float32)
    if allowed is None:
        scale = jnp.mean(c)
    else:
        c = jnp.where(allowed, c, jnp.inf)
        scale = jnp.sum(jnp.where(allowed, c, 0)) / jnp.maximum(jnp.sum(allowed), 1).astype(c.dtype)
    scale = jnp.maximum(scale, jnp.finfo(jnp.float32).tiny)

    def sweep(fg, rel):
        f, g = fg
        e = rel * scale
        f = -e * jax.nn.logsumexp((g[None, :] - c) / e, axis=1)
        g = -e * jax.nn.logsumexp((f[:, None] - c) / e, axis=0)
        return (f, g), None

    zeros = jnp.zeros(c.shape[0], jnp.float32), jnp.zeros(c.shape[1], jnp.float32)
    (_, g), _ = jax.lax.scan(sweep, zeros, jnp.asarray(_WARM_SCHEDULE, jnp.float32))
    return jnp.where(jnp.isfinite(g), g, 0)


# -- exact host solve (scipy), warm-started ----------------------------------------------


def _lsa_host(cost, g, allowed):
    """``linear_sum_assignment`` of the reduced cost, looping over any leading batch axes."""
    from scipy.optimize import linear_sum_assignment

    cost, g = np.asarray(cost), np.asarray(g)
    masked = allowed is not None
    allowed = np.asarray(allowed) if masked else np.ones((1, 1), bool)
    batch = np.broadcast_shapes(cost.shape[:-2], g.shape[:-1], allowed.shape[:-2])
    n = cost.shape[-1]
    cost = np.broadcast_to(cost, batch + (n, n))
    g = np.broadcast_to(g, batch + (n,))
    allowed = np.broadcast_to(allowed, batch + allowed.shape[-2:])
    out = np.empty(batch + (n,), np.int32)
    for idx in np.ndindex(*batch):
        r = cost[idx].astype(np.float64) - g[idx].astype(np.float64)[None, :]
        if masked:
            r = np.where(allowed[idx], r, np.inf)
        with np.errstate(invalid="ignore"):
            r -= np.min(r, axis=1, keepdims=True)
        if np.isnan(r).any() or (not masked and not np.isfinite(r).all()):
            raise ValueError(
                "The cost matrix of the exact OT assignment contains NaN or infinite "
                "values (non-finite inputs `x0`/`x1`?)."
            )
        _, cols = linear_sum_assignment(r)
        out[idx] = cols
    return out


def _host_assignment(cost, g, allowed):
    shape = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
    if allowed is None:
        return jax.pure_callback(
            lambda c, g: _lsa_host(c, g, None), shape, cost, g, vmap_method="expand_dims"
        )
    return jax.pure_callback(_lsa_host, shape, cost, g, allowed, vmap_method="expand_dims")


# -- auction with epsilon scaling ----------------------------------------------------------


def _auction(cost, g, allowed, *, theta: float = 4.0, max_rounds: int | None = None):
    """Forward Jacobi auction (minimisation), prices warm-started at ``-g``.

    Returns ``(perm, eps, rounds)``: ``perm`` satisfies ``eps``-complementary slackness, so
    ``sum_i C[i, perm i] <= OPT + n * eps`` (Bertsekas 1988), unless ``max_rounds`` ran out
    (then the unassigned rows take the free columns in order: still a permutation).
    """
    n = cost.shape[0]
    dt = cost.dtype
    ar = jnp.arange(n, dtype=jnp.int32)
    ok = jnp.ones((n, n), bool) if allowed is None else allowed
    finite = jnp.where(ok, cost, 0)
    cmax = jnp.max(jnp.abs(finite))
    delta = jnp.max(jnp.where(ok, cost, -jnp.inf)) - jnp.min(jnp.where(ok, cost, jnp.inf))
    tiny = jnp.finfo(dt).tiny
    eps_final = jnp.maximum(AUCTION_EPS_ULPS * jnp.finfo(dt).eps * cmax, tiny)
    neg = jnp.asarray(-jnp.inf, dt)
    # Start at the warm start's last temperature (its potentials are accurate to about it).
    mean = jnp.sum(finite) / jnp.maximum(jnp.sum(ok), 1).astype(dt)
    eps0 = jnp.maximum(jnp.asarray(_WARM_SCHEDULE[-1], dt) * mean, eps_final)
    p0 = -g.astype(dt)
    p0 = p0 - jnp.min(p0)
    if max_rounds is None:
        max_rounds = 50 * n + 1000

    def bid_round(state):
        p, owner, assign, eps, rounds = state
        un = assign < 0
        v = jnp.where(ok, -cost - p[None, :], neg)
        j1 = jnp.argmax(v, axis=1).astype(jnp.int32)
        w1 = jnp.max(v, axis=1)
        w2 = jnp.max(jnp.where(ar[None, :] == j1[:, None], neg, v), axis=1)
        # Any increment in [eps, w1 - w2 + eps] keeps eps-CS; the clamp bounds it when a
        # row has one allowed column (w2 = -inf).
        inc = jnp.minimum(w1 - w2, delta) + eps
        bid = jnp.where(un, p[j1] + inc, neg)
        tgt = jnp.where(un, j1, n)
        best = jnp.full((n + 1,), neg, dt).at[tgt].max(bid)
        win = un & (bid == best[tgt])
        winner = jnp.full((n + 1,), n, jnp.int32).at[jnp.where(win, tgt, n)].min(ar)[:n]
        got = winner < n
        assign = assign.at[jnp.where(got & (owner >= 0), owner, n)].set(-1, mode="drop")
        assign = assign.at[jnp.where(got, winner, n)].set(ar, mode="drop")
        owner = jnp.where(got, winner, owner)
        p = jnp.where(got, best[:n], p)
        return p, owner, assign, eps, rounds + 1

    def phase(p, eps, rounds):
        # The prices' resolution bounds eps from below (each bid must raise a price).
        eps = jnp.maximum(eps, 4 * jnp.finfo(dt).eps * jnp.max(jnp.abs(p)))
        empty = jnp.full((n,), -1, jnp.int32)
        state = (p, empty, empty, eps, rounds)
        return jax.lax.while_loop(
            lambda s: jnp.any(s[2] < 0) & (s[4] < max_rounds), bid_round, state
        )

    def outer(state):
        p, _, _, eps, rounds = state
        return phase(p, jnp.maximum(eps / theta, eps_final), rounds)

    state = phase(p0, eps0, 0)
    state = jax.lax.while_loop(lambda s: (s[3] > eps_final) & (s[4] < max_rounds), outer, state)
    _, owner, assign, eps, rounds = state
    # Rounds exhausted: give the unassigned rows the free columns in order.
    free_rows = jnp.argsort(assign >= 0, stable=True)
    free_cols = jnp.argsort(owner >= 0, stable=True)
    n_free = jnp.sum(assign < 0)
    fill = jnp.zeros((n,), jnp.int32).at[free_rows].set(free_cols.astype(jnp.int32))
    perm = jnp.where(assign >= 0, assign, fill)
    return perm, jnp.where(n_free > 0, jnp.inf, eps), rounds
