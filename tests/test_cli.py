"""Tests for the `jfm` command line (in-process calls of jfm._cli.main via the entry point)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import jax.numpy as jnp
import numpy as np
import pytest

import jfm
from jfm._cli import main  # the console-script entry point itself

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "--depth", "2", "--batch", "64", "--no-progress"]


def _train(out, steps, *extra):
    argv = ["train", "--dataset", "moons", "--steps", str(steps), "--out", str(out)]
    return main([*argv, "--checkpoint-every", "10", *TINY, *extra])


def _sample(out, save, seed=0, n=50):
    argv = ["sample", "--out", str(out), "--n", str(n), "--seed", str(seed)]
    return main(
        [*argv, "--save", str(save), "--solver", "tsit5", "--rtol", "1e-4", "--atol", "1e-4"]
    )


def test_help_and_version_read(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "train", "sample", "likelihood", "bench"):
        assert cmd in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"jfm {jfm.__version__}"
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--coupling", "--loss", "--pred", "--time-sampler", "--nan-policy"):
        assert flag in out


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


def test_train_refuses_other_config_in_same_dir_and_resumes_with_the_saved_flags(tmp_path):
    from jfm._cli import _train_config, make_parser

    def config(*argv):
        return _train_config(make_parser().parse_args(["train", *argv, "--out", str(tmp_path)]),
                             tmp_path)  # fmt: skip

    cfg, resuming = config("--steps", "10", "--lr-schedule", "cosine", *TINY)
    assert not resuming and cfg["hidden"] == 16 and cfg["pred"] == "velocity"
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # as jfm train writes it
    with pytest.raises(SystemExit, match=r"another configuration: --lr 0.01 \(saved: 0.001\)"):
        _train(tmp_path, 10, "--lr", "0.01")
    with pytest.raises(SystemExit, match=r"--steps 20 \(saved: 10\)"):  # a cosine over --steps
        config("--steps", "20")
    # Flags left out take the saved values; --keep and --nan-policy may change.
    cfg, resuming = config("--keep", "1", "--nan-policy", "skip_step", "--hidden", "16")
    assert resuming and cfg["hidden"] == 16 and cfg["lr_schedule"] == "cosine"
    assert (cfg["keep"], cfg["nan_policy"], cfg["steps"]) == (1, "skip_step", 10)


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


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """Small array files, good and bad, for ``--data`` (no training needed to test the
    checks: each is refused before any model is built)."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(60, 3)) * [1.0, 2.0, 0.5]).astype(np.float32)
    files = {"vec": d / "vec.npy", "two": d / "two.npz", "int": d / "int.npy"}
    np.save(files["vec"], x)
    np.savez(files["two"], x=x, y=np.arange(60))
    np.save(files["int"], np.arange(180).reshape(60, 3))
    bad = x.copy()
    bad[7, 1] = np.inf
    files["nan"] = d / "nan.npy"
    np.save(files["nan"], bad)
    files["few"] = d / "few.npy"
    np.save(files["few"], x[:4])
    files["obj"] = d / "obj.npy"
    np.save(files["obj"], np.array([{"a": 1}] * 12, dtype=object), allow_pickle=True)
    files["img7"] = d / "img7.npy"
    np.save(files["img7"], np.zeros((12, 7, 7, 1), np.float32))
    files["txt"] = d / "x.csv"
    files["txt"].write_text("1,2\n")
    return files


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("two", [], r"holds 2 arrays \['x', 'y'\]: name the one to use with --data-key"),
        ("two", ["--data-key", "z"], r"--data-key 'z' is not in .*two.npz; it holds"),
        ("vec", ["--data-key", "x"], "is a .npy file"),
        ("int", [], "must be floating .* got dtype int64"),
        ("nan", [], r"1 non-finite values .* \(the first: row 7\)"),
        ("few", [], "needs at least 10 rows"),
        ("obj", [], "Python objects, which would need unpickling"),
        ("img7", [], "height and width must be multiples of 2"),
        ("txt", [], "must be a .npy or .npz file"),
        ("vec", ["--model", "unet"], "--model unet needs image data"),
        ("vec", ["--dataset", "moons"], "either --dataset .* or --data FILE"),
        ("vec", ["--loss", "dsm", "--coupling", "exact-ot"], "--loss dsm regresses"),
        ("vec", ["--holdout", "1.5"], r"--holdout must lie in \(0, 1\)"),
    ],
)
def test_train_data_file_errors(data_files, tmp_path, name, extra, message):
    argv = ["train", "--data", str(data_files[name]), "--out", str(tmp_path / "r"), *extra]
    with pytest.raises(SystemExit, match=message):
        main(argv)
    assert not (tmp_path / "r").exists()  # refused before anything is written
    with pytest.raises(SystemExit, match="no such file"):
        main(["train", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "r")])


