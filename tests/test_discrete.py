"""Discrete flow matching: mixture paths, rates, losses, the CTMC sampler, guidance.

Reference values come from enumeration of small state spaces (all S^L sequences), the
Kolmogorov forward equation, closed-form entropies, and Meta's flow_matching (optional).
"""

import itertools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

import jfm

V = 4  # vocabulary of the small enumerable problems
L = 2


def states(s: int, length: int = L) -> np.ndarray:
    return np.array(list(itertools.product(range(s), repeat=length)), dtype=np.int32)


def source_law(path, zs):
    p0 = np.asarray(path.source_probs)
    return np.prod(p0[zs], axis=1)


def law_kernel(path, denoiser, *, method="euler", div_free=0.0, dtype=jnp.float64):
    """``kernel(t, s) -> [n, n]``: the sampler's one-step transition matrix on all S^L
    sequences (jitted once; reuse it for several grids)."""
    zs = jnp.asarray(states(path.num_states))
    idx = jnp.arange(L)

    @jax.jit
    def kernel(t, s):
        def row(x):
            probs = jax.nn.softmax(denoiser(t, x, None).astype(dtype), axis=-1)
            law = path.step_probs(t, s, x, probs, div_free=div_free, method=method)
            return jnp.prod(law[idx[None, :], zs], axis=1)  # P(x -> z) for every z

        return jax.vmap(row)(zs)

    return kernel


def exact_law(path, kernel, ts, dtype=jnp.float64):
    """The law over all S^L sequences after the sampler's steps on the grid ``ts``."""
    zs = states(path.num_states)
    p = jnp.asarray(source_law(path, zs), dtype)
    for t, s in zip(ts[:-1], ts[1:]):
        k = kernel(jnp.asarray(t, dtype), jnp.asarray(s, dtype))
        p = jnp.where(p[:, None] > 0, p[:, None] * k, 0).sum(0)  # rows of p = 0 states: unused
    return np.asarray(p), zs


def empirical_tv(x, law, num_states, seed=0):
    """TV of samples ``x [n, L]`` to ``law`` over all sequences, and the multinomial noise
    floor of ``n`` exact draws (mean of 200)."""
    n = x.shape[0]
    emp = np.bincount(np.asarray(x) @ np.array([num_states, 1]), minlength=len(law)) / n
    rng = np.random.default_rng(seed)
    floor = np.mean([0.5 * np.abs(rng.multinomial(n, law) / n - law).sum() for _ in range(200)])
    return 0.5 * np.abs(emp - law).sum(), floor


def law_tv(q, law, zs):
    target = np.zeros(len(zs))
    lp = np.asarray(jax.vmap(q.log_prob)(jnp.asarray(zs)))
    target = np.exp(lp)
    return 0.5 * np.abs(law - target).sum()


@pytest.fixture(scope="module")
def board():
    return jfm.DiscreteMixture.checkerboard(V, cells=2)  # 8 of the 16 points


PATHS = [
    ("mask", jfm.CondOT()),
    ("uniform", jfm.Polynomial(2.0)),
    ("custom", jfm.Cosine()),
]


def make_path(source, schedule):
    if source == "custom":
        source = jnp.array([0.1, 0.2, 0.3, 0.4])
    return jfm.MixtureDiscretePath(schedule, V, source)


# -- the path ---------------------------------------------------------------------------


@pytest.mark.parametrize("source,schedule", PATHS)
def test_conditional_velocity_generates_conditional_path(source, schedule):
    # d/dt p_t(z | x1) = sum_x p_t(x | x1) u_t(z, x | x1), per token, to round-off.
    path = make_path(source, schedule)
    s = path.num_states
    x1 = jnp.array([2, 0])
    for t in (0.2, 0.55, 0.9):
        t = jnp.asarray(t)
        dp = jax.jvp(lambda tt: path.conditional_probs(tt, x1), (t,), (jnp.ones_like(t),))[1]
        p = path.conditional_probs(t, x1)  # [L, S]
        # u[x][i, z]: rate of token i from value x to z (every token at value x)
        u = jnp.stack([path.conditional_velocity(t, jnp.full(L, x), x1) for x in range(s)])
        rhs = jnp.einsum("ix,xiz->iz", p, u)
        np.testing.assert_allclose(dp, rhs, atol=1e-13)
        np.testing.assert_allclose(u.sum(-1), 0, atol=1e-13)


