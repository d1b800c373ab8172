r"""Few-NFE solvers for affine paths, written as diffrax solvers.

For an affine path ``x_t = alpha_t x1 + sigma_t x0`` the probability-flow ODE, in the
log-SNR ``lambda = log(alpha / sigma)`` and the data prediction
``D(x, t) = E[x1 | x_t = x]``, has the exact solution

.. math::
    x_t = \frac{\sigma_t}{\sigma_s} x_s
          + \sigma_t \int_{\lambda_s}^{\lambda_t} e^{\lambda} D\, d\lambda ,

whose linear part the exponential integrators (DDIM, DPM-Solver++, UniPC, DEIS) take
exactly, approximating only ``D`` (or the noise prediction ``eps``) by polynomials through
past evaluations. EDM's sampler integrates the same ODE in Karras et al.'s variables
``x / alpha`` against ``rho = sigma / alpha = exp(-lambda)``, where it reads
``d(x / alpha) / d rho = eps``.

Each solver holds the :class:`jfm.AffinePath` and the parametrization ``pred`` of the
field it is given (``"velocity"`` by default: the field of :func:`jfm.sample_ode`), and
converts every evaluation with ``path.convert``: one field call per evaluation. They take
fixed steps (``steps=N`` or a grid ``ts=``, e.g. :func:`jfm.time_grid`) in either batch
mode of the sampling core, count their evaluations exactly in their state, and report
through :class:`jfm.Solution` like every other solver.

Conventions shared by all of them, which fix the first and the last step:

- **Warm-up.** A multistep method of order ``k`` uses the evaluations it has: its first
  step is first order (DDIM), its ``j``-th step of order ``min(k, j)``. A step from a
  time where ``alpha = 0`` (``lambda = -inf``, the noise end of CondOT or cosine) is a
  DDIM step ``x_t = alpha_t D + sigma_t eps``, and that evaluation is not used as a
  history point (it sits at an infinite log-SNR distance), so the warm-up restarts after
  it.
- **The last step.** A step that ends where ``sigma = 0`` (``t = 1`` on CondOT, cosine
  and VP) is the denoising step ``x_1 = alpha_1 D(x_s, s)``: first order whatever the
  solver, and no evaluation at ``t = 1`` (where the velocity of VP is singular). diffusers
  does the same with ``final_sigmas_type="zero"``; with ``lower_order_final=True`` and
  fewer than 15 steps it also lowers the order of the last one or two steps before it,
  which jfm does not.
- **Global order.** A ``k``-th order multistep method started by lower-order steps keeps
  order ``k`` only if the start is accurate enough: with DDIM as the first step
  (local error ``O(h^2)``) the third-order methods converge at order 2 on a uniform
  grid, and at order 3 when the first step is ``O(h^{3/2})``. The tests measure both.
"""

import math
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._checks import check_name, check_parametrization
from .._paths import AffinePath
from .base import AbstractCountedSolver
from .grids import _invert

_Interp = dfx.LocalLinearInterpolation


def _ode_term(terms):
    return terms.terms[0] if isinstance(terms, dfx.MultiTerm) else terms


class FewStepState(eqx.Module):
    """The solver state: past evaluations (newest first) and the evaluation count.

    ``ms [K, *y]`` the stored predictions, ``ts [K]`` their times, ``count`` how many of
    them are usable (``0 .. K``), ``nfe`` the field evaluations so far; for UniPC ``last``
    the previous corrected point and ``prev_order`` the order of the previous step.
    """

    ms: Array
    ts: Float[Array, " K"]
    count: Int[Array, ""]
    nfe: Int[Array, ""]
    last: Array | None = None
    prev_order: Int[Array, ""] | None = None


