"""Predictions: kernelalg.predict against neural-tangents' predict, on the same kernels and targets.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_predict.py [--repeats 3] [--quick] [--only TEXT]
        [--no-nt] [--json PATH]

(One OpenBLAS thread on a small shared machine: see benchmarks/README.md, "Predictions".)

The NNGP and NTK of 3 × [Dense(512), Relu] + Dense(1) on standard normal inputs of
dimension 64 (N_train 2048 and 4096, N_test 512; `--quick`: 256 and 64) are computed
once per case by kernelalg and saved; both sides load the same kernels and the same
targets (N_train × 10, standard normal) and time, from kernels to outputs:

* `gradient_descent_mse`, `t=None` and 10 times (NTK; train and test outputs from
  zero initial outputs);
* `gp_inference`, NNGP and NTK posterior means on the test set;
* `gradient_descent_mse_ensemble` at 10 times, NNGP and NTK means, with a `kernel_fn`
  that returns the saved kernels (so that no side computes kernels in the timing).

Each timed call builds the predictor and calls it, since both libraries factor the
train-train kernel once per predictor (kernelalg at construction, NT on the first
call) and caching would otherwise hide the factorisation. `diag_reg=1e-2` (relative to
the mean diagonal) keeps the float32 ReLU kernels at N = 4096 within kernelalg's
definiteness test (condition number below about 1/(10 eps) ≈ 8e5); NT runs the same
solves unchecked. NT is called eagerly, as its documentation does: its predictors
factor under `jax.core.eval_context` and cache with `functools.lru_cache`, which
`jax.jit` cannot trace through. See benchmarks/README.md.

This file is also the NT side of its cases: the harness runs it in NT's interpreter
with the case's JSON as sole argument, where it adds its runner to `_nt_side.RUNNERS`
and hands over to `_nt_side.main`. That branch imports nothing from kernelalg.
"""

import collections
import sys


# Everything both sides need is defined above the `__main__` split, without kernelalg.
DIAG_REG = 1e-2
LEARNING_RATE = 1.0
# Times in units of the learning rate; with |Y| = 10 N they span the NTK's spectrum
# from the top eigenvalues' time scale to beyond the smallest ones'.
TIMES = [float(t) for t in (10.0 ** (1 + 0.6 * i) for i in range(10))]

Kernels = collections.namedtuple("Kernels", ["nngp", "ntk"])


def lookup_kernel_fn(arrays, n_train):
    """`kernel_fn(x1, x2, get)` that returns the saved kernels instead of computing them.

    The train inputs are told from the test inputs by their number; `get` is a string
    (NT asks so for one kernel and then expects an array) or a tuple (a `Kernels`).
    """

    def kernel_fn(x1, x2, get):
        if x2 is None and x1.shape[0] == n_train:
            k = Kernels(arrays["nngp_train"], arrays["ntk_train"])
        elif x2 is not None:
            k = Kernels(arrays["nngp_test"], arrays["ntk_test"])
        else:
            raise ValueError("the test-test kernel was not saved (no `compute_cov` case)")
        return getattr(k, get) if isinstance(get, str) else k

    return kernel_fn


def predict_runner(predict, arrays, options):
    """`(run, outputs)` for one prediction case, for either library's `predict` module.

    Both libraries share the names and meanings of these functions and arguments,
    so one runner serves both sides; only the arrays' module differs.
    """
    import numpy as np

    algo, y = options["algo"], arrays["y_train"]
    # JSON has no arrays; times in the targets' dtype on both sides.
    t = None if options.get("t") is None else np.asarray(options["t"], y.dtype)
    k_train = Kernels(arrays["nngp_train"], arrays["ntk_train"])
    k_test = Kernels(arrays["nngp_test"], arrays["ntk_test"])
    reg = {"diag_reg": DIAG_REG}

    if algo == "mse":

        def run():
            fn = predict.gradient_descent_mse(k_train.ntk, y, learning_rate=LEARNING_RATE, **reg)
            return fn(t, 0.0, 0.0, k_test.ntk)

        def outputs(result):
            return {"fx_train": result[0], "fx_test": result[1]}

    elif algo == "gp":

        def run():
            fn = predict.gp_inference(k_train, y, **reg)
            return fn(("nngp", "ntk"), k_test)

        def outputs(result):
            return {"nngp": result[0], "ntk": result[1]}

    elif algo == "ensemble":
        kernel_fn = lookup_kernel_fn(arrays, y.shape[0])

        def run():
            fn = predict.gradient_descent_mse_ensemble(
                kernel_fn, arrays["x_train"], y, learning_rate=LEARNING_RATE, **reg
            )
            return fn(t, arrays["x_test"], ("nngp", "ntk"))

        def outputs(result):
            return {"nngp": result[0], "ntk": result[1]}

    else:
        raise ValueError(f"unknown prediction case {algo!r}")
    return run, outputs


