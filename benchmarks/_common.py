"""Timing helpers shared by the benchmark scripts (not part of the library)."""

import platform
import timeit

import jax


def header() -> str:
    import diffrax
    import flax
    import optax

    dev = jax.devices()[0]
    return (
        f"device: {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s); "
        f"python {platform.python_version()}, jax {jax.__version__}, diffrax "
        f"{diffrax.__version__}, flax {flax.__version__}, optax {optax.__version__}"
    )


def compile_and_time(fn, *args, repeat: int = 5, number: int = 1):
    """(first-call seconds, best of ``repeat`` seconds per call) for ``fn(*args)``."""
    t0 = timeit.default_timer()
    jax.block_until_ready(fn(*args))
    first = timeit.default_timer() - t0
    times = timeit.repeat(lambda: jax.block_until_ready(fn(*args)), number=number, repeat=repeat)
    return first, min(times) / number


def write_table(path, title: str, rows: list[list], columns: list[str], notes: str = "") -> str:
    lines = [f"# {title}", "", header(), ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text
