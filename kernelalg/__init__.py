"""kernelalg: kernels of neural networks (NNGP, NTK) in JAX."""

import importlib.metadata

from . import layers as layers, ops as ops, predict as predict
from ._batching._api import (
    AbstractBatched as AbstractBatched,
    BatchedKernel as BatchedKernel,
    BatchedKernelFn as BatchedKernelFn,
    ComputeResult as ComputeResult,
    batch as batch,
    compute as compute,
)
from ._batching._planner import (
    estimate_block_memory as estimate_block_memory,
    plan_block_size as plan_block_size,
)
from ._empirical._api import (
    AbstractEmpiricalFn as AbstractEmpiricalFn,
    EmpiricalKernel as EmpiricalKernel,
    EmpiricalKernelFn as EmpiricalKernelFn,
    EmpiricalNngpFn as EmpiricalNngpFn,
    EmpiricalNtkFn as EmpiricalNtkFn,
    NtkImplementation as NtkImplementation,
    empirical_kernel_fn as empirical_kernel_fn,
    empirical_nngp_fn as empirical_nngp_fn,
    empirical_ntk_fn as empirical_ntk_fn,
)
from ._empirical._vp import (
    NtkVectorProductFn as NtkVectorProductFn,
    empirical_ntk_vp_fn as empirical_ntk_vp_fn,
)
from ._entry import kernel as kernel
from ._kernel import Kernel as Kernel
from ._linearize import (
    AbstractExpandedModel as AbstractExpandedModel,
    Linearized as Linearized,
    TaylorExpanded as TaylorExpanded,
    TaylorExpandedFn as TaylorExpandedFn,
    linearize as linearize,
    taylor_expand as taylor_expand,
)
from ._monte_carlo import (
    MonteCarloKernel as MonteCarloKernel,
    MonteCarloKernelFn as MonteCarloKernelFn,
    monte_carlo_kernel_fn as monte_carlo_kernel_fn,
)
from ._requirements import Diagonals as Diagonals


try:
    __version__ = importlib.metadata.version("kernelalg")
except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0+unknown"
