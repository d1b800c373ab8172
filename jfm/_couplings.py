r"""Couplings: how the training pairs ``(x0, x1)`` of a minibatch are matched.

A coupling is a pure function ``coupling(x0, x1, *, key) -> (x0', x1')`` of two batches
``[B, *event]`` (sources and data). Every built-in one keeps ``x1`` (and so any per-example
``args``, e.g. labels, that go with it) in place and re-orders or re-draws ``x0``:

- :func:`independent_coupling`: the product coupling (the pairs as given);
- :func:`exact_ot_coupling`: the optimal permutation of ``x0`` for the squared Euclidean
  cost (minibatch OT, Tong et al. 2024; Pooladian et al. 2023);
- :func:`sinkhorn_coupling`: for each ``x1_j`` an ``x0`` drawn from the entropic OT plan
  computed by ott-jax's Sinkhorn;
- :func:`label_ot_coupling`: ``label_ot_coupling(labels)`` is the coupling that does exact
  OT restricted to pairs of the same class (the labels are bound into the coupling, which
  then follows the protocol).

Callers always pass ``key``; the deterministic couplings accept it and ignore it (it
defaults to ``None`` there, so they can also be called on their own). All are
jit/vmap-safe (shapes are static; the assignment runs in ``lax`` loops) and
deterministic given ``key``. Gradients do not flow through the matching (it is a discrete
choice); they flow through the matched values, as usual for minibatch OT.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray
from ott.geometry import pointcloud
from ott.solvers import linear

from ._checks import check_array, check_finite, check_key, check_positive
from ._custom_types import RealScalarLike
from ._ot import METHODS, exact_assignment, sq_cost

#: A coupling ``(x0[B, *event], x1[B, *event], *, key) -> (x0', x1')``.
Coupling = Callable[..., tuple[Array, Array]]

_RELATIVE: tuple[str, ...] = ("mean", "std")


def check_pair_batch(x0, x1) -> tuple[Array, Array]:
    """Check two batches ``[B, *event]`` of equal shape and dtype for a coupling."""
    x0 = check_finite(check_array(x0, "x0"), "x0")
    x1 = check_finite(check_array(x1, "x1"), "x1")
    if x0.ndim < 2 or x1.ndim < 2:
        raise ValueError(
            f"`x0` and `x1` must be batches [B, *event] (at least 2 dimensions); got "
            f"x0.shape={x0.shape}, x1.shape={x1.shape}. For 1-D points pass x[:, None]."
        )
    if x0.shape[0] != x1.shape[0]:
        raise ValueError(
            f"`x0` and `x1` must have the same batch size to be coupled; got "
            f"x0.shape[0]={x0.shape[0]}, x1.shape[0]={x1.shape[0]}. Draw as many sources "
            "as data points."
        )
    if x0.shape != x1.shape:
        raise ValueError(
            f"`x0` and `x1` must have the same event shape; got x0.shape={x0.shape}, "
            f"x1.shape={x1.shape}."
        )
    if x0.dtype != x1.dtype:
        raise TypeError(
            f"`x0` and `x1` must have the same dtype; got x0.dtype={x0.dtype}, x1.dtype={x1.dtype}."
        )
    return x0, x1


def _flat(x):
    return x.reshape(x.shape[0], -1)


def independent_coupling(
    x0: Float[ArrayLike, " _batch *_event"],
    x1: Float[ArrayLike, " _batch *_event"],
    *,
    key: PRNGKeyArray | None = None,
) -> tuple[Float[Array, " _batch *_event"], Float[Array, " _batch *_event"]]:
    r"""The independent (product) coupling: the pairs ``(x0_i, x1_i)`` unchanged.

    With ``x0`` and ``x1`` drawn independently this samples ``q(x0) q(x1)``, the coupling
    of I-CFM (Tong et al. 2024) and of Lipman et al.'s flow matching.

    Args:
        x0: ``[B, *event]`` sources.
        x1: ``[B, *event]`` data, same shape and dtype.
        key: unused (accepted so that every coupling is called the same way).

    Returns:
        ``(x0, x1)`` as arrays.

    Raises:
        ValueError: mismatched batch sizes or event shapes.
        TypeError: non-floating or mismatched dtypes.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> x0, x1 = jfm.independent_coupling(jnp.zeros((3, 2)), jnp.ones((3, 2)))
        >>> x0.shape, x1.shape
        ((3, 2), (3, 2))
    """
    return check_pair_batch(x0, x1)


def check_method(method) -> str:
    """An assignment method name (see :func:`exact_ot_coupling`)."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"`method` must be one of {METHODS} (see jfm.exact_ot_coupling); got {method!r}."
        )
    return method


