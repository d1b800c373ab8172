r"""The path interface: abstract bases declaring every method the library calls on a path.

Three abstract levels, each a capability that consumers check with ``isinstance`` on the
ABSTRACT class (at trace time, raising a ``TypeError`` that names the argument):

- :class:`AbstractPath`: what every path has. The training pair
  ``sample_and_target(t, x0, x1, *, key, kind)`` (what :func:`jfm.cfm_loss` calls), the
  draws of ``x0`` it takes (``x0_sample``), the source distribution (``prior_sample``,
  ``prior_log_prob``) and the conditional law given the data point alone
  (``sample_conditional``, ``conditional_velocity``, ``conditional_log_density``: what
  :func:`jfm.empirical_field` and :func:`jfm.check_continuity` call).
- :class:`AbstractFlowPath`: paths whose ``x_t = psi_t(x0 | x1)`` is a deterministic map of
  ``(t, x0, x1)`` (the conditional flow of Lipman et al. 2023): ``sample(t, x0, x1)`` and
  ``target(t, x0, x1, kind=)``; their ``sample_and_target`` is these two (``key`` unused).
- :class:`AbstractConvertiblePath`: flow paths whose parametrizations convert into each
  other given ``(t, x_t)`` (``convert(t, x, pred, src=, dst=)``), because the relation
  between ``x_t``, ``x0``, ``x1`` and the velocity is affine.

Shape names in the annotations (``"*_dims"``) are documentation: the methods check equal
shapes themselves and raise a ``ValueError`` naming the argument.

Shipped: :class:`jfm.AffinePath` and :class:`jfm.PoissonPath` (convertible),
:class:`jfm.IsotropicPath` (flow path), :class:`jfm.SchrodingerBridgePath` (a path whose
``x_t`` carries its own noise, drawn from ``key``).
"""

import abc

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from .._custom_types import RealScalarLike


class AbstractPath(eqx.Module):
    r"""A conditional probability path from a source (``t = 0``) to the data (``t = 1``).

    All methods act on ONE example: ``x0``, ``x1``, ``x`` have the event shape (e.g.
    ``(2,)`` or ``(8, 8, 1)``) and ``t`` is a scalar. Batch with ``jax.vmap``. Every
    method is abstract; a path implements all of them.

    Training (:func:`jfm.cfm_loss`) calls ``x0_sample`` for a batch of ``x0``, pairs it
    with the data (a coupling), then ``sample_and_target`` per example. Diagnostics and
    empirical fields call the conditional law given ``x1`` alone, ``p_t(x | x1)`` (for
    paths that draw ``x0`` from a source, the law under the independent coupling).
    Samplers and likelihoods call ``prior_sample``/``prior_log_prob``.
    """

    @abc.abstractmethod
    def sample_and_target(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*_dims"],
        x1: Float[Array, "*_dims"],
        *,
        key: PRNGKeyArray,
        kind: str = "velocity",
    ) -> tuple[Float[Array, "*_dims"], Float[Array, "*_dims"]]:
        """``(x_t, target)``: a draw of ``x_t`` given ``(x0, x1)`` and the conditional
        regression target of parametrization ``kind`` at it.

        ``key`` is keyword-only and required (paths whose ``x_t`` is a deterministic map of
        ``(t, x0, x1)`` accept and ignore it). Raises ``ValueError`` for a ``kind`` the path
        does not offer.
        """

    @abc.abstractmethod
    def x0_sample(
        self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None
    ) -> Float[Array, "..."]:
        """Draws of the variable ``x0`` that ``sample_and_target`` takes, of
        ``shape = (*batch, *event)``. Equal to ``prior_sample`` except where the path
        carries the source's scale in its coefficients (:class:`jfm.AffinePath`: standard
        normal ``x0``, whatever the schedule's ``prior_std``)."""

    @abc.abstractmethod
    def prior_sample(
        self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None
    ) -> Float[Array, "..."]:
        """Draws from the source distribution (where sampling starts, ``t = 0``) of
        ``shape = (*batch, *event)``."""

    @abc.abstractmethod
    def prior_log_prob(self, x: Float[Array, "*_dims"]) -> Float[Array, ""]:
        """Log-density of the source distribution at ONE example ``x``."""

    @abc.abstractmethod
    def sample_conditional(
        self, t: RealScalarLike, x1: Float[Array, "*_dims"], *, key: PRNGKeyArray
    ) -> Float[Array, "*_dims"]:
        """One draw of ``x_t ~ p_t(. | x1)``; ``key`` keyword-only, required."""

    @abc.abstractmethod
    def conditional_velocity(
        self, t: RealScalarLike, x: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, "*_dims"]:
        """The conditional field ``u_t(x | x1)`` that transports ``p_t(. | x1)``."""

    @abc.abstractmethod
    def conditional_log_density(
        self, t: RealScalarLike, x: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, ""]:
        """``log p_t(x | x1)`` (normalized, per volume of ``R^d``, ``d = x.size``)."""


