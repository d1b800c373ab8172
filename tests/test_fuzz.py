"""Property-based fuzzing of the public API with bad input (hypothesis).

For each public function and constructor, one argument at a time is replaced by a bad
draw: a wrong shape (wrong rank, mismatched batch, a scalar for a batch), a wrong dtype
(int, bool, complex arrays; Python lists; strings; None), NaN/inf entries, times outside
``[0, 1]``, empty batches (``B = 0``) and wrong keys (an int seed, a float array, a batch
of keys, None). Every draw must give either

- a ``TypeError``/``ValueError`` whose message names the offending argument in backticks
  (as every check in ``jfm._checks`` does), or
- for an input that is in fact valid, a finite result (every floating leaf finite).

Anything else fails the test: another exception type (an XLA crash, an ``IndexError``,
a ``ZeroDivisionError``), a ``TypeError`` from inside JAX that names no argument, or a
silent NaN. The calls are eager (no ``jax.jit``), so that the value checks on concrete
input (``jfm._checks.check_finite``) fire; under ``jit`` non-finite input propagates.

Should the tests run with jaxtyping's import hook over ``jfm`` (``--jaxtyping-packages``,
as the doctests do), it is switched off in this module: it checks annotations before the
function body runs, with its own messages, and users do not have it; the fuzz tests check
jfm's own errors.

Run ``python -m pytest tests/test_fuzz.py -q -s`` for the figures: the number of
distinct bad inputs tried, of functions covered, and of the defects these tests exposed
(all fixed; listed in :data:`DEFECTS`).
"""

import collections
import dataclasses
import itertools
from collections.abc import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import jaxtyping
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import jfm

# -- bookkeeping --------------------------------------------------------------------------

#: function name -> the distinct bad inputs tried on it (argument, kind, description).
TRIED: dict[str, set] = collections.defaultdict(set)

#: The defects these tests exposed, each fixed in ``jfm/``: (function, input, what
#: happened, the fix).
DEFECTS: tuple[tuple[str, str, str, str], ...] = (
    ("VP, VE, Polynomial", "a str, None, complex or shape-(2,) parameter",
     "float()'s TypeError/ValueError, no argument named", "check_scalar in __check_init__"),
    ("VP, VE, Polynomial", "beta_max / sigma_max / n = inf",
     "accepted: inf schedule coefficients", "check_scalar (finite) in __check_init__"),
    ("sample_ode, sample_sde, sample_pc, langevin", "NaN/inf in x0",
     "EquinoxRuntimeError from inside the solve", "check_finite(x0)"),
    ("log_prob", "NaN/inf in x", "EquinoxRuntimeError from inside the solve",
     "check_finite(x)"),
    ("sample_ode, sample_sde, log_prob", "no step control (steps=None)",
     "ValueError naming no argument in backticks", "the step-control message names "
     "`steps`, `ts`, `rtol`/`atol`, `stepsize_controller`"),
    ("bits_per_dim", "empty x_int (B = 0)", "ZeroDivisionError",
     "ValueError naming `x_int`"),
    ("cfm_loss, dsm_loss, eps_loss, x1_loss", "NaN/inf in x1 or x0", "silent NaN losses",
     "check_finite(x1), check_finite(x0)"),
    ("empirical_field_loss", "NaN/inf in x1", "silent NaN losses", "check_finite(x1)"),
    ("the losses, via make_train_step's step", "an empty batch x1 (B = 0)",
     "ValueError naming `n` (the time sampler's count)", "ValueError naming `x1`"),
    ("exact_ot_coupling, sinkhorn_coupling, independent_coupling, label_ot_coupling",
     "NaN/inf in x0 or x1", "silent NaN / arbitrary pairing",
     "check_finite in the shared pair check"),
    ("check_continuity", "NaN/inf in x1", "silent NaN report", "check_finite(x1)"),
    ("init_train_state", "a NaN parameter leaf", "silent NaN state",
     "check_finite on every concrete leaf, naming `params`"),
    ("log_snr", "t a str or None", "JAX's TypeError/ValueError, no argument named",
     "a real-array check naming `t`"),
    ("log_snr", "t bool, NaN, inf or outside [0, 1]", "silent NaN/inf",
     "TypeError for bool; ValueError for concrete t outside [0, 1]"),
    ("time_at_log_snr", "lam a str or None", "JAX's TypeError/ValueError, no argument named",
     "a real-array check naming `lam` (NaN refused too)"),
    ("logit_normal_time", "mean NaN", "silent NaN times", "check_scalar(mean)"),
    ("logit_normal_time", "mean a str, None, complex or vector",
     "unnamed errors (a broadcasting TypeError for the vector)", "check_scalar(mean)"),
    ("metrics: energy_distance, mmd, w2, path_energy, straightness, "
     "normalized_path_energy", "NaN/inf in the samples or trajectories",
     "silent NaN/inf", "check_finite on x, y, xs, ts"),
    ("metrics.mmd", "bandwidth a str or None", "JAX's TypeError/ValueError, no argument named",
     "a type check naming `bandwidth`"),
    ("metrics.normalized_path_energy", "bad x1 (shape, dtype, NaN, empty)",
     "errors naming `x`/`y` (w2's own arguments)", "x1 checked under its own name first"),
    ("data.from_unit_range", "images a str or None",
     "JAX's TypeError/ValueError, no argument named", "a type check naming `images`"),
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _fuzz_setup():
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", before)
    n = sum(len(v) for v in TRIED.values())
    print(
        f"\nfuzz: {n} distinct bad inputs over {len(TRIED)} functions; "
        f"{len(DEFECTS)} exposed defects (fixed)"
    )
    for fname in sorted(TRIED):
        print(f"  {fname}: {len(TRIED[fname])}")


SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _describe(v) -> str:
    if isinstance(v, (np.ndarray, jax.Array)):
        d = str(v.dtype)
        extra = ""
        if v.size and jnp.issubdtype(v.dtype, jnp.inexact):
            a = np.asarray(v)
            nan, inf = np.flatnonzero(np.isnan(a)).tolist(), np.flatnonzero(np.isinf(a)).tolist()
            extra = f" nan@{nan} inf@{inf}"
        return f"{type(v).__name__}[{d}]{tuple(v.shape)}{extra}"
    if isinstance(v, list):
        return f"list(len={len(v)})"
    return f"{type(v).__name__}:{v!r}"[:80]


def _assert_finite(out, fname):
    for leaf in jax.tree_util.tree_leaves(out):
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic, float)):
            a = np.asarray(leaf)
            if np.issubdtype(a.dtype, np.inexact):
                assert np.all(np.isfinite(a)), f"{fname}: silent non-finite result {a}"


