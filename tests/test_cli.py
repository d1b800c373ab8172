"""Tests for the `jfm` command line (in-process calls of jfm._cli.main via the entry point)."""

import json
import os

import numpy as np
import pytest

from jfm._cli import main  # the console-script entry point itself

TINY = ["--hidden", "16", "--depth", "2", "--batch", "64", "--no-progress"]


def _train(out, steps, *extra):
    argv = ["train", "--dataset", "moons", "--steps", str(steps), "--out", str(out)]
    return main([*argv, "--checkpoint-every", "10", *TINY, *extra])


def _sample(out, save, seed=0, n=50):
    argv = ["sample", "--out", str(out), "--n", str(n), "--seed", str(seed)]
    return main(
        [*argv, "--save", str(save), "--solver", "tsit5", "--rtol", "1e-4", "--atol", "1e-4"]
    )


def test_help_reads(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "train", "sample"):
        assert cmd in out


@pytest.mark.slow
def test_train_sample_deterministic_and_resume_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(a, 20) == 0
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["dataset"] == "moons" and cfg["steps"] == 20
    # Interrupted run: 10 steps, then the same command with --steps 20 resumes at step 10.
    assert _train(b, 10) == 0
    assert _train(b, 20) == 0
    _sample(a, tmp_path / "a1.npy", seed=3)
    _sample(a, tmp_path / "a2.npy", seed=3)
    _sample(a, tmp_path / "a3.npy", seed=4)
    _sample(b, tmp_path / "b1.npy", seed=3)
    a1, a2, a3, b1 = (np.load(tmp_path / f) for f in ("a1.npy", "a2.npy", "a3.npy", "b1.npy"))
    assert a1.shape == (50, 2) and np.all(np.isfinite(a1))
    np.testing.assert_array_equal(a1, a2)  # same seed, same checkpoint: identical
    np.testing.assert_array_equal(a1, b1)  # resumed run == uninterrupted run, bit for bit
    assert not np.array_equal(a1, a3)  # another seed, other noise
    assert os.path.exists(tmp_path / "a1.png")


def test_train_refuses_other_config_in_same_dir(tmp_path):
    _train(tmp_path, 10)
    with pytest.raises(SystemExit, match="another configuration"):
        _train(tmp_path, 20, "--lr", "0.01")


@pytest.mark.slow
def test_demo_runs_and_reports(tmp_path, capsys):
    argv = ["demo", "--steps", "200", "--n", "300", "--out", str(tmp_path), *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "NFE" in out and "energy distance" in out
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_bad_flags():
    with pytest.raises(SystemExit) as e:
        main(["train", "--steps", "0", "--out", "x"])
    assert e.value.code == 2
    with pytest.raises(SystemExit, match="unknown --dataset"):
        main(["train", "--dataset", "nope", "--steps", "5", "--out", "/tmp/jfm-never", *TINY])
    with pytest.raises(SystemExit, match="holds no config.json"):
        main(["sample", "--out", "/tmp/jfm-no-such-dir", "--n", "5", "--save", "/tmp/x.npy"])
    with pytest.raises(SystemExit) as e:
        main(["sample", "--out", "d", "--n", "5", "--save", "x.npy", "--solver", "euler"])
    assert e.value.code == 2


@pytest.mark.slow
def test_train_unet_on_digits_and_sample_image_grid(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--model", "unet", "--steps", "2", "--batch", "8"]
    assert main([*argv, "--devices", "2", "--out", str(out), "--no-progress"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "unet" and cfg["unet_config"] == "tiny"
    save = tmp_path / "s.npy"
    argv = ["sample", "--out", str(out), "--n", "6", "--seed", "0", "--solver", "euler"]
    assert main([*argv, "--sample-steps", "2", "--save", str(save)]) == 0
    x = np.load(save)
    assert x.shape == (6, 8, 8, 1) and np.all(np.isfinite(x))
    import matplotlib.image

    png = matplotlib.image.imread(save.with_suffix(".png"))
    # 6 images in a 3x3 grid at scale 4: 2 rows of 32 + 3 padding, 3 columns of 32 + 4
    assert png.shape[:2] == (2 * 33 + 1, 3 * 33 + 1)
    with pytest.raises(SystemExit, match="image dataset"):
        main(["train", "--dataset", "moons", "--model", "unet", "--out", str(tmp_path / "m")])
    with pytest.raises(SystemExit, match="multiple of the"):
        main(
            [
                "train",
                "--dataset",
                "moons",
                "--batch",
                "6",
                "--devices",
                "4",
                "--out",
                str(tmp_path / "b"),
            ]
        )