class AbstractFlowPath(AbstractPath):
    r"""A path whose ``x_t = psi_t(x0 | x1)`` is a deterministic map of ``(t, x0, x1)``.

    Adds ``sample(t, x0, x1)`` (the conditional flow map) and ``target(t, x0, x1, kind=)``
    (its regression target; ``kind="velocity"`` is ``d/dt sample``). ``sample_and_target``
    is final here: ``(sample(t, x0, x1), target(t, x0, x1, kind=kind))``, ``key`` unused.
    """

    @abc.abstractmethod
    def sample(
        self, t: RealScalarLike, x0: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, "*_dims"]:
        """``x_t = psi_t(x0 | x1)`` for one example."""

    @abc.abstractmethod
    def target(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*_dims"],
        x1: Float[Array, "*_dims"],
        kind: str = "velocity",
    ) -> Float[Array, "*_dims"]:
        """The conditional regression target of parametrization ``kind`` at ``sample``."""

    def sample_and_target(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*_dims"],
        x1: Float[Array, "*_dims"],
        *,
        key: PRNGKeyArray,
        kind: str = "velocity",
    ) -> tuple[Float[Array, "*_dims"], Float[Array, "*_dims"]]:
        """``(sample(t, x0, x1), target(t, x0, x1, kind=kind))``; ``key`` is accepted (the
        interface of :class:`AbstractPath`) and unused: ``x_t`` is deterministic."""
        del key
        return self.sample(t, x0, x1), self.target(t, x0, x1, kind=kind)


class AbstractConvertiblePath(AbstractFlowPath):
    r"""A flow path whose parametrizations convert into each other given ``(t, x_t)``.

    ``convert(t, x, pred, src=, dst=)`` maps a prediction (conditional or marginal: the
    relations are linear, so they hold for conditional expectations too) between the
    parametrizations the path offers (a subset of ``"velocity"``, ``"x1"``, ``"x0"``,
    ``"score"``). :func:`jfm.field_from_model` and the score-matching losses need it for
    models that do not predict the velocity.
    """

    @abc.abstractmethod
    def convert(
        self,
        t: RealScalarLike,
        x: Float[Array, "*_dims"],
        pred: Float[Array, "*_dims"],
        *,
        src: str,
        dst: str,
    ) -> Float[Array, "*_dims"]:
        """Convert ``pred`` at ``(t, x)`` from parametrization ``src`` to ``dst``."""


def require_path(path, name: str = "path", cls: type = AbstractPath, need: str = "") -> None:
    """``TypeError`` naming ``name`` unless ``path`` is an instance of the abstract ``cls``.

    ``need`` says what the caller needs the capability for (appended to the message).
    """
    if not isinstance(path, cls):
        hint = {
            AbstractPath: "e.g. jfm.AffinePath(jfm.CondOT())",
            AbstractFlowPath: "a path with sample(t, x0, x1) and target(...), e.g. "
            "jfm.AffinePath, jfm.PoissonPath, jfm.IsotropicPath",
            AbstractConvertiblePath: "a path with convert(t, x, pred, src=, dst=), e.g. "
            "jfm.AffinePath or jfm.PoissonPath",
        }.get(cls, "")
        raise TypeError(
            f"`{name}` must be a jfm.{cls.__name__} ({hint}){need}; got {type(path).__name__}."
        )


def check_event_shape(event_shape):
    if event_shape is None:
        return None
    if not isinstance(event_shape, (tuple, list)) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in event_shape
    ):
        raise TypeError(
            f"`event_shape` must be None or a tuple of positive ints, e.g. (2,); got "
            f"{event_shape!r}."
        )
    return tuple(event_shape)


def check_shape(shape) -> tuple[int, ...]:
    """A sample shape: a tuple (or list) of non-negative Python ints."""
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise TypeError(f"`shape` must be a tuple of ints, e.g. (batch, *event); got {shape!r}.")
    return tuple(shape)


def split_prior_shape(event_shape, shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split ``shape = (*batch, *event)`` for ``prior_sample``.

    The trailing ``len(event_shape)`` axes are the event when the path knows its event
    shape; otherwise ``shape[0]`` is the one batch axis and the rest is the event.
    """
    shape = check_shape(shape)
    if event_shape is not None:
        k = len(event_shape)
        if shape[len(shape) - k :] != tuple(event_shape):
            raise ValueError(f"`shape`={shape} must end with the path's event_shape={event_shape}.")
        return shape[: len(shape) - k], shape[len(shape) - k :]
    if len(shape) < 2:
        raise ValueError(
            f"`shape` must be (batch, *event) with at least 2 axes when the path has no "
            f"event_shape; got {shape}. Build the path with event_shape=... for other layouts."
        )
    return shape[:1], shape[1:]


__all__ = ["AbstractConvertiblePath", "AbstractFlowPath", "AbstractPath"]
