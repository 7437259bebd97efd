"""Pure array maths on covariance tensors, shared by the layers and testable alone."""

from ._duals import (
    ab_relu as ab_relu,
    erf_dual as erf_dual,
    exp as exp,
    exp_normalized as exp_normalized,
    gabor as gabor,
    gaussian as gaussian,
    gelu as gelu,
    hermite as hermite,
    monomial as monomial,
    polynomial as polynomial,
    rbf as rbf,
    rectified_monomial as rectified_monomial,
    sign as sign,
    sin as sin,
)
from ._layout import (
    outer_variances as outer_variances,
    spatial_diagonal as spatial_diagonal,
    unzip_axes as unzip_axes,
    variances as variances,
    zip_axes as zip_axes,
)
from ._quadrature import gauss_hermite as gauss_hermite
from ._safe import safe_arctan2 as safe_arctan2, safe_sqrt as safe_sqrt