def test_sample_marginal_frequencies(getkey):
    # P(x_t^i = x1^i) = kappa + (1 - kappa) p0(x1^i); 40000 tokens: 4 sigma of a Bernoulli.
    path = make_path("custom", jfm.Cosine())
    n, t = 40000, 0.3
    x1 = jr.randint(getkey(), (n,), 0, V)
    x0 = path.sample_source((n,), key=getkey())
    xt = path.sample(t, x0, x1, key=getkey())
    p0 = np.asarray(path.source_probs)
    k = float(path.kappa(t))
    expect = k + (1 - k) * p0[np.asarray(x1)].mean()
    got = float(jnp.mean(xt == x1))
    assert abs(got - expect) < 4 * np.sqrt(expect * (1 - expect) / n)
    assert abs(float(jnp.mean(x0 == 3)) - 0.4) < 4 * np.sqrt(0.24 / n)  # source pmf


def test_posterior_velocity_round_trip(getkey):
    path = make_path("mask", jfm.Polynomial(1.5))
    probs = jax.nn.softmax(jr.normal(getkey(), (3, V)), -1)
    x = jnp.array([V, 1, V])
    u = path.velocity_from_posterior(0.4, x, probs)
    np.testing.assert_allclose(path.posterior_from_velocity(0.4, x, u), probs, atol=1e-14)
    np.testing.assert_allclose(u.sum(-1), 0, atol=1e-14)
    # jit gives the same numbers
    uj = jax.jit(lambda t, x, p: path.velocity_from_posterior(t, x, p))(0.4, x, probs)
    np.testing.assert_allclose(uj, u, rtol=1e-15)


@pytest.mark.parametrize(
    "source,schedule,div_free", [(*PATHS[0], 0.7), (*PATHS[1], 0.0), (*PATHS[2], 0.7)]
)
def test_kolmogorov_forward_equation(board, source, schedule, div_free):
    # The exact marginal p_t and the exact rates (with or without the divergence-free
    # term) satisfy d/dt p_t(z) = sum_x p_t(x) Q_t(z, x) on all S^L sequences.
    path = make_path(source, schedule)
    zs = jnp.asarray(states(path.num_states))
    idx = jnp.arange(L)

    w = board.weights
    sup = board.support

    def marginal(t):  # p_t(z) = sum_k w_k prod_i [kappa delta + (1 - kappa) p0], directly
        cond = jax.vmap(lambda x1: path.conditional_probs(t, x1))(sup)  # [K, L, S]
        return jnp.einsum("k,zk->z", w, jnp.prod(cond[:, idx[None, :], zs], axis=-1).T)

    def flux(t):
        p = marginal(t)
        # Q[x, z] = sum_i [z^{-i} = x^{-i}] u^i(z^i, x)
        u = jax.vmap(lambda x: board.velocity(path, t, x, div_free=div_free))(zs)  # [n, L, S]
        differ = zs[:, None, :] != zs[None, :, :]  # [x, z, i]
        # the tokens other than i agree: z is x with token i changed (or z = x)
        same_elsewhere = (differ.sum(-1)[..., None] - differ.astype(jnp.int64)) == 0
        uz = u[:, idx[None, :], zs]  # [x, z, i] = u^i(z^i, x)
        q = jnp.where(same_elsewhere, uz, 0).sum(-1)
        return jnp.where(p[:, None] > 0, p[:, None] * q, 0).sum(0)  # p_t(x) = 0: no flux

    @jax.jit
    @jax.vmap
    def both(t):
        dp = jax.jvp(marginal, (t,), (jnp.ones_like(t),))[1]
        lp = jax.vmap(lambda z: board.marginal_log_prob(path, t, z))(zs)
        return dp, flux(t), marginal(t), lp

    dp, fl, p, lp = both(jnp.array([0.15, 0.5, 0.85]))
    np.testing.assert_allclose(fl, dp, atol=1e-12)
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-13)
    np.testing.assert_allclose(jnp.exp(lp), p, rtol=1e-13, atol=1e-300)


