import os

import jax
import pytest
from hypothesis import HealthCheck, settings


# Before any computation: tests are float64, strict about dtypes and ranks, and see
# four CPU devices so that pmap and sharding run on a laptop and in CI.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_num_cpu_devices", 4)

# `ci` (the default, also what the README's test command runs): few, reproducible
# examples, so that the whole suite fits CI's 15 minutes on 2 cores. `dev`
# (HYPOTHESIS_PROFILE=dev) draws more, and freshly each run, to search for counterexamples.
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("KERNELALG_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow; run with KERNELALG_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def tolerance(dtype) -> float:
    """Relative tolerance for deterministic comparisons, keyed on dtype."""
    import jax.numpy as jnp

    return {jnp.dtype("float64"): 1e-10, jnp.dtype("float32"): 2e-5}[jnp.dtype(dtype)]