def ot_permutation(
    x0: Float[Array, " _batch *_event"], x1: Float[Array, " _batch *_event"], method: str = "auto"
):
    """``perm`` minimising ``sum_i |x0[perm[i]] - x1[i]|^2`` (see :func:`exact_ot_coupling`)."""
    # Row j of the cost is x1_j: the assignment gives, for every data point, its source.
    return exact_assignment(sq_cost(_flat(x1), _flat(x0)), method=method)


def exact_ot_coupling(
    x0: Float[ArrayLike, " _batch *_event"],
    x1: Float[ArrayLike, " _batch *_event"],
    *,
    key: PRNGKeyArray | None = None,
    method: str = "auto",
) -> tuple[Float[Array, " _batch *_event"], Float[Array, " _batch *_event"]]:
    r"""Exact minibatch optimal transport: ``x0`` re-ordered by the optimal permutation.

    .. math::
        \pi^\star = \arg\min_{\pi \in S_B} \sum_{j=1}^B |x_{0,\pi(j)} - x_{1,j}|^2,
        \qquad (x_0', x_1') = (x_{0,\pi^\star}, x_1).

    For uniform weights on two equal-size batches an optimal plan of the squared
    Euclidean cost is a permutation (Birkhoff-von Neumann), so the coupled batch holds
    every source exactly once: no point is duplicated or dropped. This is OT-CFM's
    coupling (Tong et al. 2024, with POT's exact ``emd``). ``x1`` stays in place, so
    per-example ``args`` (labels) stay aligned with it.

    The assignment is solved by ``method`` (static):

    - ``"scipy"``: exact. A few annealed Sinkhorn sweeps on the device (15 passes of
      ``O(B^2)`` exponentials, float32) give dual potentials ``g``; on the host,
      :func:`scipy.optimize.linear_sum_assignment` solves the reduced cost
      ``C_ij - g_j - min_k (C_ik - g_k)`` in float64 through :func:`jax.pure_callback`
      (the same optimum as ``C``: row and column constants shift every permutation's
      cost alike; the potentials only shorten the augmenting paths, 10x-30x faster than
      a cold solve at ``B = 512 ... 2048``).
    - ``"auction"``: Bertsekas' auction with epsilon scaling, warm-started from the same
      potentials, all in ``lax`` on the device (no host round trip). Within ``B * eps``
      of the optimal total cost, ``eps = 16 * finfo(dtype).eps * max_ij C_ij`` (in float32
      a gap of about ``2e-6 * B * max C``; exact in practice in float64). Rounds of ``O(B^2)``
      parallel work: for accelerators; slow on a CPU.
    - ``"hungarian"``: exact, :func:`optax.assignment.hungarian_algorithm`, ``O(B^3)``
      sequential steps in ``lax``.
    - ``"auto"`` (default): on a CPU backend ``"hungarian"`` for ``B <= 32`` (no host round
      trip) and ``"scipy"`` above; on a GPU/TPU backend ``"auction"``.

    Measured on a 2-core CPU (``benchmarks/ot_assignment.py``, results in
    ``benchmarks/results/ot_assignment.md``): ``"auto"`` is faster than torchcfm's
    ``OTPlanSampler("exact")`` (POT's network simplex) at ``B = 256 ... 2048``.

    Args:
        x0: ``[B, *event]`` sources (flattened to ``D = prod(event)`` for the cost).
        x1: ``[B, *event]`` data, same shape and dtype.
        key: unused (the matching is deterministic).
        method: ``"auto"``, ``"scipy"``, ``"auction"`` or ``"hungarian"`` (see above).

    Returns:
        ``(x0[perm], x1)``.

    Raises:
        ValueError: mismatched batch sizes or event shapes, fewer than 2 dimensions, an
            unknown ``method``.
        TypeError: non-floating or mismatched dtypes.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> x0 = jnp.array([[1.0], [0.0]])
        >>> x1 = jnp.array([[0.1], [0.9]])
        >>> jfm.exact_ot_coupling(x0, x1)[0].ravel().tolist()
        [0.0, 1.0]
        >>> jfm.exact_ot_coupling(x0, x1, method="scipy")[0].ravel().tolist()
        [0.0, 1.0]

    References:
        Tong et al., "Improving and Generalizing Flow-Based Generative Models with
        Minibatch Optimal Transport", TMLR 2024; Pooladian et al., "Multisample Flow
        Matching", ICML 2023; Bertsekas, "The auction algorithm: a distributed relaxation
        method for the assignment problem", Ann. Oper. Res. 1988; Crouse, "On implementing
        2D rectangular assignment algorithms", IEEE TAES 2016 (scipy's solver).
    """
    x0, x1 = check_pair_batch(x0, x1)
    return x0[ot_permutation(x0, x1, check_method(method))], x1


