"""Parameter sets and tolerance helpers shared by the tests."""

import contextlib

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp

import jfm

#: One instance of every built-in schedule (wrapped in AffinePath by the tests).
ALL_SCHEDULES = [
    jfm.CondOT(),
    jfm.Cosine(),
    jfm.Polynomial(2.0),
    jfm.VP(0.1, 20.0),
    jfm.VE(0.01, 50.0),
]
ALL_PATHS = [jfm.AffinePath(s) for s in ALL_SCHEDULES]
PATH_IDS = ["condot", "cosine", "poly2", "vp", "ve"]

#: Fixed-step solvers with their classical order.
FIXED_ODE_SOLVERS = [
    (dfx.Euler(), 1),
    (dfx.Heun(), 2),
    (dfx.Midpoint(), 2),
    (dfx.Ralston(), 2),
    (dfx.Bosh3(), 3),
    (dfx.Tsit5(), 5),
]
ADAPTIVE_ODE_SOLVERS = [dfx.Heun(), dfx.Bosh3(), dfx.Dopri5(), dfx.Tsit5(), dfx.Dopri8()]

DTYPES = [jnp.float32, jnp.float64]


def on_gpu() -> bool:
    return jax.default_backend() != "cpu"


def tol(dtype, f64: float, f32: float) -> float:
    """Pick a tolerance by dtype (one place to loosen for GPUs' reduced precision)."""
    scale = 10.0 if on_gpu() else 1.0
    return scale * (f64 if jnp.dtype(dtype) == jnp.float64 else f32)


@contextlib.contextmanager
def raises_arg(exc, name: str, msg: str = ""):
    """``pytest.raises(exc)`` for a bad argument ``name``, checking the exact type.

    The exception must be exactly ``exc`` with a message naming `name` (and matching
    ``msg``): jfm's own checks, which users meet (the suite runs without a type-check
    hook). One allowance, for runs with jaxtyping's import hook (``--jaxtyping-packages``):
    an annotation violation fires as jaxtyping's ``TypeCheckError`` (a ``TypeError``
    subclass) naming ``parameter 'name'``; it passes only where a ``TypeError`` is
    expected.
    """
    import pytest
    from jaxtyping import TypeCheckError

    pattern = f"`{name}`{'.*' + msg if msg else ''}"
    if exc is TypeError:
        pattern += f"|parameter '{name}'"
    with pytest.raises(exc, match=pattern) as info:
        yield info
    got = type(info.value)
    if got is not exc and not (exc is TypeError and issubclass(got, TypeCheckError)):
        raise AssertionError(f"expected exactly {exc.__name__}, got {got.__name__}: {info.value}")


@contextlib.contextmanager
def raises_exact(exc, match: str):
    """``pytest.raises(exc, match=match)`` that also checks the EXACT exception type (for
    messages that name an option rather than one backticked argument, e.g. the step
    control's "pass exactly one of `steps`=N, `ts`=...")."""
    import pytest

    with pytest.raises(exc, match=match) as info:
        yield info
    if type(info.value) is not exc:
        raise AssertionError(
            f"expected exactly {exc.__name__}, got {type(info.value).__name__}: {info.value}"
        )


class CallCounter:
    """Counts a field's evaluations with a host callback (``jax.debug.callback``).

    ``wrap(field)`` returns an ``eqx.Module`` that ticks once per (batched) call: inside a
    joint solve the callback has no batched operand, so it fires once per batched field
    call, i.e. once per per-example evaluation. ``count(fn)`` runs ``fn`` and returns
    ``(result, calls)`` after the callbacks have landed. Attributes the sampler reads from
    a field (``jump_ts``) are forwarded.
    """

    def __init__(self):
        self.calls = 0

    def tick(self):
        self.calls += 1

    def wrap(self, field):
        return _Counted(field, self)

    def count(self, fn, *a, **kw):
        self.calls = 0
        out = fn(*a, **kw)
        jax.block_until_ready(out)
        jax.effects_barrier()
        return out, self.calls


class _Counted(eqx.Module):
    inner: object
    counter: CallCounter = eqx.field(static=True)

    @property
    def jump_ts(self):
        return getattr(self.inner, "jump_ts", None)

    def __call__(self, t, x, args):
        jax.debug.callback(self.counter.tick)
        return self.inner(t, x, args)
