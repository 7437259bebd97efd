"""kernelalg: kernels of neural networks (NNGP, NTK) in JAX."""

import importlib.metadata

from . import layers as layers, ops as ops
from ._entry import kernel as kernel
from ._kernel import Kernel as Kernel
from ._requirements import Diagonals as Diagonals


try:
    __version__ = importlib.metadata.version("kernelalg")
except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0+unknown"
