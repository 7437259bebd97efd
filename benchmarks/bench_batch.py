"""Blockwise kernels: `kernelalg.batch` against neural-tangents' `nt.batch`.

    python benchmarks/bench_batch.py [--n 4096] [--batch-size 256] [--repeats 1] [--no-nt]

For an FC network and a pooled CNN (full spatial covariance), the NNGP + NTK of `n`
inputs with themselves in blocks of `--batch-size`: throughput in kernel entries
per second (n² over the median time of the timed calls, after a first, compiling,
call), and peak resident memory of the process above its level before the first
call. Every row runs in a fresh process, so that peaks and compilation caches do not
leak between rows. kernelalg runs with 1 and with 2 CPU devices
(`jax_num_cpu_devices`, blocks spread over both), neural-tangents with one (its
`pmap` path needs `n` divisible by `batch_size * device_count`, and adds nothing on a
CPU whose cores XLA already uses). float32 inputs, `n` divisible by the batch size
(NT needs it; kernelalg does not).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
NT_PYTHON = Path(os.environ.get("NT_PYTHON", Path.home() / ".cache" / "nt-ref" / "bin" / "python"))


def layer(name: str, **kwargs) -> list:
    return [name, kwargs]


def serial(*children: list) -> list:
    return ["Serial", {}, list(children)]


AFFINE = {"W_std": 1.4, "b_std": 0.05}
NETS = {
    "FC": (
        serial(
            layer("Dense", out_dim=512, **AFFINE),
            layer("Relu"),
            layer("Dense", out_dim=512, **AFFINE),
            layer("Relu"),
            layer("Dense", out_dim=1, **AFFINE),
        ),
        (64,),
    ),
    "pooled CNN": (
        serial(
            layer("Conv", out_chan=32, filter_shape=[3, 3], padding="SAME", **AFFINE),
            layer("Relu"),
            layer("AvgPool", window_shape=[2, 2], strides=[2, 2]),
            layer("Conv", out_chan=32, filter_shape=[3, 3], padding="SAME", **AFFINE),
            layer("Relu"),
            layer("GlobalAvgPool"),
            layer("Dense", out_dim=1, **AFFINE),
        ),
        (4, 4, 3),
    ),
}


def _build(spec: list):
    from kernelalg import layers as kl

    name, kwargs, *rest = spec
    children = [_build(c) for c in rest[0]] if rest else []
    return getattr(kl, name)(*children, **kwargs)


def worker(desc: dict) -> dict:
    """One kernelalg row, in this (fresh) process."""
    import jax

    jax.config.update("jax_num_cpu_devices", desc["devices"])
    import numpy as np

    import kernelalg as ka

    x = np.load(desc["inputs"])
    batched = ka.batch(_build(desc["spec"]), desc["batch_size"], device_count=desc["devices"])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = jax.block_until_ready(batched(x))
    first = time.perf_counter() - t0
    times = []
    for _ in range(desc["repeats"]):
        del out
        t0 = time.perf_counter()
        out = jax.block_until_ready(batched(x))
        times.append(time.perf_counter() - t0)
    return {
        "first_s": first,
        "median_s": statistics.median(times) if times else first,
        "rss_base_kib": base,
        "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "dtype": str(out.nngp.dtype),
    }


def _run(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="examples (x1 = x2)")
    parser.add_argument("--cnn-n", type=int, help="examples for the CNN rows (default: --n)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after the first")
    parser.add_argument("--no-nt", action="store_true", help="kernelalg rows only")
    parser.add_argument("--only", choices=sorted(NETS), help="one network only")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="kernelalg device counts")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    import numpy as np

    use_nt = not args.no_nt and NT_PYTHON.is_file()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kabatch-") as tmp:
        for name, (spec, shape) in NETS.items():
            if args.only and name != args.only:
                continue
            n = args.cnn_n if (args.cnn_n and name != "FC") else args.n
            path = Path(tmp) / f"{name}.npy"
            np.save(path, np.random.default_rng(0).standard_normal((n,) + shape).astype(np.float32))
            desc = {"spec": spec, "inputs": str(path), "batch_size": args.batch_size, "repeats": args.repeats}
            runs = [(f"kernelalg, {d} device{'s' * (d > 1)}", d) for d in args.devices]
            for label, devices in runs:
                print(f"running {name}: {label} ...", file=sys.stderr, flush=True)
                d = dict(desc, devices=devices)
                r = _run([sys.executable, str(Path(__file__)), "--worker", json.dumps(d)], env)
                rows.append((name, n, label, r))
            if use_nt:
                print(f"running {name}: neural-tangents ...", file=sys.stderr, flush=True)
                r = _run(
                    [
                        str(NT_PYTHON),
                        str(HERE / "_nt_batch_side.py"),
                        json.dumps(dict(desc, dtype="float32")),
                    ],
                    env,
                )
                rows.append((name, n, f"neural-tangents {r['nt_version']}, 1 device", r))

    print(
        f"n x n NNGP + NTK of x with itself, float32, batch size {args.batch_size}; "
        f"{os.cpu_count()} CPUs; median of {args.repeats} call(s) after a first (compiling) one; "
        "memory: peak RSS above the level before the first call."
    )
    if not use_nt:
        print("neural-tangents not run" + ("" if args.no_nt else f" ({NT_PYTHON} not found)"))
    print()
    print("| network | n | implementation | time s | entries/s | first call s | peak memory MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, n, label, r in rows:
        rate = n * n / r["median_s"]
        mem = (r["rss_peak_kib"] - r["rss_base_kib"]) / 1024
        print(
            f"| {name} | {n} | {label} | {r['median_s']:.2f} | {rate:.3g} | {r['first_s']:.2f} | {mem:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
