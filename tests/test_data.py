"""Tests for jfm.data: 2-D toy generators, digits, .npz loading, image grids."""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

import jfm

from .helpers import raises_arg

NAMES = sorted(jfm.data.DATASETS)


def _np(x):
    return np.asarray(x, dtype=np.float64)


N = 20_000  # one sample size for every statistical test: one compilation per (name, dtype)


def _params(name, **overrides):
    """All keyword parameters of a generator, defaults filled in (so one signature)."""
    sig = inspect.signature(jfm.data.DATASETS[name]).parameters.values()
    params = {p.name: p.default for p in sig if p.kind == p.KEYWORD_ONLY}
    params.pop("key"), params.pop("dtype")
    return {**params, **overrides}


@functools.partial(jax.jit, static_argnames="dtype")
def _draw_all(key, params, dtype):
    # Every generator in ONE compiled program (per dtype), parameters traced: compiling is
    # what costs here (~1 s per program on CPU), drawing N = 20000 points is free.
    return {name: jfm.data.sample(name, N, key=key, dtype=dtype, **params[name]) for name in NAMES}


def _draw(name, key, dtype=jnp.float64, **overrides):
    """``jfm.data.sample(name, N, key=key, dtype=dtype, **overrides)``, jitted."""
    params = {other: _params(other) for other in NAMES}
    params[name] = _params(name, **overrides)
    return _draw_all(key, params, dtype)[name]


# -- common contract -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_shape_dtype_and_determinism(name, dtype, getkey):
    key = getkey()
    x = _draw(name, key, dtype)
    assert x.shape == (N, 2) and x.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(x)))
    # Same key: bit-identical.
    np.testing.assert_array_equal(x, _draw(name, key, dtype))
    # Another key: another sample (continuous coordinates: no row repeats).
    y = _draw(name, getkey(), dtype)
    assert float(jnp.mean(jnp.all(x == y, axis=-1))) < 0.01


@pytest.mark.parametrize("name", NAMES)
def test_eager_matches_jit_and_registry(name, getkey):
    key = getkey()
    eager = jfm.data.DATASETS[name](N, key=key)
    assert eager.dtype == jnp.float64  # JAX's default float (conftest enables x64)
    np.testing.assert_array_equal(eager, jfm.data.sample(name, N, key=key))
    # Same maths; XLA may fuse trig/arithmetic differently: agreement to round-off.
    np.testing.assert_allclose(_draw(name, key), eager, atol=1e-12)
    assert jfm.data.DATASETS[name](0, key=key).shape == (0, 2)


# Documented mean and per-coordinate variance of each generator at its defaults.
_SW_A, _SW_B = 1.5 * math.pi, 4.5 * math.pi


def _swiss_roll_var(f):
    m = scipy.integrate.quad(lambda t: t * f(t), _SW_A, _SW_B)[0] / (3 * math.pi)
    m2 = scipy.integrate.quad(lambda t: (t * f(t)) ** 2, _SW_A, _SW_B)[0] / (3 * math.pi)
    return (m2 - m * m) / 25 + 1 / 25  # default noise 1.0, divided by 5


DOC_MOMENTS = {
    "moons": ((0.0, 0.0), (3 + 4 * 0.05**2, 9 / 4 - 4 / math.pi + 4 * 0.05**2)),
    "eight_gaussians": ((0.0, 0.0), (4 + 0.125, 4 + 0.125)),
    "checkerboard": ((0.0, 0.0), (16 / 3, 16 / 3)),
    "circles": ((0.0, 0.0), (9 * (1.25 / 4 + 0.05**2),) * 2),
    "spirals": ((0.0, 0.0), (math.pi**2 / 4 + 0.01,) * 2),
    "s_curve": ((0.0, 0.0), (2.25 * (0.5 + 0.05**2), 2.25 * (1.5 + 4 / (3 * math.pi) + 0.05**2))),
    "swiss_roll": (
        (0.4, 2 / (15 * math.pi)),
        (_swiss_roll_var(math.cos), _swiss_roll_var(math.sin)),
    ),
}


@pytest.mark.parametrize("name", NAMES)
def test_mean_and_variance_as_documented(name, getkey):
    n = N
    x = _np(_draw(name, getkey()))
    mean, var = (np.asarray(v) for v in DOC_MOMENTS[name])
    # Monte-Carlo: 5 standard errors of the mean.
    np.testing.assert_allclose(x.mean(0), mean, atol=5 * np.sqrt(var.max() / n))
    # Sample variance: SE ~ var * sqrt(2/n) ~ 1% here (light tails); 5% is > 4 SE.
    np.testing.assert_allclose(x.var(0), var, rtol=0.05)