def test_markov_chain_forward_backward_matches_enumeration():
    # The HMM smoothing posterior equals the enumerated one; entropies agree in closed form.
    init = jnp.array([0.2, 0.3, 0.5])
    trans = jnp.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    mc = jfm.MarkovChain(init, trans)
    en = jfm.DiscreteMixture.markov_chain(init, trans, 4)
    for source in ("mask", "uniform"):
        path = jfm.MixtureDiscretePath(jfm.Polynomial(2.0), 3, source)
        x = jnp.array([0, 2, path.num_states - 1, 1])
        both = jax.jit(jax.vmap(lambda t: (mc.posterior(path, t, x), en.posterior(path, t, x))))
        a, b = both(jnp.array([0.3, 0.8]))
        np.testing.assert_allclose(a, b, atol=1e-14)
    np.testing.assert_allclose(mc.entropy(4), en.entropy(), rtol=1e-13)
    np.testing.assert_allclose(
        mc.log_prob(jnp.array([0, 1, 2, 2])), en.log_prob(jnp.array([0, 1, 2, 2])), rtol=1e-13
    )
    # Entropy rate: H(X_0..X_{L-1}) / L -> H for a stationary start.
    st = jfm.MarkovChain(mc.stationary(), trans)
    rate = float(st.entropy_rate())
    np.testing.assert_allclose(float(st.entropy(50) - st.entropy(49)), rate, rtol=1e-12)


# -- the sampler -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mask_path():
    return jfm.MixtureDiscretePath(jfm.CondOT(), V, "mask")


@pytest.mark.parametrize(
    "source,schedule,method,div_free",
    [("mask", jfm.CondOT(), "euler", 0.0), ("uniform", jfm.Polynomial(2.0), "exponential", 0.5)],
)
def test_exact_law_converges_at_first_order(board, source, schedule, method, div_free):
    # The exact law of the sampler's output (propagated over all S^L sequences, no sampling
    # noise) converges to the data pmf with TV ~ C h: log-log slope -1.
    path = make_path(source, schedule)
    ns = [16, 32, 64, 128]
    t0 = 0.0 if div_free == 0 else 1e-3  # the corrector is infinite at t = 0
    tvs = []
    kernel = law_kernel(path, board.denoiser(path), method=method, div_free=div_free)
    for n in ns:
        law, zs = exact_law(path, kernel, np.linspace(t0, 1.0, n + 1))
        assert abs(law.sum() - 1) < 1e-12
        tvs.append(law_tv(board, law, zs))
    slope = np.polyfit(np.log(ns), np.log(tvs), 1)[0]
    assert -1.2 < slope < -0.85, (tvs, slope)  # first order (tends to -1 from above)
    assert tvs[-1] < 0.03


@pytest.fixture(scope="module")
def law4(board, mask_path):
    """The exact law of 4 sampler steps on the checkerboard (mask source, CondOT)."""
    kernel = law_kernel(mask_path, board.denoiser(mask_path))
    return exact_law(mask_path, kernel, np.linspace(0, 1, 5))[0]


def test_sampler_draws_the_step_law(board, mask_path, law4, getkey):
    # sample_discrete's samples follow the exactly propagated law of its steps: empirical TV
    # within 1.5x of the multinomial noise floor of the same sample size.
    n, steps = 20000, 4
    x0 = mask_path.sample_source((n, L), key=getkey())
    den = board.denoiser(mask_path)
    sol = jfm.sample_discrete(den, x0, path=mask_path, steps=steps, key=getkey())
    assert int(sol.nfe) == steps and int(sol.num_steps) == steps and sol.x1.shape == (n, L)
    tv, floor = empirical_tv(sol.x1, law4, mask_path.num_states)
    assert tv < 1.5 * floor, (tv, floor)
    # a grid given as ts= (jfm.time_grid) and save_steps
    ts = jfm.time_grid("uniform", steps, path=jfm.AffinePath(jfm.CondOT()))
    sol2 = jfm.sample_discrete(
        board.denoiser(mask_path), x0[:8], path=mask_path, ts=ts, key=getkey(), save_steps=True
    )
    assert sol2.xs.shape == (steps + 1, 8, L)
    np.testing.assert_array_equal(sol2.xs[0], x0[:8])
    np.testing.assert_array_equal(sol2.xs[-1], sol2.x1)
    assert int(jnp.sum(sol2.x1 == V)) == 0  # nothing left masked at t = 1