def expect(fname: str, thunk: Callable, names, tag=None, *, propagates: bool = False):
    """Run ``thunk``: a named ``TypeError``/``ValueError`` or a finite result.

    ``names``: ``None`` for a valid draw (must succeed, finite), else the argument names
    one of which the message must name in backticks. ``propagates``: a non-finite input
    to per-example maths, which may come out non-finite (as through ``jnp.sin``).
    """
    if names is not None and tag is not None:
        TRIED[fname].add(tag)
    try:
        out = thunk()
    except (TypeError, ValueError) as e:
        msg = str(e)
        if names is None:
            raise AssertionError(f"{fname}: a valid input raised {type(e).__name__}: {msg}") from e
        assert any(f"`{n}`" in msg for n in names), (
            f"{fname}: {type(e).__name__} does not name {sorted(names)}: {msg}"
        )
        return None
    if not propagates:
        _assert_finite(out, fname)
    return out


# -- bad values, by family ----------------------------------------------------------------

SHAPE_KINDS = ("rank_up", "rank_down", "scalar", "mismatch", "empty")


def _bad_arrays(good: np.ndarray, batch: bool):
    """(kind, value) corruptions of a floating array ``good``."""
    kinds = [
        ("valid", good),
        ("rank_up", good[None]),
        ("scalar", np.float64(0.5)),
        ("int", good.astype(np.int32)),
        ("bool", good > 0),
        ("complex", good.astype(np.complex128)),
        ("list", good.tolist()),
        ("str", "x"),
        ("none", None),
    ]
    if good.ndim:
        kinds.append(("rank_down", good[0]))
    for pos in range(min(good.size, 3)):
        for bad in (np.nan, np.inf, -np.inf):
            a = good.copy()
            a.reshape(-1)[pos] = bad
            kinds.append(("nan" if np.isnan(bad) else "inf", a))
    if batch:
        kinds.append(("empty", good[:0]))
        kinds.append(("mismatch", np.concatenate([good, good[:1]], axis=0)))
    elif good.ndim:
        kinds.append(("mismatch", np.concatenate([good, good[:1]], axis=0)))
    return kinds


def _bad_scalars(good: float, lo=None, hi=None):
    kinds = [
        ("valid", good),
        ("nan", float("nan")),
        ("inf", float("inf")),
        ("inf", -float("inf")),
        ("str", "x"),
        ("none", None),
        ("vector", np.array([good, good])),
        ("complex", complex(good, 1.0)),
        ("bool", True),
    ]
    if lo is not None:
        kinds += [("range", lo - 0.5), ("range", lo - 1e-3)]
    if hi is not None:
        kinds += [("range", hi + 0.5), ("range", hi + 1e-3)]
    return kinds


