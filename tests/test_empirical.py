"""Empirical NTK/NNGP: the three implementations (and AUTO) against a brute-force
oracle (full Jacobians of the whole batch, contracted with numpy) on MLPs, CNNs, a
residual network, an attention model and a user-written equinox model with many
kinds of leaves; neural-tangents-style functions with `vmap_axes`; pytree outputs."""

import string

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import kernelalg as ka
import kernelalg.testing
from kernelalg import layers as kl


I = ka.NtkImplementation
IMPLEMENTATIONS = [I.JACOBIAN_CONTRACTION, I.NTK_VECTOR_PRODUCTS, I.STRUCTURED_DERIVATIVES, I.AUTO]
RTOL = 1e-10


def _is_hyper(node):
    return isinstance(node, kl.AbstractLayer)


def _params(model):
    # The documented parameter rule, restated: inexact leaves outside kernelalg layers;
    # FiniteDense's W_std/b_std are read through stop_gradient and so contribute zero.
    spec = jax.tree_util.tree_map(
        lambda n: False if _is_hyper(n) else eqx.is_inexact_array(n), model, is_leaf=_is_hyper
    )
    return eqx.partition(model, spec)


def zip_rule(full, ndim, trace, diag):
    """`full` of shape (*fx1, *fx2) -> neural-tangents' layout, with numpy letters."""
    trace = [p % ndim for p in trace]
    diag = [p % ndim for p in diag]
    a, b = string.ascii_lowercase[:ndim], string.ascii_uppercase[:ndim]
    lhs1 = "".join(a[p] if (p in trace or p in diag) else a[p] for p in range(ndim))
    lhs2 = "".join(a[p] if (p in trace or p in diag) else b[p] for p in range(ndim))
    out = "".join("" if p in trace else (a[p] if p in diag else a[p] + b[p]) for p in range(ndim))
    size = np.prod([full.shape[p] for p in trace]) if trace else 1
    return np.einsum(f"{lhs1}{lhs2}->{out}", np.asarray(full)) / size


def _brute_full(apply_batch, params, x1, x2):
    """Full NNGP and NTK, shape (*fx1, *fx2), from the Jacobian of the whole batch with
    respect to every parameter (flattened into one vector)."""
    flat, unravel = ravel_pytree(params)

    def f(p, x):
        return apply_batch(unravel(p), x)

    fx1, fx2 = f(flat, x1), f(flat, x2)
    j1, j2 = jax.jacrev(f)(flat, x1), jax.jacrev(f)(flat, x2)
    ntk = jnp.tensordot(j1, j2, axes=([-1], [-1]))
    nngp = jnp.tensordot(fx1, fx2, axes=0)
    return nngp, ntk


