"""The abstract probability path, and shape helpers shared by the paths."""

import abc

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray


class AbstractPath(eqx.Module):
    """A conditional probability path from a source (``t = 0``) to the data (``t = 1``).

    All methods act on ONE example: ``x0``, ``x1``, ``x`` have the event shape (e.g.
    ``(2,)`` or ``(8, 8, 1)``) and ``t`` is a scalar. Batch with ``jax.vmap``.
    """

    @abc.abstractmethod
    def sample(
        self, t: Float[Array, ""], x0: Float[Array, "*dims"], x1: Float[Array, "*dims"]
    ) -> Float[Array, "*dims"]:
        """A sample of ``p_t(x | x1)`` built from the source draw ``x0``."""

    @abc.abstractmethod
    def prior_sample(self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None) -> Array:
        """Draw from the source distribution; ``shape`` is ``(*batch, *event)``."""

    @abc.abstractmethod
    def prior_log_prob(self, x: Float[Array, "*dims"]) -> Float[Array, ""]:
        """Log-density of the source distribution at one example ``x``."""


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


def prior_shape(event_shape, n, override) -> tuple[int, ...]:
    """``(n, *event)`` for ``sample_prior``, from the argument or the path's attribute."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int (the number of samples); got {n!r}.")
    event = check_event_shape(override) if override is not None else event_shape
    if event is None:
        raise ValueError(
            "`event_shape` is unknown: pass sample_prior(n, key=..., event_shape=(2,)) or "
            "build the path with event_shape=(2,)."
        )
    return (n, *event)


def split_prior_shape(event_shape, shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split ``shape = (*batch, *event)`` for ``prior_sample``.

    The trailing ``len(event_shape)`` axes are the event when the path knows its event
    shape; otherwise ``shape[0]`` is the one batch axis and the rest is the event.
    """
    if not isinstance(shape, (tuple, list)) or not all(isinstance(n, int) for n in shape):
        raise TypeError(f"`shape` must be a tuple of ints; got {shape!r}.")
    shape = tuple(shape)
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
