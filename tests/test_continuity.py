"""check_continuity: round-off residuals for every shipped path; wrong fields are caught."""

import jax.numpy as jnp
import jax.random as jr
import pytest

import jfm

from .helpers import ALL_PATHS, PATH_IDS, raises_arg
from .test_isotropic import exp_cdf, tanh_cdf

SHIPPED = ALL_PATHS + [
    jfm.PoissonPath(r_max=5.0),
    jfm.PoissonPath(r_max=5.0, aug_dim=4),
    jfm.IsotropicPath(cdf=tanh_cdf, T=2.0),
    jfm.IsotropicPath(cdf=lambda tau, r: jnp.tanh(r / tau), T=2.0),  # plain tanh too
    jfm.IsotropicPath(cdf=exp_cdf, T=2.0),
    jfm.SchrodingerBridgePath(0.7),
]
SHIPPED_IDS = PATH_IDS + ["pfgm", "pfgm++4", "iso-tanh", "iso-tanh-plain", "iso-1-exp", "sb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=SHIPPED_IDS)
def test_residual_is_roundoff(path, getkey):
    d = 3
    x1 = jr.normal(getkey(), (3, d))
    rep = jfm.check_continuity(path, x1, key=getkey(), n=24)
    assert rep.relative.shape == (24,) and rep.x.shape == (24, d)
    # float64: sums of O(10) autodiff terms, each exact to ~1e-15 relative; 1e-10 leaves
    # room for the conditioning of the incomplete-function derivatives.
    assert float(rep.max_relative) < 1e-10


class WrongField(jfm.AbstractPath):
    """A path with a deliberately wrong field (scaled) or density (shifted exponent).

    It wraps a path (delegating the whole interface) rather than subclassing it.
    """

    path: jfm.AbstractPath
    factor: float = 1.0
    density_power: float = 1.0

    def sample_and_target(self, t, x0, x1, *, key, kind="velocity"):
        return self.path.sample_and_target(t, x0, x1, key=key, kind=kind)

    def x0_sample(self, shape, *, key, dtype=None):
        return self.path.x0_sample(shape, key=key, dtype=dtype)

    def prior_sample(self, shape, *, key, dtype=None):
        return self.path.prior_sample(shape, key=key, dtype=dtype)

    def prior_log_prob(self, x):
        return self.path.prior_log_prob(x)

    def sample_conditional(self, t, x1, *, key):
        return self.path.sample_conditional(t, x1, key=key)

    def conditional_velocity(self, t, x, x1):
        return self.factor * self.path.conditional_velocity(t, x, x1)

    def conditional_log_density(self, t, x, x1):
        return self.density_power * self.path.conditional_log_density(t, x, x1)


@pytest.mark.parametrize("path", [SHIPPED[-2]], ids=["iso-1-exp"])
def test_wrong_field_is_caught(path, getkey):
    x1 = jr.normal(getkey(), (2, 2))
    ok = jfm.check_continuity(path, x1, key=getkey(), n=16)
    for wrong in (WrongField(path, factor=1.1), WrongField(path, density_power=1.2)):
        rep = jfm.check_continuity(wrong, x1, key=getkey(), n=16)
        # A 10-20 % error in the field or density is a 1e-2..1e-1 relative residual at
        # typical points: many orders of magnitude above round-off.
        assert float(jnp.median(rep.relative)) > 1e-3 > 1e6 * float(ok.max_relative)


def test_float32(getkey):
    path = jfm.PoissonPath(r_max=3.0)
    x1 = jr.normal(getkey(), (2, 2), jnp.float32)
    rep = jfm.check_continuity(path, x1, key=getkey(), n=8)
    assert rep.relative.dtype == jnp.float32
    assert float(rep.max_relative) < 1e-4  # float32 round-off


def test_bad_arguments(getkey):
    with raises_arg(TypeError, "path"):
        jfm.check_continuity(object(), jnp.zeros((1, 2)), key=getkey(), n=2)
    path = ALL_PATHS[0]
    with raises_arg(ValueError, "x1"):
        jfm.check_continuity(path, jnp.zeros(2), key=getkey(), n=2)
    with raises_arg(ValueError, "n"):
        jfm.check_continuity(path, jnp.zeros((1, 2)), key=getkey(), n=0)
    with raises_arg(ValueError, "t_min"):
        jfm.check_continuity(path, jnp.zeros((1, 2)), key=getkey(), n=2, t_min=0.9, t_max=0.1)
