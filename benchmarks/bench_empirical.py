"""Empirical NTK: kernelalg against neural-tangents, implementation by implementation.

The same network (an MLP of width 512 and depth 3 on N=256 inputs of d=784; a CNN of
two 3x3 convolutions with 64 channels on N=32 images of 16x16x3), the same parameters
(drawn once, in NT's layout, and loaded by both sides), float32, the NTK of the
network's outputs with `trace_axes=(-1,)`. NT runs its stax network through
`jax.jit(nt.empirical_ntk_fn(apply_fn, vmap_axes=0, implementation=i))`; kernelalg
runs the finite twin of the same kernelalg network, with the same weights, through
`ka.empirical_ntk_fn(model, implementation=i)`, and also with `AUTO`.

Each (side, implementation) runs in a fresh process, so that its peak resident memory
(`ru_maxrss`, which includes the interpreter and JAX, about 0.3 GB) is its own. Times
are the first call (compilation included) and the median of `--repeats` later calls.

    .venv/bin/python benchmarks/bench_empirical.py            # the issue's sizes
    .venv/bin/python benchmarks/bench_empirical.py --quick    # small sizes, a smoke run
    .venv/bin/python benchmarks/bench_empirical.py --only mlp --repeats 5 --json out.json

NT's interpreter is `$NT_PYTHON` or `~/.cache/nt-ref/bin/python` (see
`benchmarks/README.md`).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


HERE = Path(__file__).resolve()
IMPLS = ["JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS", "STRUCTURED_DERIVATIVES"]
FULL = {
    "mlp": dict(kind="mlp", width=512, depth=3, n=256, d=784),
    "cnn": dict(kind="cnn", channels=64, n=32, hw=16, c=3),
}
QUICK = {
    "mlp": dict(kind="mlp", width=128, depth=3, n=32, d=64),
    "cnn": dict(kind="cnn", channels=16, n=8, hw=8, c=3),
}
W_STD, B_STD = 1.5, 0.1


def make_arrays(case: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs and parameters in NT's stax layout (weights N(0, 1), 'ntk' scaling)."""
    rng = np.random.default_rng(seed)
    out = {}
    if case["kind"] == "mlp":
        out["x"] = rng.standard_normal((case["n"], case["d"]))
        dims = [case["d"]] + [case["width"]] * case["depth"] + [1]
    else:
        out["x"] = rng.standard_normal((case["n"], case["hw"], case["hw"], case["c"]))
        ch = case["channels"]
        out["w0"] = rng.standard_normal((3, 3, case["c"], ch))
        out["b0"] = rng.standard_normal((ch,))
        out["w1"] = rng.standard_normal((3, 3, ch, ch))
        out["b1"] = rng.standard_normal((ch,))
        dims = [case["hw"] * case["hw"] * ch, 1]
        offset = 2
    if case["kind"] == "mlp":
        offset = 0
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out[f"w{offset + i}"] = rng.standard_normal((a, b))
        out[f"b{offset + i}"] = rng.standard_normal((b,))
    return {k: v.astype(np.float32) for k, v in out.items()}


NT_WORKER = r"""
import json, resource, statistics, sys, time, types
case, impl, arrays_path, out_path, repeats = sys.argv[1:6]
case, repeats = json.loads(case), int(repeats)
import jax
jax.config.update("jax_enable_x64", False)
try:
    import neural_tangents as nt
except ImportError:
    for name in [m for m in sys.modules if m.split(".")[0] == "neural_tangents"]:
        del sys.modules[name]
    sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
    import neural_tangents as nt
from neural_tangents import stax
import numpy as np
import jax.numpy as jnp
a = dict(np.load(arrays_path))
W, B = W_STD_VALUE, B_STD_VALUE
if case["kind"] == "mlp":
    layers, params = [], []
    for i in range(case["depth"]):
        layers += [stax.Dense(case["width"], W, B), stax.Relu()]
        params += [(a[f"w{i}"], a[f"b{i}"]), ()]
    layers.append(stax.Dense(1, W, B))
    params.append((a[f"w{case['depth']}"], a[f"b{case['depth']}"]))
else:
    ch = case["channels"]
    layers = [stax.Conv(ch, (3, 3), padding="SAME", W_std=W, b_std=B), stax.Relu(),
              stax.Conv(ch, (3, 3), padding="SAME", W_std=W, b_std=B), stax.Relu(),
              stax.Flatten(), stax.Dense(1, W, B)]
    params = [(a["w0"], a["b0"].reshape(1, 1, 1, ch)), (), (a["w1"], a["b1"].reshape(1, 1, 1, ch)), (), (),
              (a["w2"], a["b2"])]
_, apply_fn, _ = stax.serial(*layers)
params = jax.tree_util.tree_map(jnp.asarray, params)
x = jnp.asarray(a["x"])
fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                 implementation=getattr(nt.NtkImplementation, impl)))
t = time.perf_counter(); k = jax.block_until_ready(fn(x, None, params)); first = time.perf_counter() - t
times = []
for _ in range(repeats):
    t = time.perf_counter(); k = jax.block_until_ready(fn(x, None, params))
    times.append(time.perf_counter() - t)
np.save(out_path, np.asarray(k))
print(json.dumps(dict(first=first, median=statistics.median(times), peak_mb=resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, jax=jax.__version__)))
""".replace("W_STD_VALUE", repr(W_STD)).replace("B_STD_VALUE", repr(B_STD))