class AbstractFlowSolver(AbstractCountedSolver):
    """A fixed-step solver of an affine path's probability-flow ODE in its data form.

    Subclasses implement ``step``; this base converts the field's output (parametrization
    ``pred``) into the data and noise predictions with ``path.convert``, keeps the
    history and counts the evaluations in the solver state.
    """

    path: AffinePath
    pred: str = eqx.field(static=True, default="velocity", kw_only=True)

    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar = _Interp
    counts_in_state: ClassVar[bool] = True

    def __check_init__(self):
        if not isinstance(self.path, AffinePath):
            raise TypeError(
                f"`path` must be a jfm.AffinePath (the solver integrates in its log-SNR), "
                f"e.g. jfm.AffinePath(jfm.VP()); got {type(self.path).__name__}."
            )
        check_parametrization(self.pred, "pred")

    # -- what the core reads ------------------------------------------------------------

    @property
    def stochastic(self) -> bool:
        """Whether the solver needs Brownian noise (a ``key``)."""
        return False

    def nfe_from_state(self, solver_state: FewStepState) -> Int[Array, ""]:
        return solver_state.nfe

    def _history_size(self) -> int:
        return 0

    def init(self, terms, t0, t1, y0, args):
        k = self._history_size()
        dtype = jnp.result_type(y0)
        zero = jnp.array(0, jnp.int32)
        return FewStepState(
            jnp.zeros((k, *jnp.shape(y0)), dtype), jnp.zeros((k,), dtype), zero, zero
        )

    def func(self, terms, t0, y0, args):
        out = _ode_term(terms).vf(t0, y0, args)
        return self.path.convert(t0, y0, out, src=self.pred, dst="velocity")

    # -- shared pieces ------------------------------------------------------------------

    def _coeffs(self, t):
        """``(alpha, sigma, lambda)`` at ``t``."""
        sch = self.path.schedule
        a, s = sch.alpha(t), sch.sigma(t)
        return a, s, jnp.log(a) - jnp.log(s)

    def _lam(self, t):
        return self._coeffs(t)[2]

    def _predict(self, terms, t, y, args):
        """``(D, eps)``: data and noise predictions at ``(t, y)`` from ONE field call."""
        out = _ode_term(terms).vf(t, y, args)
        d = self.path.convert(t, y, out, src=self.pred, dst="x1")
        e = self.path.convert(t, y, out, src=self.pred, dst="x0")
        return d.astype(y.dtype), e.astype(y.dtype)

    def _push(self, st: FewStepState, m, t, n: int | Array = 1, **extra) -> FewStepState:
        """Store ``(m, t)`` as the newest history point (usable where ``lambda(t)`` is
        finite) and count ``n`` evaluations."""
        k = st.ms.shape[0]
        ms, ts, count = st.ms, st.ts, st.count
        if k:
            ms = jnp.concatenate([m[None].astype(ms.dtype), ms[:-1]])
            ts = jnp.concatenate([jnp.asarray(t, ts.dtype)[None], ts[:-1]])
            count = jnp.where(jnp.isfinite(self._lam(t)), jnp.minimum(count + 1, k), 0)
        fields = dict(last=st.last, prev_order=st.prev_order) | extra
        nfe = st.nfe + jnp.asarray(n, jnp.int32)
        return FewStepState(ms, ts, count.astype(jnp.int32), nfe, **fields)


def _select(order, candidates):
    """``candidates[order - 1]`` for a traced ``order`` (1-based)."""
    out = candidates[0]
    for j, c in enumerate(candidates[1:], start=2):
        out = jnp.where(order >= j, c, out)
    return out


def _safe(x, ok, fill=1.0):
    """``x`` where ``ok``, else ``fill``: keeps unused branches (and their gradients) finite."""
    return jnp.where(ok, x, fill)


def _done(y0, y1, st):
    # The state keeps the dtype of y (float32 samples with x64 on: the path's coefficients
    # may be float64).
    y1 = y1.astype(jnp.result_type(y0))
    if st.last is not None:
        st = eqx.tree_at(lambda s: s.last, st, st.last.astype(y1.dtype))
    return y1, None, dict(y0=y0, y1=y1), st, dfx.RESULTS.successful


# -- DPM-Solver++ ---------------------------------------------------------------------------