def test_float32_and_float64_agree(board, mask_path, law4, getkey):
    # The step law in float32 equals float64's to float32 round-off (1e-6 relative of
    # O(1) probabilities); float32 sampling matches the float64 law within the noise floor.
    x = jnp.array([V, 1])
    logits = board.denoiser(mask_path)(0.4, x, None)
    p64 = jax.nn.softmax(logits, -1)
    p32 = jax.nn.softmax(logits.astype(jnp.float32), -1)
    for method in ("euler", "exponential"):
        a = mask_path.step_probs(0.4, 0.5, x, p64, method=method, div_free=0.3)
        b = mask_path.step_probs(
            jnp.float32(0.4), jnp.float32(0.5), x, p32, method=method, div_free=0.3
        )
        assert b.dtype == jnp.float32
        np.testing.assert_allclose(b, a, atol=1e-6)
    n, steps = 20000, 4
    x0 = mask_path.sample_source((n, L), key=getkey())
    den = board.denoiser(mask_path)
    sol = jfm.sample_discrete(den, x0, path=mask_path, steps=steps, key=getkey(), dtype=jnp.float32)
    assert sol.ts.dtype == jnp.float32
    tv, floor = empirical_tv(sol.x1, law4, mask_path.num_states, seed=1)
    assert tv < 1.5 * floor, (tv, floor)


# -- guidance ----------------------------------------------------------------------------


def two_class_denoiser(path):
    # class 0 and class 1: the checkerboard weighted towards low / high first tokens; the
    # null class (2) is their 50/50 mixture, all exact.
    base = jfm.DiscreteMixture.checkerboard(V, cells=2)
    s = np.asarray(base.support)
    w0 = np.exp(-0.8 * s[:, 0]) / np.exp(-0.8 * s[:, 0]).sum()
    w1 = np.exp(0.8 * s[:, 0]) / np.exp(0.8 * s[:, 0]).sum()
    qs = [jfm.DiscreteMixture(s, w, V) for w in (w0, w1, 0.5 * (w0 + w1))]
    dens = [q.denoiser(path) for q in qs]

    def denoiser(t, x, label):
        return jax.lax.switch(label, [lambda t, x, d=d: d(t, x, None) for d in dens], t, x)

    return denoiser, qs


def test_guidance_scale_zero_and_one_are_exact_and_larger_scales_sharpen(mask_path, getkey):
    denoiser, qs = two_class_denoiser(mask_path)
    x0 = mask_path.sample_source((2000, L), key=getkey())
    key = getkey()
    run = lambda d, label: (
        jfm.sample_discrete(  # noqa: E731
            d, x0, path=mask_path, steps=8, key=key, args=jnp.asarray(label)
        ).x1
    )
    cond, null = run(denoiser, 0), run(denoiser, 2)
    g0 = run(jfm.discrete_guidance(denoiser, 0.0, null_label=2), 0)
    g1 = run(jfm.discrete_guidance(denoiser, 1.0, null_label=2), 0)
    np.testing.assert_array_equal(g0, null)  # bit for bit: same logits, same key
    np.testing.assert_array_equal(g1, cond)

    # w > 1 moves the samples further towards class 0 than the conditional model: the mean
    # log-likelihood ratio log q0/q1 grows with w (its value at w = 1 is KL(q0, q1) ~ 2.9).
    def llr(x):  # on the support (a few samples are off it after 16 steps)
        d = np.asarray(qs[0].log_prob_batch(x) - qs[1].log_prob_batch(x))
        return d[np.isfinite(d)].mean()

    g3 = run(jfm.discrete_guidance(denoiser, 3.0, null_label=2), 0)
    assert llr(null) < llr(cond) < llr(g3)
    assert llr(g3) - llr(cond) > 0.5  # far beyond the ~0.07 standard error of 2000 samples


