"""Tests for jfm.metrics: energy distance and MMD."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats
from jax.test_util import check_grads

import jfm

from .helpers import raises_arg

# Jitted once per shape/option set: eager dispatch compiles every primitive separately,
# which dominates the run time of this file. test_eager_jit_vmap_and_dtype checks eager.
energy_distance = jax.jit(jfm.metrics.energy_distance, static_argnames=("unbiased", "chunk"))
mmd = jax.jit(jfm.metrics.mmd, static_argnames=("unbiased", "chunk"))


# -- independent references -------------------------------------------------------------


def _loop_mean(a, b, f, skip_diag):
    """Mean of f(|a_i - b_j|) over all pairs (or i != j) by an explicit double loop."""
    total, count = 0.0, 0
    for i in range(len(a)):
        for j in range(len(b)):
            if skip_diag and i == j:
                continue
            total += f(math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a[i], b[j]))))
            count += 1
    return total / count


def _energy_loop(x, y, unbiased):
    x, y = np.reshape(x, (len(x), -1)), np.reshape(y, (len(y), -1))
    d = lambda r: r  # noqa: E731
    return (
        2 * _loop_mean(x, y, d, False)
        - _loop_mean(x, x, d, unbiased)
        - _loop_mean(y, y, d, unbiased)
    )


def _mmd_loop(x, y, bandwidths, unbiased):
    x, y = np.reshape(x, (len(x), -1)), np.reshape(y, (len(y), -1))
    k = lambda r: sum(math.exp(-(r**2) / (2 * b**2)) for b in bandwidths)  # noqa: E731
    return (
        _loop_mean(x, x, k, unbiased)
        + _loop_mean(y, y, k, unbiased)
        - 2 * _loop_mean(x, y, k, False)
    )


def _folded_normal_mean(m, s):
    """E|Z| for Z ~ N(m, s^2)."""
    return s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s**2)) + m * (
        1 - 2 * scipy.stats.norm.cdf(-m / s)
    )


def _rbf_mean(delta, var, bw):
    """E exp(-(X - Y)^2 / (2 bw^2)) for X - Y ~ N(delta, var)."""
    v = bw**2 + var
    return bw / math.sqrt(v) * math.exp(-(delta**2) / (2 * v))


# -- exactness against a double loop ----------------------------------------------------------


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("chunk", [None, 2])  # 2: blocked lax.map path with a remainder
def test_against_double_loop(unbiased, chunk, getkey):
    x = jr.normal(getkey(), (7, 3))
    y = 0.5 + 2 * jr.normal(getkey(), (5, 3))
    x = x.at[4].set(x[1])  # a repeated point: off-diagonal zero distances
    y = y.at[0].set(x[2])  # and one shared between the sets
    kw = dict(unbiased=unbiased, chunk=chunk)
    # Same sums, different order: float64 round-off only.
    np.testing.assert_allclose(
        energy_distance(x, y, **kw), _energy_loop(x, y, unbiased), rtol=1e-12, atol=1e-12
    )
    bws = (0.7, 2.5) if chunk else 1.3  # multi-scale and single bandwidth
    np.testing.assert_allclose(
        mmd(x, y, bandwidth=bws, **kw),
        _mmd_loop(x, y, np.atleast_1d(bws), unbiased),
        rtol=1e-12,
        atol=1e-12,
    )


def test_image_shaped_inputs_are_flattened(getkey):
    x, y = jr.normal(getkey(), (6, 2, 3, 1)), jr.normal(getkey(), (4, 2, 3, 1))
    # Identical computation after the reshape: bitwise equal.
    assert energy_distance(x, y) == energy_distance(x.reshape(6, -1), y.reshape(4, -1))
    # Against the loops on flattened images: float64 round-off.
    np.testing.assert_allclose(energy_distance(x, y), _energy_loop(x, y, False), rtol=1e-12)
    np.testing.assert_allclose(mmd(x, y, bandwidth=2.0), _mmd_loop(x, y, [2.0], False), rtol=1e-12)


def test_energy_distance_matches_scipy_in_1d(getkey):
    x, y = jr.normal(getkey(), (300,)), 0.3 + 1.5 * jr.normal(getkey(), (200,))
    # scipy's 1-D energy distance (via CDFs) is the square root of the V-statistic.
    ref = scipy.stats.energy_distance(np.asarray(x), np.asarray(y)) ** 2
    np.testing.assert_allclose(energy_distance(x[:, None], y[:, None]), ref, rtol=1e-10)


# -- known properties ------------------------------------------------------------------------


def test_zero_for_identical_sets_symmetric_nonnegative(getkey):
    # Equal sizes keep this to one compilation; unequal sizes are covered by the loops.
    x, y = jr.normal(getkey(), (40, 3)), jr.normal(getkey(), (40, 3)) + 0.2
    shuffled = x[jr.permutation(getkey(), 40)]  # the same multiset, another order
    # 2A - A - A: zero up to the round-off of the summed means.
    assert abs(float(energy_distance(x, shuffled))) < 1e-14
    assert abs(float(mmd(x, shuffled, bandwidth=1.0))) < 1e-14
    # Symmetric up to summation order.
    np.testing.assert_allclose(energy_distance(x, y), energy_distance(y, x), rtol=1e-13)
    np.testing.assert_allclose(mmd(x, y, bandwidth=1.0), mmd(y, x, bandwidth=1.0), rtol=1e-13)
    assert float(energy_distance(x, y)) > 0 and float(mmd(x, y, bandwidth=1.0)) > 0
    # Multi-scale kernel = sum of single-scale MMDs (linearity in the kernel).
    np.testing.assert_allclose(
        mmd(x, y, bandwidth=[0.5, 2.0]),
        mmd(x, y, bandwidth=0.5) + mmd(x, y, bandwidth=2.0),
        rtol=1e-13,
    )


def test_energy_distance_closed_form_two_gaussians(getkey):
    # X ~ N(0, 1), Y ~ N(mu, 1) in 1-D: X - Y ~ N(-mu, 2), X - X' ~ N(0, 2), so
    # D^2 = 2 E|N(mu, 2)| - 2 E|N(0, 2)|. Unbiased estimator, R independent replicates.
    mu, n, reps = 0.8, 250, 256  # SE^2 ~ 1/(n reps), cost ~ n^2 reps: small sets, many reps
    exact = 2 * _folded_normal_mean(mu, math.sqrt(2)) - 2 * _folded_normal_mean(0.0, math.sqrt(2))

    def one(key):
        kx, ky = jr.split(key)
        x, y = jr.normal(kx, (n, 1)), mu + jr.normal(ky, (n, 1))
        return energy_distance(x, y, unbiased=True)

    # lax.map in blocks of 32 replicates: one compilation, bounded memory.
    vals = np.asarray(
        jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=32))(jr.split(getkey(), reps))
    )
    se = vals.std(ddof=1) / math.sqrt(reps)
    assert se < 0.02 * exact  # the check below is sharp (4 SE ~ 6% of the value)
    assert abs(vals.mean() - exact) < 4 * se, (vals.mean(), exact, se)  # 4 SE (t, 255 dof)


def test_mmd_closed_form_two_gaussians(getkey):
    # X ~ N(a, s1^2), Y ~ N(b, s2^2): E k(X, Y) = l / sqrt(l^2 + s1^2 + s2^2)
    # exp(-(a - b)^2 / (2 (l^2 + s1^2 + s2^2))), summed over the bandwidths l.
    a, s1, b, s2, bws = 0.0, 1.0, 0.5, 1.5, (0.5, 2.0)
    n, reps = 250, 256
    exact = sum(
        _rbf_mean(0.0, 2 * s1**2, bw)
        + _rbf_mean(0.0, 2 * s2**2, bw)
        - 2 * _rbf_mean(a - b, s1**2 + s2**2, bw)
        for bw in bws
    )

    def one(key):
        kx, ky = jr.split(key)
        x, y = a + s1 * jr.normal(kx, (n, 1)), b + s2 * jr.normal(ky, (n, 1))
        return mmd(x, y, bandwidth=bws, unbiased=True)

    vals = np.asarray(
        jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=32))(jr.split(getkey(), reps))
    )
    se = vals.std(ddof=1) / math.sqrt(reps)
    assert se < 0.02 * exact  # the check below is sharp
    assert abs(vals.mean() - exact) < 4 * se, (vals.mean(), exact, se)  # 4 SE (t, 255 dof)


def test_gradients_finite_at_coincident_points(getkey):
    x = jr.normal(getkey(), (20, 3))
    x = x.at[5].set(x[3])  # duplicate rows: zero distances off the diagonal too
    for f in (
        lambda a: energy_distance(a, x),
        lambda a: energy_distance(a, x, chunk=3),
        lambda a: mmd(a, x, bandwidth=[0.5, 1.0]),
    ):
        g = jax.jit(jax.grad(f))(x)
        assert bool(jnp.all(jnp.isfinite(g)))
        # x is the minimiser of a V-statistic discrepancy to itself: zero gradient.
        np.testing.assert_allclose(g, 0.0, atol=1e-12)
    assert bool(jnp.all(jnp.isfinite(jax.jit(jax.grad(lambda a: energy_distance(a, a)))(x))))


def test_gradients_match_finite_differences(getkey):
    x, y = jr.normal(getkey(), (6, 2)), jr.normal(getkey(), (5, 2)) + 0.3
    # check_grads compares reverse mode with central differences (float64 tolerances).
    for f in (
        lambda a: energy_distance(a, y, chunk=4),  # blocked path: checkpointed lax.map
        lambda a: mmd(a, y, bandwidth=[0.5, 1.5]),
    ):
        check_grads(jax.jit(f), (x,), order=1, modes=("rev",))


def test_eager_jit_vmap_and_dtype(getkey):
    x, y = jr.normal(getkey(), (30, 4)), jr.normal(getkey(), (25, 4))
    for eager, jitted in (
        (jfm.metrics.energy_distance, energy_distance),
        (lambda a, b: jfm.metrics.mmd(a, b, bandwidth=1.0), lambda a, b: mmd(a, b, bandwidth=1.0)),
    ):
        # Same program, compiled once vs op by op: round-off only.
        np.testing.assert_allclose(jitted(x, y), eager(x, y), rtol=1e-12)
        out32 = jitted(x.astype(jnp.float32), y.astype(jnp.float32))
        assert out32.dtype == jnp.float32 and out32.shape == ()
        np.testing.assert_allclose(out32, eager(x, y), rtol=1e-4)  # float32 round-off
        # Batched over sets with vmap: equals one call per set.
        xs = jnp.stack([x, 2 * x])
        batched = jax.vmap(jitted, in_axes=(0, None))(xs, y)
        np.testing.assert_allclose(batched[1], jitted(2 * x, y), rtol=1e-12)
    # A traced bandwidth is accepted (its value cannot be checked then).
    np.testing.assert_allclose(
        jax.jit(lambda b: jfm.metrics.mmd(x, y, bandwidth=b))(1.0),
        mmd(x, y, bandwidth=1.0),
        rtol=1e-12,
    )


def test_errors(getkey):
    x, y = jr.normal(getkey(), (5, 3)), jr.normal(getkey(), (4, 3))
    for f in (jfm.metrics.energy_distance, lambda a, b: jfm.metrics.mmd(a, b, bandwidth=1.0)):
        with raises_arg(ValueError, "x", "same event"):
            f(x, y[:, :2])
        with raises_arg(ValueError, "y", "at least one sample"):
            f(x, y[:0])
        with raises_arg(ValueError, "x", "at least 2 dimensions"):
            f(x[:, 0], y[:, 0])
        with raises_arg(TypeError, "x"):
            f(jnp.ones((5, 3), jnp.int32), y)
        with raises_arg(TypeError, "x", "same dtype"):
            f(x.astype(jnp.float32), y)
        with raises_arg(ValueError, "x", "at least 2 samples"):
            f(x[:1], y, unbiased=True) if f is jfm.metrics.energy_distance else jfm.metrics.mmd(
                x[:1], y, bandwidth=1.0, unbiased=True
            )
    with raises_arg(ValueError, "chunk"):
        jfm.metrics.energy_distance(x, y, chunk=0)
    for bad in (0.0, -1.0, float("nan"), [1.0, -2.0], []):
        with raises_arg(ValueError, "bandwidth", "> 0|non-empty"):
            jfm.metrics.mmd(x, y, bandwidth=bad)
    with raises_arg(ValueError, "bandwidth"):
        jfm.metrics.mmd(x, y, bandwidth=jnp.ones((2, 2)))


# -- W2 (exact optimal assignment) ----------------------------------------------------------


def test_w2_matches_scipy_assignment(getkey):
    import scipy.optimize

    # The W2 tests share two shapes, (12, 2) and (40, 2): one assignment compile each.
    for n, d in ((12, 2), (40, 2)):
        x, y = jr.normal(getkey(), (n, d)), 0.5 + jr.normal(getkey(), (n, d))
        c = ((np.asarray(x)[:, None] - np.asarray(y)[None]) ** 2).sum(-1)
        r, k = scipy.optimize.linear_sum_assignment(c)
        ref = c[r, k].mean()
        # Same optimum (unique for continuous data), summed in another order: round-off.
        np.testing.assert_allclose(jfm.metrics.w2(x, y, squared=True), ref, rtol=1e-12)
        np.testing.assert_allclose(jfm.metrics.w2(x, y), math.sqrt(ref), rtol=1e-12)


def test_w2_known_values(getkey):
    x = jr.normal(getkey(), (40, 2))
    # Permutation: 0 exactly (the identity matching costs exactly 0).
    assert float(jfm.metrics.w2(x, x[jr.permutation(getkey(), 40)])) == 0.0
    # Translation by b: W2 = |b| (a translation is the OT map for the squared cost).
    b = jnp.array([0.3, -1.2])
    np.testing.assert_allclose(jfm.metrics.w2(x, x + b[None]), jnp.linalg.norm(b), rtol=1e-12)
    # 1-D (embedded on a line of the plane): the optimal matching is by sorted order
    # (monotone rearrangement).
    u, v = jr.normal(getkey(), (40,)), 2 * jr.exponential(getkey(), (40,))
    ref = np.mean((np.sort(u) - np.sort(v)) ** 2)
    on_line = lambda a: jnp.stack([a, jnp.zeros_like(a)], axis=-1)  # noqa: E731
    np.testing.assert_allclose(
        jfm.metrics.w2(on_line(u), on_line(v), squared=True), ref, rtol=1e-12
    )
    # Image-shaped events are flattened; symmetric.
    xi, yi = jr.normal(getkey(), (12, 1, 2, 1)), jr.normal(getkey(), (12, 1, 2, 1))
    np.testing.assert_allclose(
        jfm.metrics.w2(xi, yi), jfm.metrics.w2(yi.reshape(12, -1), xi.reshape(12, -1)), rtol=1e-12
    )


def test_w2_gradient_jit_vmap_dtype(getkey):
    x, y = jr.normal(getkey(), (12, 2)), jr.normal(getkey(), (12, 2))
    # Envelope theorem: grad_x W2^2 = (2/N) (x_i - y_perm(i)); finite differences agree
    # away from ties (continuous data: the optimal permutation is locally constant).
    check_grads(lambda a: jfm.metrics.w2(a, y, squared=True), (x,), order=1, modes=("rev",))
    g = jax.grad(jfm.metrics.w2)(x, x)  # W2 = 0: zero (not NaN) gradient of the root
    assert bool(jnp.all(g == 0))
    jitted = jax.jit(jfm.metrics.w2)
    np.testing.assert_allclose(jitted(x, y), jfm.metrics.w2(x, y), rtol=1e-14)
    batched = jax.vmap(jfm.metrics.w2, in_axes=(0, None))(jnp.stack([x, 2 * x]), y)
    np.testing.assert_allclose(batched[1], jfm.metrics.w2(2 * x, y), rtol=1e-12)
    out32 = jfm.metrics.w2(x.astype(jnp.float32), y.astype(jnp.float32))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, jfm.metrics.w2(x, y), rtol=1e-5)  # float32 round-off


def test_w2_errors(getkey):
    x, y = jr.normal(getkey(), (5, 3)), jr.normal(getkey(), (4, 3))
    with raises_arg(ValueError, "y", "same number of samples"):
        jfm.metrics.w2(x, y)
    with raises_arg(ValueError, "x", "same event"):
        jfm.metrics.w2(x, x[:, :2])
    with raises_arg(TypeError, "x", "same dtype"):
        jfm.metrics.w2(x.astype(jnp.float32), x)
    with raises_arg(TypeError, "squared"):
        jfm.metrics.w2(x, x, squared=1)


# -- trajectory metrics: path energy, NPE, straightness -------------------------------------------


def test_path_energy_closed_forms(getkey):
    x0, d = jr.normal(getkey(), (30, 2)), jr.normal(getkey(), (30, 2))
    ts = jnp.linspace(0.0, 1.0, 401)
    # Straight, constant speed: PE = mean |d|^2 exactly (round-off), straightness 0.
    xs = x0[None] + ts[:, None, None] * d[None]
    ref = float(jnp.mean(jnp.sum(d * d, -1)))
    np.testing.assert_allclose(jfm.metrics.path_energy(xs, ts), ref, rtol=1e-12)
    assert abs(float(jfm.metrics.straightness(xs, ts))) < 1e-12 * ref
    # Straight but accelerating, x = x0 + sin(pi t / 2) d: PE -> pi^2/8 |d|^2; the
    # piecewise-linear value converges at O(dt^2) (~1e-6 relative at 400 intervals).
    xs = x0[None] + jnp.sin(0.5 * jnp.pi * ts)[:, None, None] * d[None]
    pe = float(jfm.metrics.path_energy(xs, ts))
    np.testing.assert_allclose(pe, math.pi**2 / 8 * ref, rtol=1e-5)
    # Straightness = PE - mean |x1 - x0|^2 = (pi^2/8 - 1) |d|^2 (same discretisation).
    np.testing.assert_allclose(jfm.metrics.straightness(xs, ts), pe - ref, rtol=1e-10)
    assert float(jfm.metrics.straightness(xs, ts)) > 0
    # Non-uniform times: the same straight path sampled unevenly has the same energy.
    tu = jnp.sort(jr.uniform(getkey(), (50,))).at[0].set(0.0).at[-1].set(1.0)
    xu = x0[None] + tu[:, None, None] * d[None]
    np.testing.assert_allclose(jfm.metrics.path_energy(xu, tu), ref, rtol=1e-10)


def test_npe_and_benamou_brenier(getkey):
    # Straight paths along the exact OT assignment: PE = W2^2, NPE = 0 (round-off).
    x0, y = jr.normal(getkey(), (40, 2)), 2.0 + 0.5 * jr.normal(getkey(), (40, 2))
    target = jfm.exact_ot_coupling(y, x0)[0]  # y re-ordered to the OT partner of each x0
    ts = jnp.linspace(0.0, 1.0, 11)
    xs = x0[None] + ts[:, None, None] * (target - x0)[None]
    assert float(jfm.metrics.normalized_path_energy(xs, ts, y)) < 1e-12
    w2sq = jfm.metrics.w2(x0, y, squared=True)
    np.testing.assert_allclose(
        jfm.metrics.normalized_path_energy(xs, ts, w2_squared=w2sq),
        jfm.metrics.normalized_path_energy(xs, ts, y),
        atol=1e-12,
    )
    # Straight paths along any other matching cost more (Benamou-Brenier: PE >= W2^2).
    xs_bad = x0[None] + ts[:, None, None] * (y - x0)[None]
    pe_bad = jfm.metrics.path_energy(xs_bad, ts)
    assert float(pe_bad) > float(w2sq)
    np.testing.assert_allclose(
        jfm.metrics.normalized_path_energy(xs_bad, ts, y), (pe_bad - w2sq) / w2sq, rtol=1e-12
    )


def test_trajectory_metric_errors(getkey):
    xs, ts = jr.normal(getkey(), (5, 4, 2)), jnp.linspace(0.0, 1.0, 5)
    with raises_arg(ValueError, "xs", "at least 3"):
        jfm.metrics.path_energy(xs[:, 0], ts)
    with raises_arg(ValueError, "ts"):
        jfm.metrics.path_energy(xs, ts[:4])
    with raises_arg(ValueError, "ts", "increasing"):
        jfm.metrics.straightness(xs, ts[::-1])
    with raises_arg(ValueError, "x1", "data samples"):
        jfm.metrics.normalized_path_energy(xs, ts)
