"""Small image data: scikit-learn's bundled digits, ``.npz`` loading, PNG grids.

Images are batch-first and channels-last, ``[N, H, W, C]``, with pixel values in
``[-1, 1]`` (the range jfm's image models are trained on).
"""

import math
import os
import pathlib
import zipfile

import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float, Int, UInt8

from ._toy import _float_dtype

#: Number of images in scikit-learn's digits set.
_N_DIGITS = 1797


def digits(
    *, dtype: DTypeLike | None = None, return_labels: bool = False
) -> Float[Array, "1797 8 8 1"] | tuple[Float[Array, "1797 8 8 1"], Int[Array, " 1797"]]:
    """The 1797 8x8 handwritten digits bundled with scikit-learn, scaled to ``[-1, 1]``.

    Loaded by ``sklearn.datasets.load_digits`` from the file shipped inside
    scikit-learn (no network). Pixels are integers ``0..16``, mapped exactly (the values
    are multiples of 1/8) to ``x = v / 8 - 1``, so ``0 -> -1`` and ``16 -> 1``.

    Args:
        dtype: floating dtype of the images; default JAX's default float.
        return_labels: also return the class labels.

    Returns:
        ``[1797, 8, 8, 1]`` images of ``dtype`` in ``[-1, 1]``; with ``return_labels`` a
        tuple ``(images, labels)``, labels ``[1797]`` int32 in ``0..9``.

    Raises:
        TypeError: ``dtype`` not floating.

    Examples:
        >>> import jfm
        >>> jfm.data.digits().shape
        (1797, 8, 8, 1)
    """
    from sklearn.datasets import load_digits  # heavy import: only when asked for

    dtype = _float_dtype(dtype)
    bunch = load_digits()
    x = jnp.asarray(bunch.images.reshape(_N_DIGITS, 8, 8, 1) / 8.0 - 1.0, dtype)
    if return_labels:
        return x, jnp.asarray(bunch.target, jnp.int32)
    return x


