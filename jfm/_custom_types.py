"""Type aliases shared across jfm (cf. ``diffrax/_custom_types.py``)."""

from collections.abc import Callable
from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

#: A time: a Python float or a 0-d array.
RealScalarLike: TypeAlias = float | int | Float[ArrayLike, ""]
#: Conditioning passed to fields and models (labels, guidance weight, ...).
Args: TypeAlias = PyTree[Any]
#: A per-example vector field ``f(t, x, args) -> dx/dt`` with ``x`` of event shape.
VectorField: TypeAlias = Callable[[RealScalarLike, Array, Args], Array]
#: A batch-first model application ``apply(params, t[B], x[B, *event], args) -> [B, *event]``.
ApplyFn: TypeAlias = Callable[[PyTree, Array, Array, Args], Array]

__all__ = [
    "Any",
    "ApplyFn",
    "Args",
    "Array",
    "ArrayLike",
    "Float",
    "PRNGKeyArray",
    "PyTree",
    "RealScalarLike",
    "VectorField",
]
