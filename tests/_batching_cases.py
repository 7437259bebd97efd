"""Networks and inputs shared by tests/test_batching.py and tests/test_compute.py: the
block programs compiled for one file serve the other when both run in one session."""

import jax
import numpy as np

from kernelalg import layers as kl


# N = 7 rows against 5, blocks of 3: divisible by nothing, ragged on both sides.
N1, N2, B = 7, 5, 3
ATOL = 1e-12

FC = kl.Serial(kl.Dense(16, W_std=1.5, b_std=0.1), kl.Relu(), kl.Dense(1, W_std=1.2, b_std=0.05))
CNN = kl.Serial(
    kl.Conv(8, (2, 2), padding="SAME", W_std=1.3, b_std=0.1),
    kl.Relu(),
    kl.AvgPool((2, 2)),
    kl.GlobalAvgPool(),
    kl.Dense(1),
)


def inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(N1, *shape)` and `(N2, *shape)` standard normal inputs, as NumPy arrays."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return np.asarray(jax.random.normal(k1, (N1,) + shape)), np.asarray(jax.random.normal(k2, (N2,) + shape))
