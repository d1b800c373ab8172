"""Small image data: scikit-learn's bundled digits, ``.npz`` loading, PNG grids.

Images are batch-first and channels-last, ``[N, H, W, C]``, with pixel values in
``[-1, 1]`` (the range jfm's image models are trained on).
"""

import math
import os
import pathlib
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float, Int, UInt8

from .._checks import check_bool, check_finite, check_int, check_name, check_scalar
from ._toy import float_dtype

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
        TypeError: ``dtype`` not floating, ``return_labels`` not a bool.

    Examples:
        >>> import jfm
        >>> jfm.data.digits().shape
        (1797, 8, 8, 1)
    """
    from sklearn.datasets import load_digits  # heavy import: only when asked for

    dtype = float_dtype(dtype)
    check_bool(return_labels, "return_labels")
    bunch = load_digits()
    x = jnp.asarray(bunch.images.reshape(_N_DIGITS, 8, 8, 1) / 8.0 - 1.0, dtype)
    if return_labels:
        return x, jnp.asarray(bunch.target, jnp.int32)
    return x


def load_npz(path: str | os.PathLike, name: str = "x") -> np.ndarray:
    """Load one numeric array from an ``.npz`` archive, never unpickling.

    Uses ``np.load(path, allow_pickle=False)``, so an archive holding Python objects is
    refused instead of executing code. The array is returned as a host NumPy array in its
    stored dtype (e.g. ``uint8`` images: convert with :func:`to_unit_range`); placing it
    on devices is the caller's choice.

    Args:
        path: path of an ``.npz`` file (as written by ``np.savez``/``np.savez_compressed``).
        name: name of the array inside the archive (``np.savez(path, x=...)`` stores
            ``"x"``; positional arrays are ``"arr_0"``, ...).

    Returns:
        The stored array (``np.ndarray``), numeric or boolean.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        ValueError: the file is not an ``.npz`` archive, or has no array ``name`` (the
            message lists the names present).
        TypeError: ``name`` not a string; the array is not numeric (strings, or pickled
            Python objects).

    Examples:
        >>> import os, tempfile, numpy as np, jfm
        >>> path = os.path.join(tempfile.mkdtemp(), "data.npz")
        >>> np.savez(path, x=np.zeros((2, 3), np.uint8))
        >>> jfm.data.load_npz(path, name="x").shape
        (2, 3)
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be the name of an array (a str); got {name!r}.")
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
        if name not in archive.files:
            raise ValueError(
                f"`name` {name!r} is not in {str(p)!r}; the archive holds {archive.files}."
            )
        try:
            arr = archive[name]
        except ValueError as e:  # object arrays need pickle, which is refused
            raise TypeError(
                f"array {name!r} in {str(p)!r} holds Python objects, which would need "
                "unpickling (refused: allow_pickle=False). Store a numeric array."
            ) from e
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"array {name!r} in {str(p)!r} must be numeric; got dtype {arr.dtype}.")
    return arr


def load_image_npz(
    path: str | os.PathLike, name: str = "x", *, labels_name: str | None = None
) -> UInt8[np.ndarray, "n h w c"] | tuple[UInt8[np.ndarray, "n h w c"], np.ndarray]:
    """Load a set of ``uint8`` images from an ``.npz`` archive, never unpickling.

    The archive (``np.savez(path, x=images, y=labels)``) is read by :func:`load_npz`
    (``allow_pickle=False``). Images must be ``uint8``, shaped ``[N, H, W]`` (grey; a
    channel axis is added) or ``[N, H, W, C]`` with ``C`` 1 or 3 (channels-last). Map
    them to the model range with :func:`to_unit_range`.

    Args:
        path: the ``.npz`` file.
        name: name of the image array (default ``"x"``).
        labels_name: name of an integer label array ``[N]`` to return as well, or
            ``None``.

    Returns:
        ``[N, H, W, C]`` ``uint8`` host array; with ``labels_name`` a tuple
        ``(images, labels)``, labels ``[N]`` ``int32``.

    Raises:
        FileNotFoundError: as :func:`load_npz`.
        ValueError: as :func:`load_npz`; also images of another rank, ``C`` not 1 or 3,
            labels not integers or of another length.
        TypeError: as :func:`load_npz`; also images not ``uint8``.
    """
    x = load_npz(path, name)
    if x.dtype != np.uint8:
        raise TypeError(
            f"array {name!r} in {os.fspath(path)!r} must hold uint8 images (pixels 0..255); got "
            f"dtype {x.dtype}."
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"array {name!r} in {os.fspath(path)!r} must have shape [N, H, W] or [N, H, W, C] "
            f"with C in (1, 3) (channels-last); got shape {x.shape}."
        )
    if labels_name is None:
        return x
    y = load_npz(path, labels_name)
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
        raise ValueError(
            f"array {labels_name!r} in {os.fspath(path)!r} must hold [N] = [{x.shape[0]}] "
            f"integer labels; got dtype {y.dtype}, shape {y.shape}."
        )
    return x, y.astype(np.int32)


