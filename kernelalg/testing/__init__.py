"""Tools for testing kernels: hypothesis strategies and assertions, for users and for
kernelalg's own test suite.

- Strategies: `inputs`, `nonlinearities`, `fc_architectures`, `kernels`, `seeds`
  (need `hypothesis`, in the `test` extra).
- Assertions: `assert_symmetric_psd`, `assert_monte_carlo_agreement` (returning a
  `MonteCarloReport`), with `default_rtol` the round-off level they assume.
"""

from ._assertions import (
    MonteCarloReport as MonteCarloReport,
    assert_monte_carlo_agreement as assert_monte_carlo_agreement,
    assert_symmetric_psd as assert_symmetric_psd,
    default_rtol as default_rtol,
)
from ._strategies import (
    fc_architectures as fc_architectures,
    inputs as inputs,
    kernels as kernels,
    nonlinearities as nonlinearities,
    seeds as seeds,
)