def _jfm(*argv, **kw):
    """``jfm ARGV...`` as a subprocess (the console script's module), CPU only."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "jfm._cli", *map(str, argv)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=PIPE, stderr=PIPE, **kw)


def _done(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
def test_train_on_a_file_then_sample_likelihood_and_bench_as_subprocesses(tmp_path):
    import diffrax as dfx

    from jfm._cli import _load_config, _path, _restore

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(200, 3)) * [1.0, 2.0, 0.5] + [1.0, 0.0, -1.0]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run, b = tmp_path / "run", tmp_path / "bench"
    train = _jfm("train", "--data", tmp_path / "x.npy", "--steps", 20, "--checkpoint-every", 10,
                 *TINY[:-1], "--batch", 32, "--no-progress", "--out", run)  # fmt: skip
    bench = _jfm("bench", "--problem", "gaussian", "--solvers", "Euler", "Heun", "--steps", 4, 8,
                 16, "--tolerances", "--repeat", 1, "--n", 8, "--save-dir", b)  # fmt: skip
    out = _done(train)
    assert "trained to step 20" in out and "held-out loss" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["event_shape"] == [3] and cfg["model"] == "mlp" and cfg["data_rows"] == 200
    lp = tmp_path / "lp.npy"
    argv = ["--data", tmp_path / "x.npy", "--n", 24, "--batch-size", 16, "--save", lp]
    likelihood = _jfm("likelihood", "--out", run, "--solver", "heun", "--steps", 8, *argv)
    # jfm bench on an exact problem: the table, the CSV and the plot; Euler's and Heun's
    # fitted orders of convergence near 1 and 2.
    out = _done(bench)
    assert {p.name for p in b.iterdir()} == {"bench.md", "bench.csv", "bench.png"}
    assert len((b / "bench.csv").read_text().strip().splitlines()) == 1 + 6
    orders = dict(kv.rsplit(" ", 1) for kv in out.split("fitted orders (fixed steps): ")[1]
                  .splitlines()[0].split(", "))  # fmt: skip
    assert abs(float(orders["Euler"]) - 1) < 0.2 and abs(float(orders["Heun"]) - 2) < 0.3
    # jfm sample from the best checkpoint (in this process).
    argv = ["sample", "--out", run, "--n", 16, "--solver", "euler", "--sample-steps", 4]
    assert main([*map(str, argv), "--checkpoint", "best", "--save", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (16, 3) and np.all(np.isfinite(s))
    # jfm likelihood == jfm.log_prob called directly on the same checkpoint and points
    # (to float32 round-off: this process runs with float64 enabled).
    out = _done(likelihood)
    logp = np.load(lp)
    apply, params, _ = _restore(run, _load_config(run))
    field = jfm.field_from_model(apply, params)
    direct, _ = jfm.log_prob(field, jnp.asarray(x[:24]), solver=dfx.Heun(), steps=8,
                             path=_path(cfg))  # fmt: skip
    assert logp.shape == (24,) and logp.dtype == np.float32
    np.testing.assert_allclose(logp, np.asarray(direct), rtol=1e-5, atol=1e-5)
    se = np.std(logp, ddof=1) / np.sqrt(24)
    assert f"{np.mean(logp):.4f} +- {se:.4f} nats" in out and "bits/dim (D=3)" in out
    # jfm bench on the trained field (in this process): a float64 reference solve.
    argv = ["bench", "--out", run, "--solvers", "Euler", "--steps", 2, "--tolerances", "--n", 2]
    assert main([*map(str, argv), "--repeat", "1", "--save-dir", str(tmp_path / "b2")]) == 0
    assert "x.npy model (step 20)" in (tmp_path / "b2" / "bench.md").read_text()


@pytest.mark.slow
def test_train_exits_nonzero_when_training_diverges(tmp_path):
    argv = ["train", "--steps", "50", "--lr", "3000", "--out", str(tmp_path), *TINY]
    with pytest.raises(SystemExit, match="training diverged: non-finite grad_norm at step 2"):
        main([*argv, "--checkpoint-every", "5"])
    assert not os.listdir(tmp_path / "checkpoints")  # nothing non-finite was saved


@pytest.mark.slow
def test_sample_with_few_nfe_solvers_and_grids(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, 20) == 0
    base = ["sample", "--out", str(out), "--n", "40", "--seed", "3"]
    runs = {}
    for name, extra in [
        ("dpmpp", ["--solver", "dpmpp-2m", "--steps", "6", "--grid", "edm"]),
        ("edm", ["--solver", "edm", "--steps", "5", "--grid", "logsnr"]),
        ("churn", ["--solver", "edm", "--steps", "5", "--grid", "logsnr", "--churn", "2"]),
        ("euler", ["--solver", "euler", "--steps", "6", "--grid", "shift"]),
    ]:
        save = tmp_path / f"{name}.npy"
        capsys.readouterr()
        assert main([*base, "--save", str(save), *extra]) == 0
        assert "NFE" in capsys.readouterr().out
        runs[name] = np.load(save)
        assert runs[name].shape == (40, 2) and np.all(np.isfinite(runs[name]))
    # A few-NFE solve of the same model lands near the adaptive solve; churn changes it.
    ref = tmp_path / "ref.npy"
    assert _sample(out, ref, seed=3, n=40) == 0
    assert np.sqrt(np.mean((runs["dpmpp"] - np.load(ref)) ** 2)) < 0.5
    assert np.max(np.abs(runs["churn"] - runs["edm"])) > 1e-3
    with pytest.raises(SystemExit):
        main([*base, "--save", str(tmp_path / "x.npy"), "--solver", "unipc"])