def _bad_keys():
    k = jr.key(0)
    return [
        ("valid", k),
        ("valid", jr.PRNGKey(0)),
        ("int", 0),
        ("int", np.int64(3)),
        ("float", np.array([0.0, 1.0])),
        ("batch", jr.split(k, 2)),
        ("batch", jr.split(jr.PRNGKey(0), 2)),
        ("none", None),
        ("str", "key"),
        ("uint3", np.zeros(3, np.uint32)),
    ]


def _bad_ints(good: int):
    return [
        ("valid", good),
        ("zero", 0),
        ("negative", -1),
        ("float", 2.5),
        ("float", float(good)),
        ("bool", True),
        ("str", "2"),
        ("none", None),
        ("array", np.array([good])),
    ]


def _bad_callables():
    return [("int", 3), ("str", "f"), ("none", None)]


def _bad_names(good: str):
    return [("valid", good), ("unknown", "nope"), ("int", 1), ("none", None)]


@dataclasses.dataclass
class Arg:
    good: object
    kinds: list
    shaped: bool = False  # an array whose shape errors may name its partner


def batch(a, reshapes: bool = True):
    """A batch argument; ``reshapes=False`` leaves out the valid other shapes of a lone
    batch (``[1, B, D]``, ``[B + 1, D]``), which only recompile an expensive solve."""
    a = np.asarray(a, np.float64)
    kinds = _bad_arrays(a, True)
    if not reshapes:
        kinds = [kv for kv in kinds if kv[0] not in ("rank_up", "mismatch")]
    return Arg(a, kinds, True)


def array(a):
    a = np.asarray(a, np.float64)
    return Arg(a, _bad_arrays(a, False), True)


def scalar(good, lo=None, hi=None):
    return Arg(good, _bad_scalars(good, lo, hi))


def time(good=0.5):
    return scalar(good, 0.0, 1.0)


def key():
    return Arg(jr.key(0), _bad_keys())


def integer(good):
    return Arg(good, _bad_ints(good))


def fn(good):
    return Arg(good, [("valid", good), *_bad_callables()])


def name(good):
    return Arg(good, _bad_names(good))


@dataclasses.dataclass
class Spec:
    fname: str
    call: Callable
    args: dict
    examples: int = 10
    #: Per-example maths (paths, fields, divergences): NaN/inf in, NaN/inf out is allowed
    #: (the policy of ``jfm._checks``: value checks guard the entry points that take user
    #: data batches, not the maths that runs under ``vmap``). Finite in must be finite out.
    per_example: bool = False
    #: A solve that takes seconds to compile: the fast run draws only inputs that must be
    #: refused (no valid call), the valid calls run in the slow test_fuzz_valid_heavy.
    heavy: bool = False
    #: Keyword arguments drawn afresh every example, all valid (e.g. the path's schedule).
    variants: dict = dataclasses.field(default_factory=dict)
    #: Other names an argument goes by inside (e.g. a train step's batch is the loss's x1).
    aliases: dict = dataclasses.field(default_factory=dict)

    def __repr__(self):
        return self.fname


def run_spec(spec: Spec, data):
    arg = data.draw(st.sampled_from(sorted(spec.args)), label="argument")
    kinds = spec.args[arg].kinds
    if spec.heavy:
        kinds = [kv for kv in kinds if kv[0] not in VALID_KINDS] or kinds
    kind, value = data.draw(st.sampled_from(kinds), label="corruption")
    kw = {k: a.good for k, a in spec.args.items()}
    kw[arg] = value
    variant = ()
    for k, options in spec.variants.items():
        choice = data.draw(st.sampled_from(sorted(options)), label=k)
        kw[k] = options[choice]
        variant += (choice,)
    if kind == "valid":
        names = None
        # A valid value of one argument: the call must succeed, finite.
        expect(spec.fname, lambda: spec.call(**kw), None)
        return
    names = {arg, *spec.aliases.get(arg, ())}
    if kind in SHAPE_KINDS:
        names |= {k for k, a in spec.args.items() if a.shaped}
    tag = (*variant, arg, kind, _describe(value))
    propagates = spec.per_example and kind in ("nan", "inf") and arg not in SCALAR_ARGS
    expect(spec.fname, lambda: spec.call(**kw), names, tag, propagates=propagates)


#: Draws that are (or may well be) valid: a full solve.
VALID_KINDS = ("valid", "rank_down")

#: Scalar parameters are always checked finite (``check_scalar``), per-example or not.
SCALAR_ARGS = ("t", "scale", "epsilon", "bandwidth")


# -- shared objects, built once -----------------------------------------------------------

