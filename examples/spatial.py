"""Convolutional, residual and attention kernels: Myrtle, a Wide ResNet and masked sequences.

Three networks from the infinite-width literature, written with `kernelalg.layers`:

1. **Myrtle-5** (Shankar et al. 2020, arXiv:2003.02237): Conv/Relu stages separated by
   `AvgPool(2, 2)`, then `GlobalAvgPool` and a readout. Pooling mixes positions, so the
   kernel carries full spatial covariances, `nngp[i, j, h, h', w, w']`.
2. **A Wide ResNet** (Zagoruyko & Komodakis 2016, as in neural-tangents' README):
   residual blocks `FanInSum(main branch, shortcut)`; branches are arguments, not a
   FanOut/parallel pair.
3. **Attention on variable-length sequences**: `GlobalSelfAttention` on sequences padded
   to length 16; padded positions carry `mask_constant` and are left out of every sum
   (attention, pooling), so the kernel of a sequence does not depend on how far it is
   padded.

Both CNNs classify scikit-learn's 8x8 digits as 8x8x1 images by the NNGP posterior mean
(`kernelalg.predict.gp_inference`), next to a fully connected network on the same split.
Run with `python examples/spatial.py [--n-train 100] [--n-test 50]` (`examples` extra).
The CNN kernels hold full spatial covariances, (N_train)^2 x 8^4 entries per array, about
330 MB at the default 100 training images in float64; for larger sets compute them in
blocks.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import kernelalg as ka
from kernelalg import layers as kl, predict as kp


# --8<-- [start:myrtle]
def myrtle5(W_std: float = 2.0**0.5, b_std: float = 0.0) -> kl.AbstractLayer:
    def conv_relu():
        return [kl.Conv(256, (3, 3), padding="SAME", W_std=W_std, b_std=b_std), kl.Relu()]

    return kl.Serial(
        *conv_relu(),
        *conv_relu(),
        kl.AvgPool((2, 2), strides=(2, 2)),
        *conv_relu(),
        kl.AvgPool((2, 2), strides=(2, 2)),
        kl.GlobalAvgPool(),
        kl.Dense(10, W_std=W_std, b_std=b_std),
    )


# --8<-- [end:myrtle]


# --8<-- [start:wide_resnet]
def wide_resnet(block_size: int = 2, k: int = 1, W_std: float = 1.0, b_std: float = 0.0) -> kl.AbstractLayer:
    """Wide ResNet with `block_size` blocks per group and width factor `k`."""

    def block(channels: int, strides: tuple[int, int], channel_mismatch: bool) -> kl.AbstractLayer:
        main = kl.Serial(
            kl.Relu(),
            kl.Conv(channels, (3, 3), strides, padding="SAME", W_std=W_std, b_std=b_std),
            kl.Relu(),
            kl.Conv(channels, (3, 3), padding="SAME", W_std=W_std, b_std=b_std),
        )
        shortcut = (
            kl.Conv(channels, (3, 3), strides, padding="SAME", W_std=W_std, b_std=b_std)
            if channel_mismatch
            else kl.Identity()
        )
        return kl.FanInSum(main, shortcut)

    def group(channels: int, strides: tuple[int, int]) -> kl.AbstractLayer:
        blocks = [block(channels, strides, True)]
        blocks += [block(channels, (1, 1), False) for _ in range(block_size - 1)]
        return kl.Serial(*blocks)

    return kl.Serial(
        kl.Conv(16, (3, 3), padding="SAME", W_std=W_std, b_std=b_std),
        group(16 * k, (1, 1)),
        group(32 * k, (2, 2)),
        kl.AvgPool((4, 4)),
        kl.Flatten(),
        kl.Dense(10, W_std=W_std, b_std=b_std),
    )


# --8<-- [end:wide_resnet]


def mlp() -> kl.AbstractLayer:
    return kl.Serial(
        kl.Flatten(),
        kl.Dense(512, W_std=1.5, b_std=0.05),
        kl.Relu(),
        kl.Dense(10, W_std=1.5, b_std=0.05),
    )


# --8<-- [start:attention_net]
def attention_net() -> kl.AbstractLayer:
    return kl.Serial(
        kl.Conv(64, (3,), padding="SAME", W_std=1.5, b_std=0.05),
        kl.Relu(),
        kl.GlobalSelfAttention(64, 32, 64, n_heads=4, W_key_std=1.0, W_value_std=1.0, W_query_std=1.0),
        kl.Relu(),
        kl.GlobalAvgPool(),
        kl.Dense(1, W_std=1.5, b_std=0.05),
    )


# --8<-- [end:attention_net]


def digits_images(n_train: int, n_test: int, seed: int = 0):
    x, labels = load_digits(return_X_y=True)
    x = (x / 16.0 - 0.5).reshape(-1, 8, 8, 1)
    x_train, x_test, l_train, l_test = train_test_split(
        x, labels, train_size=n_train, test_size=n_test, stratify=labels, random_state=seed
    )
    y_train = np.eye(10)[l_train] - 0.1
    return jnp.asarray(x_train), jnp.asarray(x_test), jnp.asarray(y_train), np.asarray(l_test)


def accuracy(net: kl.AbstractLayer, x_train, x_test, y_train, l_test) -> float:
    k_train = ka.kernel(net, x_train, compute_ntk=False)
    k_test = ka.kernel(net, x_test, x_train, compute_ntk=False)
    mean = kp.gp_inference(k_train.nngp, y_train, diag_reg=1e-4)(get="nngp", k_test_train=k_test.nngp)
    return float(np.mean(np.argmax(np.asarray(mean), axis=1) == l_test))


# --8<-- [start:attention]
def padding_invariance(seed: int = 0) -> float:
    """Largest change of the kernel of three sequences when their padding grows from 10 to 16."""
    rng = np.random.default_rng(seed)
    lengths = (4, 7, 10)
    seqs = [rng.standard_normal((n, 3)) for n in lengths]

    def padded(total: int):
        out = np.full((len(seqs), total, 3), np.nan)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        return jnp.asarray(out)

    # NaN marks padding here: it never occurs in data, so no real position is masked.
    net = attention_net()
    short = ka.kernel(net, padded(10), mask_constant=np.nan)
    long = ka.kernel(net, padded(16), mask_constant=np.nan)
    return max(float(jnp.max(jnp.abs(short.nngp - long.nngp))), float(jnp.max(jnp.abs(short.ntk - long.ntk))))


# --8<-- [end:attention]


def main(n_train: int = 100, n_test: int = 50, verbose: bool = True) -> dict[str, float]:
    data = digits_images(n_train, n_test)
    results = {}
    for name, net in (("mlp", mlp()), ("myrtle5", myrtle5()), ("wide_resnet", wide_resnet())):
        start = time.perf_counter()
        results[name] = accuracy(net, *data)
        results[f"{name}_seconds"] = time.perf_counter() - start
        if verbose:
            print(
                f"{name:12s} NNGP test accuracy {results[name]:.3f} "
                f"({n_train} train, {n_test} test, {results[f'{name}_seconds']:.1f} s)"
            )
    results["padding_change"] = padding_invariance()
    if verbose:
        change = results["padding_change"]
        print(f"attention on masked sequences: kernel change when padded 10 -> 16: {change:.1e}")
    return results


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=50)
    args = parser.parse_args()
    main(args.n_train, args.n_test)