def sinkhorn_plan(
    x0: Float[Array, " _batch *_event"],
    x1: Float[Array, " _batch *_event"],
    epsilon,
    relative_epsilon: str | None,
    threshold: float,
    max_iterations: int,
) -> Float[Array, "batch batch"]:
    """The entropic OT plan ``P[i, j]`` between uniform ``x0_i`` and ``x1_j`` (ott-jax)."""
    # ott-jax relies on NumPy's implicit rank and dtype promotion internally.
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        geom = pointcloud.PointCloud(
            _flat(x0), _flat(x1), epsilon=epsilon, relative_epsilon=relative_epsilon
        )
        out = linear.solve(geom, threshold=threshold, max_iterations=max_iterations)
        return out.matrix.astype(x0.dtype)


def sinkhorn_coupling(
    x0: Float[ArrayLike, " _batch *_event"],
    x1: Float[ArrayLike, " _batch *_event"],
    *,
    key: PRNGKeyArray,
    epsilon: RealScalarLike,
    relative_epsilon: str | None = "mean",
    threshold: float = 1e-3,
    max_iterations: int = 2000,
) -> tuple[Float[Array, " _batch *_event"], Float[Array, " _batch *_event"]]:
    r"""Entropic minibatch OT: for each ``x1_j`` a source drawn from the Sinkhorn plan.

    The plan solves

    .. math::
        P^\star = \arg\min_{P \in U(\frac1B 1, \frac1B 1)} \sum_{ij} P_{ij}
                  |x_{0,i} - x_{1,j}|^2 - \varepsilon H(P)

    with ott-jax's log-domain Sinkhorn (``ott.solvers.linear.solve`` on a
    ``PointCloud``). With ``relative_epsilon="mean"`` (default) the regularisation is
    ``epsilon * mean_ij C_ij``, i.e. ``epsilon`` is relative to the cost scale (as
    torchcfm's normalised costs); with ``relative_epsilon=None`` it is the absolute
    ``epsilon`` (the Schrodinger bridge of a Brownian motion of variance ``sigma^2`` is
    ``epsilon = 2 sigma^2``, see :class:`jfm.SchrodingerBridgePath`).

    Pairs are drawn from the plan by its conditionals: for every ``j`` independently,
    ``i ~ P[:, j] / sum_i P[i, j]``, and the pair is ``(x0_i, x1_j)``. Each pair is an
    exact draw from ``P`` given its ``x1`` (whose marginal is exactly uniform), the data
    keep their order (labels stay aligned), and sources may repeat or be left out
    (torchcfm draws ``B`` pairs from the flattened plan with replacement instead, which
    also repeats data). ``epsilon -> 0`` approaches :func:`exact_ot_coupling`, large
    ``epsilon`` the independent coupling.

    Args:
        x0: ``[B, *event]`` sources.
        x1: ``[B, *event]`` data, same shape and dtype.
        key: PRNG key for drawing the pairs (keyword-only, required).
        epsilon: entropic regularisation ``> 0`` (relative or absolute, see above).
        relative_epsilon: ``"mean"`` (default) or ``"std"`` (of the cost matrix, as in
            ott-jax), or ``None`` for an absolute ``epsilon``. Static.
        threshold: Sinkhorn stopping tolerance on the marginal error (ott-jax's).
        max_iterations: Sinkhorn iteration cap (static). A plan that has not converged
            is still a valid (less accurate) coupling; small absolute ``epsilon`` needs
            more iterations.

    Returns:
        ``(x0[idx], x1)`` with ``idx[j] ~ P[:, j]``.

    Raises:
        ValueError: mismatched batch sizes or event shapes; ``epsilon <= 0``; unknown
            ``relative_epsilon``.
        TypeError: non-floating or mismatched dtypes; missing ``key``.

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> x0 = jnp.array([[1.0], [0.0]])
        >>> x1 = jnp.array([[0.1], [0.9]])
        >>> c0, c1 = jfm.sinkhorn_coupling(x0, x1, key=jax.random.key(0), epsilon=1e-3)
        >>> c0.ravel().tolist()  # nearly exact OT at this epsilon
        [0.0, 1.0]

    References:
        Cuturi, "Sinkhorn Distances", NeurIPS 2013; Tong et al. 2024 (SB-CFM); Cuturi et
        al., "Optimal Transport Tools (OTT)", 2022.
    """
    x0, x1 = check_pair_batch(x0, x1)
    check_key(key)
    with jax.ensure_compile_time_eval():  # range-checked when concrete, also under jit
        epsilon = check_positive(epsilon, "epsilon")
    if relative_epsilon is not None and relative_epsilon not in _RELATIVE:
        raise ValueError(
            f"`relative_epsilon` must be one of {_RELATIVE} or None; got {relative_epsilon!r}."
        )
    plan = sinkhorn_plan(x0, x1, epsilon, relative_epsilon, threshold, max_iterations)
    # Column j of the plan, normalised, is the law of the source paired with x1_j.
    logits = jnp.log(jnp.maximum(plan, 0).T)  # zero mass -> -inf: never drawn
    idx = jr.categorical(key, logits, axis=-1)
    return x0[idx], x1


