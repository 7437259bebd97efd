r"""Structured derivatives through public JAX APIs: Dense-like layers found in the
model's pytree.

neural-tangents' `STRUCTURED_DERIVATIVES` interpreted jaxprs primitive by primitive
with JAX's private autodiff internals, and broke when those changed
(google/neural-tangents #186). Here the structure is read off the *modules* instead.
A layer computing $y = c\, x W + \beta b$ on the last axis of $x$ (kernelalg's
`FiniteDense`, `equinox.nn.Linear`) has the Jacobian $\partial y_{s\lambda} /
\partial W_{\kappa\lambda'} = c\, x_{s\kappa}\delta_{\lambda\lambda'}$, so its
contribution to the NTK factorises:

$$\Theta_W(x_1, x_2) = c^2 \sum_{s,t}\, \langle x_{1,s}, x_{2,t}\rangle\,
  \langle g_{1,s}, g_{2,t}\rangle, \qquad
  \Theta_b(x_1, x_2) = \beta^2 \Big\langle \sum_s g_{1,s}, \sum_t g_{2,t}\Big\rangle,$$

with $g = \partial f / \partial y$ (one row per output entry) and $s, t$ the positions
the layer is applied at (none for a vector input). Neither the layer's Jacobian nor its
weight-sized cotangents are formed: for an MLP layer of width $n$ the cost per pair of
examples and outputs drops from $O(n^2)$ to $O(n)$.

To get $x$ and $g$, each recognised layer is replaced, for the duration of the
computation, by a wrapper that calls it, records its input, and adds a zero *probe* to
its output; the gradient with respect to the probe is $g$. Everything else (unknown
modules, layers used in ways the wrapper cannot see) is differentiated as in
`JACOBIAN_CONTRACTION`. A recognised layer falls back to that too when it is called
under an inner `jax.vmap`, `lax.scan` or `jax.checkpoint` of the model (its recorded
input would be a tracer of that inner transformation, detected before anything is
computed), and the whole model falls back when a wrapper breaks it (for instance code
reading `layer.weight` directly).
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ..layers._dense import FiniteDense


@dataclasses.dataclass(frozen=True)
class DenseForm:
    r"""$y = c\, x W + \beta b$ on the last axis: `c`, `beta` (None: no bias), and
    how to bring `x` to `(..., k)` and $\partial f/\partial y$ to `(..., l)`."""

    c: Any
    beta: Any
    k: int
    l: int
    x_vector: bool  # False: x is a scalar (eqx.nn.Linear(in_features="scalar"))
    y_vector: bool


def dense_form(node) -> DenseForm | None:
    """The Dense structure of `node`, or None if it is not a layer we recognise."""
    if isinstance(node, FiniteDense):
        w = node.weight
        if not eqx.is_inexact_array(w) or w.ndim != 2:
            return None
        if node.bias is not None and (not eqx.is_inexact_array(node.bias) or node.bias.shape != w.shape[1:]):
            return None
        k, l = w.shape
        if node.parameterization == "ntk":
            c = jax.lax.stop_gradient(node.W_std) / math.sqrt(k)
            beta = None if node.bias is None else jax.lax.stop_gradient(node.b_std)
        elif node.parameterization == "standard":
            c = 1.0 / math.sqrt(node.s_in)
            beta = None if node.bias is None else 1.0
        else:
            return None
        return DenseForm(c, beta, k, l, True, True)
    if isinstance(node, eqx.nn.Linear):
        w = node.weight
        if not eqx.is_inexact_array(w) or w.ndim != 2:
            return None
        if node.bias is not None and (not eqx.is_inexact_array(node.bias) or node.bias.shape != w.shape[:1]):
            return None
        l, k = w.shape
        return DenseForm(
            1.0,
            None if node.bias is None else 1.0,
            k,
            l,
            node.in_features != "scalar",
            node.out_features != "scalar",
        )
    return None


class Recorder:
    """Side channel of one forward pass: the inputs of each wrapped layer (one entry
    per call) and, once probes are set, their additive zero probes."""

    def __init__(self):
        self.probes: dict[int, list] | None = None
        self.inputs: dict[int, list] = {}
        self.out_shapes: dict[int, list] = {}

    def reset(self, probes: dict[int, list] | None) -> None:
        self.probes = probes
        self.inputs = {}
        self.out_shapes = {}

    def __call__(self, index: int, x, y):
        calls = self.inputs.setdefault(index, [])
        n = len(calls)
        calls.append(x)
        self.out_shapes.setdefault(index, []).append(jax.ShapeDtypeStruct(jnp.shape(y), jnp.result_type(y)))
        if self.probes is None:
            return y
        return y + self.probes[index][n]


class Probed(eqx.Module):
    """Stand-in for a recognised layer during a structured computation."""

    node: eqx.Module
    index: int = eqx.field(static=True)
    recorder: Recorder = eqx.field(static=True)

    def __call__(self, x, *args, **kwargs):
        # Forwards whatever the wrapped layer accepts (`key=...`): this is a transparent
        # stand-in, not an API.
        return self.recorder(self.index, x, self.node(x, *args, **kwargs))


def is_probed(node) -> bool:
    return isinstance(node, Probed)


def find_dense(tree) -> list[int]:
    """Flat indices (in `tree_flatten(tree, is_leaf=dense_form)` order) of Dense-like
    nodes."""
    nodes = jax.tree_util.tree_leaves(tree, is_leaf=lambda n: dense_form(n) is not None)
    return [i for i, n in enumerate(nodes) if dense_form(n) is not None]


def wrap(tree, indices: set[int], recorder: Recorder):
    is_node = lambda n: dense_form(n) is not None  # noqa: E731
    nodes, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_node)
    nodes = [Probed(n, i, recorder) if i in indices else n for i, n in enumerate(nodes)]
    return jax.tree_util.tree_unflatten(treedef, nodes)


def node_at(tree, index: int):
    return jax.tree_util.tree_leaves(tree, is_leaf=lambda n: dense_form(n) is not None)[index]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which Dense-like layers are computed structurally, and the shapes of their
    outputs at each call (for the probes)."""

    indices: tuple[int, ...]
    out_shapes: dict[int, list]