def check(f, params, x1, x2, axes, impls=IMPLEMENTATIONS, vmap_axes=None):
    """Every implementation against the oracle for every `(trace_axes, diagonal_axes)`
    in `axes`; all traced into one program (XLA compiles one program faster than many)."""
    model_mode = params is None
    if model_mode:
        p, static = _params(f)
        apply_batch = lambda q, x: jax.vmap(eqx.combine(q, static))(x)  # noqa: E731
    else:
        p = params
        apply_batch = lambda q, x: f(q, x)  # noqa: E731

    def run(f, params, p, x1, x2):
        out = []
        for trace, diag in axes:
            xx2 = x1 if (0 in diag or 0 in trace) else x2
            want = _brute_full(apply_batch, p, x1, xx2)
            got = [
                ka.empirical_kernel_fn(f, trace, diag, vmap_axes=vmap_axes, implementation=impl)(
                    x1, xx2, None, params
                )
                for impl in impls
            ]
            out.append((want, got))
        return out

    results = eqx.filter_jit(run)(f, params, p, x1, x2)
    for (trace, diag), ((nngp, ntk), got) in zip(axes, results):
        want_nngp = zip_rule(nngp, nngp.ndim // 2, trace, diag)
        want_ntk = zip_rule(ntk, ntk.ndim // 2, trace, diag)
        for impl, k in zip(impls, got):
            msg = f"{impl!r}, trace_axes={trace}, diagonal_axes={diag}"
            scale = np.max(np.abs(want_ntk))
            np.testing.assert_allclose(k.ntk, want_ntk, rtol=RTOL, atol=RTOL * scale, err_msg=msg)
            scale = np.max(np.abs(want_nngp))
            np.testing.assert_allclose(k.nngp, want_nngp, rtol=RTOL, atol=RTOL * scale, err_msg=msg)


def check_model(model, x1, x2, axes, impls=IMPLEMENTATIONS):
    check(model, None, x1, x2, axes, impls)


# 'rbg' keys: threefry is slow to compile on CPU, op by op, for every shape.
KEY = jr.key(0, impl="rbg")
X1 = jr.normal(jr.key(1, impl="rbg"), (4, 5))
X2 = jr.normal(jr.key(2, impl="rbg"), (3, 5))


# XLA's CPU compiler takes about a second per kernel program, so the default run
# covers every implementation on a few axis layouts; the `slow` set covers them all.
THREE = IMPLEMENTATIONS[:3]
MLP = kl.Serial(
    kl.Dense(12, 1.3, 0.2), kl.Relu(), kl.Dense(9, 1.1, 0.1), kl.Erf(0.8, 1.2, 0.1), kl.Dense(3, 1.0, 0.3)
)


def test_mlp_twin():
    check_model(MLP.init(KEY, (5,)), X1, X2, [((), (0,))], THREE)


@pytest.mark.slow
def test_mlp_twin_all_axes():
    axes = [((-1,), ()), ((), ()), ((), (0,)), ((-1,), (0,)), ((0,), ()), ((0, 1), ())]
    check_model(MLP.init(KEY, (5,)), X1, X2, axes)


@pytest.mark.slow
def test_mlp_twin_standard_parameterization_and_spatial_dense():
    net = kl.Serial(
        # No bias in the first layer: FiniteDense adds its bias to spatial outputs by
        # rank promotion, which the test configuration forbids.
        kl.Dense(6, 1.3, None, parameterization="standard", s=(2, 1)),
        kl.Relu(),
        kl.Dense(4, 0.7, None),
    )
    x1, x2 = jr.normal(jr.key(3, impl="rbg"), (3, 2, 5)), jr.normal(jr.key(4, impl="rbg"), (2, 2, 5))
    check_model(net.init(KEY, (2, 5)), x1, x2, [((-1,), ()), ((), ()), ((-1,), (1,)), ((1,), (0,))])


@pytest.mark.slow
def test_residual_twin():
    block = kl.Serial(kl.Dense(8, 1.1), kl.Relu(), kl.Dense(8, 0.9, 0.2))
    net = kl.Serial(
        kl.Dense(8, 1.2, 0.1), kl.FanInSum(kl.Identity(), block), kl.Relu(), kl.Dense(2, 1.0, 0.1)
    )
    check_model(
        net.init(KEY, (5,)), X1, X2, [((-1,), ())], [I.JACOBIAN_CONTRACTION, I.STRUCTURED_DERIVATIVES]
    )


@pytest.mark.slow
def test_residual_twin_all():
    block = kl.Serial(kl.Dense(8, 1.1), kl.Relu(), kl.Dense(8, 0.9, 0.2))
    net = kl.Serial(
        kl.Dense(8, 1.2, 0.1), kl.FanInSum(kl.Identity(), block), kl.Relu(), kl.Dense(2, 1.0, 0.1)
    )
    check_model(net.init(KEY, (5,)), X1, X2, [((-1,), ()), ((), (0,))])


class CNN(eqx.Module):
    """A user-written CNN: convolutions (Jacobian contraction) and a Linear head
    (structured)."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jr.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(2, 4, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(4, 4, 3, padding=1, key=k2)
        self.head = eqx.nn.Linear(4, 3, key=k3)

    def __call__(self, x):  # x: (H, W, C), channels last
        h = jnp.moveaxis(x, -1, 0)
        h = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(h))))
        return self.head(jnp.mean(h, axis=(1, 2)))


@pytest.mark.slow
def test_cnn_model():
    x1, x2 = jr.normal(jr.key(5, impl="rbg"), (3, 6, 6, 2)), jr.normal(jr.key(6, impl="rbg"), (2, 6, 6, 2))
    check_model(CNN(KEY), x1, x2, [((-1,), ()), ((), ())])


class Mixed(eqx.Module):
    """A user-written model with many kinds of leaves: a Linear called twice, a Linear
    under an inner vmap (structured derivatives fall back for it), optionally an
    attention layer, a kernelalg finite twin with array hyperparameters, a scalar parameter, a
    dict of parameters, an integer array, a function, strings, floats, flags, None."""

    per_token: eqx.nn.Linear
    attention: eqx.nn.MultiheadAttention | None
    shared: eqx.nn.Linear
    twin: eqx.Module
    scale: jax.Array
    table: dict
    counts: jax.Array
    activation: object
    name: str
    power: float
    flag: bool
    nothing: None

    def __init__(self, key, attention: bool = False):
        ks = jr.split(key, 5)
        self.per_token = eqx.nn.Linear(5, 4, key=ks[0])
        self.attention = eqx.nn.MultiheadAttention(2, 4, key=ks[1]) if attention else None
        self.shared = eqx.nn.Linear(8, 8, key=ks[2])
        self.twin = kl.Serial(kl.Dense(6, 1.2, 0.1), kl.Erf(0.9, 1.1, 0.2), kl.Dense(2, 1.0)).init(
            ks[3], (8,)
        )
        self.scale = jnp.asarray(0.7)
        self.table = {"w": jr.normal(ks[4], (8,)), "b": (jnp.asarray(0.1), jnp.zeros(8))}
        self.counts = jnp.arange(8)
        self.activation = jnp.tanh
        self.name = "mixed"
        self.power = 2.0
        self.flag = True
        self.nothing = None

    def __call__(self, x):  # x: (2, 5): two tokens
        h = jax.vmap(self.per_token)(x)
        if self.attention is not None:
            h = h + self.attention(h, h, h)
        v = h.reshape(-1) * self.table["w"] + self.table["b"][0] + self.table["b"][1]
        v = self.activation(self.shared(v)) * self.scale
        v = self.shared(v) + self.counts.astype(v.dtype) * 1e-3  # the same Linear again
        if self.flag:
            v = v**self.power / 4.0
        return self.twin(v)


def test_user_model_with_many_leaf_types():
    x1, x2 = jr.normal(jr.key(7, impl="rbg"), (3, 2, 5)), jr.normal(jr.key(8, impl="rbg"), (2, 2, 5))
    check_model(Mixed(KEY), x1, x2, [((-1,), ())], [I.JACOBIAN_CONTRACTION, I.STRUCTURED_DERIVATIVES])


@pytest.mark.slow
def test_user_model_with_many_leaf_types_all():
    x1, x2 = jr.normal(jr.key(7, impl="rbg"), (3, 2, 5)), jr.normal(jr.key(8, impl="rbg"), (2, 2, 5))
    check_model(Mixed(KEY, attention=True), x1, x2, [((-1,), ()), ((), (0,))])


def test_structured_derivatives_finds_the_layers_it_can():
    from kernelalg._empirical import _compute
    from kernelalg._empirical._target import make_target

    model = Mixed(KEY, attention=True)
    x = jr.normal(jr.key(7, impl="rbg"), (3, 2, 5))
    plan = _compute.plan_structure(make_target(model, None, None, x, None, "t"), model, x)
    nodes = jax.tree_util.tree_leaves(model, is_leaf=lambda n: isinstance(n, (eqx.nn.Linear, kl.FiniteDense)))
    # `per_token` and the attention's projections are called under an inner vmap, so
    # they fall back to Jacobian contraction; `shared` is called twice.
    found = [nodes[i] for i in plan.indices]
    assert len(found) == 3
    assert found[0] is model.shared and found[1] is model.twin.layers[0] and found[2] is model.twin.layers[2]
    assert len(plan.out_shapes[plan.indices[0]]) == 2


# neural-tangents-style functions f(params, x) on batches


def nt_mlp(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b[None])
    w, b = params[-1]
    return x @ w + b[None]


def nt_cnn1d(params, x):
    (w1, b1), (w2, b2) = params
    y = jax.lax.conv_general_dilated(x, w1, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
    return jnp.mean(jax.nn.relu(y + b1[None, None]), axis=1) @ w2 + b2[None]


def _nt_params(shapes, key):
    keys = jr.split(key, len(shapes))
    return [
        (jr.normal(k, ws) / np.sqrt(ws[-2]), 0.1 * jr.normal(k, (ws[-1],))) for k, ws in zip(keys, shapes)
    ]


def test_nt_style_mlp():
    params = _nt_params([(5, 7), (7, 6), (6, 3)], KEY)
    # Structured derivatives see no layers in a function of plain arrays: it is
    # Jacobian contraction (checked in the slow set).
    check(nt_mlp, params, X1, X2, [((-1,), ())], THREE[:2], vmap_axes=0)


@pytest.mark.slow
@pytest.mark.parametrize("vmap_axes", [None, 0, (0, 0, {})])
def test_nt_style_mlp_all(vmap_axes):
    params = _nt_params([(5, 7), (7, 6), (6, 3)], KEY)
    check(nt_mlp, params, X1, X2, [((-1,), ()), ((), (0,))], vmap_axes=vmap_axes)


@pytest.mark.slow
@pytest.mark.parametrize("vmap_axes", [None, 0])
def test_nt_style_cnn1d(vmap_axes):
    params = _nt_params([(3, 2, 4), (4, 2)], KEY)
    x1, x2 = jr.normal(jr.key(9, impl="rbg"), (3, 6, 2)), jr.normal(jr.key(10, impl="rbg"), (2, 6, 2))
    check(nt_cnn1d, params, x1, x2, [((-1,), ()), ((), ())], vmap_axes=vmap_axes)


@pytest.mark.slow
def test_vmap_axes_on_other_axes():
    # Batch along axis 1 of the inputs and of the outputs.
    params = _nt_params([(5, 6), (6, 3)], KEY)

    def f(p, x):  # x: (5, N) -> (3, N)
        return nt_mlp(p, x.T).T

    want = ka.empirical_ntk_fn(lambda p, x: f(p, x.T).T, trace_axes=(), vmap_axes=None)(X1, X2, params)
    got = ka.empirical_ntk_fn(f, trace_axes=(), vmap_axes=1)(X1.T, X2.T, params)
    # Output axes are (3, N): the kernel is (3, 3, N1, N2) in the zip layout.
    np.testing.assert_allclose(got, jnp.transpose(want, (2, 3, 0, 1)), rtol=RTOL, atol=1e-14)


def test_pytree_outputs_and_get_forms():
    params = _nt_params([(5, 7), (7, 3)], KEY)

    def f(p, x):
        y = nt_mlp(p, x)
        return {"logits": y, "features": jnp.tanh(x @ p[0][0])}

    def run(params):
        fn = ka.empirical_kernel_fn(f, vmap_axes=0)
        singles = {
            name: (
                ka.empirical_ntk_fn(lambda p, x, name=name: f(p, x)[name])(X1, X2, params),
                ka.empirical_nngp_fn(lambda p, x, name=name: f(p, x)[name])(X1, X2, params),
            )
            for name in ("logits", "features")
        }
        return fn(X1, X2, None, params), fn(X1, X2, "ntk", params), singles

    k, only, singles = eqx.filter_jit(run)(params)
    assert isinstance(k, ka.EmpiricalKernel) and set(k.ntk) == {"logits", "features"}
    assert isinstance(only, dict) and set(only) == {"logits", "features"}
    for name, (ntk, nngp) in singles.items():
        np.testing.assert_allclose(k.ntk[name], ntk, rtol=RTOL, atol=1e-14)
        np.testing.assert_allclose(only[name], ntk, rtol=RTOL, atol=1e-14)
        np.testing.assert_allclose(k.nngp[name], nngp, rtol=RTOL, atol=1e-14)


SMALL = kl.Serial(kl.Dense(10, 1.3, 0.2), kl.Relu(), kl.Dense(3))


def test_x2_none_is_x1_and_symmetric_psd():
    model = SMALL.init(KEY, (5,))

    def run(model):
        return [
            (
                ka.empirical_ntk_fn(model, implementation=impl)(X1),
                ka.empirical_ntk_fn(model, implementation=impl)(X1, X1),
            )
            for impl in THREE
        ]

    for a, b in eqx.filter_jit(run)(model):
        np.testing.assert_allclose(a, b, rtol=RTOL)
        kernelalg.testing.assert_symmetric_psd(a)


@pytest.mark.slow
def test_float32_in_float32_out():
    model = SMALL.init(KEY, (5,))
    model32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model)
    x = X1.astype(jnp.float32)

    def run(model32, model):
        ks = [ka.empirical_kernel_fn(model32, implementation=impl)(x, None) for impl in THREE]
        return ks, ka.empirical_ntk_fn(model)(X1)

    ks, want = eqx.filter_jit(run)(model32, model)
    for k in ks:
        assert k.ntk.dtype == jnp.float32 and k.nngp.dtype == jnp.float32
        np.testing.assert_allclose(k.ntk, want, rtol=2e-5)


def test_ntk_vector_products_fn():
    model = SMALL.init(KEY, (5,))
    params = _nt_params([(5, 7), (7, 3)], KEY)
    v = jr.normal(jr.key(11, impl="rbg"), (3, 3))

    def run(model, params):
        return [
            (ka.empirical_ntk_fn(model, trace_axes=())(X1, X2), ka.empirical_ntk_vp_fn(model, X1, X2)(v)),
            (
                ka.empirical_ntk_fn(nt_mlp, trace_axes=())(X1, X2, params),
                ka.empirical_ntk_vp_fn(nt_mlp, X1, X2, params)(v),
            ),
        ]

    for full, got in eqx.filter_jit(run)(model, params):  # full: (4, 3, 3, 3), axes i j a b
        np.testing.assert_allclose(got, jnp.einsum("ijab,jb->ia", full, v), rtol=RTOL, atol=1e-13)


@pytest.mark.slow
def test_grad_and_jit_through_the_kernel():
    model = SMALL.init(KEY, (5,))

    def loss(x, impl):
        return jnp.sum(ka.empirical_ntk_fn(model, implementation=impl)(x, X2))

    def run(model, x):
        impls = (I.JACOBIAN_CONTRACTION, I.STRUCTURED_DERIVATIVES)
        return [jax.grad(lambda x, impl=impl: loss(x, impl))(x) for impl in impls]

    grads = eqx.filter_jit(run)(model, X1)
    for g in grads[1:]:
        np.testing.assert_allclose(g, grads[0], rtol=1e-9, atol=1e-12)
    # Finite differences along one direction.
    d = jr.normal(jr.key(12, impl="rbg"), X1.shape)
    fn = ka.empirical_ntk_fn(model)
    eps = 1e-6
    fd = (jnp.sum(fn(X1 + eps * d, X2)) - jnp.sum(fn(X1 - eps * d, X2))) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grads[0], d), fd, rtol=1e-6)


def _auto_choice(f, params, x1, trace_axes, vmap_axes=None):
    from kernelalg._empirical import _auto
    from kernelalg._empirical._axes import check_axes
    from kernelalg._empirical._target import make_target

    target = make_target(f, params, vmap_axes, x1, None, "t")
    fx = eqx.filter_eval_shape(target.call, target.tree, x1)
    trace_diag = [
        check_axes(trace_axes, (), leaf.shape, leaf.shape) for leaf in jax.tree_util.tree_leaves(fx)
    ]
    return _auto.choose(target, target.tree, x1, None, fx, fx, trace_diag)


def test_auto_choices():
    # A finite twin: its Dense layers make structured derivatives hundreds of times
    # cheaper than either alternative.
    model = kl.Serial(
        kl.Dense(256, 1.4, 0.1), kl.Relu(), kl.Dense(256, 1.4, 0.1), kl.Relu(), kl.Dense(1)
    ).init(KEY, (20,))
    x = jr.normal(jr.key(13, impl="rbg"), (16, 20))
    assert _auto_choice(model, None, x, (-1,)) == I.STRUCTURED_DERIVATIVES
    # A function of plain arrays with ten outputs and no per-example structure: the
    # Jacobians of the whole batch cost more than NTK-vector products.
    params = [p for pair in _nt_params([(20, 64), (64, 10)], KEY) for p in pair[:1]]

    def f(p, x):
        return jnp.tanh(x @ p[0]) @ p[1]

    assert _auto_choice(f, params, x, ()) == I.NTK_VECTOR_PRODUCTS
    # ... and AUTO computes the same kernel.
    np.testing.assert_allclose(
        ka.empirical_ntk_fn(f, (), implementation=I.AUTO)(x, None, params),
        ka.empirical_ntk_fn(f, ())(x, None, params),
        rtol=RTOL,
        atol=1e-12,
    )


@pytest.mark.slow
def test_empirical_ntk_of_twins_converges_to_the_analytic_ntk():
    # The empirical NTK of a width-n network fluctuates around the analytic one by
    # O(n^{-1/2}) (Jacot et al. 2018; Hanin & Nica 2019): fit the rate on a log-log scale.
    x = jr.normal(jr.key(14, impl="rbg"), (6, 8))

    def net(width):
        return kl.Serial(
            kl.Dense(width, 1.4, 0.1), kl.Relu(), kl.Dense(width, 1.4, 0.1), kl.Erf(), kl.Dense(1, 1.0, 0.1)
        )

    exact = np.asarray(ka.kernel(net(1), x).ntk)
    widths = [64, 256, 1024, 4096]
    errors = []
    for width in widths:
        errs = []
        for seed in range(3):
            model = net(width).init(jr.key(100 + seed, impl="rbg"), (8,))
            emp = ka.empirical_ntk_fn(model, implementation=I.STRUCTURED_DERIVATIVES)(x)
            errs.append(np.linalg.norm(np.asarray(emp) - exact) / np.linalg.norm(exact))
        errors.append(float(np.mean(errs)))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    print(f"relative errors {dict(zip(widths, np.round(errors, 4)))}, slope {slope:.2f}")
    assert -0.75 < slope < -0.3, (errors, slope)
    assert errors[-1] < 0.05, errors


@pytest.mark.slow
def test_auto_picks_the_fastest_on_this_machine():
    import time

    x = jr.normal(jr.key(15, impl="rbg"), (32, 50))
    twin = kl.Serial(
        kl.Dense(128, 1.4, 0.1), kl.Relu(), kl.Dense(128, 1.4, 0.1), kl.Relu(), kl.Dense(10)
    ).init(KEY, (50,))
    ws = [
        jr.normal(jr.key(16 + i, impl="rbg"), s) / np.sqrt(s[0])
        for i, s in enumerate([(50, 256), (256, 256), (256, 1)])
    ]

    def f(p, x):
        return jnp.tanh(jnp.tanh(x @ p[0]) @ p[1]) @ p[2]

    cases = [(twin, None, (), None), (f, ws, (-1,), 0), (CNN(KEY), None, (-1,), None)]
    for model, params, trace, vmap_axes in cases:
        xx = jr.normal(jr.key(17, impl="rbg"), (8, 6, 6, 2)) if isinstance(model, CNN) else x
        times = {}
        for impl in THREE:
            fn = ka.empirical_ntk_fn(model, trace, vmap_axes=vmap_axes, implementation=impl)
            jax.block_until_ready(fn(xx, None, params))
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                jax.block_until_ready(fn(xx, None, params))
                runs.append(time.perf_counter() - t)
            times[impl] = min(runs)
        pick = _auto_choice(model, params, xx, trace, vmap_axes)
        print({i.name: f"{t * 1e3:.1f} ms" for i, t in times.items()}, "AUTO:", pick.name)
        assert times[pick] <= 1.5 * min(times.values()), (times, pick)
