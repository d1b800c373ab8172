"""The one adapter between batch-first Flax NNX models and jfm's per-example fields.

``split_model`` turns an ``nnx.Module`` into a pure ``apply(params, t[B], x[B, *event],
args)`` and its parameters; ``field_from_model`` turns ``(apply, params)`` into a
per-example vector field ``field(t, x, args)`` (diffrax's signature) whose parameters are
pytree leaves, so jitted samplers see them as dynamic values and gradients flow to them.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, PyTree

from .._checks import check_array, check_callable, check_parametrization, check_scalar_time
from .._custom_types import ApplyFn, Args, RealScalarLike
from .._paths import AbstractConvertiblePath, AbstractPath
from .._paths.base import require_path


class _MergeApply(eqx.Module):
    """``apply(params, t, x, args) = nnx.merge(graphdef, params)(t, x, args)``.

    A module rather than a closure so that two ``apply`` built from models of the same
    architecture compare (and hash) equal: as a static field of :class:`ModelField` or a
    static argument of a jitted function it then does not trigger recompilation.
    """

    graphdef: nnx.GraphDef = eqx.field(static=True)

    def __call__(self, params: PyTree, t: Array, x: Array, args: Args = None) -> Array:
        return nnx.merge(self.graphdef, params)(t, x, args)


def split_model(model: nnx.Module) -> tuple[ApplyFn, PyTree]:
    """Split a batch-first Flax NNX model into a pure function and its parameters.

    ``graphdef, params = nnx.split(model)`` and
    ``apply(params, t, x, args) = nnx.merge(graphdef, params)(t, x, args)``. ``apply`` is
    pure (no state is mutated; ``nnx.merge`` builds a fresh module on every call), so it
    can be jitted, vmapped and differentiated with respect to ``params``.

    Args:
        model: an ``nnx.Module`` called as ``model(t[B], x[B, *event], args)``.

    Returns:
        ``(apply, params)``: ``apply(params, t[B], x[B, *event], args) -> [B, *event]``
        (batch-first, like the model) and ``params``, the model's ``nnx.State`` (a pytree
        of arrays).

    Raises:
        TypeError: ``model`` is not an ``nnx.Module``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> from flax import nnx
        >>> net = jfm.models.MLP(2, hidden_features=16, depth=1, rngs=nnx.Rngs(0))
        >>> apply, params = jfm.split_model(net)
        >>> apply(params, jnp.zeros(3), jnp.zeros((3, 2)), None).shape
        (3, 2)
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"`model` must be a flax.nnx.Module; got {type(model)}.")
    graphdef, params = nnx.split(model)
    return _MergeApply(graphdef), params


def _add_batch_axis(args: Args) -> Args:
    return jax.tree.map(lambda a: jnp.expand_dims(jnp.asarray(a), 0), args)


