"""The neural-tangents side of a benchmark case, run in NT's own interpreter.

Usage: `$NT_PYTHON benchmarks/_nt_side.py CASE.json`. The JSON holds the network spec,
the path of the saved inputs (.npz), the case kind and options, `x64` and, optionally,
`save` (an .npz path for the outputs, to check agreement). Protocol, one JSON object
per stdout line: after the first (compiling) call it prints `{"ready": ..}`; each
stdin line `call` runs one timed call and prints `{"time_s": ..}`; any other line (or
EOF) ends it, saves the outputs and prints the report: timings, dtype, versions.

Self-contained on purpose: NT 0.6.5 needs jax 0.4.23, so this file runs without
kernelalg (or anything from its virtualenv) importable, and must stay so.
"""

import json
import statistics
import sys
import time
import types


def _import_nt():
    try:
        import neural_tangents
    except ImportError:
        # NT's __init__ imports `experimental`, which pulls in jax2tf and so
        # TensorFlow; the reference venv is installed without it (--no-deps). Nothing
        # benchmarked here needs `experimental`, so stand in an empty module for it.
        for name in [m for m in sys.modules if m.split(".")[0] == "neural_tangents"]:
            del sys.modules[name]
        sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
        import neural_tangents
    return neural_tangents


# kernelalg names that stax spells differently; every other name is looked up as is.
_STAX_NAMES = {"Serial": "serial", "Parallel": "parallel", "Repeat": "repeat"}


def build(spec, stax):
    """Build `(init_fn, apply_fn, kernel_fn)` from a spec `[name, kwargs, children]`."""
    name, kwargs, *rest = spec
    children = [build(c, stax) for c in rest[0]] if rest else []
    # JSON has no tuples; NT's pooling concatenates window shapes with tuples.
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return getattr(stax, _STAX_NAMES.get(name, name))(*children, **kwargs)


def _kernel_case(nt, net, arrays, options):
    import jax

    _, _, kernel_fn = net
    get = tuple(options.get("get", ("nngp", "ntk")))
    # NT's documented fast path: jit with `get` static. Unjitted, NT dispatches op by
    # op, which would flatter kernelalg.
    mask_constant = options.get("mask_constant")
    kernel_fn = jax.jit(kernel_fn, static_argnames=("get", "mask_constant"))
    x1 = jax.device_put(arrays["x1"])
    x2 = jax.device_put(arrays["x2"]) if "x2" in arrays else None

    def run():
        return kernel_fn(x1, x2, get, mask_constant=mask_constant)

    def outputs(result):
        return {g: getattr(result, g) for g in get}

    return run, outputs


# One entry per case kind; a new kind (predictions, empirical NTK, ...) adds a
# function returning `(thunk, outputs)`, mirrored in `_harness.KA_RUNNERS`.
RUNNERS = {"kernel": _kernel_case}


def main(path):
    with open(path) as f:
        case = json.load(f)
    import jax

    # Set before anything touches JAX: NT promotes every kernel to float64 when x64 is
    # on, so float32 timings need it off.
    jax.config.update("jax_enable_x64", bool(case["x64"]))
    import numpy as np

    nt = _import_nt()
    from neural_tangents import stax

    with np.load(case["inputs"]) as data:
        arrays = {k: data[k] for k in data.files}
    net = build(case["spec"], stax)
    run, outputs = RUNNERS[case["kind"]](nt, net, arrays, case.get("options", {}))

    t0 = time.perf_counter()
    result = jax.block_until_ready(run())
    first = time.perf_counter() - t0
    _say({"ready": True, "first_s": first})

    # Driven call by call from stdin so that the harness can alternate NT's calls
    # with kernelalg's: load on a shared machine drifts within seconds, and
    # alternating makes it hit both sides alike.
    times = []
    for line in sys.stdin:
        if line.strip() != "call":
            break
        t0 = time.perf_counter()
        result = jax.block_until_ready(run())
        times.append(time.perf_counter() - t0)
        _say({"time_s": times[-1]})

    outs = {k: np.asarray(v) for k, v in outputs(result).items()}
    if case.get("save"):
        np.savez(case["save"], **outs)
    _say(
        {
            "first_s": first,
            "times_s": times,
            "median_s": statistics.median(times) if times else first,
            "dtype": str(next(iter(outs.values())).dtype),
            "nt_version": nt.__version__,
            "jax_version": jax.__version__,
            "backend": jax.default_backend(),
        }
    )


def _say(obj):
    print(json.dumps(obj), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