def load_npz(path: str | os.PathLike, key: str = "x") -> np.ndarray:
    """Load one numeric array from an ``.npz`` archive, never unpickling.

    Uses ``np.load(path, allow_pickle=False)``, so an archive holding Python objects is
    refused instead of executing code. The array is returned as a host NumPy array in its
    stored dtype (e.g. ``uint8`` images: convert with :func:`to_unit_range`); placing it
    on devices is the caller's choice.

    Args:
        path: path of an ``.npz`` file (as written by ``np.savez``/``np.savez_compressed``).
        key: name of the array inside the archive (``np.savez(path, x=...)`` stores
            ``"x"``; positional arrays are ``"arr_0"``, ...).

    Returns:
        The stored array (``np.ndarray``), numeric or boolean.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        ValueError: the file is not an ``.npz`` archive, or has no array ``key`` (the
            message lists the keys present).
        TypeError: the array is not numeric (strings, or pickled Python objects).
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"`path` must be an existing .npz file; got {str(p)!r}, which "
            + ("is a directory." if p.is_dir() else "does not exist.")
        )
    try:
        archive = np.load(p, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"`path` must be an .npz archive (np.savez); could not read {str(p)!r}: {e}"
        ) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"`path` must be an .npz archive (np.savez); {str(p)!r} holds a single .npy "
            "array. Load it with np.load(path, allow_pickle=False)."
        )
    with archive:
        if key not in archive.files:
            raise ValueError(
                f"`key` {key!r} is not in {str(p)!r}; the archive holds {archive.files}."
            )
        try:
            arr = archive[key]
        except ValueError as e:  # object arrays need pickle, which is refused
            raise TypeError(
                f"array {key!r} in {str(p)!r} holds Python objects, which would need "
                "unpickling (refused: allow_pickle=False). Store a numeric array."
            ) from e
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"array {key!r} in {str(p)!r} must be numeric; got dtype {arr.dtype}.")
    return arr


def to_unit_range(
    images: UInt8[ArrayLike, "*dims"], *, dtype: DTypeLike | None = None
) -> Float[Array, "*dims"]:
    """Map ``uint8`` pixels ``0..255`` to floats in ``[-1, 1]``: ``x = v / 127.5 - 1``.

    Args:
        images: ``uint8`` array of any shape.
        dtype: floating dtype of the result; default JAX's default float.

    Returns:
        Same shape, ``dtype``, values in ``[-1, 1]`` (``0 -> -1``, ``255 -> 1``). The inverse
        is :func:`from_unit_range`.

    Raises:
        TypeError: ``images`` not ``uint8``, or ``dtype`` not floating.
    """
    dtype = _float_dtype(dtype)
    if not hasattr(images, "dtype") or images.dtype != np.uint8:
        got = getattr(images, "dtype", type(images).__name__)
        raise TypeError(f"`images` must be a uint8 array (pixels 0..255); got {got}.")
    return jnp.asarray(images).astype(dtype) / 127.5 - 1


def from_unit_range(images: Float[ArrayLike, "*dims"]) -> UInt8[Array, "*dims"]:
    """Map floats in ``[-1, 1]`` back to ``uint8`` pixels: ``round((x + 1) * 127.5)``.

    Values outside ``[-1, 1]`` are clipped to ``0`` / ``255`` (generated samples
    overshoot a little). Inverts :func:`to_unit_range` exactly on its outputs.

    Args:
        images: floating array of any shape.

    Returns:
        Same shape, ``uint8``.

    Raises:
        TypeError: ``images`` not floating.
    """
    x = jnp.asarray(images)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`images` must be a floating array in [-1, 1]; got dtype {x.dtype}.")
    return jnp.clip(jnp.round((x + 1) * 127.5), 0, 255).astype(jnp.uint8)


def save_image_grid(
    images: Float[ArrayLike, "*shape"],
    path: str | os.PathLike,
    *,
    nrow: int | None = None,
    padding: int = 1,
    pad_value: float | int = 1.0,
    scale: int = 1,
) -> None:
    """Write a batch of images in ``[-1, 1]`` as one PNG grid (no display needed).

    Images are placed row by row, ``nrow`` per row, each upscaled ``scale`` times
    (nearest neighbour), with ``padding`` pixels of ``pad_value`` around every image (as
    ``torchvision.utils.make_grid``). The file therefore has
    ``rows * (h * scale + padding) + padding`` by ``nrow * (w * scale + padding) + padding``
    pixels, ``rows = ceil(n / nrow)``; empty cells are ``pad_value``. Values are clipped
    to ``[-1, 1]``; one channel is written as grey, three as RGB. Written with
    ``matplotlib.image.imsave`` (Pillow under the hood; no figure, no backend).

    Args:
        images: ``[n, h, w, c]`` with ``c`` 1 or 3, values in ``[-1, 1]``, finite.
        path: output file; written as PNG whatever its suffix.
        nrow: images per grid row (at most ``n`` are used); default ``ceil(sqrt(n))``, a
            near-square grid.
        padding: pixels between and around images (``>= 0``).
        pad_value: colour of the padding, in ``[-1, 1]`` (``1`` white, ``-1`` black).
        scale: integer upscaling factor of each image (``>= 1``); 8x8 digits read
            better at ``scale=4``.

    Raises:
        ValueError: empty batch, ``c`` not 1 or 3, non-finite values, ``nrow < 1``,
            ``padding < 0``, ``scale < 1`` or ``pad_value`` outside ``[-1, 1]``.
    """
    import matplotlib.image  # imsave uses Pillow directly: no GUI backend involved

    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"`images` must have shape [n, h, w, c]; got shape {x.shape}.")
    n, h, w, c = x.shape
    if n == 0:
        raise ValueError("`images` must hold at least one image; got an empty batch.")
    if c not in (1, 3):
        raise ValueError(f"`images` must have 1 (grey) or 3 (RGB) channels; got c={c}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("`images` must be finite; got NaN or infinite values.")
    nrow = math.ceil(math.sqrt(n)) if nrow is None else nrow
    for name, value, lo in (("nrow", nrow, 1), ("padding", padding, 0), ("scale", scale, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"`{name}` must be an int >= {lo}; got {value!r}.")
    if not -1.0 <= pad_value <= 1.0:
        raise ValueError(f"`pad_value` must lie in [-1, 1]; got {pad_value}.")

    pixels = np.clip(np.round((x.astype(np.float64) + 1) * 127.5), 0, 255)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    hs, ws = h * scale, w * scale
    nrow = min(nrow, n)  # as torchvision: no empty columns
    rows = math.ceil(n / nrow)
    fill = round((pad_value + 1) * 127.5)
    grid = np.full((rows * (hs + padding) + padding, nrow * (ws + padding) + padding, c), fill)
    for i in range(n):
        top = padding + (i // nrow) * (hs + padding)
        left = padding + (i % nrow) * (ws + padding)
        grid[top : top + hs, left : left + ws] = pixels[i]
    rgb = np.repeat(grid, 3, axis=-1) if c == 1 else grid
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255)], axis=-1).astype(np.uint8)
    matplotlib.image.imsave(os.fspath(path), rgba, format="png")