class ModelField(eqx.Module):
    r"""A per-example vector field from a batch-first model: ``field(t, x, args)``.

    ``__call__`` adds a batch axis of size 1 to ``t``, ``x`` and every leaf of ``args``,
    calls ``apply(params, t[1], x[1, *event], args)`` and removes the axis. Batch it with
    ``jax.vmap(field, in_axes=(None, 0, None))`` (or ``in_axes=(None, 0, 0)`` for
    per-example ``args``); vmapping the batch-1 call gives the same batched matrix
    products as calling ``apply`` on the whole batch.

    ``apply`` is a static field (compared by equality; :func:`jfm.split_model`'s applies
    of equal architectures are equal) and ``params`` an ordinary pytree field, so
    ``eqx.filter_jit``-ed samplers treat the parameters as dynamic values (no recompilation
    when they change) and gradients with respect to them flow (e.g. diffrax adjoints).

    When the model predicts another parametrization (``kind`` = ``"x1"``, ``"x0"`` or
    ``"score"``), its output is converted to the velocity with
    ``path.convert(t, x, out, src=kind, dst="velocity")`` (``path`` an
    :class:`jfm.AbstractConvertiblePath`); conversions from ``"x0"`` and
    ``"score"`` divide by ``alpha(t)``, which vanishes at ``t = 0`` for CondOT-like
    schedules, and the one from ``"x1"`` divides by ``sigma(t)``, which vanishes at
    ``t = 1``: integrate on ``[t_min, 1 - t_min]`` there.

    Attributes:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]`` (static).
        params: the model parameters (pytree leaves).
        path: the path the model was trained on: an :class:`jfm.AbstractConvertiblePath`
            for the conversion, optional (any :class:`jfm.AbstractPath`) for a velocity
            model.
        kind: what the model predicts: ``"velocity"`` (default), ``"x1"``, ``"x0"`` or
            ``"score"`` (static).
    """

    apply: ApplyFn = eqx.field(static=True)
    params: PyTree
    path: AbstractPath | None = None
    kind: str = eqx.field(static=True, default="velocity")

    def __check_init__(self):
        check_callable(self.apply, "apply", "(params, t, x, args)")
        check_parametrization(self.kind)
        if self.kind != "velocity" and self.path is None:
            raise ValueError(
                f'`path` is required to convert kind="{self.kind}" to a velocity; pass '
                f"path=jfm.AffinePath(...), the path the model was trained on."
            )
        if self.kind != "velocity":
            require_path(
                self.path,
                cls=AbstractConvertiblePath,
                need=f' to convert the model\'s kind="{self.kind}" into a velocity',
            )
        elif self.path is not None:
            require_path(self.path)

    def __call__(
        self, t: RealScalarLike, x: Float[Array, "*_event"], args: Args = None
    ) -> Float[Array, "*_event"]:
        """The velocity ``dx/dt`` at ``(t, x)`` for ONE example.

        Args:
            t: scalar time in ``[0, 1]`` (cast to ``x``'s dtype).
            x: ``(*event,)`` state.
            args: per-example conditioning (e.g. a scalar class label); every leaf gets a
                leading batch axis of 1 before ``apply`` sees it.

        Returns:
            ``(*event,)``, the model's velocity (converted from ``kind`` if needed).

        Raises:
            ValueError: ``t`` is not a scalar, or ``apply`` returns a shape other than
                ``(1, *event)``; ``kind`` not offered by ``path`` (from ``path.convert``).
        """
        x = check_array(x, "x")
        t = check_scalar_time(t).astype(x.dtype)
        out = self.apply(self.params, t.reshape(1), x[None], _add_batch_axis(args))
        if not hasattr(out, "shape") or out.shape != (1, *x.shape):
            raise ValueError(
                f"`apply` must return shape (B, *event) = {(1, *x.shape)} for a batch of one; "
                f"got {getattr(out, 'shape', type(out))}."
            )
        out = out[0]
        if self.kind != "velocity":
            out = self.path.convert(t, x, out, src=self.kind, dst="velocity")
        return out


def field_from_model(
    apply: ApplyFn,
    params: PyTree,
    *,
    path: AbstractPath | None = None,
    kind: str = "velocity",
) -> ModelField:
    """The per-example velocity field of a batch-first model.

    Args:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]``, e.g. from
            :func:`jfm.split_model`.
        params: its parameters (a pytree, e.g. an ``nnx.State``).
        path: the path the model was trained on; required unless ``kind="velocity"``, and
            then an :class:`jfm.AbstractConvertiblePath` (e.g. :class:`jfm.AffinePath`,
            :class:`jfm.PoissonPath`).
        kind: what the model predicts: ``"velocity"`` (default, no conversion), ``"x1"``,
            ``"x0"`` or ``"score"`` (converted with ``path.convert``).

    Returns:
        A :class:`ModelField` ``field(t, x, args) -> dx/dt`` for one example (scalar
        ``t``, event-shaped ``x``), an equinox Module whose ``params`` are leaves.

    Raises:
        TypeError: ``apply`` not callable; ``path`` not a :class:`jfm.AbstractPath`, or
            not an :class:`jfm.AbstractConvertiblePath` for ``kind != "velocity"``.
        ValueError: unknown ``kind``; ``path`` missing for ``kind != "velocity"``.

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> from flax import nnx
        >>> net = jfm.models.MLP(2, hidden_features=16, depth=1, rngs=nnx.Rngs(0))
        >>> field = jfm.field_from_model(*jfm.split_model(net))
        >>> field(0.5, jnp.zeros(2), None).shape
        (2,)
        >>> jax.vmap(field, in_axes=(None, 0, None))(0.5, jnp.zeros((4, 2)), None).shape
        (4, 2)
    """
    return ModelField(apply, params, path, kind)


__all__ = ["ModelField", "field_from_model", "split_model"]