# -- one property of each construction ------------------------------------------------------


def _dist_to_unit_arc(p, centre, lo, hi):
    """Distance from points p [n, 2] to the unit-radius arc of angles [lo, hi] about centre."""
    d = p - np.asarray(centre).reshape(1, 2)
    ang = np.mod(np.arctan2(d[:, 1], d[:, 0]) - lo, 2 * np.pi)
    on_arc = np.abs(np.linalg.norm(d, axis=1) - 1)
    ends = [np.asarray(centre) + [np.cos(a), np.sin(a)] for a in (lo, hi)]
    to_end = np.min([np.linalg.norm(p - e.reshape(1, 2), axis=1) for e in ends], axis=0)
    return np.where(ang <= hi - lo, on_arc, to_end)


def _moons_dist(x):
    p = x / 2 + np.array([[0.5, 0.25]])  # back to scikit-learn's units
    upper = _dist_to_unit_arc(p, (0.0, 0.0), 0.0, np.pi)
    lower = _dist_to_unit_arc(p, (1.0, 0.5), np.pi, 2 * np.pi)
    return np.minimum(upper, lower), upper < lower


def test_moons_lie_on_the_two_half_circles(getkey):
    dist, upper = _moons_dist(_np(_draw("moons", getkey(), noise=0.0)))
    assert dist.max() < 1e-12  # noise-free: on the arcs up to round-off
    # Fair coin between moons: 0.5 +- 5 binomial SE (SE 0.0035 at n = 20000).
    assert abs(upper.mean() - 0.5) < 0.018
    sigma = 0.02
    dist, _ = _moons_dist(_np(_draw("moons", getkey(), noise=sigma)))
    # Distance to a curve ~ |normal noise component| ~ half-normal, mean sigma sqrt(2/pi);
    # MC SE 0.5%, curvature/endpoint bias O(sigma): 3%.
    np.testing.assert_allclose(dist.mean(), sigma * np.sqrt(2 / np.pi), rtol=0.03)


def test_eight_gaussians_cluster_around_the_centres(getkey):
    n, radius, std = N, 2.0, 0.15
    x = _np(_draw("eight_gaussians", getkey(), radius=radius, std=std))
    ang = np.arange(8) * np.pi / 4
    centres = radius * np.stack([np.cos(ang), np.sin(ang)], axis=-1)
    d2 = np.sum((x[:, None, :] - centres[None]) ** 2, axis=-1)
    k = d2.argmin(1)
    resid = x - centres[k]
    # Per-coordinate residual variance = std^2: SE 1% (n = 20000).
    np.testing.assert_allclose(resid.var(0), [std**2, std**2], rtol=0.05)
    np.testing.assert_allclose(resid.mean(0), 0.0, atol=5 * std / np.sqrt(n))
    # Uniform component weights: each count n/8 +- 5 binomial SE.
    counts = np.bincount(k, minlength=8)
    assert np.all(np.abs(counts - n / 8) < 5 * np.sqrt(n / 8 * 7 / 8)), counts


def test_checkerboard_is_uniform_on_black_squares(getkey):
    n = N
    x = _np(_draw("checkerboard", getkey()))
    assert np.all(np.abs(x) <= 4)
    cell = np.floor(x / 2).astype(int)  # square index in -2..1 per axis
    assert np.all((cell.sum(1) % 2) == 0)  # every point on a black square
    counts = np.bincount((cell[:, 0] + 2) * 4 + (cell[:, 1] + 2), minlength=16)
    black = counts[counts > 0]
    assert black.size == 8  # all eight black squares are used
    assert np.all(np.abs(black - n / 8) < 5 * np.sqrt(n / 8 * 7 / 8)), counts
    # Uniform inside a square: the position within the square is U[0, 1)^2.
    frac = x / 2 - cell
    for j in range(2):
        assert scipy.stats.kstest(frac[:, j], "uniform").pvalue > 1e-3