# -- losses ------------------------------------------------------------------------------


def enumerated_posteriors(q, path, t):
    """By enumeration (numpy, float64): ``p(x_t = z)`` and the per-token posteriors
    ``q^i(v | z)`` ``[n, L, V]`` on every state z, from the joint table of (x1, x_t)."""
    zs = states(path.num_states)
    k = float(path.kappa(t))
    p0 = np.asarray(path.source_probs)
    sup, w = np.asarray(q.support), np.asarray(q.weights)
    emit = lambda z, y: k * (z == y) + (1 - k) * p0[z]  # noqa: E731
    joint = w[:, None] * np.prod(emit(zs[None, :, :], sup[:, None, :]), axis=-1)  # [K, n]
    pz = joint.sum(0)
    post = np.zeros((len(zs), L, V))
    for i in range(L):
        for v in range(V):
            post[:, i, v] = joint[sup[:, i] == v].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        post = post / pz[:, None, None]
    return zs, pz, post


def xlogx(p):
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)


@pytest.fixture(scope="module")
def loss_setup(board, mask_path):
    t = 0.4
    zs, pz, post = enumerated_posteriors(board, mask_path, t)
    ok = pz > 0
    ce = -(pz[ok, None] * xlogx(post[ok]).sum(-1)).sum(0).mean()  # (1/L) sum_i H(X1^i | X_t)
    h_minus = np.zeros((len(zs), L))  # H_{-x^i}(q^i) = -sum_{y != x^i} q log q
    for i in range(L):
        keep = np.arange(V)[None, :] != zs[:, i : i + 1]
        h_minus[:, i] = -(xlogx(post[:, i, :]) * keep).sum(-1)
    kl = float(mask_path.jump_rate(t)) * (pz[ok, None] * h_minus[ok]).sum(0).mean()
    den = board.denoiser(mask_path)

    def apply(params, tt, x, args):  # the exact denoiser plus a logit offset
        return jax.vmap(den, in_axes=(0, 0, None))(tt, x, None) + params[None]

    return t, ce, kl, apply


@pytest.mark.parametrize("kind", ["cross_entropy", "generalized_kl"])
def test_losses_reach_their_minimum_at_the_exact_denoiser(
    board, mask_path, loss_setup, kind, getkey
):
    # E[loss] at the exact denoiser equals the enumerated minimum (CE: the conditional
    # entropy; KL: E kappa'/(1-kappa) H_{-x}), within 4 standard errors of 20000 examples;
    # a perturbed denoiser (same draws) has a larger loss.
    t, ce, kl, apply = loss_setup
    n = 20000
    x1 = board.sample(n, key=getkey())
    key = getkey()
    tt = jnp.full((n,), t)
    loss_fn = jax.jit(
        lambda p: jfm.dfm_loss(apply, p, x1, path=mask_path, key=key, kind=kind, t=tt)
    )
    loss = loss_fn(jnp.zeros((L, V)))
    assert loss.shape == (n,)
    target = ce if kind == "cross_entropy" else kl
    se = float(jnp.std(loss)) / np.sqrt(n)
    assert abs(float(loss.mean()) - target) < 4 * se, (float(loss.mean()), target, se)
    bumped = 0.5 * jr.normal(getkey(), (L, V))
    worse = loss_fn(bumped)
    diff = worse - loss
    assert float(diff.mean()) > 5 * float(jnp.std(diff)) / np.sqrt(n)


# -- Meta's flow_matching on the same inputs ---------------------------------------------


@pytest.fixture(scope="module")
def fm():
    torch = pytest.importorskip("torch")
    pytest.importorskip("flow_matching")
    from flow_matching.loss import MixturePathGeneralizedKL
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper

    return dict(
        torch=torch,
        path=MixtureDiscreteProbPath(PolynomialConvexScheduler(n=2.0)),
        kl=MixturePathGeneralizedKL,
        solver=MixtureDiscreteEulerSolver,
        wrapper=ModelWrapper,
    )