B, D = 3, 2
RNG = np.random.default_rng(0)
X0 = RNG.standard_normal((B, D))
X1 = RNG.standard_normal((B, D)) + 1.0
X = X0[0]
PATH = jfm.AffinePath(jfm.CondOT())
PATHS = {
    "CondOT": PATH,
    "Cosine": jfm.AffinePath(jfm.Cosine()),
    "Polynomial": jfm.AffinePath(jfm.Polynomial(2.0)),
    "VP": jfm.AffinePath(jfm.VP()),
    "VE": jfm.AffinePath(jfm.VE()),
}
MEANS = np.array([[-1.0, 0.0], [1.0, 0.0]])
COVS = np.stack([0.5 * np.eye(2)] * 2)
WEIGHTS = np.array([0.5, 0.5])
GMM = jfm.GaussianMixture(MEANS, COVS, WEIGHTS)
FIELD = lambda t, x, args: -x
SCORE = lambda t, x, args: -x
APPLY = lambda params, t, x, args: params * x
PARAMS = jnp.asarray(0.5)
EULER = dfx.Euler()


def _field_at(f):
    return f(jnp.asarray(0.5), jnp.asarray(X), None)


# -- specs --------------------------------------------------------------------------------


def PathSpec(fname, call, args, **kw):
    return Spec(fname, call, args, variants={"p": PATHS}, examples=15, **kw)


def _path_specs():
    specs = []
    # One spec per method; every example draws the schedule (CondOT, Cosine, Polynomial,
    # VP, VE): the checks are AffinePath's, the maths is each schedule's.
    specs += [
        PathSpec(
            "AffinePath.sample",
            lambda p, t, x0, x1: p.sample(t, x0, x1),
            {"t": time(), "x0": array(X), "x1": array(X1[0])},
        ),
        PathSpec(
            "AffinePath.target",
            lambda p, t, x0, x1, kind: p.target(t, x0, x1, kind=kind),
            {"t": time(), "x0": array(X), "x1": array(X1[0]), "kind": name("velocity")},
        ),
        PathSpec(
            "AffinePath.convert",
            lambda p, t, x, pred, src, dst: p.convert(t, x, pred, src=src, dst=dst),
            {
                "t": time(),
                "x": array(X),
                "pred": array(X1[0]),
                "src": name("x0"),
                "dst": name("velocity"),
            },
        ),
        PathSpec("AffinePath.alpha", lambda p, t: p.alpha(t), {"t": time()}),
        PathSpec("AffinePath.sigma", lambda p, t: p.sigma(t), {"t": time()}),
        PathSpec("AffinePath.d_alpha", lambda p, t: p.d_alpha(t), {"t": time()}),
        PathSpec("AffinePath.d_sigma", lambda p, t: p.d_sigma(t), {"t": time()}),
        PathSpec("AffinePath.prior_log_prob", lambda p, x: p.prior_log_prob(x), {"x": array(X)}),
        PathSpec(
            "AffinePath.sample_conditional",
            lambda p, t, x1, key: p.sample_conditional(t, x1, key=key),
            {"t": time(), "x1": array(X1[0]), "key": key()},
        ),
        PathSpec(
            "AffinePath.conditional_velocity",
            lambda p, t, x, x1: p.conditional_velocity(t, x, x1),
            {"t": time(), "x": array(X), "x1": array(X1[0])},
        ),
    ]
    specs += [
        Spec(
            "AffinePath.prior_sample",
            lambda shape, key: PATH.prior_sample(shape, key=key),
            {
                "shape": Arg(
                    (2, 2),
                    [
                        ("valid", (2, 2)),
                        ("int", 3),
                        ("float", (2.0,)),
                        ("neg", (-1, 2)),
                        ("none", None),
                    ],
                ),
                "key": key(),
            },
        ),
        Spec(
            "VP",
            lambda beta_min, beta_max: jfm.VP(beta_min, beta_max),
            {"beta_min": scalar(0.1, 0.0), "beta_max": scalar(20.0, 0.0)},
        ),
        Spec(
            "VE",
            lambda sigma_min, sigma_max: jfm.VE(sigma_min, sigma_max),
            {"sigma_min": scalar(0.01, 0.0), "sigma_max": scalar(50.0, 0.0)},
        ),
        Spec("Polynomial", lambda n: jfm.Polynomial(n), {"n": scalar(2.0, 0.0)}),
        Spec(
            "AffinePath",
            lambda schedule, event_shape: jfm.AffinePath(schedule, event_shape),
            {
                "schedule": Arg(
                    jfm.CondOT(),
                    [("valid", jfm.CondOT()), ("str", "condot"), ("none", None), ("fn", FIELD)],
                ),
                "event_shape": Arg(
                    None,
                    [
                        ("valid", None),
                        ("valid", (2,)),
                        ("int", 2),
                        ("neg", (-1,)),
                        ("float", (2.0,)),
                        ("str", "2"),
                    ],
                ),
            },
        ),
    ]
    return specs