def test_circles_radii_concentrate_on_the_two_circles(getkey):
    x = _np(_draw("circles", getkey(), noise=0.0, factor=0.4))
    r = np.linalg.norm(x, axis=1)
    assert np.all(np.minimum(np.abs(r - 3), np.abs(r - 1.2)) < 1e-12)
    assert abs(np.mean(r > 2) - 0.5) < 0.018  # fair coin, 5 binomial SE
    angles = np.arctan2(x[:, 1], x[:, 0])
    assert scipy.stats.kstest(angles, "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 1e-3
    sigma = 0.02
    r = np.linalg.norm(_np(_draw("circles", getkey(), noise=sigma)), axis=1) / 3
    resid = r - np.where(r > 0.75, 1.0, 0.5)
    # Radial residual ~ N(0, sigma^2) (bias sigma^2/(2r) is 1% of sigma): std SE 0.5%.
    np.testing.assert_allclose(resid.std(), sigma, rtol=0.03)


def test_spirals_lie_on_the_generating_curve(getkey):
    x = _np(_draw("spirals", getkey(), noise=0.0))
    r = np.linalg.norm(x, axis=1)
    theta = 3 * r
    # Arm s=+1 has angle pi - theta, arm s=-1 has -theta: angle + theta = 0 mod pi.
    resid = np.mod(np.arctan2(x[:, 1], x[:, 0]) + theta, np.pi)
    assert np.all(np.minimum(resid, np.pi - resid) < 1e-9)
    # theta = 3 pi sqrt(u): (r / pi)^2 ~ U[0, 1].
    assert scipy.stats.kstest((r / np.pi) ** 2, "uniform").pvalue > 1e-3
    arm = np.sign(np.sum(x * np.stack([-np.cos(theta), np.sin(theta)], -1), axis=1))
    assert abs(np.mean(arm > 0) - 0.5) < 0.018  # fair coin, 5 binomial SE


def test_s_curve_lies_on_two_unit_circles(getkey):
    p = _np(_draw("s_curve", getkey(), noise=0.0)) / 1.5
    d_lo = np.abs(np.linalg.norm(p - np.array([[0.0, -1.0]]), axis=1) - 1)
    d_hi = np.abs(np.linalg.norm(p - np.array([[0.0, 1.0]]), axis=1) - 1)
    assert np.all(np.minimum(d_lo, d_hi) < 1e-12)
    # t >= 0 (lower circle, z <= 0) and t < 0 (upper) are equally likely.
    assert abs(np.mean(p[:, 1] <= 0) - 0.5) < 0.018  # 5 binomial SE


def test_swiss_roll_radius_is_uniform_and_angle_matches(getkey):
    x = _np(_draw("swiss_roll", getkey(), noise=0.0))
    t = 5 * np.linalg.norm(x, axis=1)
    assert np.all((t >= 1.5 * np.pi - 1e-12) & (t <= 4.5 * np.pi + 1e-12))
    resid = np.mod(np.arctan2(x[:, 1], x[:, 0]) - t, 2 * np.pi)
    assert np.all(np.minimum(resid, 2 * np.pi - resid) < 1e-9)  # angle = t mod 2 pi
    assert scipy.stats.kstest(t, "uniform", args=(1.5 * np.pi, 3 * np.pi)).pvalue > 1e-3


# -- errors ------------------------------------------------------------------------------


def test_toy_errors(getkey):
    key = getkey()
    with pytest.raises(ValueError, match="`name` must be one of .*moons.*swiss_roll"):
        jfm.data.sample("two_moons", 10, key=key)
    with raises_arg(ValueError, "n", ">= 0"):
        jfm.data.moons(-1, key=key)
    with raises_arg(TypeError, "n"):
        jfm.data.moons(2.5, key=key)
    with raises_arg(TypeError, "key"):
        jfm.data.moons(10, key=0)  # int seeds are refused
    with pytest.raises(TypeError, match="`dtype` must be a floating dtype"):
        jfm.data.spirals(10, key=key, dtype=jnp.int32)
    for name in ("moons", "circles", "spirals", "s_curve", "swiss_roll"):
        with raises_arg(ValueError, "noise", ">= 0"):
            jfm.data.sample(name, 10, key=key, noise=-0.1)
    with raises_arg(ValueError, "std", ">= 0"):
        jfm.data.eight_gaussians(10, key=key, std=-1.0)
    with raises_arg(ValueError, "radius", "finite"):
        jfm.data.eight_gaussians(10, key=key, radius=float("nan"))
    for bad in (1.5, 1.0, 0.0):  # the inner circle lies strictly inside the outer one
        with raises_arg(ValueError, "factor"):
            jfm.data.circles(10, key=key, factor=bad)
    with pytest.raises(TypeError):
        jfm.data.checkerboard(10, key=key, noise=0.1)  # checkerboard has no noise


# -- images ------------------------------------------------------------------------------


def test_digits_match_sklearn_scaled_by_hand():
    from sklearn.datasets import load_digits

    ref = load_digits()
    x, y = jfm.data.digits(return_labels=True)
    assert x.shape == (1797, 8, 8, 1) and x.dtype == jnp.float64
    assert y.shape == (1797,) and y.dtype == jnp.int32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    by_hand = (ref.data.reshape(-1, 8, 8)[..., None] - 8.0) / 8.0
    np.testing.assert_array_equal(x, by_hand)  # multiples of 1/8: exact
    np.testing.assert_array_equal(y, ref.target)
    x32 = jfm.data.digits(dtype=jnp.float32)
    assert x32.dtype == jnp.float32
    np.testing.assert_array_equal(x32, by_hand.astype(np.float32))
    with pytest.raises(TypeError, match="`dtype`"):
        jfm.data.digits(dtype=jnp.int8)


def test_load_npz_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    feats = rng.normal(size=(7, 2)).astype(np.float32)
    path = tmp_path / "data.npz"
    np.savez(path, x=imgs, feats=feats)
    got = jfm.data.load_npz(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, imgs)
    got = jfm.data.load_npz(str(path), name="feats")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, feats)

    with pytest.raises(FileNotFoundError, match="missing.npz"):
        jfm.data.load_npz(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"'y' is not in .*\['x', 'feats'\]"):
        jfm.data.load_npz(path, name="y")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.array(["a", "b"]), obj=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(TypeError, match="must be numeric; got dtype <U1"):
        jfm.data.load_npz(bad)
    with pytest.raises(TypeError, match="unpickling"):
        jfm.data.load_npz(bad, name="obj")
    npy = tmp_path / "single.npy"
    np.save(npy, feats)
    with pytest.raises(ValueError, match="single .npy"):
        jfm.data.load_npz(npy)
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="must be an .npz archive"):
        jfm.data.load_npz(text)


