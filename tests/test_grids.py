"""Named time grids: closed forms on the paths where they have one, and the round trip
through the log-SNR."""

import math

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jfm

from .helpers import raises_arg

CONDOT = jfm.AffinePath(jfm.CondOT())
VP = jfm.AffinePath(jfm.VP())
VE = jfm.AffinePath(jfm.VE(0.01, 50.0))
COSINE = jfm.AffinePath(jfm.Cosine())


@pytest.mark.parametrize("path", [CONDOT, VP, VE, COSINE], ids=["condot", "vp", "ve", "cos"])
def test_log_snr_round_trip(path):
    t = jnp.linspace(0.02, 0.98, 9)
    lam = jfm.log_snr(path, t)
    assert bool(jnp.all(jnp.diff(lam) > 0))
    np.testing.assert_allclose(jfm.time_at_log_snr(path, lam), t, rtol=0, atol=1e-14)
    ends = jfm.time_at_log_snr(path, jnp.array([-jnp.inf, jnp.inf]))
    np.testing.assert_array_equal(ends, [0.0, 1.0])


def test_shift_is_sd3_on_condot():
    # SD3/Flux: s' = shift s / (1 + (shift - 1) s) for the noise fraction s = 1 - t.
    shift, n = 3.0, 8
    s = 1 - np.linspace(0, 1, n + 1)
    want = 1 - shift * s / (1 + (shift - 1) * s)
    ts = jfm.time_grid("shift", n, path=CONDOT, shift=shift)
    np.testing.assert_allclose(ts, want, rtol=0, atol=1e-14)
    # The same map for any path: the noise level rho = sigma / alpha is multiplied by shift.
    tv = jfm.time_grid("shift", n, path=VP, shift=shift)
    rho = lambda p, t: jnp.exp(-jfm.log_snr(p, t))
    u = jnp.linspace(0, 1, n + 1)
    np.testing.assert_allclose(rho(VP, tv[1:-1]), shift * rho(VP, u[1:-1]), rtol=1e-12)


def test_edm_grid_on_ve_is_karras():
    # On VE (alpha = 1) the noise level is sigma itself, and the grid is Karras et al.'s.
    n, p = 7, 7.0
    lo, hi = 0.01, 50.0
    i = np.arange(n + 1) / n
    sig = (hi ** (1 / p) + i * (lo ** (1 / p) - hi ** (1 / p))) ** p
    want = 1 - np.log(sig / lo) / np.log(hi / lo)  # sigma(t) = lo (hi / lo)^(1 - t)
    np.testing.assert_allclose(jfm.time_grid("edm", n, path=VE), want, rtol=0, atol=1e-12)


def test_edm_grid_clips_to_sigma_range():
    # CondOT: infinite noise at 0, zero at 1: t0 replaces sigma_max, then N - 2 spaced
    # points down to sigma_min, then t = 1 (EDM's final step to sigma = 0).
    n, p, smin, smax = 6, 7.0, 0.002, 80.0
    ts = jfm.time_grid("edm", n, path=CONDOT)
    i = np.arange(n) / (n - 1)
    sig = (smax ** (1 / p) + i * (smin ** (1 / p) - smax ** (1 / p))) ** p
    want = np.concatenate([[0.0], 1 / (1 + sig[1:]), [1.0]])  # rho = (1 - t) / t
    np.testing.assert_allclose(ts, want, rtol=0, atol=1e-12)


def test_logsnr_and_cosine_grids():
    ts = jfm.time_grid("logsnr", 5, path=VE)
    d = np.diff(np.asarray(jfm.log_snr(VE, ts)))
    np.testing.assert_allclose(d, d[0], rtol=1e-12)
    # The cosine grid is the uniform grid on the cosine schedule.
    np.testing.assert_allclose(
        jfm.time_grid("cosine", 6, path=COSINE), np.linspace(0, 1, 7), rtol=0, atol=1e-14
    )
    # ... and uniform in the angle atan2(alpha, sigma) on any path.
    tv = jfm.time_grid("cosine", 6, path=VP, t1=0.999)
    a = np.arctan2(jax.vmap(VP.alpha)(tv), jax.vmap(VP.sigma)(tv))
    np.testing.assert_allclose(np.diff(a), np.diff(a)[0], rtol=1e-10)