def discover(tree, forward: Callable[[Any, Any], Any], x) -> Plan:
    """Trace `forward(wrapped_tree, x)` once (no FLOPs) to see which wrapped layers were
    called where their inputs are visible, with inputs of the expected width."""
    candidates = find_dense(tree)
    if not candidates:
        return Plan((), {})
    found: list[Plan] = []

    def probe_run(x):
        recorder = Recorder()
        recorder.reset(None)
        forward(wrap(tree, set(candidates), recorder), x)
        good = []
        for i in candidates:
            form = dense_form(node_at(tree, i))
            ok = True
            for x, y in zip(recorder.inputs.get(i, []), recorder.out_shapes.get(i, [])):
                try:
                    # A tracer of a finished inner transformation (vmap, scan, checkpoint
                    # inside the model) raises here: the layer was called out of sight.
                    jnp.add(x, 0)
                except jax.errors.UnexpectedTracerError:
                    ok = False
                    break
                xs, ys = jnp.shape(x), y.shape
                if form.x_vector and (len(xs) == 0 or xs[-1] != form.k):
                    ok = False
                if not form.x_vector and xs != ():
                    ok = False
                if form.y_vector and (len(ys) == 0 or ys[-1] != form.l or ys[:-1] != xs[:-1]):
                    ok = False
                if not form.y_vector and ys != ():
                    ok = False
            if ok:
                good.append(i)
        found.append(Plan(tuple(good), {i: recorder.out_shapes.get(i, []) for i in good}))

    try:
        eqx.filter_eval_shape(probe_run, x)
    except (AttributeError, TypeError, ValueError, jax.errors.UnexpectedTracerError):
        # The wrappers broke the model (it reads a layer's fields, checks its type, ...):
        # no structure; every parameter goes through Jacobian contraction.
        return Plan((), {})
    return found[0]


def zero_probes(plan: Plan) -> dict[int, list]:
    return {i: [jnp.zeros(s.shape, s.dtype) for s in plan.out_shapes[i]] for i in plan.indices}