def _gmm_specs():
    u = GMM.velocity_field(PATH)
    s = GMM.score_field(PATH)
    return [
        Spec(
            "GaussianMixture",
            lambda means, covs, weights: jfm.GaussianMixture(means, covs, weights),
            {"means": array(MEANS), "covs": array(COVS), "weights": array(WEIGHTS)},
            examples=15,
        ),
        Spec("GaussianMixture.log_prob", lambda x: GMM.log_prob(x), {"x": array(X)}),
        Spec(
            "GaussianMixture.sample",
            lambda n, key: GMM.sample(n, key=key),
            {"n": integer(3), "key": key()},
        ),
        Spec(
            "GaussianMixture.velocity_field",
            lambda t, x, path: GMM.velocity_field(path)(t, x, None),
            {
                "t": time(),
                "x": array(X),
                "path": Arg(PATH, [("valid", PATH), ("str", "condot"), ("none", None)]),
            },
        ),
        Spec(
            "GaussianMixture.score_field",
            lambda t, x: s(t, x, None),
            {"t": Arg(0.5, _bad_scalars(0.5, 0.0, 1.0)[:-2]), "x": array(X)},
        ),
        Spec("MixtureField.velocity", lambda t, x: u(t, x, None), {"t": time(), "x": array(X)}),
    ]


def _sampler_specs():
    return [
        Spec(
            "sample_ode",
            lambda field, x0, steps, solver, t0, t1: (
                jfm.sample_ode(field, x0, solver=solver, steps=steps, t0=t0, t1=t1).x1
            ),
            {
                "field": fn(FIELD),
                "x0": batch(X0),
                "steps": integer(2),
                "solver": Arg(EULER, [("valid", EULER), ("str", "euler"), ("none", None)]),
                "t0": time(0.0),
                "t1": time(1.0),
            },
            examples=10,
        ),
        Spec(
            "sample_sde",
            lambda velocity, score, x0, diffusion, key, steps: (
                jfm.sample_sde(
                    velocity, score, x0, diffusion=diffusion, key=key, solver=EULER, steps=steps
                ).x1
            ),
            {
                "velocity": fn(FIELD),
                "score": fn(SCORE),
                "x0": batch(X0, reshapes=False),
                "diffusion": scalar(0.5, 0.0),
                "key": key(),
                "steps": integer(2),
            },
            examples=20,
            heavy=True,
        ),
        Spec(
            "sample_pc",
            lambda velocity, score, x0, diffusion, key, steps, snr: (
                jfm.sample_pc(
                    velocity, score, x0, diffusion=diffusion, key=key, steps=steps, snr=snr
                ).x1
            ),
            {
                "velocity": fn(FIELD),
                "score": fn(SCORE),
                "x0": batch(X0, reshapes=False),
                "diffusion": scalar(0.5, 0.0),
                "key": key(),
                "steps": integer(2),
                "snr": scalar(0.16, 0.0),
            },
            examples=20,
            heavy=True,
        ),
        Spec(
            "langevin",
            lambda score, x0, key, steps, step_size: (
                jfm.langevin(score, x0, key=key, steps=steps, step_size=step_size).x1
            ),
            {
                "score": fn(SCORE),
                "x0": batch(X0, reshapes=False),
                "key": key(),
                "steps": integer(2),
                "step_size": scalar(0.01, 0.0),
            },
            examples=20,
            heavy=True,
        ),
        Spec(
            "log_prob",
            lambda field, x, steps: jfm.log_prob(field, x, solver=EULER, steps=steps, path=PATH)[0],
            {"field": fn(FIELD), "x": batch(X1, reshapes=False), "steps": integer(2)},
            examples=10,
            heavy=True,
        ),
        Spec(
            "bits_per_dim",
            lambda x_int, bits, key: jfm.bits_per_dim(
                lambda x: -0.5 * jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1),
                x_int,
                bits=bits,
                key=key,
            ),
            {
                "x_int": Arg(
                    np.array([[0, 255], [3, 4]]),
                    [
                        ("valid", np.array([[0, 255], [3, 4]])),
                        ("float", np.array([[0.5, 1.0]])),
                        ("range", np.array([[0, 256]])),
                        ("negative", np.array([[-1, 2]])),
                        ("scalar", 3),
                        ("empty", np.zeros((0, 2), int)),
                        ("str", "x"),
                        ("none", None),
                        ("bool", np.array([[True]])),
                    ],
                ),
                "bits": integer(8),
                "key": key(),
            },
        ),
        Spec(
            "divergence_exact",
            lambda f, t, x: jfm.divergence_exact(f, t, x, None),
            {"f": fn(FIELD), "t": time(), "x": array(X)},
        ),
        Spec(
            "divergence_hutchinson",
            lambda f, t, x, key, probes: jfm.divergence_hutchinson(
                f, t, x, None, key=key, probes=probes
            ),
            {"f": fn(FIELD), "t": time(), "x": array(X), "key": key(), "probes": integer(1)},
        ),
    ]


