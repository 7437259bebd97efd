r"""`NtkImplementation.AUTO`: the cheapest implementation by a cost model.

Each implementation is traced and lowered (not compiled) for the shapes at hand, and
XLA's analysis of the *unoptimised* program gives its floating-point operations. That
analysis counts every dot product and convolution; neural-tangents read the analysis
of the *optimised* program instead, in which XLA:CPU and XLA:GPU turn dots into library
calls whose FLOPs are not counted, and so picked wrongly on those backends.

FLOPs are converted to time with one constant per family, measured with XLA:CPU on
MLPs, CNNs and neural-tangents-style functions (widths 32-512, 1-100 outputs, batches
8-64): Jacobian contraction (and structured derivatives, which share its code) took
about three times as long per counted FLOP as NTK-vector products, since it writes and
reads Jacobians (memory bound) where the other streams through matrix products. An
implementation whose Jacobians would not fit in `JACOBIAN_LIMIT_BYTES` is ruled out
(NTK-vector products bound their memory by computing rows in chunks).
"""

import math

import equinox as eqx
import jax

from . import _compute
from ._structured import dense_form
from ._target import Target, split_parameters


JACOBIAN_FLOP_COST = 3.0
JACOBIAN_LIMIT_BYTES = 2**31


def _abstract(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _flops(fn, tree, x1, x2) -> float | None:
    arrays, static = eqx.partition((tree, x1, x2), eqx.is_array)

    def run(arrays):
        return fn(*eqx.combine(arrays, static))

    try:
        analysis = jax.jit(run).lower(_abstract(arrays)).cost_analysis()
    except Exception:  # noqa: BLE001 - a backend without cost analysis: no estimate
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = None if not analysis else analysis.get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def _jacobian_bytes(target: Target, tree, x1, x2, fx1, fx2, structured: bool) -> int:
    """Bytes of the Jacobians both sides hold at once."""
    if structured:
        # Recognised layers contribute cotangents the size of their outputs instead.
        plan = _compute.plan_structure(target, tree, x1)
        nodes = jax.tree_util.tree_leaves(tree, is_leaf=lambda n: dense_form(n) is not None)
        frozen_ids = {id(nodes[i]) for i in plan.indices}
        params, _ = split_parameters(tree, frozen=lambda n: id(n) in frozen_ids)
    else:
        params, _ = split_parameters(tree)
    leaves = jax.tree_util.tree_leaves(params)
    n_params = sum(math.prod(l.shape) for l in leaves)
    itemsize = max((l.dtype.itemsize for l in leaves), default=8)
    rows = 0
    for x, fx in ((x1, fx1), (x2, fx2)):
        if x is None:
            continue
        rows += sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(fx))
    return rows * n_params * itemsize


def choose(target: Target, tree, x1, x2, fx1, fx2, trace_diag):
    """The `NtkImplementation` with the smallest estimated time."""
    from ._api import NtkImplementation

    shapes1, shapes2 = _abstract(fx1), _abstract(fx2)

    def jacobian(structured):
        return lambda t, a, b: _compute.ntk_jacobian(
            target, t, a, b, shapes1, shapes2, trace_diag, structured=structured
        )

    def vector_products(t, a, b):
        return _compute.ntk_vector_products(target, t, a, b, shapes1, shapes2, trace_diag, bounded=False)

    plan = _compute.plan_structure(target, tree, x1)
    candidates = [(NtkImplementation.NTK_VECTOR_PRODUCTS, vector_products, 1.0, False)]
    if plan.indices:
        candidates.append(
            (NtkImplementation.STRUCTURED_DERIVATIVES, jacobian(True), JACOBIAN_FLOP_COST, True)
        )
    else:
        candidates.append(
            (NtkImplementation.JACOBIAN_CONTRACTION, jacobian(False), JACOBIAN_FLOP_COST, False)
        )
    costs = {}
    for impl, fn, weight, structured in candidates:
        flops = _flops(fn, tree, x1, x2)
        if flops is None:
            return candidates[-1][0]
        fits = impl == NtkImplementation.NTK_VECTOR_PRODUCTS or (
            _jacobian_bytes(target, tree, x1, x2, fx1, fx2, structured) <= JACOBIAN_LIMIT_BYTES
        )
        costs[impl] = weight * flops if fits else math.inf
    return min(costs, key=lambda i: (costs[i], i != NtkImplementation.JACOBIAN_CONTRACTION))
