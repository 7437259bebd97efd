"""Side-by-side benchmark harness: kernelalg in-process, neural-tangents in a subprocess.

A `Case` names a network by a small spec both sides can build (`layer`, `serial`),
the shapes of its inputs, their dtype and a kind ("kernel"; later kinds plug into
`KA_RUNNERS` here and `RUNNERS` in `_nt_side.py`). `run_cases` draws the inputs once,
saves them to a temporary .npz, times kernelalg on them here and NT on the same file
in `$NT_PYTHON`, checks that both computed the same outputs, and `format_table`
prints one markdown table.

Import this module before anything else touches JAX: it enables x64 (see below).
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax


# float64 cases need x64, and it cannot be switched per case once arrays exist.
# kernelalg keeps float32 inputs float32 with x64 on, which `run_case` checks.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kernelalg as ka  # noqa: E402
from kernelalg import layers as kl  # noqa: E402


NT_SIDE = Path(__file__).with_name("_nt_side.py")
DEFAULT_NT_PYTHON = Path.home() / ".cache" / "nt-ref" / "bin" / "python"

Spec = list[Any]

# kernelalg's goal is at most half of NT's time on every case.
TARGET_RATIO = 0.5


def layer(name: str, /, **kwargs: Any) -> Spec:
    """Spec of a leaf layer: `layer("Dense", out_dim=512, W_std=1.5)`."""
    return [name, kwargs]


def serial(*children: Spec) -> Spec:
    return ["Serial", {}, list(children)]


def build_kernelalg(spec: Spec) -> kl.AbstractLayer:
    """Children first (positionally), then keyword arguments, as `_nt_side.build`."""
    name, kwargs, *rest = spec
    children = [build_kernelalg(c) for c in rest[0]] if rest else []
    return getattr(kl, name)(*children, **kwargs)


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row.

    `inputs` maps array names to shapes; the "kernel" kind reads `x1` and optionally
    `x2`. `options` is passed to both sides' runner of `kind` (for "kernel": `get`, a
    subset of ("nngp", "ntk")).
    """

    name: str
    spec: Spec
    inputs: dict[str, tuple[int, ...]]
    dtype: str = "float32"
    kind: str = "kernel"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0

    def sizes(self) -> str:
        return ", ".join(f"{k} {'×'.join(map(str, s))}" for k, s in self.inputs.items())

    def make_inputs(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        arrays = {k: rng.standard_normal(s).astype(self.dtype) for k, s in self.inputs.items()}
        # Variable-length sequences: example i keeps its first lengths[i % len] positions;
        # the rest carry `mask_constant`, which both sides pass to their kernel function.
        lengths = self.options.get("lengths")
        if lengths is not None:
            for x in arrays.values():
                for i in range(x.shape[0]):
                    x[i, lengths[i % len(lengths)] :] = self.options["mask_constant"]
        return arrays


Runner = Callable[
    [Any, dict[str, jax.Array], dict[str, Any]], tuple[Callable[[], Any], Callable[[Any], dict[str, Any]]]
]


def _ka_kernel(net, arrays, options):
    get = tuple(options.get("get", ("nngp", "ntk")))
    x1, x2 = arrays["x1"], arrays.get("x2")

    # The public entry point, with its per-call input checks, is what users pay for.
    mask_constant = options.get("mask_constant")

    def run():
        return ka.kernel(net, x1, x2, compute_ntk="ntk" in get, mask_constant=mask_constant)

    def outputs(result):
        return {g: getattr(result, g) for g in get}

    return run, outputs


KA_RUNNERS: dict[str, Runner] = {"kernel": _ka_kernel}


def time_call(run: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds for one call, waiting for every output array, and its result."""
    t0 = time.perf_counter()
    result = jax.block_until_ready(run())
    return time.perf_counter() - t0, result


def time_calls(run: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """First call (compilation included) and `repeats` timed calls after it."""
    first, result = time_call(run)
    times = []
    for _ in range(repeats):
        del result
        t, result = time_call(run)
        times.append(t)
    return first, times, result


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    # Normwise, max|a - b| / max|b|: entrywise ratios blow up on near-zero
    # off-diagonal entries (erf kernels of uncorrelated inputs) and would say nothing.
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(np.float64).tiny))


@dataclasses.dataclass
class Result:
    case: Case
    ka_first: float
    ka_median: float
    ka_dtype: str
    nt_first: float | None = None
    nt_median: float | None = None
    nt_dtype: str | None = None
    rel_diff: float | None = None
    note: str = ""
    ka_times: list[float] = dataclasses.field(default_factory=list)
    nt_times: list[float] = dataclasses.field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return None if self.nt_median is None else self.ka_median / self.nt_median


def find_nt_python() -> tuple[str | None, str]:
    """`$NT_PYTHON` or the default reference venv; `(None, why)` when neither runs."""
    path = os.environ.get("NT_PYTHON") or str(DEFAULT_NT_PYTHON)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return None, (
            f"NT interpreter {path} not found; NT column skipped. Install it as in "
            "/work/shared/reference/README.md or set NT_PYTHON."
        )
    return path, ""


class _NTSide:
    """`_nt_side.py` on one case, driven one timed call at a time."""

    def __init__(self, case: Case, inputs: Path, save: Path, nt_python: str, workdir: Path, timeout: float):
        desc = {
            "kind": case.kind,
            "spec": case.spec,
            "options": case.options,
            "inputs": str(inputs),
            "save": str(save),
            "x64": case.dtype == "float64",
        }
        path = workdir / "case.json"
        path.write_text(json.dumps(desc))
        # stderr to a file, not a pipe: nobody reads it while the case runs, and a full
        # pipe of JAX warnings would block the child.
        self._stderr_path = workdir / "nt_stderr.txt"
        self._stderr = open(self._stderr_path, "w")
        self._proc = subprocess.Popen(
            [nt_python, str(NT_SIDE), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        # A hung child would block readline forever; killing it turns that into EOF.
        self._watchdog = threading.Timer(timeout, self._proc.kill)
        self._watchdog.start()

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self._proc.wait()
        self._stderr.flush()
        tail = self._stderr_path.read_text()[-3000:]
        raise RuntimeError(f"NT side ended ({self._proc.returncode}) without a report:\n{tail}")

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def ready(self) -> float:
        return self._read()["first_s"]

    def call(self) -> float:
        self._send("call")
        return self._read()["time_s"]

    def finish(self) -> dict[str, Any]:
        self._send("done")
        report = self._read()
        self._proc.wait()
        return report

    def close(self) -> None:
        self._watchdog.cancel()
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()


def run_case(
    case: Case, *, repeats: int, nt_python: str | None, nt_timeout: float = 600.0
) -> tuple[Result, dict[str, Any] | None]:
    """Time one case on both sides, alternating single calls; returns the result and
    NT's report (or None)."""
    with tempfile.TemporaryDirectory(prefix="kabench-") as tmp:
        workdir = Path(tmp)
        host = case.make_inputs()
        inputs = workdir / "inputs.npz"
        np.savez(inputs, **host)

        net = build_kernelalg(case.spec)
        # Inputs are on the device before timing on both sides, so neither pays the
        # host-to-device copy.
        arrays = {k: jnp.asarray(v) for k, v in host.items()}
        run, outputs = KA_RUNNERS[case.kind](net, arrays, case.options)
        ka_first, result = time_call(run)

        nt = None
        if nt_python is not None:
            nt = _NTSide(case, inputs, workdir / "nt_out.npz", nt_python, workdir, nt_timeout)
        try:
            nt_first = None if nt is None else nt.ready()
            ka_times, nt_times = [], []
            for _ in range(repeats):
                # Alternate call by call: load on a shared machine drifts within
                # seconds, and this makes the drift hit both sides alike.
                # The previous result is dropped first so that two never coexist.
                del result
                t, result = time_call(run)
                ka_times.append(t)
                if nt is not None:
                    nt_times.append(nt.call())
            report = None if nt is None else nt.finish()
        finally:
            if nt is not None:
                nt.close()

        ka_out = {k: np.asarray(v) for k, v in outputs(result).items()}
        del result
        ka_dtype = str(next(iter(ka_out.values())).dtype)
        res = Result(
            case, ka_first, statistics.median(ka_times) if ka_times else ka_first, ka_dtype, ka_times=ka_times
        )
        if ka_dtype != case.dtype:
            res.note = f"kernelalg returned {ka_dtype} for {case.dtype} inputs"
        if report is None:
            return res, None
        res.nt_first, res.nt_times = nt_first, nt_times
        res.nt_median = statistics.median(nt_times) if nt_times else nt_first
        res.nt_dtype = report["dtype"]
        with np.load(workdir / "nt_out.npz") as nt_out:
            res.rel_diff = max(rel_diff(ka_out[k], nt_out[k]) for k in ka_out)
        return res, report


def run_cases(
    cases: Sequence[Case], *, repeats: int, use_nt: bool = True, echo: bool = True
) -> tuple[list[Result], str]:
    """Run every case, both sides back to back per case so that drifting machine load
    hits both alike. Returns the results and the table with its header."""
    nt_python, why = find_nt_python() if use_nt else (None, "NT column skipped (--no-nt).")
    results, nt_info = [], None
    for case in cases:
        if echo:
            print(f"running {case.name} [{case.dtype}] ...", file=sys.stderr, flush=True)
        res, report = run_case(case, repeats=repeats, nt_python=nt_python)
        nt_info = report or nt_info
        results.append(res)
    lines = [environment(nt_info, repeats)]
    if why:
        lines.append(f"Note: {why}")
    lines.append("")
    lines.append(format_table(results))
    return results, "\n".join(lines)


def environment(nt_report: dict[str, Any] | None, repeats: int) -> str:
    nt = (
        f"neural-tangents {nt_report['nt_version']} on jax {nt_report['jax_version']} "
        f"({nt_report['backend']})"
        if nt_report
        else "neural-tangents: not run"
    )
    return (
        f"kernelalg {ka.__version__} on jax {jax.__version__} ({jax.default_backend()}); {nt}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs; median of {repeats} calls after a "
        "first (compiling) call; ratio = kernelalg / NT (below 1: kernelalg faster)."
    )


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def format_table(results: Sequence[Result]) -> str:
    head = (
        "| case | sizes | dtype | kernelalg s | NT s | ratio | max rel diff "
        "| kernelalg 1st s | NT 1st s | note |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        dtype = (
            r.case.dtype if r.nt_dtype in (None, r.case.dtype) else (f"{r.case.dtype} (NT out {r.nt_dtype})")
        )
        rows.append(
            f"| {r.case.name} | {r.case.sizes()} | {dtype} | {_fmt(r.ka_median, '.4f')} "
            f"| {_fmt(r.nt_median, '.4f')} | {_fmt(r.ratio, '.2f')} | {_fmt(r.rel_diff, '.1e')} "
            f"| {_fmt(r.ka_first, '.2f')} | {_fmt(r.nt_first, '.2f')} | {r.note} |"
        )
    return "\n".join(rows)


def cli(doc: str, make_cases: Callable[[bool], Sequence[Case]], argv: list[str] | None = None) -> int:
    """The command line every `bench_*.py` shares; `make_cases(quick)` gives its rows."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side after the first")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", metavar="TEXT", help="run the cases whose name or dtype contains TEXT")
    parser.add_argument("--no-nt", action="store_true", help="kernelalg only")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)

    cases = [c for c in make_cases(args.quick) if not args.only or args.only in f"{c.name} {c.dtype}"]
    results, table = run_cases(cases, repeats=args.repeats, use_nt=not args.no_nt)
    print(table)
    slow = [r for r in results if r.ratio is not None and r.ratio > TARGET_RATIO]
    if slow:
        # Reported, not fatal: a single run on a loaded machine can cross the line.
        print(
            f"\n{len(slow)} case(s) above the target ratio {TARGET_RATIO}: "
            + ", ".join(f"{r.case.name} [{r.case.dtype}] {r.ratio:.2f}" for r in slow)
        )
    if args.json:
        rows = [
            {
                "case": r.case.name,
                "sizes": r.case.sizes(),
                "dtype": r.case.dtype,
                "kernelalg_median_s": r.ka_median,
                "nt_median_s": r.nt_median,
                "ratio": r.ratio,
                "max_rel_diff": r.rel_diff,
                "kernelalg_first_s": r.ka_first,
                "nt_first_s": r.nt_first,
                "kernelalg_times_s": r.ka_times,
                "nt_times_s": r.nt_times,
                "note": r.note,
            }
            for r in results
        ]
        Path(args.json).write_text(json.dumps({"environment": table.splitlines()[0], "rows": rows}, indent=1))
    return 0