class DPMSolverPP(AbstractFlowSolver):
    r"""DPM-Solver++ (multistep, orders 1-3; Lu et al. 2022): one evaluation per step.

    With ``h = lambda_t - lambda_s``, the data predictions ``D_0, D_1, D_2`` at the last
    three points and ``r_i`` their log-SNR gaps relative to ``h``:

    - order 1 (DDIM): ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D_0``;
    - order 2 ("2M", the midpoint form): ``... - alpha_t (e^{-h} - 1) / 2 * (D_0 - D_1) / r_0``;
    - order 3 ("3M"): with the divided differences ``D_1 ~ h D'`` and ``D_2 ~ h^2 D'' / 2``
      of the last three evaluations, ``... + alpha_t ((e^{-h} - 1) / h + 1) D_1 + alpha_t
      (1 - 2 (e^{-h} - 1 + h) / h^2) D_2``, the third-order Taylor coefficients. (The
      reference DPM-Solver code and diffusers weight ``D_2`` by ``1/2 - (e^{-h} - 1 + h) /
      h^2``, half of that, which makes their 3M a second-order method; the tests measure
      both.)

    The first steps warm up at lower order and the step to ``sigma = 0`` is the denoising
    step (see the module notes). Order 1 is DDIM, exact for any grid when ``D`` is
    constant (a point-mass data distribution).

    Args:
        path: the :class:`jfm.AffinePath` of the model.
        order: 1, 2 or 3.
        pred: the parametrization of the field (default ``"velocity"``).
    """

    order_: int = eqx.field(static=True, default=2)

    def __init__(self, path: AffinePath, order: int = 2, *, pred: str = "velocity"):
        self.path = path
        self.pred = pred
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"`order` must be 1, 2 or 3; got {order!r}.")
        self.order_ = order

    @property
    def evaluations_per_step(self) -> int:
        return 1

    def order(self, terms):
        return self.order_

    def _history_size(self):
        return self.order_ - 1

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        st = solver_state
        d0, _ = self._predict(terms, t0, y0, args)
        a_s, s_s, lam_s = self._coeffs(t0)
        a_t, s_t, lam_t = self._coeffs(t1)
        h = lam_t - lam_s
        ok = jnp.isfinite(h)
        hs = _safe(h, ok)
        emh = jnp.expm1(-h)  # e^{-h} - 1; -1 at an infinite end
        x1 = (s_t / s_s) * y0 - (a_t * emh) * d0
        cands = [x1]
        k = jnp.where(ok, jnp.minimum(self.order_, st.count + 1), 1)
        lams = [self._lam(t) for t in st.ts]
        if self.order_ >= 2:
            r0 = _safe((lam_s - lams[0]) / hs, ok & (st.count >= 1))
            d1_0 = (d0 - st.ms[0]) / r0
            cands.append(x1 - 0.5 * (a_t * emh) * d1_0)
        if self.order_ >= 3:
            r1 = _safe((lams[0] - lams[1]) / hs, ok & (st.count >= 2))
            d1_1 = (st.ms[0] - st.ms[1]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            cands.append(
                x1 + (a_t * (emh / hs + 1.0)) * d1 + (a_t * (1.0 - 2.0 * (emh + hs) / hs**2)) * d2
            )
        y1 = _select(k, cands)
        return _done(y0, y1, self._push(st, d0, t0))


class DPMSolverPP2S(AbstractFlowSolver):
    r"""DPM-Solver++(2S), the second-order singlestep method: two evaluations per step.

    From ``s`` to ``t`` with ``h = lambda_t - lambda_s``: a DDIM step to the log-SNR
    midpoint ``u`` (``lambda_u = lambda_s + h / 2``), then
    ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D(x_u, u)``
    (the ``r = 1/2`` member of the family, as k-diffusion's ``sample_dpmpp_2s_ancestral``
    with ``eta = 0``). A step to ``sigma = 0`` is the one-evaluation denoising step; a step
    from ``alpha = 0`` (infinite ``h``) takes its midpoint halfway in ``t`` and two DDIM
    half-steps.

    Args:
        path: the :class:`jfm.AffinePath` of the model.
        pred: the parametrization of the field (default ``"velocity"``).
    """

    @property
    def evaluations_per_step(self) -> int:
        return 2

    def order(self, terms):
        return 2

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        d0, _ = self._predict(terms, t0, y0, args)
        a_s, s_s, lam_s = self._coeffs(t0)
        a_t, s_t, lam_t = self._coeffs(t1)
        h = lam_t - lam_s
        emh = jnp.expm1(-h)
        final = s_t == 0
        start = ~jnp.isfinite(lam_s)

        def denoise(_):
            return (s_t / s_s) * y0 - (a_t * emh) * d0

        def two_stage(_):
            lam_u = lam_s + 0.5 * _safe(h, jnp.isfinite(h))
            lo, hi = jnp.minimum(t0, t1), jnp.maximum(t0, t1)
            t_mid = _invert(self._lam, lam_u, lo, hi)
            t_u = jnp.where(start, 0.5 * (t0 + t1), t_mid)
            a_u, s_u, lam_u = self._coeffs(t_u)
            x_u = (s_u / s_s) * y0 - (a_u * jnp.expm1(-(lam_u - lam_s))) * d0
            d_u, _ = self._predict(terms, t_u, x_u, args)
            from_s = (s_t / s_s) * y0 - (a_t * emh) * d_u
            from_u = (s_t / s_u) * x_u - (a_t * jnp.expm1(-(lam_t - lam_u))) * d_u
            return jnp.where(start, from_u, from_s)

        y1 = lax.cond(final, denoise, two_stage, None)
        st = solver_state
        return _done(y0, y1, self._push(st, d0, t0, jnp.where(final, 1, 2)))


# -- UniPC -----------------------------------------------------------------------------------


def _solve_small(a, b):
    """``a^{-1} b`` for a ``2 x 2`` or ``3 x 3`` system by Cramer's rule (compiles to a few
    scalar operations, where ``jnp.linalg.solve`` compiles an LU factorisation)."""
    n = b.shape[0]
    if n == 1:
        return b / a[0, 0]
    d = _det(a)
    cols = [jnp.stack([b if j == i else a[:, j] for j in range(n)], axis=1) for i in range(n)]
    return jnp.stack([_det(c) / d for c in cols])


def _det(a):
    if a.shape[0] == 2:
        return a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    return (
        a[0, 0] * (a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1])
        - a[0, 1] * (a[1, 0] * a[2, 2] - a[1, 2] * a[2, 0])
        + a[0, 2] * (a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0])
    )