def _check_labels(labels) -> Array:
    if isinstance(labels, (list, tuple)):
        labels = np.asarray(labels)
    if not isinstance(labels, (np.ndarray, jax.Array)):
        raise TypeError(f"`labels` must be an integer array of shape (B,); got {type(labels)}.")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must be an integer array; got dtype {labels.dtype}.")
    if labels.ndim != 1:
        raise ValueError(
            f"`labels` must have shape (B,), one class per pair; got shape {labels.shape}."
        )
    return labels


class _LabelOTCoupling(eqx.Module):
    """Exact OT within the classes ``labels`` (see :func:`label_ot_coupling`)."""

    labels: Int[Array, " _batch"]
    method: str = eqx.field(static=True, default="auto")

    def __call__(
        self,
        x0: Float[ArrayLike, " _batch *_event"],
        x1: Float[ArrayLike, " _batch *_event"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, " _batch *_event"], Float[Array, " _batch *_event"]]:
        x0, x1 = check_pair_batch(x0, x1)
        labels = self.labels
        if labels.shape != (x0.shape[0],):
            raise ValueError(
                f"`labels` must have shape (B,) = ({x0.shape[0]},), one class per pair; got "
                f"shape {labels.shape}."
            )
        cost = sq_cost(_flat(x1), _flat(x0))
        same = labels[:, None] == labels[None, :]
        perm = exact_assignment(cost, method=self.method, allowed=same)
        return x0[perm], x1


