"""The abstract probability path."""

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