def _unipc_rhs(hh, variant: str, p: int):
    """UniPC's ``B(h)`` and right-hand side ``b [p]`` (data form, ``hh = -h``)."""
    h_phi_1 = jnp.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k = h_phi_1 / hh - 1.0
    fact = 1
    b = []
    for i in range(1, p + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return b_h, jnp.stack(b)


class UniPC(AbstractFlowSolver):
    r"""UniPC (Zhao et al. 2023): the UniP-``p`` predictor with the UniC corrector.

    One evaluation per step. The evaluation at the predicted point ``x_k`` first corrects
    ``x_k`` with UniC-``p`` (which uses that evaluation, so the corrected method has order
    ``p + 1``); UniP-``p`` then starts from the corrected point. With ``h`` the log-SNR
    step, ``hh = -h`` and ``B(h)`` = ``hh`` (``variant="bh1"``) or ``e^{hh} - 1``
    (``"bh2"``, diffusers' default), both updates read

    ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D_s - alpha_t B(h) sum_k rho_k
    (D_k - D_s) / r_k``,

    with ``rho`` from the order conditions ``R rho = b(h)`` of the paper (``rho = 1/2``
    for UniP-2 and UniC-1). The corrector is not applied after the last step (no
    evaluation is made there), as in diffusers: ``x1`` and the states saved at the grid
    times are predicted points. Warm-up, the step to ``sigma = 0`` and the restart after
    ``alpha = 0`` follow the module notes; after a step from ``alpha = 0`` the corrector is
    UniC-1 with ``B(h) = -1`` (the limit of ``"bh2"`` as ``h -> inf``, which diffusers
    also computes), for either variant.

    Args:
        path: the :class:`jfm.AffinePath` of the model.
        order: the predictor order ``p``: 1, 2 or 3.
        variant: ``"bh1"`` or ``"bh2"``.
        corrector: apply UniC (order ``p + 1``) or not (UniP alone, order ``p``).
        pred: the parametrization of the field (default ``"velocity"``).
    """

    order_: int = eqx.field(static=True, default=2)
    variant: str = eqx.field(static=True, default="bh2")
    corrector: bool = eqx.field(static=True, default=True)

    def __init__(
        self,
        path: AffinePath,
        order: int = 2,
        *,
        variant: str = "bh2",
        corrector: bool = True,
        pred: str = "velocity",
    ):
        self.path = path
        self.pred = pred
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"`order` must be 1, 2 or 3; got {order!r}.")
        self.order_ = order
        self.variant = check_name(variant, "variant", ("bh1", "bh2"))
        if not isinstance(corrector, bool):
            raise TypeError(f"`corrector` must be a bool; got {type(corrector).__name__}.")
        self.corrector = corrector

    @property
    def evaluations_per_step(self) -> int:
        return 1

    def order(self, terms):
        return self.order_ + int(self.corrector)

    def _history_size(self):
        return self.order_

    def init(self, terms, t0, t1, y0, args):
        st = super().init(terms, t0, t1, y0, args)
        return FewStepState(
            st.ms, st.ts, st.count, st.nfe, jnp.zeros_like(y0), jnp.array(0, jnp.int32)
        )

    def _update(self, x, s, t, m0, olds, p: int, m_t=None):
        """UniP-``p`` from ``(s, x)`` to ``t`` (``m_t=None``), or UniC-``p`` with the
        evaluation ``m_t`` at ``t``; ``m0`` is the evaluation at ``s``, ``olds`` the older
        points ``[(m_i, t_i)]``."""
        a_t, s_t, lam_t = self._coeffs(t)
        _, s_s, lam_s = self._coeffs(s)
        h = lam_t - lam_s
        ok = jnp.isfinite(h)
        hh = -_safe(h, ok)
        b_h, b = _unipc_rhs(hh, self.variant, p)
        # From alpha = 0 (h = inf) only UniC-1 runs, with B(h) -> -1 (bh2's limit).
        b_h = jnp.where(ok, b_h, -1.0)
        base = (s_t / s_s) * x - (a_t * jnp.expm1(-h)) * m0
        n_old = p - 1
        rks = [(self._lam(ti) - lam_s) / -hh for _, ti in olds[:n_old]]
        d1s = [(mi - m0) / _safe(r, ok) for (mi, _), r in zip(olds, rks)]
        vander = jnp.stack([jnp.stack([*rks, jnp.ones_like(hh)]) ** i for i in range(p)])
        if m_t is None:
            if p == 1:
                return base
            if p == 2:
                rhos = jnp.array([0.5], x.dtype)
            else:
                rhos = _solve_small(_safe(vander[:-1, :-1], ok, jnp.eye(n_old)), b[:-1])
            return base - (a_t * b_h) * sum(r * d for r, d in zip(rhos, d1s))
        if p == 1:
            rhos = jnp.array([0.5], x.dtype)
        else:
            rhos = _solve_small(_safe(vander, ok, jnp.eye(p)), b)
        res = rhos[-1] * (m_t - m0) + sum(r * d for r, d in zip(rhos[:-1], d1s))
        return base - (a_t * b_h) * res

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        st = solver_state
        m, _ = self._predict(terms, t0, y0, args)
        hist = [(st.ms[i], st.ts[i]) for i in range(self.order_)]
        x = y0
        if self.corrector:
            # Correct y0, predicted by the previous step from (ts[0], last), with m.
            cands = [
                self._update(st.last, hist[0][1], t0, hist[0][0], hist[1:], p, m_t=m)
                for p in range(1, self.order_ + 1)
            ]
            x = jnp.where(st.prev_order >= 1, _select(st.prev_order, cands), y0)
        _, s_t, _ = self._coeffs(t1)
        finite = jnp.isfinite(self._lam(t0)) & (s_t > 0)
        k = jnp.where(finite, jnp.minimum(self.order_, st.count + 1), 1)
        cands = [self._update(x, t0, t1, m, hist, p) for p in range(1, self.order_ + 1)]
        y1 = _select(k, cands)
        return _done(y0, y1, self._push(st, m, t0, last=x, prev_order=k.astype(jnp.int32)))


