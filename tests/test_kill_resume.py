"""A training run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one.

Both runs are ``jfm train`` subprocesses (the same program, environment and machine), on
2 of the 8 fake CPU devices (data parallel), checkpointing every 2 steps. The killed run is
stopped by SIGKILL as soon as a few checkpoints exist (mid-run, possibly mid-save), then
the same command resumes it. The uninterrupted run also exercises ``--distributed``
(``jax.distributed.initialize`` with one process).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jfm._cli import _restore, main

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30


def train_cmd(out, every, *extra):
    return [
        sys.executable, "-m", "jfm._cli", "train", "--dataset", "moons", "--model", "mlp",
        "--hidden", "16", "--depth", "2", "--batch", "32", "--steps", str(STEPS),
        "--checkpoint-every", str(every), "--ema-decay", "0.9", "--devices", "2", "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip


def finished_steps(out):
    d = Path(out) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    dist = ["--distributed", "--coordinator", f"localhost:{free_port()}"]
    dist += ["--num-processes", "1", "--process-id", "0"]
    # The uninterrupted run saves only at the end (the saving period does not change the
    # training), the other every 2 steps, so that the kill lands between checkpoints.
    run_full = subprocess.Popen(train_cmd(full, STEPS, *dist), cwd=ROOT, env=env)
    run_killed = subprocess.Popen(train_cmd(killed, 2), cwd=ROOT, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(finished_steps(killed)) < 1 or max(finished_steps(killed)) < 4:
        assert run_killed.poll() is None, run_killed.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run to kill made no checkpoint in time"
        time.sleep(0.02)
    run_killed.send_signal(signal.SIGKILL)
    run_killed.wait()
    at_kill = finished_steps(killed)
    assert run_killed.returncode == -signal.SIGKILL
    assert max(at_kill) < STEPS, "the run finished before it could be killed"
    resumed = subprocess.run(
        train_cmd(killed, 2), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    assert run_full.wait(timeout=300) == 0
    assert finished_steps(full)[-1] == finished_steps(killed)[-1] == STEPS

    cfg = json.loads((full / "config.json").read_text())
    _, _, state_full = _restore(full, cfg)
    _, _, state_killed = _restore(killed, cfg)
    for a, b in zip(jax.tree.leaves(state_full), jax.tree.leaves(state_killed), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit
    # and so are the samples drawn from the two checkpoints
    for out in (full, killed):
        argv = ["sample", "--out", str(out), "--n", "16", "--seed", "1", "--solver", "euler"]
        assert main([*argv, "--sample-steps", "8", "--save", str(out / "s.npy")]) == 0
    np.testing.assert_array_equal(np.load(full / "s.npy"), np.load(killed / "s.npy"))


def sigterm_cmd(out, steps):
    return [
        sys.executable, "-m", "jfm._cli", "train", "--dataset", "moons", "--hidden", "16",
        "--depth", "2", "--batch", "32", "--steps", str(steps), "--checkpoint-every", "20",
        "--devices", "1", "--no-progress", "--out", str(out),
    ]  # fmt: skip


@pytest.mark.slow
def test_sigterm_mid_run_checkpoints_the_current_step_and_resumes_bit_identically(tmp_path):
    """A preemption notice (SIGTERM) makes ``jfm train`` checkpoint the step it reached,
    whatever --checkpoint-every says, and exit with 128 + SIGTERM; the same command
    then resumes, and the run ends bit-identical to an uninterrupted one."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    steps, full, stopped = 600, tmp_path / "full", tmp_path / "stopped"
    run_full = subprocess.Popen(sigterm_cmd(full, steps), cwd=ROOT, env=env)
    run = subprocess.Popen(
        sigterm_cmd(stopped, steps), cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not finished_steps(stopped):  # the loop (and its handler) is running
        assert run.poll() is None, run.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the run made no checkpoint in time"
        time.sleep(0.01)
    run.send_signal(signal.SIGTERM)
    err = run.communicate(timeout=300)[1]
    assert run.returncode == 128 + signal.SIGTERM, err[-2000:]
    at = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert at < steps, "the run finished before the signal arrived"
    assert max(finished_steps(stopped)) == at  # saved at the signal's step
    resumed = subprocess.run(
        sigterm_cmd(stopped, steps), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-2000:]
    assert run_full.wait(timeout=300) == 0
    cfg = json.loads((full / "config.json").read_text())
    for a, b in zip(
        jax.tree.leaves(_restore(full, cfg)[2]), jax.tree.leaves(_restore(stopped, cfg)[2])
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit
    for out in (full, stopped):
        argv = ["sample", "--out", str(out), "--n", "16", "--seed", "1", "--solver", "euler"]
        assert main([*argv, "--sample-steps", "8", "--save", str(out / "s.npy")]) == 0
    np.testing.assert_array_equal(np.load(full / "s.npy"), np.load(stopped / "s.npy"))