def test_velocity_and_loss_match_flow_matching(fm, getkey):
    torch = fm["torch"]
    path = jfm.MixtureDiscretePath(jfm.Polynomial(2.0), V, "uniform")
    b, length = 64, 3
    logits = jr.normal(getkey(), (b, length, V))
    x = jr.randint(getkey(), (b, length), 0, V)
    t = jr.uniform(getkey(), (b,), maxval=0.95)
    ours = jax.vmap(path.velocity_from_posterior)(t, x, jax.nn.softmax(logits, -1))
    theirs = fm["path"].posterior_to_velocity(
        torch.tensor(np.asarray(logits)), torch.tensor(np.asarray(x)), torch.tensor(np.asarray(t))
    )
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-12, atol=1e-13)
    # The generalized KL on the x_t our loss drew (captured from the model call).
    seen = {}

    def apply(params, tt, xt, args):
        seen["xt"] = xt
        return params

    x1 = jr.randint(getkey(), (b, length), 0, V)
    loss = jfm.dfm_loss(apply, logits, x1, path=path, key=getkey(), kind="generalized_kl", t=t)
    ref = fm["kl"](fm["path"], reduction="none")(
        torch.tensor(np.asarray(logits)),
        torch.tensor(np.asarray(x1)),
        torch.tensor(np.asarray(seen["xt"])),
        torch.tensor(np.asarray(t)),
    )
    np.testing.assert_allclose(loss, ref.numpy().mean(-1), rtol=1e-12)


def test_step_law_matches_flow_matching_solver(fm, getkey):
    # flow_matching's MixtureDiscreteEulerSolver (one step from t to t + h, with its
    # divergence-free term) draws tokens with the law of our "exponential" step: per-token
    # frequencies of 60000 draws within 5 binomial standard errors.
    torch = fm["torch"]
    path = jfm.MixtureDiscretePath(jfm.Polynomial(2.0), V, "uniform")
    n, t, h, c = 60000, 0.3, 0.25, 0.5
    probs = jax.nn.softmax(jr.normal(getkey(), (L, V)), -1)
    x = jnp.array([1, 3])

    class Fixed(fm["wrapper"]):
        def __init__(self):
            super().__init__(None)

        def forward(self, x, t, **extras):
            return torch.tensor(np.asarray(probs)).expand(x.shape[0], L, V)

    torch.manual_seed(0)
    solver = fm["solver"](
        Fixed(), fm["path"], V, source_distribution_p=torch.full((V,), 1.0 / V, dtype=torch.float64)
    )
    out = solver.sample(
        x_init=torch.tensor(np.asarray(x)).repeat(n, 1),
        step_size=None,
        div_free=c,
        dtype_categorical=torch.float64,
        time_grid=torch.tensor([t, t + h, 1.0], dtype=torch.float64),
        return_intermediates=True,
    )[1].numpy()
    law = np.asarray(path.step_probs(t, t + h, x, probs, div_free=c, method="exponential"))
    for i in range(L):
        freq = np.bincount(out[:, i], minlength=V) / n
        se = np.sqrt(law[i] * (1 - law[i]) / n)
        assert np.all(np.abs(freq - law[i]) < 5 * se + 1e-12), (freq, law[i])
    # Euler differs from it at second order in h: halving h quarters the difference
    gap = lambda h: np.abs(  # noqa: E731
        np.asarray(path.step_probs(t, t + h, x, probs, div_free=c))
        - np.asarray(path.step_probs(t, t + h, x, probs, div_free=c, method="exponential"))
    ).max()
    assert 0.22 < gap(0.005) / gap(0.01) < 0.28


# -- the token model ---------------------------------------------------------------------