# -- DEIS ------------------------------------------------------------------------------------


def _lagrange_integral(u_t, u_s, node, others):
    r"""``int_{rho_s}^{rho_t} L(log rho) d rho`` for the Lagrange basis polynomial
    ``L(u) = prod_j (u - c_j) / (node - c_j)`` over ``others = [c_j]`` (degree 1 or 2),
    with ``rho = e^u``: ``int e^u P(u) du = e^u (P - P' + P'')``."""

    def anti(u):
        if len(others) == 1:
            (c,) = others
            return jnp.exp(u) * ((u - c) - 1.0)
        c, d = others
        return jnp.exp(u) * ((u - c) * (u - d) - (2 * u - c - d) + 2.0)

    denom = _prod([node - c for c in others])
    return (anti(u_t) - anti(u_s)) / denom


def _prod(xs):
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


class DEIS(AbstractFlowSolver):
    r"""DEIS (Zhang & Chen 2023), multistep, orders 1-3: one evaluation per step.

    The exponential integrator in the noise prediction: ``d(x / alpha) / d rho = eps``
    with ``rho = sigma / alpha``, ``eps`` extrapolated by the Lagrange polynomial in
    ``log rho`` through the last ``order`` evaluations and integrated exactly over
    ``rho`` ("log-rho" DEIS, diffusers' ``DEISMultistepScheduler``):

    ``x_t = alpha_t D_s + sigma_t eps_s + alpha_t sum_{j >= 1} c_j (eps_j - eps_s)``,
    ``c_j = int_{rho_s}^{rho_t} L_j(log rho) d rho``.

    Warm-up, the step to ``sigma = 0`` and the restart after ``alpha = 0`` follow the
    module notes.

    Args:
        path: the :class:`jfm.AffinePath` of the model.
        order: 1, 2 or 3 (1 is DDIM).
        pred: the parametrization of the field (default ``"velocity"``).
    """

    order_: int = eqx.field(static=True, default=2)

    def __init__(self, path: AffinePath, order: int = 2, *, pred: str = "velocity"):
        self.path = path
        self.pred = pred
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"`order` must be 1, 2 or 3; got {order!r}.")
        self.order_ = order

    @property
    def evaluations_per_step(self) -> int:
        return 1

    def order(self, terms):
        return self.order_

    def _history_size(self):
        return self.order_ - 1

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        st = solver_state
        d0, e0 = self._predict(terms, t0, y0, args)
        a_t, s_t, lam_t = self._coeffs(t1)
        lam_s = self._lam(t0)
        x1 = a_t * d0 + s_t * e0
        ok = jnp.isfinite(lam_s) & jnp.isfinite(lam_t)
        k = jnp.where(ok, jnp.minimum(self.order_, st.count + 1), 1)
        # u = log rho = -lambda at the nodes; sanitized where unused.
        u_s, u_t = _safe(-lam_s, ok, 0.0), _safe(-lam_t, ok, -1.0)
        us = [_safe(-self._lam(t), ok & (st.count > i), 1.0 + i) for i, t in enumerate(st.ts)]
        cands = [x1]
        if self.order_ >= 2:
            c1 = _lagrange_integral(u_t, u_s, us[0], [u_s])
            cands.append(x1 + a_t * c1 * (st.ms[0] - e0))
        if self.order_ >= 3:
            c1 = _lagrange_integral(u_t, u_s, us[0], [us[1], u_s])
            c2 = _lagrange_integral(u_t, u_s, us[1], [u_s, us[0]])
            cands.append(x1 + a_t * (c1 * (st.ms[0] - e0) + c2 * (st.ms[1] - e0)))
        y1 = _select(k, cands)
        return _done(y0, y1, self._push(st, e0, t0))