def _nt_predict(nt, net, arrays, options):
    import jax

    del net  # the kernels are given
    arrays = {k: jax.device_put(v) for k, v in arrays.items()}
    return predict_runner(nt.predict, arrays, options)


if __name__ == "__main__" and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
    # Run by the harness in NT's interpreter (see the module docstring).
    import _nt_side

    _nt_side.RUNNERS["predict"] = _nt_predict
    _nt_side.main(sys.argv[1])
    sys.exit(0)


import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import _harness as h  # noqa: E402
import numpy as np  # noqa: E402

import kernelalg as ka  # noqa: E402


# The harness, shared by every benchmark, launches `_nt_side.py`; prediction cases
# need this file's runner there, which `_nt_side.py` (self-contained, owned by the
# harness) does not know. Pointing the harness at this file keeps both untouched.
h.NT_SIDE = Path(__file__).resolve()
h.KA_RUNNERS["predict"] = lambda net, arrays, options: predict_runner(ka.predict, arrays, options)

NETWORK = h.serial(
    *[h.layer("Dense", out_dim=512, W_std=1.5, b_std=0.05), h.layer("Relu")] * 3,
    h.layer("Dense", out_dim=1, W_std=1.5, b_std=0.05),
)
D_IN, N_OUT = 64, 10


@dataclasses.dataclass(frozen=True)
class PredictCase(h.Case):
    """A prediction row: `inputs` are `x_train` and `x_test`; the arrays saved for
    both sides are the kernels of `NETWORK` on them, computed here, and the targets."""

    def make_inputs(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        x = {k: rng.standard_normal(s).astype(self.dtype) for k, s in self.inputs.items()}
        net = h.build_kernelalg(NETWORK)
        k_train = ka.kernel(net, x["x_train"])
        k_test = ka.kernel(net, x["x_test"], x["x_train"])
        n = self.inputs["x_train"][0]
        return {
            **x,
            "nngp_train": np.asarray(k_train.nngp),
            "ntk_train": np.asarray(k_train.ntk),
            "nngp_test": np.asarray(k_test.nngp),
            "ntk_test": np.asarray(k_test.ntk),
            "y_train": rng.standard_normal((n, N_OUT)).astype(self.dtype),
        }


def cases(quick: bool) -> list[h.Case]:
    sizes = [(256, 64)] if quick else [(2048, 512), (4096, 512)]
    kinds = [
        ("gradient_descent_mse, t=None", {"algo": "mse", "t": None}),
        ("gradient_descent_mse, 10 times", {"algo": "mse", "t": TIMES}),
        ("gp_inference, NNGP + NTK", {"algo": "gp"}),
        ("gradient_descent_mse_ensemble, 10 times, NNGP + NTK", {"algo": "ensemble", "t": TIMES}),
    ]
    return [
        PredictCase(
            name=name,
            spec=["Identity", {}],  # unused: the kernels are inputs
            inputs={"x_train": (n, D_IN), "x_test": (m, D_IN)},
            dtype=dtype,
            kind="predict",
            options=options,
        )
        for n, m in sizes
        for dtype in ("float32", "float64")
        for name, options in kinds
    ]


if __name__ == "__main__":
    sys.exit(h.cli(__doc__, cases))