def _loss_specs():
    specs = []
    for lname, loss, kw in [
        ("cfm_loss", jfm.cfm_loss, {}),
        ("dsm_loss", jfm.dsm_loss, {}),
        ("eps_loss", jfm.eps_loss, {}),
        ("x1_loss", jfm.x1_loss, {}),
    ]:
        specs.append(
            Spec(
                lname,
                lambda apply, x1, key, x0, t, loss=loss: loss(
                    apply, PARAMS, x1, path=PATH, key=key, x0=x0, t=t
                ),
                {
                    "apply": fn(APPLY),
                    "x1": batch(X1),
                    "key": key(),
                    "x0": batch(X0),
                    "t": batch(np.array([0.2, 0.5, 0.7])),
                },
                examples=12,
            )
        )
    specs.append(
        Spec(
            "empirical_field_loss",
            lambda apply, x1, key, t: jfm.empirical_field_loss(
                APPLY if apply is None else apply, PARAMS, x1, path=PATH, key=key, t=t
            ),
            {
                "apply": fn(APPLY),
                "x1": batch(X1),
                "key": key(),
                "t": batch(np.array([0.2, 0.5, 0.7])),
            },
            heavy=True,
        )
    )
    specs += [
        Spec(
            "uniform_time",
            lambda n, key: jfm.uniform_time(n, key=key),
            {"n": integer(3), "key": key()},
        ),
        Spec(
            "logit_normal_time",
            lambda n, key, mean, std: jfm.logit_normal_time(n, key=key, mean=mean, std=std),
            {"n": integer(3), "key": key(), "mean": scalar(0.0), "std": scalar(1.0, 0.0)},
        ),
    ]
    return specs


def _coupling_specs():
    labels = np.array([0, 1, 0])
    return [
        Spec(
            "exact_ot_coupling",
            lambda x0, x1: jfm.exact_ot_coupling(x0, x1),
            {"x0": batch(X0), "x1": batch(X1)},
            examples=8,
        ),
        Spec(
            "sinkhorn_coupling",
            lambda x0, x1, key, epsilon: jfm.sinkhorn_coupling(x0, x1, key=key, epsilon=epsilon),
            {"x0": batch(X0), "x1": batch(X1), "key": key(), "epsilon": scalar(0.1, 0.0)},
            examples=15,
            heavy=True,
        ),
        Spec(
            "independent_coupling",
            lambda x0, x1, key: jfm.independent_coupling(x0, x1, key=key),
            {"x0": batch(X0), "x1": batch(X1), "key": key()},
        ),
        Spec(
            "label_ot_coupling",
            lambda labels, x0, x1: jfm.label_ot_coupling(labels)(x0, x1),
            {
                "labels": Arg(
                    labels,
                    [
                        ("valid", labels),
                        ("float", labels.astype(float)),
                        ("rank", labels[None]),
                        ("mismatch", labels[:2]),
                        ("str", "x"),
                        ("none", None),
                        ("scalar", 1),
                    ],
                    True,
                ),
                "x0": batch(X0),
                "x1": batch(X1),
            },
        ),
    ]


def _grid_specs():
    return [
        Spec(
            "time_grid",
            lambda kind, steps, t0, t1: jfm.time_grid(kind, steps, path=PATHS["VP"], t0=t0, t1=t1),
            {"kind": name("uniform"), "steps": integer(3), "t0": time(0.0), "t1": time(1.0)},
        ),
        Spec(
            "log_snr",
            lambda path, t: jfm.log_snr(path, t),
            {
                "path": Arg(PATHS["VP"], [("valid", PATHS["VP"]), ("str", "vp"), ("none", None)]),
                "t": time(),
            },
        ),
        Spec(
            "time_at_log_snr",
            lambda lam, t0, t1: jfm.time_at_log_snr(PATHS["VP"], lam, t0=t0, t1=t1),
            {"lam": scalar(0.0), "t0": time(0.0), "t1": time(1.0)},
        ),
        Spec(
            "DPMSolverPP",
            lambda path, order: jfm.DPMSolverPP(path, order),
            {
                "path": Arg(PATH, [("valid", PATH), ("str", "p"), ("none", None)]),
                "order": integer(2),
            },
        ),
        Spec(
            "DPMSolverPP2S",
            lambda path, pred: jfm.DPMSolverPP2S(path, pred=pred),
            {
                "path": Arg(PATH, [("valid", PATH), ("str", "p"), ("none", None)]),
                "pred": name("velocity"),
            },
        ),
        Spec(
            "UniPC",
            lambda order, variant: jfm.UniPC(PATH, order, variant=variant),
            {"order": integer(2), "variant": name("bh2")},
        ),
        Spec(
            "DEIS",
            lambda order, pred: jfm.DEIS(PATH, order, pred=pred),
            {"order": integer(2), "pred": name("velocity")},
        ),
        Spec(
            "EDM",
            lambda gamma, s_tmin, s_noise: jfm.EDM(
                PATH, gamma=gamma, s_tmin=s_tmin, s_noise=s_noise
            ),
            {"gamma": scalar(0.0, 0.0), "s_tmin": scalar(0.0, 0.0), "s_noise": scalar(1.0, 0.0)},
        ),
    ]