def label_ot_coupling(labels: Int[ArrayLike, "..."], *, method: str = "auto") -> Coupling:
    r"""The coupling that does exact OT within classes: ``x0`` re-ordered per class.

    Returns ``coupling(x0, x1, *, key=None) -> (x0[perm], x1)``, the protocol of every
    coupling (``key`` unused: deterministic), with the labels bound in: ``labels[i]`` is
    the class of pair ``i`` (of the source slot ``x0_i`` and of ``x1_i``). The
    permutation solves

    .. math::
        \min_{\pi \in S_B,\ \ell_{\pi(j)} = \ell_j} \sum_j |x_{0,\pi(j)} - x_{1,j}|^2,

    i.e. one exact assignment per class, no pair crossing classes: a class-conditional
    model trained with ``args=labels`` sees, for each class, the OT coupling of that
    class's sources and data. Solved as one assignment; the Hungarian method adds a
    penalty ``P = B * max C + 1`` on pairs of different classes: any crossing
    assignment costs more than ``P``, more than any class-respecting one (e.g. the
    identity), so the optimum respects classes and is optimal within each (the blocks
    decouple; the ``"scipy"`` method forbids those pairs outright, the ``"auction"`` bids
    only on allowed ones). Labels can be any integers (traced; no static class count). The
    coupling is an equinox Module whose ``labels`` are a leaf: build it inside the jitted loss,
    e.g. ``jfm.cfm_loss(..., args=labels, coupling=jfm.label_ot_coupling(labels))``.

    Args:
        labels: ``(B,)`` integer classes of the pairs.
        method: the assignment method, as in :func:`exact_ot_coupling` (static).

    Returns:
        The coupling. Called on ``x0``, ``x1`` (``[B, *event]``, same shape and dtype) it
        returns ``(x0[perm], x1)`` with ``labels[perm] == labels``.

    Raises:
        TypeError: non-integer ``labels`` (here); non-floating or mismatched
            ``x0``/``x1`` (when called).
        ValueError: ``labels`` not one-dimensional, unknown ``method`` (here);
            ``labels`` not of shape ``(B,)``, mismatched batch sizes or event shapes (when called).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> x0 = jnp.array([[0.0], [1.0], [2.0]])
        >>> x1 = jnp.array([[2.1], [0.9], [0.1]])
        >>> coupling = jfm.label_ot_coupling(jnp.array([0, 1, 0]))
        >>> coupling(x0, x1)[0].ravel().tolist()
        [2.0, 1.0, 0.0]
    """
    return _LabelOTCoupling(_check_labels(labels), check_method(method))


_NAMED: dict[str, Coupling] = {
    "independent": independent_coupling,
    "exact_ot": exact_ot_coupling,
}


def resolve_coupling(coupling) -> Coupling:
    """A coupling from a callable or one of the names ``"independent"``, ``"exact_ot"``."""
    if isinstance(coupling, str):
        if coupling not in _NAMED:
            raise ValueError(
                f"`coupling` must be a callable coupling(x0, x1, *, key) or one of "
                f"{tuple(_NAMED)}; got {coupling!r}. Entropic OT needs its epsilon: pass "
                "functools.partial(jfm.sinkhorn_coupling, epsilon=...)."
            )
        return _NAMED[coupling]
    if not callable(coupling):
        raise TypeError(
            f"`coupling` must be a callable coupling(x0, x1, *, key) -> (x0, x1) or a name "
            f"in {tuple(_NAMED)}; got {type(coupling)}."
        )
    return coupling


__all__ = [
    "exact_ot_coupling",
    "independent_coupling",
    "label_ot_coupling",
    "sinkhorn_coupling",
]
