"""jfm's few-NFE solvers against independent implementations, on the same exact field and
the same grid, in float64: diffusers' schedulers and k-diffusion's samplers.

Optional extras (``pip install -e ".[xcheck]"``); each test skips when its package is
missing. Conventions mapped here: diffusers' and k-diffusion's time runs from data to
noise; diffusers' flow sigma is ``1 - t`` on CondOT and its flow model output is minus
jfm's velocity; its VP sigma and k-diffusion's sigma are the noise level
``rho = sigma_t / alpha_t`` (k-diffusion's state is ``x / alpha``).
"""

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

pytestmark = pytest.mark.slow

CONDOT = jfm.AffinePath(jfm.CondOT())
VP = jfm.AffinePath(jfm.VP())


@pytest.fixture(scope="module")
def gmm():
    means = jnp.array([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.2]])
    covs = jnp.stack([0.2 * jnp.eye(2)] * 3)
    return jfm.GaussianMixture(means, covs, jnp.array([0.3, 0.3, 0.4]))


def _batched(field):
    f = jax.jit(jax.vmap(field, in_axes=(None, 0, None)))
    return lambda t, x: np.asarray(f(jnp.asarray(t), jnp.asarray(x), None))


def _rho(path, ts):
    return np.exp(-np.asarray(jfm.log_snr(path, ts)))


def _diffusers_run(sched, sigmas, model, x, update):
    """Drive a diffusers scheduler's float64 updates over ``sigmas`` (noise -> data)."""
    torch = pytest.importorskip("torch")
    sched.sigmas = torch.tensor(sigmas, dtype=torch.float64)
    x = torch.tensor(np.asarray(x), dtype=torch.float64)
    for i in range(len(sigmas) - 1):
        sched._step_index = i
        out = torch.tensor(model(i, x.numpy()), dtype=torch.float64)
        x = update(sched, i, out, x)
    return x.numpy()


def _dpm_update(order):
    def update(sched, i, out, x):
        m = sched.convert_model_output(out, sample=x)
        sched.model_outputs = [*sched.model_outputs[1:], m]
        final = i == len(sched.sigmas) - 2 and float(sched.sigmas[-1]) == 0.0
        n = sched.lower_order_nums
        if order == 1 or n < 1 or final:
            x = sched.dpm_solver_first_order_update(m, sample=x)
        elif order == 2 or n < 2:
            x = sched.multistep_dpm_solver_second_order_update(sched.model_outputs, sample=x)
        else:
            x = sched.multistep_dpm_solver_third_order_update(sched.model_outputs, sample=x)
        sched.lower_order_nums = min(n + 1, order)
        return x

    return update


def _step_update(sched, i, out, x):
    return sched.step(out, sched.timesteps[i], x).prev_sample


def _models(gmm, path, ts):
    """diffusers model outputs per grid index: flow (minus velocity) or epsilon."""
    if path is CONDOT:
        u = _batched(gmm.velocity_field(path))
        return lambda i, x: -u(ts[i], x), 1 - np.asarray(ts), "flow_prediction"
    eps = _batched(gmm.field(path, "x0"))
    return lambda i, x: eps(ts[i], x), _rho(path, ts), "epsilon"


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("path", [CONDOT, VP], ids=["condot", "vp"])
def test_dpmsolverpp_matches_diffusers(gmm, path, order):
    diffusers = pytest.importorskip("diffusers")
    ts = jfm.time_grid("logsnr", 8, path=path)
    x0 = jr.normal(jr.key(0), (6, 2))
    model, sigmas, kind = _models(gmm, path, ts)
    sched = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=order,
        prediction_type=kind,
        use_flow_sigmas=path is CONDOT,
        final_sigmas_type="zero",
        lower_order_final=False,
    )
    sched.model_outputs, sched.lower_order_nums = [None] * order, 0
    want = _diffusers_run(sched, sigmas, model, x0, _dpm_update(order))
    got = jfm.sample_ode(gmm.velocity_field(path), x0, solver=jfm.DPMSolverPP(path, order), ts=ts)
    np.testing.assert_allclose(got.x1, want, rtol=0, atol=1e-12)