def _field_specs():
    cond = lambda t, x, args: -x * (1.0 + 0.0 * jnp.asarray(args, x.dtype))
    return [
        Spec(
            "classifier_free_guidance",
            lambda field, scale, null_label: _field_at_label(
                jfm.classifier_free_guidance(field, scale, null_label=null_label)
            ),
            {
                "field": fn(cond),
                "scale": scalar(2.0),
                "null_label": Arg(
                    2,
                    [
                        ("valid", 2),
                        ("float", 2.5),
                        ("str", "x"),
                        ("none", None),
                        ("vector", np.array([1, 2])),
                    ],
                ),
            },
        ),
        Spec(
            "density_guidance",
            lambda field, scale, key: _field_at(jfm.density_guidance(field, scale, key=key)),
            {"field": fn(FIELD), "scale": scalar(0.5), "key": key()},
        ),
        Spec(
            "field_from_model",
            lambda apply, kind: _field_at(
                jfm.field_from_model(apply, PARAMS, path=PATH, kind=kind)
            ),
            {"apply": fn(APPLY), "kind": name("velocity")},
        ),
    ]


def _field_at_label(f):
    return f(jnp.asarray(0.5), jnp.asarray(X), jnp.asarray(1))


def _train_specs():
    opt = optax.sgd(1e-2)
    params = {"w": jnp.asarray(0.5)}
    apply = lambda p, t, x, args: p["w"] * x
    loss_fn = lambda apply, p, x1, *, key: jfm.cfm_loss(apply, p, x1, path=PATH, key=key)
    state = jfm.init_train_state(params, opt)
    step = jfm.make_train_step(apply, opt, loss_fn)
    return [
        Spec(
            "init_train_state",
            lambda params, optimizer: jfm.init_train_state(params, optimizer),
            {
                "params": Arg(params, [("valid", params), ("nan", {"w": jnp.asarray(jnp.nan)})]),
                "optimizer": Arg(
                    opt, [("valid", opt), ("str", "sgd"), ("none", None), ("fn", FIELD)]
                ),
            },
        ),
        Spec(
            "make_train_step",
            lambda apply, optimizer, loss_fn: jfm.make_train_step(apply, optimizer, loss_fn),
            {
                "apply": fn(apply),
                "optimizer": Arg(opt, [("valid", opt), ("str", "sgd"), ("none", None)]),
                "loss_fn": fn(loss_fn),
            },
        ),
        Spec(
            "train_step",
            lambda batch, key: step(state, batch, key=key)[1],
            {"batch": batch_arg(X1), "key": key()},
            aliases={"batch": ("x1",)},  # the loss function's data argument
            examples=8,
            heavy=True,
        ),
        Spec(
            "check_continuity",
            lambda path, x1, key, n: jfm.check_continuity(path, x1, key=key, n=n).relative,
            {
                "path": Arg(PATH, [("valid", PATH), ("str", "p"), ("none", None)]),
                "x1": batch(X1),
                "key": key(),
                "n": integer(2),
            },
            examples=12,
            heavy=True,
        ),
    ]


def batch_arg(a):
    return batch(a)


