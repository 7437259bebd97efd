"""Predictions of infinitely wide (or linearised) networks: GP inference, training dynamics, likelihood."""

from ._cg import CGFactor as CGFactor
from ._common import HasNNGP as HasNNGP, HasNTK as HasNTK, KernelLike as KernelLike
from ._ensemble import (
    GradientDescentMSEEnsemble as GradientDescentMSEEnsemble,
    gradient_descent_mse_ensemble as gradient_descent_mse_ensemble,
)
from ._gp import (
    Gaussian as Gaussian,
    GPInference as GPInference,
    Predictions as Predictions,
    gp_inference as gp_inference,
)
from ._linalg import (
    AbstractFactor as AbstractFactor,
    CholeskyFactor as CholeskyFactor,
    EigenFactor as EigenFactor,
)
from ._mll import marginal_log_likelihood as marginal_log_likelihood
from ._mse import (
    GradientDescentMSE as GradientDescentMSE,
    gradient_descent_mse as gradient_descent_mse,
    max_learning_rate as max_learning_rate,
)
from ._ode import (
    GradientDescent as GradientDescent,
    ODEState as ODEState,
    gradient_descent as gradient_descent,
)