def test_unit_range_round_trip():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for dtype in (jnp.float32, jnp.float64):
        x = jfm.data.to_unit_range(pixels, dtype=dtype)
        assert x.dtype == dtype
        assert float(x[0, 0]) == -1.0 and float(x[-1, -1]) == 1.0
        np.testing.assert_allclose(x, pixels / 127.5 - 1, atol=1e-6)  # float32 round-off
        np.testing.assert_array_equal(jfm.data.from_unit_range(x), pixels)  # exact inverse
    clipped = jfm.data.from_unit_range(jnp.array([-3.0, -1.0, 0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(clipped, [0, 0, 128, 255, 255])  # 127.5 rounds half-even
    with raises_arg(TypeError, "images", "uint8"):
        jfm.data.to_unit_range(pixels.astype(np.int32))
    with raises_arg(TypeError, "images", "floating"):
        jfm.data.from_unit_range(pixels)


def test_save_image_grid_size_and_pixels(tmp_path):
    imgs = np.asarray(jfm.data.digits()[:10])
    path = tmp_path / "grid.png"
    jfm.data.save_image_grid(imgs, path, nrow=4, padding=1, scale=2)
    png = matplotlib.image.imread(path)
    # 3 rows x 4 columns of 16x16 cells with 1-pixel padding around each.
    assert png.shape == (3 * 17 + 1, 4 * 17 + 1, 4)
    first = np.round(png[1:17, 1:17, 0] * 255)
    expected = np.round((imgs[0, :, :, 0] + 1) * 127.5).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(png[0], 1.0)  # white padding (pad_value=1)
    np.testing.assert_array_equal(png[-17:, -17:, :3], 1.0)  # the two empty cells
    # Defaults: near-square grid (ceil(sqrt(10)) = 4 per row), no upscaling; RGB input.
    rgb = np.repeat(imgs[:5], 3, axis=-1)
    jfm.data.save_image_grid(rgb, tmp_path / "rgb.png")
    assert matplotlib.image.imread(tmp_path / "rgb.png").shape == (2 * 9 + 1, 3 * 9 + 1, 4)

    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\) channels"):
        jfm.data.save_image_grid(np.zeros((2, 4, 4, 2)), path)
    with pytest.raises(ValueError, match="finite"):
        jfm.data.save_image_grid(np.full((1, 4, 4, 1), np.nan), path)
    with pytest.raises(ValueError, match="at least one image"):
        jfm.data.save_image_grid(np.zeros((0, 4, 4, 1)), path)
    with raises_arg(ValueError, "nrow", ">= 1"):
        jfm.data.save_image_grid(imgs, path, nrow=0)
    with pytest.raises(ValueError, match=r"shape \[n, h, w, c\]"):
        jfm.data.save_image_grid(imgs[0], path)
