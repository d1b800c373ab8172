"""Few-step models: reflow, consistency models, MeanFlow, shortcut models, their sampler.

Accuracy checks run in float64 against the exact Gaussian-mixture flow: its average
velocity ``u(z, r, t) = (x_r - x_t) / (r - t)`` comes from a tight Dopri8 solve (with
``diffrax.ForwardMode`` so that ``jax.jvp`` goes through it).
"""

import functools

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from flax import nnx

import jfm

from .helpers import raises_arg

PATH = jfm.AffinePath(jfm.CondOT())
GMM = jfm.GaussianMixture.isotropic(jnp.array([[-2.0, 0.5], [2.0, -0.5]]), 0.5)
FIELD = GMM.velocity_field(PATH)
TIGHT = dict(solver=dfx.Tsit5(), rtol=1e-11, atol=1e-11)


def _interval_field(s, y, args):
    """``dx/ds = (r - t) v(t + s (r - t), x)``, ``y = [x, t, r]`` (``t, r`` constant)."""
    x, t, r = y[:-2], y[-2], y[-1]
    h = r - t
    return jnp.concatenate([h * FIELD(t + s * h, x, None), jnp.zeros(2, y.dtype)])


def exact_average_velocity(params, tt, z, args):
    """Batch-first two-time oracle ``u(z, r, t)``, ``tt = [t, r]``: ONE joint solve over
    ``s in [0, 1]`` with ``t, r`` carried in the state, so that every example has its own
    interval; ``diffrax.ForwardMode`` so that ``jax.jvp`` goes through it."""
    del params, args
    t, r = tt[:, 0], tt[:, 1]
    y0 = jnp.concatenate([z, t[:, None], r[:, None]], axis=1)
    sol = jfm.sample_ode(_interval_field, y0, **TIGHT, adjoint=dfx.ForwardMode())
    return (sol.x1[:, :-2] - z) / (r - t)[:, None]


def exact_shortcut(params, tt, z, args):
    """``s(z, t, d) = u(z, t + d, t)``: the exact shortcut of step ``d > 0``."""
    t, d = tt[:, 0], tt[:, 1]
    return exact_average_velocity(params, jnp.stack([t, t + d], axis=-1), z, args)


@pytest.fixture(scope="module")
def nets():
    """A tiny one-time MLP and a tiny two-time MLP (float32 params, float64 inputs)."""
    one = jfm.models.MLP(2, hidden_features=8, depth=1, time_scale=1.0, rngs=nnx.Rngs(0))
    two = jfm.models.MLP(
        2, hidden_features=8, depth=1, time_scale=1.0, extra_time_inputs=1, rngs=nnx.Rngs(1)
    )
    return jfm.split_model(one), jfm.split_model(two)


# -- the model option --------------------------------------------------------------------