def test_dpmsolverpp_3m_order_vs_diffusers(gmm):
    # The one difference: diffusers' 3M weights the second divided difference by half the
    # Taylor coefficient. On an interior interval with a refined first step, jfm's 3M
    # converges at order 3 and diffusers' at order 2.
    diffusers = pytest.importorskip("diffusers")
    path, ta, tb = VP, 0.3, 0.9
    field = gmm.velocity_field(path)
    x0 = jr.normal(jr.key(1), (6, 2))
    ref = jfm.sample_ode(field, x0, solver=dfx.Dopri8(), rtol=1e-13, atol=1e-13, t0=ta, t1=tb)
    errs = {"jfm": [], "diffusers": []}
    ns = [32, 64, 128]
    for n in ns:
        ts = jfm.time_grid("logsnr", n, path=path, t0=ta, t1=tb)
        lam = jfm.log_snr(path, ts)
        first = jfm.time_at_log_snr(path, lam[0] + float(lam[1] - lam[0]) ** 1.5)
        ts = jnp.concatenate([ts[:1], first[None], ts[1:]])
        got = jfm.sample_ode(field, x0, solver=jfm.DPMSolverPP(path, 3), ts=ts).x1
        model, sigmas, kind = _models(gmm, path, ts)
        sched = diffusers.DPMSolverMultistepScheduler(
            solver_order=3, prediction_type=kind, lower_order_final=False
        )
        sched.model_outputs, sched.lower_order_nums = [None] * 3, 0
        want = _diffusers_run(sched, sigmas, model, x0, _dpm_update(3))
        for k, v in (("jfm", got), ("diffusers", want)):
            errs[k].append(float(np.sqrt(np.mean((np.asarray(v) - np.asarray(ref.x1)) ** 2))))
    slope = {k: -np.polyfit(np.log(ns), np.log(v), 1)[0] for k, v in errs.items()}
    assert abs(slope["jfm"] - 3) < 0.3 and abs(slope["diffusers"] - 2) < 0.3, slope


@pytest.mark.parametrize(
    "path,order,variant",
    [(CONDOT, 2, "bh2"), (VP, 2, "bh1"), (VP, 2, "bh2"), (VP, 3, "bh2")],
    ids=["condot-2-bh2", "vp-2-bh1", "vp-2-bh2", "vp-3-bh2"],
)
def test_unipc_matches_diffusers(gmm, path, order, variant):
    diffusers = pytest.importorskip("diffusers")
    n = 8
    # Order 3: diffusers lowers the order of the second-to-last step with
    # lower_order_final; without it, a final step to sigma = 0 divides by zero there, so
    # this case ends at t = 0.99.
    # bh1: diffusers' last step to sigma = 0 computes B(h) * 0 = -inf * 0 = nan there.
    t1 = 0.99 if order == 3 or variant == "bh1" else 1.0
    t0 = 0.01 if path is CONDOT else 0.0  # diffusers' UniPC needs alpha > 0 at the start
    ts = jfm.time_grid("logsnr", n, path=path, t0=t0, t1=t1)
    x0 = jr.normal(jr.key(2), (6, 2))
    model, sigmas, kind = _models(gmm, path, ts)
    sched = diffusers.UniPCMultistepScheduler(
        solver_order=order,
        solver_type=variant,
        prediction_type=kind,
        use_flow_sigmas=path is CONDOT,
        lower_order_final=t1 == 1.0,  # lowers only the last step for order 2
    )
    sched.set_timesteps(n)
    want = _diffusers_run(sched, sigmas, model, x0, _step_update)
    solver = jfm.UniPC(path, order, variant=variant)
    got = jfm.sample_ode(gmm.velocity_field(path), x0, solver=solver, ts=ts)
    np.testing.assert_allclose(got.x1, want, rtol=0, atol=1e-11)


@pytest.mark.parametrize("order", [2, 3])
def test_deis_matches_diffusers(gmm, order):
    diffusers = pytest.importorskip("diffusers")
    n, path = 8, VP
    ts = jfm.time_grid("logsnr", n, path=path, t1=0.99)
    x0 = jr.normal(jr.key(3), (6, 2))
    model, sigmas, kind = _models(gmm, path, ts)
    sched = diffusers.DEISMultistepScheduler(
        solver_order=order, prediction_type=kind, lower_order_final=False
    )
    sched.set_timesteps(n)
    want = _diffusers_run(sched, sigmas, model, x0, _step_update)
    got = jfm.sample_ode(gmm.velocity_field(path), x0, solver=jfm.DEIS(path, order), ts=ts)
    np.testing.assert_allclose(got.x1, want, rtol=0, atol=1e-11)


