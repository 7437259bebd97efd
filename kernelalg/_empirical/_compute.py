"""The three ways to an empirical NTK, and the empirical NNGP.

Every kernel is assembled per output leaf with `labelled_einsum` (see `_axes`): the
factors of side 1 and side 2 carry output labels, everything else is contracted.
Arrays computed one example at a time (`Target.per_example`) carry the batch as their
axis 0, labelled with the batch axis of the batched output.
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ._axes import kernel_shape, labelled_einsum, out_label, trace_size
from ._structured import Plan, Recorder, dense_form, discover, is_probed, node_at, wrap, zero_probes
from ._target import Target, split_parameters


# Entries (of the parameter size) held at once by NTK-vector products: 2^24 float64
# entries are 128 MiB.
MEMORY_ENTRIES = 2**24


def _bcast(axes, tree):
    if axes is None or isinstance(axes, int):
        return jax.tree_util.tree_map(lambda _: axes, tree)
    return axes


def one_example(x, in_axes):
    """The first example of a batch (for shape discovery)."""
    axes = _bcast(in_axes, x)
    return jax.tree_util.tree_map(
        lambda a, ax: a if ax is None else jnp.take(a, 0, axis=ax), x, axes, is_leaf=lambda v: v is None
    )


def out_labels(side: int, ndim: int, batch_axis: int | None) -> list:
    """Labels of the leading output axes of an array: all `ndim` batched output axes in
    order, or (one example at a time) the batch first, then the others."""
    if batch_axis is None:
        return [out_label(side, p) for p in range(ndim)]
    return [out_label(side, batch_axis)] + [out_label(side, p) for p in range(ndim) if p != batch_axis]


def batch_axes(target: Target, fx) -> list[int | None]:
    n = len(jax.tree_util.tree_leaves(fx))
    if not target.per_example:
        return [None] * n
    return jax.tree_util.tree_leaves(_bcast(target.out_axes, fx))


def _map(fn, x, in_axes, per_example: bool):
    return jax.vmap(fn, in_axes=(in_axes,))(x) if per_example else fn(x)


def _basis(leaf) -> jax.Array:
    u = math.prod(leaf.shape)
    return jnp.eye(u, dtype=leaf.dtype).reshape((u,) + tuple(leaf.shape))


def _one_hot_cotangent(out, i: int, e):
    """The cotangent of `out` that is `e` on leaf `i` and zero elsewhere."""
    leaves, treedef = jax.tree_util.tree_flatten(out)
    cot = [e if j == i else jnp.zeros(l.shape, l.dtype) for j, l in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, cot)


@dataclasses.dataclass
class Factors:
    """One side's ingredients: output leaves, Jacobian per output leaf and parameter
    leaf (`jac[o][j]`: output axes then parameter axes), cotangents of probed layers
    (`grads[o][i][call]`: output axes then the layer's output axes) and their inputs
    (`inputs[i][call]`)."""

    out: list
    jac: list[list]
    grads: list[dict[int, list]]
    inputs: dict[int, list]


def plan_structure(target: Target, tree, x) -> Plan:
    if target.per_example:
        call = target.call_one
        return discover(tree, lambda t, xx: call(t, one_example(xx, target.in_axes)), x)
    return discover(tree, target.call, x)


def jacobian_factors(target: Target, tree, x, plan: Plan, forward_mode: bool) -> Factors:
    """Jacobians with respect to the parameters not in probed layers, and cotangents and
    inputs of probed layers; one example at a time when the target allows it."""
    call = target.call_one if target.per_example else target.call

    def single(xx):
        recorder = Recorder()
        wrapped = wrap(tree, set(plan.indices), recorder) if plan.indices else tree
        diff, static = split_parameters(wrapped, frozen=is_probed)

        def fwd(d, probes):
            recorder.reset(probes)
            out = call(eqx.combine(d, static), xx)
            return out, recorder.inputs

        if forward_mode:
            out, inputs = fwd(diff, None)
            jac_tree = jax.jacfwd(lambda d: fwd(d, None)[0])(diff)
            out_leaves, out_def = jax.tree_util.tree_flatten(out)
            per_out = out_def.flatten_up_to(jac_tree)
            jac = [jax.tree_util.tree_leaves(j) for j in per_out]
            return out_leaves, jac, [{} for _ in out_leaves], {}
        probes = zero_probes(plan)
        out, vjp_fn, inputs = jax.vjp(fwd, diff, probes, has_aux=True)
        out_leaves = jax.tree_util.tree_leaves(out)
        jac, grads = [], []
        for o, leaf in enumerate(out_leaves):
            d_diff, d_probes = jax.vmap(lambda e, o=o: vjp_fn(_one_hot_cotangent(out, o, e)))(_basis(leaf))
            unflat = lambda a, leaf=leaf: a.reshape(tuple(leaf.shape) + a.shape[1:])  # noqa: E731
            jac.append([unflat(a) for a in jax.tree_util.tree_leaves(d_diff)])
            grads.append({i: [unflat(a) for a in d_probes[i]] for i in plan.indices})
        return out_leaves, jac, grads, {i: inputs.get(i, []) for i in plan.indices}

    out, jac, grads, inputs = _map(single, x, target.in_axes, target.per_example)
    return Factors(out, jac, grads, inputs)


def contract_factors(
    f1: Factors, f2: Factors, tree, plan: Plan, o: int, ndim: int, b: int | None, trace, diag
) -> list[jax.Array]:
    """The terms (one per parameter leaf, probed layer and call pair) of the NTK of
    output leaf `o`, not yet divided by the traced size."""
    l1, l2 = out_labels(1, ndim, b), out_labels(2, ndim, b)
    terms = []
    for j, (a1, a2) in enumerate(zip(f1.jac[o], f2.jac[o])):
        # One flat parameter axis: XLA's CPU dot is about twice as fast contracting one
        # axis as several.
        a1 = a1.reshape(a1.shape[: len(l1)] + (-1,))
        a2 = a2.reshape(a2.shape[: len(l2)] + (-1,))
        terms.append(labelled_einsum([(a1, l1 + [("w", j)]), (a2, l2 + [("w", j)])], ndim, trace, diag))
    lead_batch = 0 if b is None else 1
    for i in plan.indices:
        form = dense_form(node_at(tree, i))

        def prep(x, g, form=form):
            x = x if form.x_vector else x[..., None]
            g = g if form.y_vector else g[..., None]
            return x, g

        calls1 = [prep(x, g) for x, g in zip(f1.inputs[i], f1.grads[o][i])]
        calls2 = [prep(x, g) for x, g in zip(f2.inputs[i], f2.grads[o][i])]
        for u, (x1, g1) in enumerate(calls1):
            for v, (x2, g2) in enumerate(calls2):
                s1 = [("s", 1, i, u, m) for m in range(x1.ndim - lead_batch - 1)]
                s2 = [("s", 2, i, v, m) for m in range(x2.ndim - lead_batch - 1)]
                xb1 = [] if b is None else [out_label(1, b)]
                xb2 = [] if b is None else [out_label(2, b)]
                terms.append(
                    form.c**2
                    * labelled_einsum(
                        [
                            (x1, xb1 + s1 + ["k"]),
                            (g1, l1 + s1 + ["l"]),
                            (x2, xb2 + s2 + ["k"]),
                            (g2, l2 + s2 + ["l"]),
                        ],
                        ndim,
                        trace,
                        diag,
                    )
                )
        if form.beta is not None and calls1 and calls2:

            def bias_cotangent(calls, labels):
                # d y / d b is beta at every position: sum the cotangents over positions.
                total = 0
                for _, g in calls:
                    total = total + jnp.sum(g, axis=tuple(range(len(labels), g.ndim - 1)))
                return total

            bg1, bg2 = bias_cotangent(calls1, l1), bias_cotangent(calls2, l2)
            terms.append(
                form.beta**2 * labelled_einsum([(bg1, l1 + ["l"]), (bg2, l2 + ["l"])], ndim, trace, diag)
            )
    return terms


def rows_per_pass(target: Target, fx) -> int:
    """Output entries per Jacobian evaluation: per example, or of the whole batch."""
    rows = 0
    for leaf, b in zip(jax.tree_util.tree_leaves(fx), batch_axes(target, fx)):
        rows += math.prod(leaf.shape) // (1 if b is None else leaf.shape[b])
    return rows


def n_parameters(tree) -> int:
    diff, _ = split_parameters(tree)
    return sum(math.prod(l.shape) for l in jax.tree_util.tree_leaves(diff))


def ntk_jacobian(target: Target, tree, x1, x2, fx1, fx2, trace_diag, *, structured: bool):
    """`JACOBIAN_CONTRACTION` (`structured=False`) and `STRUCTURED_DERIVATIVES`."""
    plan = plan_structure(target, tree, x1) if structured else Plan((), {})
    # Forward mode costs one JVP per parameter, reverse mode one VJP per output entry.
    forward_mode = not plan.indices and rows_per_pass(target, fx1) > n_parameters(tree)
    f1 = jacobian_factors(target, tree, x1, plan, forward_mode)
    f2 = f1 if x2 is None else jacobian_factors(target, tree, x2, plan, forward_mode)
    out = []
    for o, (s1, s2, b) in enumerate(zip(_shapes(fx1), _shapes(fx2), batch_axes(target, fx1))):
        trace, diag = trace_diag[o]
        terms = contract_factors(f1, f2, tree, plan, o, len(s1), b, trace, diag)
        out.append(_finish(terms, s1, s2, trace, diag, _dtype(fx1, o)))
    return out


def _shapes(fx) -> list[tuple[int, ...]]:
    return [tuple(l.shape) for l in jax.tree_util.tree_leaves(fx)]


def _dtype(fx, o):
    return jax.tree_util.tree_leaves(fx)[o].dtype


def _finish(terms, s1, s2, trace, diag, dtype):
    shape = kernel_shape(s1, s2, trace, diag)
    if not terms:
        return jnp.zeros(shape, dtype)
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return jnp.broadcast_to(total / trace_size(s1, trace), shape)


def _chunked_rows(row, n_rows: int, n_params: int):
    """`jax.vmap(row)(jnp.arange(n_rows))` in chunks holding about `MEMORY_ENTRIES`
    parameter-sized vectors (`n_params=0`: no chunks)."""
    batch = n_rows if n_params == 0 else max(1, min(n_rows, MEMORY_ENTRIES // n_params))
    if batch >= n_rows:
        return jax.vmap(row)(jnp.arange(n_rows))
    return jax.lax.map(row, jnp.arange(n_rows), batch_size=batch)


def ntk_vector_products(target: Target, tree, x1, x2, fx1, fx2, trace_diag, *, bounded: bool = True):
    r"""`NTK_VECTOR_PRODUCTS` (Novak et al. 2022): row $e$ of $\Theta = J_1 J_2^\top$
    is the JVP of $f(x_2)$ along the VJP $J_1^\top e$ of $f(x_1)$; no Jacobian and no
    contraction over parameters. Rows are computed in chunks that bound the memory
    (`bounded=False`: all at once, for cost analysis, which counts a loop body once)."""
    x2 = x1 if x2 is None else x2
    diff, static = split_parameters(tree)
    n_params = sum(math.prod(l.shape) for l in jax.tree_util.tree_leaves(diff)) if bounded else 0

    def f_batch(d, x):
        return target.call(eqx.combine(d, static), x)

    def f_one(d, xi):
        return target.call_one(eqx.combine(d, static), xi)

    out = []
    for o, (s1, s2, b) in enumerate(zip(_shapes(fx1), _shapes(fx2), batch_axes(target, fx1))):
        trace, diag = trace_diag[o]
        ndim = len(s1)
        if b is not None and (b in trace or b in diag):
            # Only pairs (x1[i], x2[i]) are needed: one example on each side.
            def pair(x1i, x2i, o=o):
                out1, vjp1 = jax.vjp(lambda d: f_one(d, x1i), diff)
                _, jvp2 = jax.linearize(lambda d: f_one(d, x2i), diff)
                leaf = jax.tree_util.tree_leaves(out1)[o]
                u = math.prod(leaf.shape)

                def row(r):
                    e = jax.nn.one_hot(r, u, dtype=leaf.dtype).reshape(leaf.shape)
                    (t,) = vjp1(_one_hot_cotangent(out1, o, e))
                    return jax.tree_util.tree_leaves(jvp2(t))[o]

                rows = _chunked_rows(row, u, n_params)
                return rows.reshape(tuple(leaf.shape) + rows.shape[1:])

            full = jax.vmap(pair, in_axes=(target.in_axes, target.in_axes))(x1, x2)
            labels = out_labels(1, ndim, b) + [out_label(2, p) for p in range(ndim) if p != b]
        else:
            _, jvp2 = jax.linearize(lambda d: f_batch(d, x2), diff)

            def rows_of(xx, o=o, jvp2=jvp2):
                one = target.per_example
                out1, vjp1 = jax.vjp(lambda d: (f_one if one else f_batch)(d, xx), diff)
                leaf = jax.tree_util.tree_leaves(out1)[o]
                u = math.prod(leaf.shape)

                def row(r):
                    e = jax.nn.one_hot(r, u, dtype=leaf.dtype).reshape(leaf.shape)
                    (t,) = vjp1(_one_hot_cotangent(out1, o, e))
                    return jax.tree_util.tree_leaves(jvp2(t))[o]

                rows = _chunked_rows(row, u, n_params)
                return rows.reshape(tuple(leaf.shape) + rows.shape[1:])

            full = _map(rows_of, x1, target.in_axes, target.per_example)
            labels = out_labels(1, ndim, b) + [out_label(2, p) for p in range(ndim)]
        out.append(
            _finish([labelled_einsum([(full, labels)], ndim, trace, diag)], s1, s2, trace, diag, full.dtype)
        )
    return out


def nngp(fx1, fx2, trace_diag):
    r"""$\frac{1}{|T|}\sum_{t \in T} f(x_1)_t f(x_2)_t$ over the traced axes $T$."""
    out = []
    for o, (a1, a2) in enumerate(zip(jax.tree_util.tree_leaves(fx1), jax.tree_util.tree_leaves(fx2))):
        trace, diag = trace_diag[o]
        ndim = a1.ndim
        k = labelled_einsum(
            [(a1, out_labels(1, ndim, None)), (a2, out_labels(2, ndim, None))], ndim, trace, diag
        )
        out.append(k / trace_size(a1.shape, trace))
    return out