def ka_worker(case: dict, impl: str, arrays_path: str, out_path: str, repeats: int) -> dict:
    import resource
    import statistics
    import time

    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import kernelalg as ka
    from kernelalg import layers as kl

    a = {k: jnp.asarray(v) for k, v in np.load(arrays_path).items()}
    if case["kind"] == "mlp":
        blocks = []
        for _ in range(case["depth"]):
            blocks += [kl.Dense(case["width"], W_STD, B_STD), kl.Relu()]
        net = kl.Serial(*blocks, kl.Dense(1, W_STD, B_STD))
        in_shape = (case["d"],)
    else:
        ch = case["channels"]
        conv = dict(padding="SAME", W_std=W_STD, b_std=B_STD)
        net = kl.Serial(
            kl.Conv(ch, (3, 3), **conv),
            kl.Relu(),
            kl.Conv(ch, (3, 3), **conv),
            kl.Relu(),
            kl.Flatten(),
            kl.Dense(1, W_STD, B_STD),
        )
        in_shape = (case["hw"], case["hw"], case["c"])
    model = net.init(jax.random.key(0), in_shape)
    model = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32) if eqx.is_inexact_array(v) else v, model)
    with_params = [i for i, layer in enumerate(model.layers) if getattr(layer, "weight", None) is not None]
    for j, i in enumerate(with_params):
        model = eqx.tree_at(
            lambda m, i=i: (m.layers[i].weight, m.layers[i].bias), model, (a[f"w{j}"], a[f"b{j}"])
        )
    fn = ka.empirical_ntk_fn(model, implementation=getattr(ka.NtkImplementation, impl))
    x = a["x"]
    t = time.perf_counter()
    k = jax.block_until_ready(fn(x))
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        k = jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t)
    np.save(out_path, np.asarray(k))
    return dict(
        first=first,
        median=statistics.median(times),
        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        jax=jax.__version__,
    )


def run_worker(cmd: list[str], timeout: float) -> dict:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--no-nt", action="store_true")
    p.add_argument("--json")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        case, impl, arrays, out, repeats = args.worker
        print(json.dumps(ka_worker(json.loads(case), impl, arrays, out, int(repeats))))
        return
    nt_python = os.environ.get("NT_PYTHON") or str(Path.home() / ".cache" / "nt-ref" / "bin" / "python")
    use_nt = not args.no_nt and os.access(nt_python, os.X_OK)
    cases = QUICK if args.quick else FULL
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "nt_worker.py"
        worker.write_text(NT_WORKER)
        for name, case in cases.items():
            if args.only and args.only not in name:
                continue
            arrays = Path(tmp) / f"{name}.npz"
            np.savez(arrays, **make_arrays(case))
            results = {}
            for side, impls in (("nt", IMPLS if use_nt else []), ("ka", IMPLS + ["AUTO"])):
                for impl in impls:
                    out = Path(tmp) / f"{name}_{side}_{impl}.npy"
                    cj = json.dumps(case)
                    if side == "nt":
                        cmd = [nt_python, str(worker), cj, impl, str(arrays), str(out), str(args.repeats)]
                    else:
                        cmd = [
                            sys.executable,
                            str(HERE),
                            "--worker",
                            cj,
                            impl,
                            str(arrays),
                            str(out),
                            str(args.repeats),
                        ]
                    r = run_worker(cmd, args.timeout)
                    r["out"] = str(out) if out.exists() else None
                    results[(side, impl)] = r
                    print(f"  {name} {side} {impl}: {r}", file=sys.stderr)
            nt_ok = [r["median"] for (s, _), r in results.items() if s == "nt" and "median" in r]
            nt_best = min(nt_ok) if nt_ok else None
            ref = next((r["out"] for (s, _), r in results.items() if s == "nt" and r.get("out")), None)
            for impl in IMPLS + ["AUTO"]:
                ka_r, nt_r = results[("ka", impl)], results.get(("nt", impl), {})
                diff = None
                if ref and ka_r.get("out"):
                    a, b = np.load(ka_r["out"]).astype(np.float64), np.load(ref).astype(np.float64)
                    diff = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
                rows.append(
                    dict(case=name, size=case, impl=impl, ka=ka_r, nt=nt_r, nt_best=nt_best, rel_diff=diff)
                )
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    head = (
        "| case | implementation | NT median s | NT peak MB | ka 1st s | ka median s | ka peak MB "
        "| ka / NT (same impl.) | ka / NT best | max rel diff |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        ka_r, nt_r = r["ka"], r["nt"]
        ka_m, nt_m = ka_r.get("median"), nt_r.get("median")
        same = None if ka_m is None or nt_m is None else ka_m / nt_m
        best = None if ka_m is None or r["nt_best"] is None else ka_m / r["nt_best"]
        err = ka_r.get("error") or nt_r.get("error")
        lines.append(
            f"| {r['case']} | {r['impl']} | {_fmt(nt_m, '.3g')} | {_fmt(nt_r.get('peak_mb'), '.0f')} "
            f"| {_fmt(ka_r.get('first'), '.3g')} | {_fmt(ka_m, '.3g')} | {_fmt(ka_r.get('peak_mb'), '.0f')} "
            f"| {_fmt(same, '.2f')} | {_fmt(best, '.2f')} | {_fmt(r['rel_diff'], '.1e')}"
            + (f" ({err})" if err else "")
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