def test_grid_under_jit_and_dtype():
    f = jax.jit(lambda: jfm.time_grid("edm", 5, path=VP, t1=0.999))
    np.testing.assert_allclose(f(), jfm.time_grid("edm", 5, path=VP, t1=0.999), rtol=1e-14)
    g = jfm.time_grid("logsnr", 4, path=CONDOT, dtype=jnp.float32)
    assert g.dtype == jnp.float32 and float(g[0]) == 0.0 and float(g[-1]) == 1.0
    u = jfm.time_grid("uniform", 4, t0=0.2, t1=0.6)
    np.testing.assert_allclose(u, [0.2, 0.3, 0.4, 0.5, 0.6], rtol=1e-14)


def test_grid_errors():
    with raises_arg(ValueError, "kind"):
        jfm.time_grid("karras-ish", 4, path=VP)
    with raises_arg(ValueError, "steps"):
        jfm.time_grid("edm", 0, path=VP)
    with raises_arg(TypeError, "path"):
        jfm.time_grid("edm", 4)
    with raises_arg(TypeError, "path"):
        jfm.time_grid("edm", 4, path=jfm.PoissonPath(r_max=10.0, aug_dim=1))
    with raises_arg(ValueError, "t0"):
        jfm.time_grid("uniform", 4, t0=0.6, t1=0.2)
    with raises_arg(ValueError, "shift"):
        jfm.time_grid("shift", 4, path=VP, shift=-1.0)
    with raises_arg(ValueError, "sigma_min"):
        jfm.time_grid("edm", 4, path=VP, sigma_min=100.0)
    with pytest.raises(ValueError, match="not strictly increasing"):
        # VE's noise range is finite: a large shift pushes points past the noise end.
        jfm.time_grid("shift", 8, path=VE, shift=1e6)


def test_sample_ode_on_a_named_grid():
    # A named grid is an ordinary ts=: Euler on the shift grid is the SD3/Flux sampler.
    ts = jfm.time_grid("shift", 4, path=CONDOT, shift=2.0)
    field = lambda t, x, args: -x
    sol = jfm.sample_ode(field, jnp.ones((2, 1)), solver=dfx.Euler(), ts=ts)
    want = math.prod(1 - float(b - a) for a, b in zip(ts[:-1], ts[1:]))
    np.testing.assert_allclose(sol.x1, want, rtol=1e-13)
    assert int(sol.nfe) == 4


@pytest.mark.slow
def test_grids_drive_sde_and_likelihood():
    # The same grids serve the SDE sampler and the likelihood solve (run from 1 back to 0).
    gmm = jfm.GaussianMixture(jnp.zeros((1, 2)), 0.5 * jnp.eye(2)[None], jnp.ones(1))
    u = gmm.velocity_field(CONDOT)
    x1 = jnp.array([[0.3, -0.2], [1.0, 0.4]])
    ts = jfm.time_grid("cosine", 24, path=CONDOT, t0=1e-3, t1=1 - 1e-3)
    logp, info = jfm.log_prob(u, x1, path=CONDOT, solver=dfx.Heun(), ts=ts)
    np.testing.assert_allclose(logp, jax.vmap(gmm.log_prob)(x1), atol=2e-3)
    assert bool(jnp.all(info.nfe == 2 * 24))
    s = gmm.score_field(CONDOT)
    sol = jfm.sample_sde(
        u, s, jnp.zeros((3, 2)), diffusion=0.3, key=jax.random.key(0), ts=ts, solver=dfx.Euler()
    )
    assert int(sol.nfe) == 24 and bool(sol.success)


def test_constants_closed_over_by_jit():
    # Concrete arguments captured by a jit trace are checked on the host, not traced.
    lam = jnp.array([-2.0, 0.0, 3.0])
    eager = jfm.time_at_log_snr(VP, lam)
    np.testing.assert_allclose(jax.jit(lambda: jfm.time_at_log_snr(VP, lam))(), eager)
    np.testing.assert_allclose(jax.jit(lambda: jfm.log_snr(VP, eager))(), lam, atol=1e-9)
