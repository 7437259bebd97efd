"""Infinitely wide networks classify handwritten digits, and a finite one follows them.

scikit-learn's bundled 8x8 digits (1,797 images, no download) and a three-layer ReLU
network, in two ways:

1. Infinite width, through `kernelalg.predict`: the NNGP and NTK posterior means
   (`gp_inference`). The NNGP one is Bayesian inference with the infinitely wide
   network as prior; the NTK one is that network trained to convergence by gradient
   descent on the mean squared error.
2. Finite width: the layer's finite twin (`net.init`, an equinox module) trained with
   optax by full-batch gradient descent on the same loss, next to the closed-form
   prediction for an infinitely wide network with the same initial outputs trained for
   the same time (`gradient_descent_mse`; Lee et al. 2019, arXiv:1902.06720). The gap
   between the two is the finite network's departure from its linearisation with the
   analytic NTK, and shrinks as the width grows.

Run with `python examples/digits.py [--plot digits.png] [--steps 200]` (needs the
`examples` extra: scikit-learn, optax, matplotlib). It prints test accuracies and the
RMSE between the finite network's test outputs and the infinite-width prediction, and
saves a plot of the test loss during training.
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import kernelalg as ka
from kernelalg import layers as kl, predict as kp


def network(width: int = 512) -> kl.AbstractLayer:
    # The kernels do not depend on `width`; only the finite twin does.
    return kl.Serial(
        kl.Dense(width, W_std=1.5, b_std=0.05),
        kl.Relu(),
        kl.Dense(width, W_std=1.5, b_std=0.05),
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


def mse(f: Float[Array, "*t n k"], y: Float[Array, "n k"]) -> Float[Array, "*t"]:
    r"""$\frac{1}{2|Y|}\lVert f - Y \rVert^2$: neural-tangents' normalisation, which `predict` assumes."""
    # Explicit broadcast over the time axes: the tests forbid implicit rank promotion.
    return 0.5 * jnp.sum((f - jnp.broadcast_to(y, f.shape)) ** 2, axis=(-2, -1)) / y.size


def train(model: eqx.Module, x_train, y_train, x_test, learning_rate: float, steps: int):
    r"""Full-batch gradient descent (optax SGD) on `mse` of the centred network.

    The centred network $f(x; \theta) - f(x; \theta_0)$ has the gradients, hence the
    NTK, of $f$ and outputs 0 at initialisation, so the infinite-width prediction it
    follows is the mean of the infinite ensemble rather than one random draw, whose
    initial outputs (standard deviation about 1.7 here, against targets of 0.3) would
    dominate the test predictions.

    **Returns:** the train loss before each step, and the test outputs after each step,
    shapes `(steps,)` and `(steps, n_test, 10)`.
    """
    # `W_std` and `b_std` are array leaves of the twin too, read through
    # `stop_gradient`: their gradients are zero and SGD leaves them alone.
    params, static = eqx.partition(model, eqx.is_inexact_array)
    f_train_0, f_test_0 = jax.vmap(model)(x_train), jax.vmap(model)(x_test)
    optimizer = optax.sgd(learning_rate)

    def loss(params):
        return mse(jax.vmap(eqx.combine(params, static))(x_train) - f_train_0, y_train)

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = optimizer.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), (value, jax.vmap(eqx.combine(params, static))(x_test) - f_test_0)

        _, history = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
        return history

    return run(params)


def accuracy(outputs: Float[Array, "n k"], y_mean: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(np.asarray(outputs) + y_mean, axis=1) == labels))