def test_token_mlp_shapes_and_denoiser_adapter():
    # training to a target is the slow checkerboard test below
    net = jfm.models.TokenMLP(L, V, hidden_features=32, depth=2, num_classes=2, rngs=nnx.Rngs(0))
    apply, params = jfm.split_model(net)
    x = jnp.array([[V, 1], [2, V]])
    out = apply(params, jnp.array([0.1, 0.9]), x, jnp.array([0, 2]))
    assert out.shape == (2, L, V) and out.dtype == jnp.float32
    den = jfm.denoiser_from_model(apply, params)
    # float32 network: batch-1 vs batch-2 matmuls round differently (1e-5 relative)
    np.testing.assert_allclose(den(0.1, x[0], jnp.asarray(0)), out[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="tokens"):
        apply(params, jnp.zeros(1), jnp.array([[V + 1, 0]]), jnp.array([0]))


# -- errors ------------------------------------------------------------------------------


def test_errors(board, mask_path, getkey):
    key = getkey()
    with pytest.raises(ValueError, match="kappa_0"):
        jfm.MixtureDiscretePath(jfm.VP(), V)
    with pytest.raises(TypeError, match="schedule"):
        jfm.MixtureDiscretePath("linear", V)
    with pytest.raises(ValueError, match="source"):
        jfm.MixtureDiscretePath(jfm.CondOT(), V, "absorbing")
    with pytest.raises(ValueError, match="sum to 1"):
        jfm.MixtureDiscretePath(jfm.CondOT(), V, jnp.array([0.5, 0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        jfm.MixtureDiscretePath(jfm.CondOT(), V, jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="token ids"):
        mask_path.sample(0.5, jnp.array([V, V]), jnp.array([0, V]), key=key)  # x1 is data
    with pytest.raises(TypeError, match="integer"):
        mask_path.conditional_velocity(0.5, jnp.array([0.0, 1.0]), jnp.array([0, 1]))
    with pytest.raises(ValueError, match=r"t.*\[0.0, 1.0\]"):
        mask_path.kappa(1.5)
    with pytest.raises(ValueError, match="div_free"):
        mask_path.velocity_from_posterior(
            0.5, jnp.array([0, 1]), jnp.full((2, V), 0.25), div_free=-1.0
        )
    with pytest.raises(ValueError, match="t_next"):
        mask_path.step_probs(0.5, 0.5, jnp.array([0, 1]), jnp.full((2, V), 0.25))
    den = board.denoiser(mask_path)
    x0 = jnp.full((4, L), V, jnp.int32)
    with pytest.raises(ValueError, match="exactly one"):
        jfm.sample_discrete(den, x0, path=mask_path, key=key)
    with pytest.raises(ValueError, match="increasing"):
        jfm.sample_discrete(den, x0, path=mask_path, key=key, ts=jnp.array([0.0, 0.6, 0.5, 1.0]))
    with pytest.raises(ValueError, match="method"):
        jfm.sample_discrete(den, x0, path=mask_path, key=key, steps=2, method="rk4")
    with pytest.raises(TypeError, match="key"):
        jfm.sample_discrete(den, x0, path=mask_path, key=None, steps=2)
    with pytest.raises(ValueError, match=r"\[B, L\]|shape"):
        jfm.sample_discrete(den, x0[0], path=mask_path, key=key, steps=2)
    with pytest.raises(ValueError, match="logits"):
        jfm.sample_discrete(
            lambda t, x, a: jnp.zeros((L, V + 1)), x0, path=mask_path, key=key, steps=2
        )
    with pytest.raises(ValueError, match="kind"):
        jfm.dfm_loss(lambda p, t, x, a: p, None, x0 * 0, path=mask_path, key=key, kind="mse")
    with pytest.raises(ValueError, match="logits"):
        jfm.dfm_loss(lambda p, t, x, a: jnp.zeros((4, L)), None, x0 * 0, path=mask_path, key=key)
    with pytest.raises(TypeError, match="null_label"):
        jfm.discrete_guidance(den, 2.0, null_label=1.5)
    with pytest.raises(ValueError, match="sum to 1"):
        jfm.DiscreteMixture(jnp.array([[0, 1]]), jnp.array([0.5]))
    with pytest.raises(ValueError, match="vocab_size"):
        board.denoiser(jfm.MixtureDiscretePath(jfm.CondOT(), V + 1))