_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_CIFAR_RECORD = 1 + 32 * 32 * 3


def load_cifar10(
    path: str | os.PathLike, *, split: str = "train"
) -> tuple[UInt8[np.ndarray, "n 32 32 3"], Int[np.ndarray, " n"]]:
    """Read CIFAR-10 from its binary distribution (``cifar-10-binary.tar.gz``), no pickle.

    The "CIFAR-10 binary version" stores 10,000 records per file
    (``data_batch_1.bin`` ... ``data_batch_5.bin`` for training, ``test_batch.bin``); a
    record is 3073 bytes: the label (``0..9``) and then the 32x32 red, green and blue
    planes, row-major. They are read as raw bytes (``np.fromfile``): nothing is
    unpickled (the Python version of the data set is a pickle; it is not supported).

    Args:
        path: the extracted ``cifar-10-batches-bin`` directory, or a directory holding it.
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).

    Returns:
        ``(images, labels)``: ``[N, 32, 32, 3]`` ``uint8`` (channels-last) and ``[N]``
        ``int32`` host arrays, in file order. Convert with :func:`to_unit_range`.

    Raises:
        ValueError: unknown ``split``; a file whose size is not a whole number of records;
            a label outside ``0..9``.
        FileNotFoundError: a batch file is missing (the message names it).
    """
    check_name(split, "split", tuple(_CIFAR_FILES))
    root = pathlib.Path(path)
    if (root / "cifar-10-batches-bin").is_dir():
        root = root / "cifar-10-batches-bin"
    images, labels = [], []
    for name in _CIFAR_FILES[split]:
        f = root / name
        if not f.is_file():
            raise FileNotFoundError(
                f"`path` must hold the CIFAR-10 binary files; {str(f)!r} does not exist. "
                "Extract cifar-10-binary.tar.gz and pass its cifar-10-batches-bin directory."
            )
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % _CIFAR_RECORD:
            raise ValueError(
                f"{str(f)!r} is not a CIFAR-10 binary batch: {raw.size} bytes is not a "
                f"multiple of the {_CIFAR_RECORD}-byte record."
            )
        rec = raw.reshape(-1, _CIFAR_RECORD)
        lab = rec[:, 0]
        if lab.max() > 9:
            raise ValueError(f"{str(f)!r} holds labels outside 0..9 (max {int(lab.max())}).")
        labels.append(lab.astype(np.int32))
        images.append(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(images), np.concatenate(labels)


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
    dtype = float_dtype(dtype)
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
        ValueError: ``images`` concrete with a NaN or inf entry.
    """
    if isinstance(images, (list, tuple)):
        images = np.asarray(images)
    if not isinstance(images, (np.ndarray, np.generic, jax.Array, float)):
        raise TypeError(f"`images` must be a floating array in [-1, 1]; got {type(images)}.")
    x = jnp.asarray(images)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`images` must be a floating array in [-1, 1]; got dtype {x.dtype}.")
    # NaN would cast to an arbitrary pixel value: refuse it where it can be seen.
    x = check_finite(x, "images")
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
        TypeError: ``nrow``, ``padding`` or ``scale`` not a Python int.
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
    nrow = math.ceil(math.sqrt(n)) if nrow is None else check_int(nrow, "nrow")
    padding = check_int(padding, "padding", lo=0)
    scale = check_int(scale, "scale")
    check_scalar(pad_value, "pad_value", lo=-1.0, hi=1.0)
    pad_value = float(pad_value)

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