def main(
    n_samples: int | None = None,
    *,
    steps: int = 200,
    width: int = 512,
    plot: str | None = None,
    verbose: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Fit and score the infinite-width predictions and the finite network.

    `n_samples` subsamples the 1,797 digits (the tests use a few hundred); `steps`
    and `width` set the finite network's training; `plot` is a path for the figure
    (None: no figure). Returns test accuracies, the finite-vs-infinite RMSE and the
    runtime in seconds.
    """
    start = time.perf_counter()

    x_train, x_test, l_train, l_test = load(n_samples, seed)
    one_hot = np.eye(10)[l_train]
    # Centred targets: a mean-zero prior then needs no learned offset.
    y_mean = one_hot.mean(axis=0, keepdims=True)
    # float32 throughout, whatever `jax_enable_x64` says: the kernels and solves follow
    # the inputs' dtype, and this problem passes the solves' float32 diagnostics at
    # `diag_reg=1e-4` with the float64 accuracies (see "Precision" in docs/api/predict.md).
    y_train = jnp.asarray(one_hot - y_mean, jnp.float32)
    x_train, x_test = jnp.asarray(x_train, jnp.float32), jnp.asarray(x_test, jnp.float32)

    net = network(width)
    k_train_train = ka.kernel(net, x_train)
    k_test_train = ka.kernel(net, x_test, x_train)

    # 1. Infinite width, t = infinity: the NNGP and NTK posterior means.
    posterior = kp.gp_inference(k_train_train, y_train, diag_reg=1e-4)
    nngp, ntk = posterior(get=("nngp", "ntk"), k_test_train=k_test_train)
    results = {"nngp": accuracy(nngp, y_mean, l_test), "ntk": accuracy(ntk, y_mean, l_test)}

    # 2. A finite network of the same architecture trained for `steps` steps of
    # gradient descent, next to gradient flow with the analytic NTK. Both start from
    # zero outputs (the network is centred, see `train`), so the flow is also the mean
    # of the infinite ensemble (`gradient_descent_mse_ensemble`), computed here from
    # kernels already at hand. Its eigendecomposition also gives the largest stable
    # learning rate, 2|Y| / lambda_max (`max_learning_rate`), of which we take half.
    flow = kp.gradient_descent_mse(k_train_train, y_train, diag_reg=1e-4)
    learning_rate = 0.5 * 2 * y_train.size / float(flow.eigen.evals[-1])
    model = net.init(jax.random.key(seed), x_train.shape[1:])
    # `init` draws parameters in JAX's default float dtype (float64 under x64).
    model = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32) if eqx.is_inexact_array(v) else v, model)
    finite_train_loss, finite_test = train(model, x_train, y_train, x_test, learning_rate, steps)

    # Time is in units of the learning rate, as in neural-tangents: with the flow's
    # `learning_rate=1`, `s` optax steps of size `learning_rate` are t = s * learning_rate.
    steps_plotted = np.unique(np.geomspace(1, steps, 40).round().astype(int))
    infinite_train, infinite_test = flow(steps_plotted * learning_rate, 0.0, 0.0, k_test_train)

    final, infinite_final = finite_test[-1], infinite_test[-1]
    results["finite"] = accuracy(final, y_mean, l_test)
    results["infinite"] = accuracy(infinite_final, y_mean, l_test)
    results["rmse"] = float(jnp.sqrt(jnp.mean((final - infinite_final) ** 2)))
    # The scale to read the RMSE against.
    results["rms"] = float(jnp.sqrt(jnp.mean(infinite_final**2)))
    results["learning_rate"] = learning_rate
    results["seconds"] = time.perf_counter() - start

    if plot is not None:
        y_test = jnp.asarray(np.eye(10)[l_test] - y_mean, jnp.float32)
        curves = {
            # The loss before step s + 1 is the loss after s steps; step 0 is off the log axis.
            f"finite (width {width}), train": (np.arange(1, steps), finite_train_loss[1:]),
            f"finite (width {width}), test": (np.arange(1, steps + 1), mse(finite_test, y_test)),
            "infinite, train": (steps_plotted, mse(infinite_train, y_train)),
            "infinite, test": (steps_plotted, mse(infinite_test, y_test)),
        }
        save_plot(plot, curves, final, infinite_final, steps)

    if verbose:
        print(f"digits: {len(l_train)} train, {len(l_test)} test, {x_train.shape[1]} features")
        print(f"NNGP posterior mean test accuracy: {results['nngp']:.4f}")
        print(f"NTK  posterior mean test accuracy: {results['ntk']:.4f}")
        print(f"after {steps} steps of gradient descent, learning rate {learning_rate:.3g}:")
        print(f"  finite network (width {width}) test accuracy: {results['finite']:.4f}")
        print(f"  infinite-width prediction test accuracy:     {results['infinite']:.4f}")
        print(
            f"  RMSE between their test outputs: {results['rmse']:.4f} "
            f"(RMS of the infinite-width outputs: {results['rms']:.4f})"
        )
        if plot is not None:
            print(f"plot saved to {plot}")
        print(f"runtime: {results['seconds']:.2f} s")
    return results


def save_plot(path: str, curves: dict, finite: Array, infinite: Array, steps: int) -> None:
    import matplotlib

    # No display needed: the figure goes to a file.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for (label, (x, y)), style in zip(curves.items(), ("C0-", "C1-", "C0--", "C1--")):
        left.plot(x, np.asarray(y), style, label=label)
    left.set(xscale="log", yscale="log", xlabel="optax steps", ylabel="MSE", title="Loss during training")
    left.legend()
    finite, infinite = np.asarray(finite).ravel(), np.asarray(infinite).ravel()
    right.scatter(infinite, finite, s=2, alpha=0.4)
    lo, hi = min(infinite.min(), finite.min()), max(infinite.max(), finite.max())
    right.plot([lo, hi], [lo, hi], "k--", lw=1)
    right.set(xlabel="infinite width", ylabel="finite network", title=f"Test outputs after {steps} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", default="digits.png", help="where to save the figure ('' for none)")
    parser.add_argument("--steps", type=int, default=200, help="gradient descent steps of the finite network")
    parser.add_argument("--width", type=int, default=512, help="hidden width of the finite network")
    args = parser.parse_args()
    main(steps=args.steps, width=args.width, plot=args.plot or None)
