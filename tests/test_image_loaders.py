"""Tests for the CIFAR-10 binary and uint8 .npz image loaders (jfm/data/_images.py)."""

import pickle

import numpy as np
import pytest

import jfm


def write_cifar_batch(path, images, labels):
    """The CIFAR-10 binary layout, written independently: label byte, then R, G, B planes."""
    rec = np.concatenate(
        [labels[:, None].astype(np.uint8), images.transpose(0, 3, 1, 2).reshape(len(labels), -1)],
        axis=1,
    )
    rec.astype(np.uint8).tofile(path)


def test_cifar10_binary_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    want_x, want_y = [], []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, 3)
        write_cifar_batch(root / name, x, y)
        want_x.append(x)
        want_y.append(y)
    x, y = jfm.data.load_cifar10(tmp_path, split="train")  # the parent directory works too
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x, np.concatenate(want_x[:5]))
    np.testing.assert_array_equal(y, np.concatenate(want_y[:5]))
    # a pixel by hand: record 0 of the test batch, row 2, column 5, green channel
    raw = np.fromfile(root / "test_batch.bin", np.uint8)
    xt, yt = jfm.data.load_cifar10(root, split="test")
    assert xt[0, 2, 5, 1] == raw[1 + 1024 + 2 * 32 + 5] and yt[0] == raw[0]
    # a truncated file and a missing file are named
    (root / "test_batch.bin").write_bytes(raw[:-5].tobytes())
    with pytest.raises(ValueError, match="3073-byte record"):
        jfm.data.load_cifar10(root, split="test")
    (root / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
        jfm.data.load_cifar10(root)
    with pytest.raises(ValueError, match="`split`"):
        jfm.data.load_cifar10(root, split="val")


class Boom:
    def __reduce__(self):  # unpickling this would run code
        return (exec, ("raise SystemExit('unpickled!')",))


def test_image_npz_never_unpickles(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    y = np.arange(5)
    np.savez(tmp_path / "grey.npz", x=x, y=y)
    got, labels = jfm.data.load_image_npz(tmp_path / "grey.npz", labels_name="y")
    np.testing.assert_array_equal(got, x[..., None])
    np.testing.assert_array_equal(labels, y)
    unit = jfm.data.to_unit_range(got)
    np.testing.assert_array_equal(np.asarray(jfm.data.from_unit_range(unit)), got)
    np.savez(tmp_path / "float.npz", x=x.astype(np.float32))
    with pytest.raises(TypeError, match="uint8"):
        jfm.data.load_image_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "rgba.npz", x=rng.integers(0, 256, (2, 4, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="C in"):
        jfm.data.load_image_npz(tmp_path / "rgba.npz")
    # an object array (a pickle inside the archive) is refused, and nothing runs
    np.savez(tmp_path / "evil.npz", x=np.array([Boom()], dtype=object), allow_pickle=True)
    assert pickle.dumps(Boom())  # it really is a pickle payload
    with pytest.raises(TypeError, match="unpickling"):
        jfm.data.load_image_npz(tmp_path / "evil.npz")
