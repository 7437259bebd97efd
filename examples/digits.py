"""Infinitely wide networks classify handwritten digits.

The NNGP and NTK of a three-layer ReLU network on scikit-learn's bundled 8x8 digits
(1,797 images, no download), and the exact posterior means they imply: the NNGP one is
Bayesian inference with the infinitely wide network as prior, the NTK one is the
network trained to convergence by gradient descent on the mean squared error. Both are
one Cholesky solve against the train-train kernel.

Run with `python examples/digits.py` (needs the `examples` extra: scikit-learn).
"""

import time

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Float
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import kernelalg as ka
from kernelalg import layers as kl


def network() -> kl.AbstractLayer:
    return kl.Serial(
        kl.Dense(512, W_std=1.5, b_std=0.05),
        kl.Relu(),
        kl.Dense(512, W_std=1.5, b_std=0.05),
        kl.Relu(),
        kl.Dense(10, W_std=1.5, b_std=0.05),
    )


def load(n_samples: int | None = None, seed: int = 0):
    """Standardised digits, split 75/25; `n_samples` draws a stratified subset first."""
    x, labels = load_digits(return_X_y=True)
    if n_samples is not None and n_samples < len(labels):
        x, _, labels, _ = train_test_split(
            x, labels, train_size=n_samples, stratify=labels, random_state=seed
        )
    x_train, x_test, l_train, l_test = train_test_split(
        x, labels, test_size=0.25, stratify=labels, random_state=seed
    )
    # Fitted on the training set only, so that no test statistics leak into the prior.
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_test), l_train, l_test


def posterior_mean(
    k_train_train: Float[Array, "n n"],
    k_test_train: Float[Array, "m n"],
    y_train: Float[Array, "n k"],
    diag_reg: float = 1e-4,
) -> Float[Array, "m k"]:
    r"""Exact GP posterior mean $K_{*X} (K_{XX} + \epsilon I)^{-1} Y$.

    `diag_reg` $\epsilon$ is relative to the mean of the diagonal, as in
    neural-tangents' `gp_inference`, so that it means the same at any kernel scale.
    """
    n = k_train_train.shape[0]
    eps = diag_reg * jnp.trace(k_train_train) / n
    factor = jsl.cho_factor(k_train_train + eps * jnp.eye(n, dtype=k_train_train.dtype))
    return k_test_train @ jsl.cho_solve(factor, y_train)


def main(n_samples: int | None = None, *, verbose: bool = True) -> dict[str, float]:
    """Fit and score both posterior means; returns test accuracies and the runtime.

    `n_samples` subsamples the 1,797 digits (the tests use a few hundred).
    """
    # A 1,347 x 1,347 Cholesky of a ReLU kernel loses too many digits in float32.
    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()

    x_train, x_test, l_train, l_test = load(n_samples)
    x_train, x_test = jnp.asarray(x_train), jnp.asarray(x_test)
    one_hot = np.eye(10)[l_train]
    # Centred targets: a mean-zero prior then needs no learned offset.
    y_mean = one_hot.mean(axis=0, keepdims=True)
    y_train = jnp.asarray(one_hot - y_mean)

    net = network()
    k_train_train = ka.kernel(net, x_train)
    k_test_train = ka.kernel(net, x_test, x_train)

    results = {}
    for name in ("nngp", "ntk"):
        mean = posterior_mean(getattr(k_train_train, name), getattr(k_test_train, name), y_train)
        predicted = np.argmax(np.asarray(mean) + y_mean, axis=1)
        results[name] = float(np.mean(predicted == l_test))
    results["seconds"] = time.perf_counter() - start

    if verbose:
        print(f"digits: {len(l_train)} train, {len(l_test)} test, {x_train.shape[1]} features")
        print(f"NNGP posterior mean test accuracy: {results['nngp']:.4f}")
        print(f"NTK  posterior mean test accuracy: {results['ntk']:.4f}")
        print(f"runtime: {results['seconds']:.2f} s")
    return results


if __name__ == "__main__":
    main()