def test_mlp_extra_time_inputs_is_backwards_compatible():
    """Off (default) gives the same parameters and outputs as before; on, the second time
    changes the output."""
    a = jfm.models.MLP(2, hidden_features=8, depth=1, rngs=nnx.Rngs(0))
    b = jfm.models.MLP(2, hidden_features=8, depth=1, extra_time_inputs=0, rngs=nnx.Rngs(0))
    sa, sb = nnx.state(a), nnx.state(b)
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)))
    x = jnp.ones((3, 2))
    np.testing.assert_array_equal(a(jnp.full(3, 0.3), x), b(jnp.full(3, 0.3), x))
    c = jfm.models.MLP(2, hidden_features=8, depth=1, extra_time_inputs=1, rngs=nnx.Rngs(0))
    tt = jnp.array([[0.3, 0.5], [0.3, 0.9], [0.3, 0.5]])
    out = c(tt, x)
    assert out.shape == (3, 2) and not np.allclose(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


# -- consistency models ---------------------------------------------------------------------


@pytest.mark.parametrize("parametrization", ["velocity", "edm"])
def test_consistency_map_is_the_identity_at_the_data_end(parametrization, getkey):
    """``f(x, 1) = x`` exactly for ANY parameters (c_skip(1) = 1, c_out(1) = 0), and not
    the identity elsewhere."""
    net = jfm.models.MLP(2, hidden_features=8, depth=1, rngs=nnx.Rngs(3))
    apply, params = jfm.split_model(net)
    f = jfm.consistency_map(apply, parametrization=parametrization, sigma_data=0.7)
    x = jr.normal(getkey(), (5, 2))
    fj = jax.jit(f)
    for _ in range(3):  # random parameters, large and small
        params = jax.tree.map(lambda p: 10.0 * jr.normal(getkey(), p.shape, p.dtype), params)
        np.testing.assert_array_equal(fj(params, jnp.ones(5), x), x)
        assert not np.allclose(fj(params, jnp.full(5, 0.5), x), x)
    field = jfm.field_from_model(f, params)  # the per-example map: also exact
    np.testing.assert_array_equal(jax.vmap(field, in_axes=(None, 0, None))(1.0, x, None), x)


def test_continuous_consistency_target_is_meanflow_at_r_equal_1(nets, getkey):
    """For ``f = x + (1 - t) F`` the continuous-consistency target ``F + df/dt`` is
    MeanFlow's ``v - (t - r) dF/dt`` at ``r = 1`` (both from one jvp)."""
    (apply, params), _ = nets
    cm = jfm.consistency_map(apply)
    t = jnp.array([0.1, 0.4, 0.8])
    x, v = jr.normal(getkey(), (3, 2)), jr.normal(getkey(), (3, 2))
    out, f, g = jfm.consistency_tangent(cm, params, t, x, v)
    as_two_time = lambda p, tt, z, a: apply(p, tt[:, 0], z, a)  # noqa: E731  F(z, t), r unused
    _, u_tgt = jfm.meanflow_target(as_two_time, params, x, jnp.ones(3), t, v)
    np.testing.assert_allclose(out + g, u_tgt, rtol=1e-12, atol=1e-12)  # same maths, round-off
    np.testing.assert_allclose(f, x + (1 - t)[:, None] * out, rtol=1e-12)


def test_tangent_normalization_rescales_each_example(nets):
    """With ``tangent_normalization=c`` each example's loss is ``|g|^2 / (|g| + c)^2 / d``
    and its gradient the raw one times ``1 / (|g| + c)`` (the loss gradient is linear in
    the tangent ``g``): same direction, bounded size."""
    (apply, params), _ = nets
    cm = jfm.consistency_map(apply)
    x1 = GMM.sample(3, key=jr.key(2))
    loss = functools.partial(jfm.continuous_consistency_loss, cm, path=PATH, teacher=FIELD)
    key, c = jr.key(4), 0.1
    raw = loss(params, x1, key=key)
    norm = loss(params, x1, key=key, tangent_normalization=c)
    g_norm = jnp.sqrt(raw * 2)  # |g|, from the raw loss |g|^2 / d with d = 2
    np.testing.assert_allclose(norm, raw / (g_norm + c) ** 2, rtol=1e-5)
    # per-example gradients: the Jacobian of the [B] losses in the parameters
    jac = [
        jax.jit(jax.jacrev(lambda p: loss(p, x1, key=key, **kw)))(params)
        for kw in ({}, {"tangent_normalization": c})
    ]
    scale = np.asarray(1.0 / (g_norm + c))
    for a, b in zip(*map(jax.tree.leaves, jac)):
        a = np.asarray(a)
        np.testing.assert_allclose(
            b, a * scale.reshape((3,) + (1,) * (a.ndim - 1)), rtol=1e-4, atol=1e-7
        )
    with raises_arg(ValueError, "tangent_normalization"):
        loss(params, x1, key=key, tangent_normalization=0.0)


# -- MeanFlow and shortcut on the exact flow ------------------------------------------------


@pytest.fixture(scope="module")
def exact_points():
    key = jr.key(11)
    z = jr.normal(key, (4, 2))
    t = jnp.array([0.0, 0.2, 0.35, 0.5])
    r = jnp.array([0.6, 0.45, 0.95, 0.9])
    return z, t, r


@pytest.mark.slow
def test_meanflow_identity_holds_for_the_exact_average_velocity(exact_points):
    """``u = v - (t - r) du/dt`` with ``du/dt`` from ONE jvp through a tight ODE solve."""
    z, t, r = exact_points
    v = jax.vmap(FIELD)(t, z, None)
    u, u_tgt = jax.jit(jfm.meanflow_target, static_argnums=0)(
        exact_average_velocity, None, z, r, t, v
    )
    # u is O(1); the solve's tolerance is 1e-11, the tangent's error a few times that.
    residual = float(jnp.max(jnp.abs(u - u_tgt)))
    assert residual < 1e-7, residual
    # Not a trivial identity: the time derivative term is O(1).
    assert float(jnp.max(jnp.abs(u - v))) > 0.1


def test_shortcut_target_is_exact_on_the_exact_flow(exact_points):
    """Two exact steps of ``d`` make one exact step of ``2d`` (the flow map's semigroup
    property), and at ``d = 0`` the target is the model's velocity itself."""
    z, t, _ = exact_points
    d = jnp.array([0.25, 0.125, 0.25, 0.0625])

    @jax.jit
    def both(t, z, d):
        target = jfm.shortcut_target(exact_shortcut, None, t, z, d)
        return target, exact_shortcut(None, jnp.stack([t, 2 * d], axis=-1), z, None)

    target, direct = both(t, z, d)
    np.testing.assert_allclose(target, direct, atol=1e-8)  # both from tolerance-1e-11 solves


def test_shortcut_at_d0_is_flow_matching(nets, getkey):
    """With no self-consistency examples the shortcut loss IS cfm_loss of the d = 0 model,
    and the d = 0 self-consistency target is the model's own prediction."""
    _, (apply, params) = nets
    x1 = GMM.sample(6, key=getkey())
    x0 = jr.normal(getkey(), (6, 2))
    ts = jnp.linspace(0.05, 0.95, 6)
    at_d0 = lambda p, t, x, a: apply(p, jnp.stack([t, jnp.zeros_like(t)], -1), x, a)  # noqa: E731
    x = jr.normal(getkey(), (6, 2))

    @jax.jit
    def run(params, x1, x0, x, k1, k2, ts):
        fixed = lambda n, *, key, dtype: ts.astype(dtype)  # noqa: E731
        sc = jfm.shortcut_loss(
            apply, params, x1, path=PATH, key=k1, x0=x0, time_sampler=fixed,
            consistency_fraction=0.0,
        )  # fmt: skip
        cfm = jfm.cfm_loss(at_d0, params, x1, path=PATH, key=k2, x0=x0, t=ts)
        return (
            sc,
            cfm,
            jfm.shortcut_target(apply, params, ts, x, jnp.zeros(6)),
            at_d0(params, ts, x, None),
        )

    sc, cfm, tgt, own = run(params, x1, x0, x, getkey(), getkey(), ts)
    np.testing.assert_allclose(sc, cfm, rtol=1e-12)
    np.testing.assert_array_equal(tgt, own)


# -- reflow --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reflow_set():
    """Independent and reflow pairs of the exact GMM teacher (tight solve)."""
    x0 = jr.normal(jr.key(0), (256, 2))
    x1 = GMM.sample(256, key=jr.key(1))
    _, y1 = jfm.reflow_pairs(FIELD, x0, solver=dfx.Tsit5(), rtol=1e-8, atol=1e-8)
    return x0, x1, y1


def test_reflow_coupling_lowers_the_transport_cost(reflow_set):
    """``E |Phi(x0) - x0|^2`` is below the independent coupling's ``E |x1 - x0|^2`` (the
    same marginals), by more than the Monte-Carlo error, and the coupling protocol
    returns the same pairs."""
    x0, x1, y1 = reflow_set
    indep = jnp.sum((x1 - x0) ** 2, axis=1)
    rf = jnp.sum((y1 - x0) ** 2, axis=1)
    se = float(jnp.std(indep - rf) / np.sqrt(x0.shape[0]))
    assert float(indep.mean() - rf.mean()) > 5 * se, (float(indep.mean()), float(rf.mean()))
    coupling = jfm.reflow_coupling(FIELD, solver=dfx.Tsit5(), rtol=1e-8, atol=1e-8)
    c0, c1 = coupling(x0, x1, key=jr.key(0))
    np.testing.assert_array_equal(c0, x0)
    np.testing.assert_array_equal(c1, y1)


@pytest.mark.slow
def test_one_reflow_makes_one_step_euler_accurate(reflow_set):
    """A small MLP trained briefly on the reflow pairs: its 1-step Euler error against the
    teacher's tight solve is >= 5x below 1-step Euler on the teacher itself."""
    x0, _, y1 = reflow_set
    net = jfm.models.MLP(2, hidden_features=64, depth=2, time_scale=1.0, rngs=nnx.Rngs(0))
    apply, params = jfm.split_model(net)
    opt = optax.adam(3e-3)

    def loss_fn(apply, p, batch, *, key):
        return jfm.cfm_loss(apply, p, batch[1], x0=batch[0], path=PATH, key=key)

    def batch_fn(key):
        idx = jr.randint(key, (128,), 0, x0.shape[0])
        return x0[idx], y1[idx]

    step = jfm.make_train_step(apply, opt, loss_fn)
    multi = jax.jit(jfm.scan_train_step(step, batch_fn, 1500))
    state, _ = multi(jfm.init_train_state(params, opt), jr.key(2))

    z0 = jr.normal(jr.key(3), (256, 2))
    _, ref = jfm.reflow_pairs(FIELD, z0, solver=dfx.Tsit5(), rtol=1e-8, atol=1e-8)
    student = jfm.field_from_model(apply, state.params)
    one = lambda f: jfm.sample_few_step(f, z0, kind="velocity", steps=1).x1  # noqa: E731
    err_teacher = float(jnp.mean(jnp.sum((one(FIELD) - ref) ** 2, axis=1)))
    err_student = float(jnp.mean(jnp.sum((one(student) - ref) ** 2, axis=1)))
    print(f"1-step Euler error: teacher {err_teacher:.4f}, reflowed {err_student:.4f}")
    assert err_teacher >= 5 * err_student, (err_teacher, err_student)


# -- every loss: shapes, finiteness, gradients, jit == eager ----------------------------------


def _losses(nets):
    (a1, p1), (a2, p2) = nets
    cm = jfm.consistency_map(a1)
    coupling = jfm.reflow_coupling(FIELD, solver=dfx.Euler(), steps=1)
    return {
        "reflow_cfm": (a1, p1, functools.partial(jfm.cfm_loss, path=PATH, coupling=coupling)),
        "ct": (cm, p1, functools.partial(jfm.consistency_training_loss, path=PATH, steps=8)),
        "cd": (
            cm,
            p1,
            functools.partial(
                jfm.consistency_distillation_loss,
                teacher=FIELD,
                solver=dfx.Heun(),
                path=PATH,
                ts=jfm.time_grid("uniform", 6, path=PATH),
                distance="pseudo_huber",
            ),
        ),  # fmt: skip
        "continuous": (
            cm,
            p1,
            functools.partial(jfm.continuous_consistency_loss, path=PATH, teacher=FIELD),
        ),  # fmt: skip
        "meanflow": (a2, p2, functools.partial(jfm.meanflow_loss, path=PATH)),
        "shortcut": (a2, p2, functools.partial(jfm.shortcut_loss, path=PATH, max_steps=8)),
    }


@pytest.mark.parametrize(
    "name",
    [pytest.param("reflow_cfm", marks=pytest.mark.slow), "ct", "cd", "continuous", "meanflow"]
    + ["shortcut"],
)
def test_losses_shapes_gradients_and_jit(nets, name):
    apply, params, loss = _losses(nets)[name]
    x1 = GMM.sample(4, key=jr.key(7))
    key = jr.key(8)
    eager = loss(apply, params, x1, key=key)
    assert eager.shape == (4,) and eager.dtype == x1.dtype
    assert bool(jnp.all(jnp.isfinite(eager))) and bool(jnp.all(eager >= 0))

    @jax.jit
    def value_and_grad(p, x, k):
        return jax.value_and_grad(lambda q: jnp.mean(loss(apply, q, x, key=k)))(p)

    value, grad = value_and_grad(params, x1, key)
    np.testing.assert_allclose(value, eager.mean(), rtol=1e-6)  # float32 params: op order
    leaves = jax.tree.leaves(grad)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0  # gradients reach the net


# -- the few-step sampler --------------------------------------------------------------------


def _mean_flow_h(t, r, x, args):
    return jnp.ones_like(x) * (r - t)  # a jump of h^2


def _shortcut_h(t, d, x, args):
    return jnp.ones_like(x) * d  # a jump of h^2


def _constant_x1(t, x, args):
    return jnp.array([3.0, -1.0], x.dtype) + 0.0 * x


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["joint", "vmap"])
def test_sampler_jumps_and_exact_nfe(batch, getkey):
    """Each kind makes its jump with ONE evaluation per step: ``nfe == N`` exactly, on a
    uniform grid and on a given one."""
    x0 = jr.normal(getkey(), (3, 2))
    grid = jnp.array([0.0, 0.1, 0.5, 1.0])
    for kind, fn in (("mean_flow", _mean_flow_h), ("shortcut", _shortcut_h)):
        for steps in (1, 4):
            sol = jfm.sample_few_step(fn, x0, kind=kind, steps=steps, batch=batch)
            assert np.all(np.asarray(sol.nfe) == steps)
            assert np.all(np.asarray(sol.num_steps) == steps)
            np.testing.assert_allclose(sol.x1, x0 + 1.0 / steps, rtol=1e-12)  # sum of h^2
        sol = jfm.sample_few_step(fn, x0, kind=kind, ts=grid, batch=batch)
        np.testing.assert_allclose(sol.x1, x0 + (0.01 + 0.16 + 0.25), rtol=1e-12)
        assert np.all(np.asarray(sol.nfe) == 3)
    # velocity: Euler, the same as sample_ode's
    euler = jfm.sample_ode(FIELD, x0, solver=dfx.Euler(), steps=4, batch=batch).x1
    sol = jfm.sample_few_step(FIELD, x0, kind="velocity", steps=4, batch=batch)
    np.testing.assert_allclose(sol.x1, euler, rtol=1e-12)
    # consistency: re-noised between steps, the last step returns f itself
    sol = jfm.sample_few_step(
        _constant_x1, x0, kind="consistency", steps=3, path=PATH, key=getkey(), batch=batch
    )
    np.testing.assert_array_equal(sol.x1, jnp.broadcast_to(jnp.array([3.0, -1.0]), x0.shape))
    assert np.all(np.asarray(sol.nfe) == 3) and isinstance(sol, jfm.Solution)


