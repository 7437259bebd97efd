"""Fully connected NNGP+NTK on an accelerator: kernelalg alone (NT 0.6.5 does not run on
current JAX/CUDA), entries per second as N grows.

    python benchmarks/gpu_fc.py [--sizes 2048 8192 16384] [--repeats 5]

Prints one table: N, dtype, nonlinearity, median seconds (after compilation), kernel
entries (NNGP+NTK pairs) per second.
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kernelalg as ka  # noqa: E402
from kernelalg import layers as kl  # noqa: E402


def network(act):
    hidden = [layer for _ in range(3) for layer in (kl.Dense(512, W_std=1.5, b_std=0.05), act)]
    return kl.Serial(*hidden, kl.Dense(1, W_std=1.5, b_std=0.05))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    print(f"device: {jax.devices()[0].device_kind}; d = 784; 3 x [Dense(512), act] + Dense(1)")
    print(f"{'N':>6} {'dtype':>8} {'act':>5} {'median s':>9} {'entries/s':>10}")
    rng = np.random.default_rng(0)
    for n in a.sizes:
        x = rng.standard_normal((n, 784))
        for dtype in (jnp.float32, jnp.float64):
            xx = jnp.asarray(x, dtype)
            for name, act in (("relu", kl.Relu()), ("erf", kl.Erf()), ("gelu", kl.Gelu())):
                net = network(act)
                jax.block_until_ready(ka.kernel(net, xx))
                times = []
                for _ in range(a.repeats):
                    t = time.perf_counter()
                    jax.block_until_ready(ka.kernel(net, xx))
                    times.append(time.perf_counter() - t)
                med = float(np.median(times))
                print(
                    f"{n:>6} {jnp.dtype(dtype).name:>8} {name:>5} {med:>9.4f} {n * n / med:>10.3g}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