def _data_specs():
    specs = []
    for dname in (
        "checkerboard",
        "circles",
        "eight_gaussians",
        "moons",
        "s_curve",
        "spirals",
        "swiss_roll",
    ):
        f = getattr(jfm.data, dname)
        specs.append(
            Spec(
                f"data.{dname}",
                lambda n, key, f=f: f(n, key=key),
                {"n": integer(3), "key": key()},
                examples=8,
            )
        )
    specs.append(
        Spec(
            "data.sample",
            lambda name, n, key: jfm.data.sample(name, n, key=key),
            {"name": name("moons"), "n": integer(3), "key": key()},
        )
    )
    specs.append(
        Spec(
            "data.moons(noise)",
            lambda noise: jfm.data.moons(3, key=jr.key(0), noise=noise),
            {"noise": scalar(0.05, 0.0)},
            examples=10,
        )
    )
    img = np.array([[0, 128], [255, 3]], np.uint8)
    specs.append(
        Spec(
            "data.to_unit_range",
            lambda images: jfm.data.to_unit_range(images),
            {
                "images": Arg(
                    img,
                    [
                        ("valid", img),
                        ("float", img.astype(float)),
                        ("int", img.astype(np.int32)),
                        ("str", "x"),
                        ("none", None),
                        ("list", img.tolist()),
                    ],
                )
            },
        )
    )
    specs.append(
        Spec(
            "data.from_unit_range",
            lambda images: jfm.data.from_unit_range(images),
            {"images": array(np.array([[0.0, 0.5], [1.0, 0.25]]))},
        )
    )
    return specs


def _metric_specs():
    xs = np.stack([X0, 0.5 * (X0 + X1), X1])
    ts = np.array([0.0, 0.5, 1.0])
    return [
        Spec(
            "metrics.energy_distance",
            lambda x, y: jfm.metrics.energy_distance(x, y),
            {"x": batch(X0), "y": batch(X1)},
        ),
        Spec(
            "metrics.mmd",
            lambda x, y, bandwidth: jfm.metrics.mmd(x, y, bandwidth=bandwidth),
            {"x": batch(X0), "y": batch(X1), "bandwidth": scalar(1.0, 0.0)},
        ),
        Spec("metrics.w2", lambda x, y: jfm.metrics.w2(x, y), {"x": batch(X0), "y": batch(X1)}),
        Spec(
            "metrics.path_energy",
            lambda xs, ts: jfm.metrics.path_energy(xs, ts),
            {"xs": batch(xs), "ts": batch(ts)},
        ),
        Spec(
            "metrics.straightness",
            lambda xs, ts: jfm.metrics.straightness(xs, ts),
            {"xs": batch(xs), "ts": batch(ts)},
        ),
        Spec(
            "metrics.normalized_path_energy",
            lambda xs, ts, x1: jfm.metrics.normalized_path_energy(xs, ts, x1),
            {"xs": batch(xs), "ts": batch(ts), "x1": batch(X1)},
        ),
    ]


SPECS = [
    *_path_specs(),
    *_gmm_specs(),
    *_sampler_specs(),
    *_loss_specs(),
    *_coupling_specs(),
    *_grid_specs(),
    *_field_specs(),
    *_train_specs(),
    *_data_specs(),
    *_metric_specs(),
]

_PER_EXAMPLE = (
    *(
        f"AffinePath.{m}"
        for m in (
            "sample",
            "target",
            "convert",
            "prior_log_prob",
            "sample_conditional",
            "conditional_velocity",
        )
    ),
    "GaussianMixture.log_prob",
    "GaussianMixture.velocity_field",
    "GaussianMixture.score_field",
    "MixtureField.velocity",
    "divergence_exact",
    "divergence_hutchinson",
)
for _spec in SPECS:
    _spec.per_example = _spec.fname in _PER_EXAMPLE


def _valid_calls(specs, all_variants: bool = True):
    for spec in specs:
        kw = {k: a.good for k, a in spec.args.items()}
        combos = itertools.product(*(v.values() for v in spec.variants.values()))
        for combo in combos if all_variants else itertools.islice(combos, 1):
            kw.update(zip(spec.variants, combo))
            expect(spec.fname, lambda: spec.call(**kw), None)


@pytest.mark.slow
def test_fuzz_valid_defaults():
    """Every spec's all-good call succeeds with a finite result (the baseline of the fuzz).

    The first variant only (the CondOT path): the fuzz draws reach the others.
    """
    _valid_calls([spec for spec in SPECS if not spec.heavy], all_variants=False)


@pytest.mark.slow
def test_fuzz_valid_heavy():
    """The all-good calls of every spec in every variant (the schedules), and the valid
    and rank-down draws of the specs whose solve takes seconds to compile."""
    heavy = [spec for spec in SPECS if spec.heavy]
    _valid_calls(SPECS)  # every variant of every spec
    for spec in heavy:
        for arg, a in spec.args.items():
            for kind, value in a.kinds:
                if kind in VALID_KINDS:
                    kw = {k: b.good for k, b in spec.args.items()}
                    kw[arg] = value
                    shaped = {k for k, b in spec.args.items() if b.shaped}
                    names = None if kind == "valid" else {arg} | shaped
                    expect(spec.fname, lambda: spec.call(**kw), names)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_fuzz(spec):
    @settings(SETTINGS, max_examples=spec.examples)
    @given(st.data())
    def inner(data):
        run_spec(spec, data)

    inner()