def test_flow_match_euler_matches_diffusers(gmm):
    # diffusers' FlowMatchEulerDiscreteScheduler is Euler in t on the velocity, on the
    # shift grid: the same numbers as dfx.Euler on jfm.time_grid("shift", ...).
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    n, shift = 6, 3.0
    ts = jfm.time_grid("shift", n, path=CONDOT, shift=shift)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=list(1 - np.linspace(0, 1, n + 1)[:-1]))
    np.testing.assert_allclose(1 - sched.sigmas.numpy(), ts, atol=1e-6)  # float32 sigmas
    sched.sigmas = torch.tensor(1 - np.asarray(ts), dtype=torch.float64)
    u = _batched(gmm.velocity_field(CONDOT))
    x0 = jr.normal(jr.key(4), (6, 2))
    x = torch.tensor(np.asarray(x0), dtype=torch.float64)
    for i in range(n):
        x = sched.step(torch.tensor(-u(ts[i], x.numpy())), sched.timesteps[i], x).prev_sample
    got = jfm.sample_ode(gmm.velocity_field(CONDOT), x0, solver=dfx.Euler(), ts=ts)
    np.testing.assert_allclose(got.x1, x.numpy(), rtol=0, atol=1e-6)  # its step runs in float32


def _kdiff_model(gmm, path):
    """k-diffusion's denoiser ``D(x / alpha, rho)`` from jfm's exact data prediction."""
    torch = pytest.importorskip("torch")
    d = _batched(gmm.field(path, "x1"))

    def model(x, sigma):
        rho = float(sigma.reshape(-1)[0])  # k-diffusion passes sigma per example
        t = float(jfm.time_at_log_snr(path, -np.log(rho)))
        a = float(path.alpha(t))
        return torch.tensor(d(t, a * x.numpy()), dtype=torch.float64)

    return model


@pytest.mark.parametrize("sampler", ["heun", "heun-churn", "dpmpp_2m", "dpmpp_2s"])
def test_edm_and_dpmpp_match_k_diffusion(gmm, sampler):
    torch = pytest.importorskip("torch")
    ks = pytest.importorskip("k_diffusion.sampling")
    path, n = VP, 6
    ts = jfm.time_grid("edm", n, path=path)
    rho = torch.tensor(_rho(path, ts), dtype=torch.float64)
    x0 = jr.normal(jr.key(5), (6, 2))
    xt = torch.tensor(np.asarray(x0) / float(path.alpha(ts[0])), dtype=torch.float64)
    model = _kdiff_model(gmm, path)
    field = gmm.velocity_field(path)
    if sampler == "dpmpp_2m":
        want = ks.sample_dpmpp_2m(model, xt, rho, disable=True)
        got = jfm.sample_ode(field, x0, solver=jfm.DPMSolverPP(path, 2), ts=ts)
    elif sampler == "dpmpp_2s":
        want = ks.sample_dpmpp_2s_ancestral(model, xt, rho, eta=0.0, disable=True)
        got = jfm.sample_ode(field, x0, solver=jfm.DPMSolverPP2S(path), ts=ts)
    elif sampler == "heun":
        want = ks.sample_heun(model, xt, rho, disable=True)
        got = jfm.sample_ode(field, x0, solver=jfm.EDM(path), ts=ts)
    else:
        # Churn with the same noise: jfm's is W(t_{i+1}) - W(t_i) of the documented
        # diffrax.UnsafeBrownianPath, normalised; k-diffusion draws torch.randn_like.
        s_churn, key = 2.0, jr.key(6)
        gamma = min(s_churn / n, 2**0.5 - 1)
        bm = dfx.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(x0.shape, x0.dtype), key=key)
        zs = [bm.evaluate(a, b) / jnp.sqrt(b - a) for a, b in zip(ts[:-1], ts[1:])]
        draws = iter(torch.tensor(np.asarray(z), dtype=torch.float64) for z in zs)
        real = ks.torch.randn_like
        ks.torch.randn_like = lambda x: next(draws)
        try:
            want = ks.sample_heun(model, xt, rho, s_churn=s_churn, s_tmax=50.0, disable=True)
        finally:
            ks.torch.randn_like = real
        solver = jfm.EDM(path, gamma=gamma, s_tmax=50.0)
        got = jfm.sample_ode(field, x0, solver=solver, ts=ts, key=key)
    np.testing.assert_allclose(got.x1, want.numpy(), rtol=0, atol=1e-10)
