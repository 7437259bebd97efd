"""Layers: kernel transforms of infinitely wide layers, each with its finite twin."""

from ._attention import (
    FiniteSelfAttention as FiniteSelfAttention,
    GlobalSelfAttention as GlobalSelfAttention,
)
from ._base import AbstractFinite as AbstractFinite, AbstractLayer as AbstractLayer
from ._branching import (
    AbstractFanIn as AbstractFanIn,
    FanInConcat as FanInConcat,
    FanInProd as FanInProd,
    FanInSum as FanInSum,
    FiniteFanIn as FiniteFanIn,
)
from ._combinators import (
    FiniteIdentity as FiniteIdentity,
    FiniteSerial as FiniteSerial,
    Identity as Identity,
    Repeat as Repeat,
    Serial as Serial,
)
from ._conv import (
    AbstractConv as AbstractConv,
    Conv as Conv,
    ConvLocal as ConvLocal,
    ConvTranspose as ConvTranspose,
    FiniteConv as FiniteConv,
)
from ._dense import Dense as Dense, FiniteDense as FiniteDense
from ._dot import DotGeneral as DotGeneral, FiniteDotGeneral as FiniteDotGeneral
from ._elementwise import (
    ABRelu as ABRelu,
    Abs as Abs,
    AbstractElementwise as AbstractElementwise,
    AbstractQuadrature as AbstractQuadrature,
    Cos as Cos,
    Elementwise as Elementwise,
    ElementwiseNumerical as ElementwiseNumerical,
    Elu as Elu,
    Erf as Erf,
    Exp as Exp,
    ExpNormalized as ExpNormalized,
    FiniteElementwise as FiniteElementwise,
    Gabor as Gabor,
    Gaussian as Gaussian,
    Gelu as Gelu,
    Hermite as Hermite,
    LeakyRelu as LeakyRelu,
    Monomial as Monomial,
    Polynomial as Polynomial,
    Rbf as Rbf,
    RectifiedMonomial as RectifiedMonomial,
    Relu as Relu,
    Selu as Selu,
    Sigmoid_like as Sigmoid_like,
    Sign as Sign,
    Silu as Silu,
    Sin as Sin,
    Softplus as Softplus,
    Swish as Swish,
    Tanh as Tanh,
)
from ._graph import Aggregate as Aggregate, FiniteAggregate as FiniteAggregate
from ._index import FiniteIndex as FiniteIndex, Index as Index, Slice as Slice
from ._norm import (
    Dropout as Dropout,
    FiniteDropout as FiniteDropout,
    FiniteLayerNorm as FiniteLayerNorm,
    LayerNorm as LayerNorm,
)
from ._pool import (
    AbstractGlobalPool as AbstractGlobalPool,
    AbstractPool as AbstractPool,
    AvgPool as AvgPool,
    FiniteGlobalPool as FiniteGlobalPool,
    FinitePool as FinitePool,
    GlobalAvgPool as GlobalAvgPool,
    GlobalSumPool as GlobalSumPool,
    SumPool as SumPool,
)
from ._reshape import FiniteFlatten as FiniteFlatten, Flatten as Flatten
from ._resize import FiniteImageResize as FiniteImageResize, ImageResize as ImageResize