# -- EDM -------------------------------------------------------------------------------------


class EDM(AbstractFlowSolver, dfx.AbstractItoSolver):
    r"""EDM's sampler (Karras et al. 2022, Alg. 2): Heun's method in ``rho = sigma / alpha``.

    In the variables ``x / alpha`` and ``rho``, where the ODE reads ``d(x / alpha) / d rho
    = eps``, each step from ``rho_i`` to ``rho_{i+1}``:

    1. with ``gamma > 0`` and ``s_tmin <= rho_i <= s_tmax`` ("churn"), raises the noise
       to ``rho_hat = (1 + gamma) rho_i`` by adding fresh noise of standard deviation
       ``sqrt(rho_hat^2 - rho_i^2) * s_noise`` (in ``x / alpha``), at the time of
       ``rho_hat`` (clipped to ``t >= 0``);
    2. an Euler step (which is DDIM) to ``rho_{i+1}``, then Heun's correction with a
       second evaluation there, except on a step to ``sigma = 0`` or from ``alpha = 0``,
       which stays an Euler step (one evaluation).

    ``gamma`` is EDM's per-step ``min(S_churn / N, sqrt(2) - 1)`` for ``N`` steps. With
    ``gamma = 0`` (default) the sampler is deterministic; with ``gamma > 0`` it needs a
    ``key`` (``jfm.sample_ode(..., key=)``), and the noise of a step from ``t_i`` to
    ``t_{i+1}`` is ``W(t_{i+1}) - W(t_i)`` of a ``diffrax.UnsafeBrownianPath`` over the
    batch (per example with ``batch="vmap"``), divided by ``sqrt(t_{i+1} - t_i)``.

    Args:
        path: the :class:`jfm.AffinePath` of the model.
        gamma: the per-step churn, ``>= 0``.
        s_tmin, s_tmax: churn only for noise levels ``rho`` in ``[s_tmin, s_tmax]``.
        s_noise: scale of the added noise (EDM's ``S_noise``).
        pred: the parametrization of the field (default ``"velocity"``).
    """

    gamma: float = eqx.field(static=True, default=0.0)
    s_tmin: float = eqx.field(static=True, default=0.0)
    s_tmax: float = eqx.field(static=True, default=math.inf)
    s_noise: float = eqx.field(static=True, default=1.0)

    def __init__(
        self,
        path: AffinePath,
        *,
        gamma: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        pred: str = "velocity",
    ):
        self.path = path
        self.pred = pred
        for name, v in (("gamma", gamma), ("s_tmin", s_tmin), ("s_noise", s_noise)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"`{name}` must be a number >= 0; got {name}={v!r}.")
        if isinstance(s_tmax, bool) or not isinstance(s_tmax, (int, float)) or s_tmax < s_tmin:
            raise ValueError(f"`s_tmax` must be a number >= s_tmin; got s_tmax={s_tmax!r}.")
        if not math.isfinite(gamma) or not math.isfinite(s_noise):
            raise ValueError(f"`gamma` and `s_noise` must be finite; got {gamma}, {s_noise}.")
        self.gamma, self.s_tmin, self.s_tmax = float(gamma), float(s_tmin), float(s_tmax)
        self.s_noise = float(s_noise)

    @property
    def stochastic(self) -> bool:
        return self.gamma > 0

    @property
    def evaluations_per_step(self) -> int:
        return 2

    def order(self, terms):
        return 2

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        a_s, s_s, _ = self._coeffs(t0)
        a_t, s_t, _ = self._coeffs(t1)
        t_hat, x_hat, a_hat, rho_hat = t0, y0, a_s, s_s / a_s
        if self.stochastic:
            if not isinstance(terms, dfx.MultiTerm):
                raise ValueError(
                    "EDM with gamma > 0 needs Brownian noise: pass key= to the sampler."
                )
            rho = s_s / a_s
            churn = (a_s > 0) & (rho >= self.s_tmin) & (rho <= self.s_tmax)
            lam_hat = -jnp.log(_safe(rho, churn) * (1.0 + self.gamma))
            t_raised = _invert(self._lam, lam_hat, jnp.zeros_like(t0), t0)
            t_hat = jnp.where(churn, t_raised, t0)
            a_hat, s_hat, _ = self._coeffs(t_hat)
            rho_hat = s_hat / a_hat
            dw = terms.terms[1].contr(t0, t1)
            z = dw / jnp.sqrt(jnp.abs(t1 - t0)).astype(y0.dtype)
            std = a_hat * jnp.sqrt(jnp.maximum(rho_hat**2 - _safe(rho, churn) ** 2, 0.0))
            raised = (a_hat / _safe(a_s, churn)) * y0 + (std * self.s_noise) * z
            x_hat = jnp.where(churn, raised, y0)
        d, e = self._predict(terms, t_hat, x_hat, args)
        x_e = a_t * d + s_t * e  # Euler in (rho, x / alpha): DDIM
        heun = (s_t > 0) & (a_hat > 0)
        rho_t = s_t / a_t

        def correct(_):
            _, e2 = self._predict(terms, t1, x_e, args)
            return x_e + (a_t * (rho_t - _safe(rho_hat, heun)) / 2) * (e2 - e)

        y1 = lax.cond(heun, correct, lambda _: x_e, None)
        st = self._push(solver_state, d, t0, jnp.where(heun, 2, 1))
        return _done(y0, y1, st)
