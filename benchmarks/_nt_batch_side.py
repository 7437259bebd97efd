"""neural-tangents' `nt.batch` on one case, run in NT's interpreter by `bench_batch.py`.

Usage: `$NT_PYTHON benchmarks/_nt_batch_side.py CASE_JSON`. Prints one JSON line: the
first (compiling) call's time, the median of the timed calls, the peak resident
memory before and after, the output dtype. Self-contained apart from `_nt_side.py`
(same directory, importable without kernelalg).
"""

import json
import resource
import statistics
import sys
import time


def main(desc: dict) -> dict:
    import jax

    jax.config.update("jax_enable_x64", desc["dtype"] == "float64")
    import _nt_side
    import numpy as np

    nt = _nt_side._import_nt()
    from neural_tangents import stax

    x = np.load(desc["inputs"])
    _, _, kernel_fn = _nt_side.build(desc["spec"], stax)
    batched = nt.batch(kernel_fn, batch_size=desc["batch_size"], device_count=0, store_on_device=True)
    x = jax.device_put(x)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = jax.block_until_ready(batched(x, None, ("nngp", "ntk")))
    first = time.perf_counter() - t0
    times = []
    for _ in range(desc["repeats"]):
        del out
        t0 = time.perf_counter()
        out = jax.block_until_ready(batched(x, None, ("nngp", "ntk")))
        times.append(time.perf_counter() - t0)
    return {
        "first_s": first,
        "median_s": statistics.median(times) if times else first,
        "rss_base_kib": base,
        "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "dtype": str(out.nngp.dtype),
        "nt_version": nt.__version__,
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