def test_two_time_field_adapts_a_batch_first_model(nets, getkey):
    _, (apply, params) = nets
    m = jfm.two_time_field(apply, params)
    x = jr.normal(getkey(), (3, 2))
    t, r = jnp.array([0.0, 0.2, 0.4]), jnp.array([0.5, 0.6, 1.0])
    per = jax.vmap(m, in_axes=(0, 0, 0, None))(t, r, x, None)
    np.testing.assert_allclose(per, apply(params, jnp.stack([t, r], -1), x, None), rtol=1e-6)
    sol = jfm.sample_few_step(m, x, kind="mean_flow", steps=2, batch="vmap")
    assert sol.x1.shape == x.shape and np.all(np.asarray(sol.nfe) == 2)


# -- errors ----------------------------------------------------------------------------------


def test_bad_input_raises_named_errors(nets):
    (a1, p1), (a2, p2) = nets
    x1 = jnp.zeros((4, 2))
    key = jr.key(0)
    u = lambda t, r, x, a: x  # noqa: E731
    with raises_arg(ValueError, "parametrization"):
        jfm.consistency_map(a1, parametrization="trig")
    with raises_arg(ValueError, "sigma_data"):
        jfm.consistency_map(a1, parametrization="edm", sigma_data=0.0)
    with raises_arg(ValueError, "kind"):
        jfm.sample_few_step(u, x1, kind="mean", steps=1)
    with raises_arg(ValueError, "steps"):
        jfm.sample_few_step(u, x1, kind="mean_flow")
    with raises_arg(TypeError, "key"):
        jfm.sample_few_step(lambda t, x, a: x, x1, kind="consistency", steps=1, path=PATH)
    with raises_arg(ValueError, "key"):
        jfm.sample_few_step(u, x1, kind="mean_flow", steps=1, key=key)
    with raises_arg(TypeError, "path"):
        jfm.sample_few_step(lambda t, x, a: x, x1, kind="consistency", steps=1, key=key)
    with raises_arg(ValueError, "max_steps"):
        jfm.shortcut_loss(a2, p2, x1, path=PATH, key=key, max_steps=6)
    with raises_arg(ValueError, "consistency_fraction"):
        jfm.shortcut_loss(a2, p2, x1, path=PATH, key=key, consistency_fraction=1.5)
    with raises_arg(ValueError, "flow_fraction"):
        jfm.meanflow_loss(a2, p2, x1, path=PATH, key=key, flow_fraction=-0.1)
    with raises_arg(ValueError, "adaptive_c"):
        jfm.meanflow_loss(a2, p2, x1, path=PATH, key=key, adaptive_c=0.0)
    cm = jfm.consistency_map(a1)
    with raises_arg(ValueError, "steps"):
        jfm.consistency_training_loss(cm, p1, x1, path=PATH, key=key)
    with raises_arg(ValueError, "distance"):
        jfm.consistency_training_loss(cm, p1, x1, path=PATH, key=key, steps=4, distance="l1")
    with raises_arg(TypeError, "solver"):
        jfm.consistency_distillation_loss(
            cm, p1, x1, teacher=FIELD, solver="heun", path=PATH, key=key, steps=4
        )
    with raises_arg(TypeError, "apply"):
        jfm.continuous_consistency_loss(a1, p1, x1, path=PATH, key=key)
    with raises_arg(ValueError, "extra_time_inputs"):
        jfm.models.MLP(2, extra_time_inputs=-1, rngs=nnx.Rngs(0))
    with raises_arg(ValueError, "t"):
        a2(p2, jnp.zeros(4), x1, None)  # a two-time model needs [B, 2] times
