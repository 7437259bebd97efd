"""ImageResize, Index, DotGeneral, Aggregate: Monte Carlo, identities, masks, errors.

Monte Carlo: each layer sits between a `Conv` (Gaussian pre-activations), a `Relu`
and a per-position readout `Conv((1, 1))`. With one nonlinearity and parameter-free
linear layers, the expected empirical NNGP and NTK of the finite twin equal the
infinite-width kernels exactly (no O(1/width) bias): every term is an average over
i.i.d. channels. So the only error is sampling error, and the tolerance is a number
of standard errors of the mean over networks (`Z`), seeds fixed.
"""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import kernelalg as ka
from kernelalg import layers as kl
from kernelalg.ops import zip_axes


Z = 5.0  # standard errors: the largest of ~10^3 entries stays below 4.5 with odds > 99 %


def _key(seed: int) -> jax.Array:
    # 'rbg' keys: threefry is slow to compile on CPU and would dominate the runtime.
    return jr.key(seed, impl="rbg")


X1 = jr.normal(_key(1), (3, 4, 4, 2), jnp.float64)
X2 = jr.normal(_key(2), (2, 4, 4, 2), jnp.float64)


def _sandwich(*layers: kl.AbstractLayer, width: int = 16) -> kl.Serial:
    # No biases: the finite Dense adds a `(C,)` bias to `(*S, C)` outputs, which the
    # suite's rank-promotion="raise" refuses (a bug of the Dense/Conv twins, not ours).
    return kl.Serial(kl.Dense(width, W_std=1.3), kl.Relu(), *layers, kl.Dense(width, W_std=1.1))


def _is_parameter(path, leaf) -> bool:
    # Weights and biases of the twins; constants, graphs and hyperparameters are read
    # through stop_gradient, so differentiating them would only cost time.
    return eqx.is_inexact_array(leaf) and getattr(path[-1], "name", None) in ("weight", "bias")


def _outer(y1: jax.Array, y2: jax.Array) -> jax.Array:
    """Channel-averaged products of batched outputs `(n, *S, C)`, zipped `(n1, n2, *S, *S)`."""
    n1, n2, c, s = y1.shape[0], y2.shape[0], y1.shape[-1], y1.shape[1:-1]
    out = jnp.einsum(
        "ipc,jqc->ijpq", y1.reshape(n1, -1, c), y2.reshape(n2, -1, c), precision=jax.lax.Precision.HIGHEST
    )
    return zip_axes(out.reshape((n1, n2) + s + s), 2) / c


def _monte_carlo(net, x1, x2, key, n_nets):
    """Mean and standard error over `n_nets` finite twins of the empirical NNGP and NTK."""

    def one(k):
        model = net.init(k, x1.shape[1:])
        spec = jax.tree_util.tree_map_with_path(_is_parameter, model)
        params, static = eqx.partition(model, spec)

        def f(p, x):
            return jax.vmap(eqx.combine(p, static))(x)

        # x1 and x2 in one batch: one Jacobian to trace and compile, not two.
        n1 = x1.shape[0]
        y = f(params, jnp.concatenate([x1, x2]))
        jac = [
            j.reshape(y.shape + (-1,))
            for j in jax.tree_util.tree_leaves(jax.jacfwd(f)(params, jnp.concatenate([x1, x2])))
        ]
        ntk = sum(_pair(j[:n1], j[n1:]) for j in jac)
        return _outer(y[:n1], y[n1:]), ntk

    # Sixteen networks at a time bound the memory of the Jacobians.
    nngp, ntk = jax.jit(lambda keys: jax.lax.map(one, keys, batch_size=16))(jr.split(key, n_nets))
    stats = []
    for v in (nngp, ntk):
        stats.append((jnp.mean(v, 0), jnp.std(v, 0, ddof=1) / math.sqrt(n_nets)))
    return stats


def _pair(a: jax.Array, b: jax.Array) -> jax.Array:
    """NTK contribution of one parameter array: Jacobians `(n, *S, C, P)` contracted
    over `P`, averaged over the channel, zipped like a kernel."""
    n1, n2, c, s = a.shape[0], b.shape[0], a.shape[-2], a.shape[1:-2]
    a = a.reshape(n1, -1, c, a.shape[-1])
    b = b.reshape(n2, -1, c, b.shape[-1])
    out = jnp.einsum("ipcz,jqcz->ijpq", a, b, precision=jax.lax.Precision.HIGHEST) / c
    return zip_axes(out.reshape((n1, n2) + s + s), 2)


def _assert_agrees(net, x1=X1, x2=X2, *, seed=0, n_nets=64):
    k = ka.kernel(net, x1, x2)
    (nngp, nngp_se), (ntk, ntk_se) = _monte_carlo(net, x1, x2, _key(seed), n_nets)
    assert nngp.shape == k.nngp.shape and ntk.shape == k.ntk.shape
    for name, mc, se, exact in (("nngp", nngp, nngp_se, k.nngp), ("ntk", ntk, ntk_se, k.ntk)):
        err = np.abs(np.asarray(mc) - np.asarray(exact))
        floor = 1e-10 * float(np.max(np.abs(exact)))
        z = float(np.max(err / (np.asarray(se) + floor)))
        assert z < Z, f"{name}: Monte Carlo differs from the kernel by {z:.1f} standard errors"


def _ring(n: int) -> np.ndarray:
    """Adjacency of a directed ring with self-loops and a chord: a small test graph."""
    a = np.eye(n) + np.roll(np.eye(n), 1, axis=1)
    a[0, n // 2] = 0.5
    return a


def _grid_graph(h: int, w: int) -> np.ndarray:
    """Dense `(1, h, w, h, w)` pattern: each pixel receives from itself and its right
    and lower neighbours (weights 1, 0.5, -0.7)."""
    a = np.zeros((h, w, h, w))
    for i in range(h):
        for j in range(w):
            a[i, j, i, j] = 1.0
            a[i, j, i, (j + 1) % w] = 0.5
            a[i, j, (i + 1) % h, j] = -0.7
    return a[None]


def _dense_to_sparse(a: np.ndarray, n_pad: int = 2) -> np.ndarray:
    """Integer edges `(batch, n_edges, K, 2)` with one edge per unit of (integer)
    weight, padded with `n_pad` edges of -1."""
    batch, shape = a.shape[0], a.shape[1 : 1 + (a.ndim - 1) // 2]
    k = len(shape)
    out = []
    for b in range(batch):
        edges = []
        for idx in zip(*np.nonzero(a[b])):
            tail, head = idx[:k], idx[k:]
            edges += [np.stack([tail, head], -1)] * int(a[b][idx])
        out.append(np.asarray(edges, int).reshape(-1, k, 2))
    m = max(len(e) for e in out) + n_pad
    return np.stack([np.concatenate([e, -np.ones((m - len(e), k, 2), int)]) for e in out])


MONTE_CARLO = {
    "ImageResize linear": kl.ImageResize((-1, 3, 6, -1), "linear"),
    "ImageResize nearest": kl.ImageResize((-1, 6, 3, -1), "nearest"),
    "Index crop, flip": kl.Index(kl.Slice[:, 1:, ::-2]),
    "Index integer": kl.Index(kl.Slice[:, :, 2]),
    "DotGeneral contract": kl.DotGeneral(
        rhs=np.asarray([[1.0, -0.5, 0.2], [0.3, 0.8, -1.1], [0.0, 0.4, 0.9], [-0.6, 0.1, 0.5]]),
        dimension_numbers=(((1,), (0,)), ((), ())),
    ),
    "DotGeneral batch dims": kl.DotGeneral(
        lhs=np.asarray([[1.5, -0.5], [0.2, 0.7], [-1.0, 0.3], [0.4, 0.0]]),
        dimension_numbers=(((), ()), ((0,), (2,))),
    ),
    "Aggregate dense": kl.Aggregate().with_pattern(_grid_graph(4, 4)),
    "Aggregate sparse": kl.Aggregate(aggregate_axis=2, implementation="SPARSE").with_pattern(
        _dense_to_sparse((_ring(4) + np.eye(4)).round()[None])[:, :, 0, :]
    ),
}


CHAINS = {
    "resize linear, crop, contract, dense graph": (
        MONTE_CARLO["ImageResize linear"],  # (4, 4) -> (3, 6)
        kl.Index(kl.Slice[:, :, 1:-1]),  # (3, 4)
        kl.DotGeneral(
            lhs=np.asarray([[1.0, -0.5, 0.2], [0.3, 0.8, -1.1]]), dimension_numbers=(((1,), (1,)), ((), ()))
        ),
        kl.Aggregate().with_pattern(_grid_graph(2, 4)),
    ),
    "resize nearest, integer index, batch dims, sparse graph": (
        MONTE_CARLO["ImageResize nearest"],  # (4, 4) -> (6, 3)
        kl.Index(kl.Slice[:, ::-2, 1]),  # (3,)
        kl.DotGeneral(
            lhs=np.asarray([[1.5, -0.5], [0.2, 0.7], [-1.0, 0.3]]), dimension_numbers=(((), ()), ((0,), (1,)))
        ),
        kl.Aggregate(aggregate_axis=1, implementation="SPARSE").with_pattern(
            _dense_to_sparse((_ring(3) + np.eye(3)).round()[None])
        ),
    ),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_monte_carlo_agreement(name):
    _assert_agrees(_sandwich(*CHAINS[name]))


SLOW_MONTE_CARLO = {
    "ImageResize cubic": kl.ImageResize((-1, 7, 3, -1), "cubic"),
    "ImageResize lanczos3 antialias": kl.ImageResize((-1, 2, 3, -1), "lanczos3"),
    "Index batch-free ellipsis": kl.Index(kl.Slice[..., ::2, :]),
    "DotGeneral scalar": kl.DotGeneral(rhs=-1.7),
    "Aggregate two axes sparse": kl.Aggregate(implementation="SPARSE").with_pattern(
        _dense_to_sparse(np.abs(_grid_graph(4, 4)).round())
    ),
}


def test_float32_inputs_give_float32_kernels():
    net = _sandwich(*CHAINS["resize nearest, integer index, batch dims, sparse graph"])
    k32 = ka.kernel(net, X1.astype(jnp.float32), X2.astype(jnp.float32))
    k64 = ka.kernel(net, X1, X2)
    for g in ("nngp", "ntk", "cov1", "cov2"):
        a, b = getattr(k32, g), getattr(k64, g)
        assert a.dtype == jnp.float32, g
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(b))), err_msg=g)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MONTE_CARLO) + list(SLOW_MONTE_CARLO))
def test_monte_carlo_agreement_each(name):
    layer = MONTE_CARLO[name] if name in MONTE_CARLO else SLOW_MONTE_CARLO[name]
    _assert_agrees(_sandwich(layer, width=32), n_nets=128, seed=4)


# ------------------------------------------------------------------- identities


def _close(a: ka.Kernel, b: ka.Kernel, rtol=1e-12):
    for g in ("nngp", "ntk", "cov1", "cov2"):
        u, v = getattr(a, g), getattr(b, g)
        assert (u is None) == (v is None), g
        if u is not None:
            np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * float(np.max(np.abs(v))), err_msg=g)


def _base():
    # Per-position Dense: cheap to compile, and its outputs covary across positions.
    return kl.Serial(kl.Dense(8, W_std=1.3, b_std=0.2), kl.Relu())


@eqx.filter_jit
def _apply_many(pairs: list[tuple[kl.AbstractLayer, ka.Kernel]]) -> list[ka.Kernel]:
    # Compilation is the bulk of the cost: applied eagerly, each primitive of a layer
    # compiles on its own; here all the layer applications of a test compile at once.
    return [layer(k) for layer, k in pairs]


def _apply(layer: kl.AbstractLayer, k: ka.Kernel) -> ka.Kernel:
    return _apply_many([(layer, k)])[0]


@eqx.filter_jit
def _run_twins(models: list[eqx.Module], x: jax.Array) -> list[jax.Array]:
    return [jax.vmap(model)(x) for model in models]


@functools.cache
def _base_kernels() -> tuple[ka.Kernel, ...]:
    """Kernels after `_base()`, to pass through the layers: x1 with x2 (full batch), x1
    with itself (full batch), x1 with x2 (diagonal batch). All are cut out of the one
    kernel of `[x1; x2]` with itself, so that only one network compiles."""
    k = ka.kernel(_base(), jnp.concatenate([X1, X2]), diagonal_batch=False)
    n1 = X1.shape[0]
    cov1, cov2 = k.cov1[:n1, :n1], k.cov1[n1:, n1:]
    shape1, shape2 = (n1,) + k.shape1[1:], (X2.shape[0],) + k.shape1[1:]
    cross = k.replace(
        nngp=k.nngp[:n1, n1:], ntk=k.ntk[:n1, n1:], cov1=cov1, cov2=cov2, shape1=shape1, shape2=shape2
    )
    self_ = k.replace(nngp=k.nngp[:n1, :n1], ntk=k.ntk[:n1, :n1], cov1=cov1, shape1=shape1, shape2=shape1)

    def batch_diagonal(c):
        return jnp.moveaxis(jnp.diagonal(c, axis1=0, axis2=1), -1, 0)

    diagonal_batch = cross.replace(cov1=batch_diagonal(cov1), cov2=batch_diagonal(cov2), diagonal_batch=True)
    return cross, self_, diagonal_batch


@functools.cache
def _diagonal_kernel() -> ka.Kernel:
    """`_base_kernels()[2]` with only its spatial diagonal."""
    k = _base_kernels()[2]
    d = ka.ops.spatial_diagonal
    return k.replace(
        nngp=d(k.nngp, 2), ntk=d(k.ntk, 2), cov1=d(k.cov1, 1), cov2=d(k.cov2, 1), diagonal_spatial=True
    )


IDENTITIES = {
    "Index full": kl.Index(kl.Slice[:, :, :, :]),
    "Index ellipsis": kl.Index(kl.Slice[...]),
    "Index explicit bounds": kl.Index(kl.Slice[0:, 0:4, :4:1]),
    "ImageResize keep": kl.ImageResize((-1, -1, -1, -1), "linear"),
    "ImageResize same size": kl.ImageResize((-1, 4, 4, -1), "linear"),
    "ImageResize same size nearest": kl.ImageResize((-1, 4, 4, -1), "nearest"),
    "DotGeneral no constant": kl.DotGeneral(),
    "DotGeneral identity": kl.DotGeneral(rhs=np.eye(4), dimension_numbers=(((2,), (0,)), ((), ()))),
    "Aggregate no pattern": kl.Aggregate(),
    "Aggregate identity": kl.Aggregate().with_pattern(np.eye(16).reshape(1, 4, 4, 4, 4)),
    "Aggregate identity sparse": kl.Aggregate(implementation="SPARSE").with_pattern(
        _dense_to_sparse(np.eye(16).reshape(1, 4, 4, 4, 4))
    ),
}


def _close(a: ka.Kernel, b: ka.Kernel, rtol=1e-12):
    for g in ("nngp", "ntk", "cov1", "cov2"):
        u, v = getattr(a, g), getattr(b, g)
        assert (u is None) == (v is None), g
        if u is not None:
            np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * float(np.max(np.abs(v))), err_msg=g)
    assert a.shape1 == b.shape1 and a.shape2 == b.shape2


@functools.cache
def _identity_outputs() -> dict[str, tuple[list[ka.Kernel], jax.Array]]:
    """Every identity layer on x1 with itself (full batch) and x1 with x2 (diagonal
    batch), and its twin on `X1`: one compilation for all."""
    ks = _base_kernels()[1:]
    names = list(IDENTITIES)
    kernels = _apply_many([(IDENTITIES[n], k) for n in names for k in ks])
    twins = _run_twins([IDENTITIES[n].init(_key(0), X1.shape[1:]) for n in names], X1)
    return {n: (kernels[2 * i : 2 * i + 2], twins[i]) for i, n in enumerate(names)}


@pytest.mark.parametrize("name", list(IDENTITIES))
def test_identity(name):
    kernels, twin = _identity_outputs()[name]
    for out, k in zip(kernels, _base_kernels()[1:]):
        _close(out, k)
    np.testing.assert_allclose(twin, X1, rtol=1e-13)


LAYERS = {**MONTE_CARLO, **IDENTITIES}


@pytest.mark.parametrize("name", list(LAYERS))
def test_out_shape_is_that_of_the_twin(name):
    layer = LAYERS[name]
    model = layer.init(_key(0), X1.shape[1:])
    out = jax.eval_shape(model, jax.ShapeDtypeStruct(X1.shape[1:], X1.dtype))
    assert layer.out_shape(X1.shape[1:]) == out.shape
    k = jax.eval_shape(layer, _base_kernels()[0])
    assert k.shape1 == (3,) + layer.out_shape((4, 4, 8)) and k.nngp.shape[:2] == (3, 2)


DIAGONAL = {
    "Index": kl.Index(kl.Slice[:, ::-1, 1:3]),
    "Index integer": kl.Index(kl.Slice[:, 2]),
    "ImageResize nearest": kl.ImageResize((-1, 7, 3, -1), "nearest"),
    "DotGeneral batch dims": MONTE_CARLO["DotGeneral batch dims"],
    "DotGeneral scalar": kl.DotGeneral(rhs=-1.7),
}


@functools.cache
def _diagonal_outputs() -> dict[str, list[ka.Kernel]]:
    """Each layer of `DIAGONAL` on the full and on the diagonal kernel: one compilation."""
    names = list(DIAGONAL)
    out = _apply_many([(DIAGONAL[n], k) for n in names for k in (_base_kernels()[2], _diagonal_kernel())])
    return {n: out[2 * i : 2 * i + 2] for i, n in enumerate(names)}


@pytest.mark.parametrize("name", list(DIAGONAL))
def test_diagonal_spatial_is_the_diagonal_of_the_full_kernel(name):
    assert DIAGONAL[name].requires(ka.Diagonals(True, True)).spatial
    full, diag = _diagonal_outputs()[name]
    np.testing.assert_allclose(diag.nngp, ka.ops.spatial_diagonal(full.nngp, 2), rtol=1e-12)
    np.testing.assert_allclose(diag.ntk, ka.ops.spatial_diagonal(full.ntk, 2), rtol=1e-12)
    np.testing.assert_allclose(diag.cov1, ka.ops.spatial_diagonal(full.cov1, 1), rtol=1e-12)


@pytest.mark.parametrize(
    "layer",
    [
        kl.ImageResize((-1, 7, 3, -1), "linear"),
        MONTE_CARLO["DotGeneral contract"],
        MONTE_CARLO["Aggregate dense"],
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_position_mixing_layers_need_the_full_spatial_covariance(layer):
    assert not layer.requires(ka.Diagonals(True, True)).spatial
    with pytest.raises(ValueError, match="needs the full spatial covariance"):
        _apply(layer, _diagonal_kernel())


def test_dot_general_scalar_scales_the_kernel():
    b = _base_kernels()[0]
    a = _apply(kl.DotGeneral(rhs=-1.5), b)
    np.testing.assert_allclose(a.nngp, 2.25 * b.nngp, rtol=1e-13)
    np.testing.assert_allclose(a.ntk, 2.25 * b.ntk, rtol=1e-13)


def test_dot_general_permutation_is_a_flip():
    perm = kl.DotGeneral(lhs=np.eye(4)[::-1], dimension_numbers=(((1,), (1,)), ((), ())))
    flip = kl.Index(kl.Slice[:, ::-1])
    out = _apply_many([pair for k in _base_kernels() for pair in ((perm, k), (flip, k))])
    for a, b in zip(out[::2], out[1::2]):
        _close(a, b)


def test_index_on_the_batch_axis_selects_examples():
    full = _base_kernels()[0]
    a, b = _apply_many([(kl.Index(kl.Slice[::2, 1:]), full), (kl.Index(kl.Slice[:, 1:]), full)])
    # The kernel of x1[::2] with x2[::2], cut out by hand.
    want = b.replace(
        nngp=b.nngp[::2, ::2],
        ntk=b.ntk[::2, ::2],
        cov1=b.cov1[::2, ::2],
        cov2=b.cov2[::2, ::2],
        shape1=(2,) + b.shape1[1:],
        shape2=(1,) + b.shape2[1:],
    )
    _close(a, want)


def test_layouts_of_the_arguments_follow_batch_and_channel_axes():
    # The same layers for NCHW inputs: axis arguments in that layout, the kernel the same.
    pattern = _ring(4)[None]
    pairs = [
        (kl.ImageResize((-1, 3, 6, -1), "linear"), kl.ImageResize((-1, -1, 3, 6), "linear", channel_axis=1)),
        (kl.Index(kl.Slice[:, 1:, ::-2]), kl.Index(kl.Slice[:, :, 1:, ::-2], channel_axis=1)),
        (kl.Index(kl.Slice[1:, :, 2]), kl.Index(kl.Slice[:, :, 1:, 2], batch_axis=2, channel_axis=0)),
        (
            MONTE_CARLO["DotGeneral contract"],
            kl.DotGeneral(
                rhs=MONTE_CARLO["DotGeneral contract"].rhs,
                dimension_numbers=(((2,), (0,)), ((), ())),
                channel_axis=1,
            ),
        ),
        (
            kl.Aggregate(aggregate_axis=2).with_pattern(pattern),
            kl.Aggregate(aggregate_axis=3, channel_axis=1).with_pattern(pattern),
        ),
    ]
    k = _base_kernels()[0]
    out = _apply_many([(layer, k) for pair in pairs for layer in pair])
    for a, b in zip(out[::2], out[1::2]):
        _close(a, b)
    # End to end, with inputs in NCHW as well.
    a = ka.kernel(pairs[0][1], jnp.moveaxis(X1, -1, 1), jnp.moveaxis(X2, -1, 1), channel_axis=1)
    _close(a, _apply(pairs[0][0], ka.kernel(kl.Identity(), X1, X2)))


def _random_graphs(key, n: int, v: int) -> np.ndarray:
    return np.asarray(jr.randint(key, (n, v, v), 0, 3), float) * (np.arange(v)[:, None] != np.arange(v) + 1)


def _pair_kernel(k: ka.Kernel, i: int, j: int) -> ka.Kernel:
    """The kernel of `x1[i]` with `x2[j]`, cut out of a full-batch kernel."""
    return k.replace(
        nngp=k.nngp[i : i + 1, j : j + 1],
        ntk=k.ntk[i : i + 1, j : j + 1],
        cov1=k.cov1[i : i + 1, i : i + 1],
        cov2=k.cov2[j : j + 1, j : j + 1],
        shape1=(1,) + k.shape1[1:],
        shape2=(1,) + k.shape2[1:],
    )


def test_aggregate_dense_equals_sparse_per_example_graphs():
    a1, a2 = _random_graphs(_key(5), 3, 4), _random_graphs(_key(6), 2, 4)
    dense = kl.Aggregate(aggregate_axis=1).with_pattern(a1, a2)
    sparse = kl.Aggregate(aggregate_axis=1, implementation="SPARSE").with_pattern(
        _dense_to_sparse(a1), _dense_to_sparse(a2, n_pad=0)
    )
    full, self_, diag = _base_kernels()
    # x1 with itself: cov2 is None, each example uses its own graph on both sides.
    self_dense, self_sparse = dense.with_pattern(a1), sparse.with_pattern(_dense_to_sparse(a1))
    out = _apply_many(
        [
            (dense, full),
            (sparse, full),
            (dense, diag),
            (sparse, diag),
            (self_dense, self_),
            (self_sparse, self_),
        ]
    )
    for a, b in zip(out[::2], out[1::2]):
        _close(a, b)


def test_aggregate_per_example_graphs_equal_pairs_of_shared_graphs():
    a1, a2 = _random_graphs(_key(7), 3, 4), _random_graphs(_key(8), 2, 4)
    agg = kl.Aggregate(aggregate_axis=2)
    full = _base_kernels()[0]
    ij = [(i, j) for i in range(3) for j in range(2)]
    k, *pairs = _apply_many(
        [(agg.with_pattern(a1, a2), full)]
        + [(agg.with_pattern(a1[i : i + 1], a2[j : j + 1]), _pair_kernel(full, i, j)) for i, j in ij]
    )
    for (i, j), kij in zip(ij, pairs):
        np.testing.assert_allclose(k.nngp[i, j], kij.nngp[0, 0], rtol=1e-12)
        np.testing.assert_allclose(k.ntk[i, j], kij.ntk[0, 0], rtol=1e-12)
        np.testing.assert_allclose(k.cov1[i, i], kij.cov1[0, 0], rtol=1e-12)
        np.testing.assert_allclose(k.cov2[j, j], kij.cov2[0, 0], rtol=1e-12)


def test_aggregate_to_dense_decodes_the_pattern():
    edges = np.asarray([[[0, 1], [1, 2], [2, 3], [3, 0], [0, 0]]])
    graph = np.zeros((1, 4, 4))
    graph[0, edges[0, :, 0], edges[0, :, 1]] = 1.0

    def to_dense(e):
        return jnp.zeros((e.shape[0], 4, 4)).at[0, e[0, :, 0], e[0, :, 1]].add(1.0)

    k = _base_kernels()[1]
    a, b = _apply_many(
        [
            (kl.Aggregate(aggregate_axis=1, to_dense=to_dense).with_pattern(edges), k),
            (kl.Aggregate(aggregate_axis=1).with_pattern(graph), k),
        ]
    )
    _close(a, b)


# ------------------------------------------------------------------------ masks

MC = -999.0


def _mask_net(layer, pool=True):
    tail = [kl.Dense(4, W_std=1.1, b_std=0.1), kl.Relu(), kl.GlobalAvgPool()] if pool else []
    return kl.Serial(kl.Dense(4, W_std=1.3, b_std=0.2), kl.Relu(), layer, *tail)


def test_masked_positions_resized_nearest_equal_truncated_sequence():
    # Nearest upsampling by 2 of a length-4 sequence whose last input is padding is the
    # upsampling of the length-3 sequence: positions 6, 7 are masked, pooling skips them.
    x = jr.normal(_key(9), (2, 4, 3))
    padded = x.at[:, 3].set(MC)
    a = ka.kernel(_mask_net(kl.ImageResize((-1, 8, -1), "nearest")), padded, mask_constant=MC)
    b = ka.kernel(_mask_net(kl.ImageResize((-1, 6, -1), "nearest")), x[:, :3])
    _close(a, b)


def test_mask_propagation_rules():
    x = jr.normal(_key(10), (2, 5, 3)).at[0, 3:].set(MC).at[1, 0].set(MC)
    mask = np.asarray(x == MC).all(-1)
    k = ka.kernel(_mask_net(kl.Identity(), pool=False), x, mask_constant=MC, diagonal_batch=False)
    np.testing.assert_array_equal(k.mask1, mask)
    c = np.asarray([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.5, 0.0], [0.0, 0.0]])
    resize, index, dot, agg = _apply_many(
        [
            (kl.ImageResize((-1, 3, -1), "linear"), k),
            (kl.Index(kl.Slice[:, ::-2]), k),
            (kl.DotGeneral(rhs=c, dimension_numbers=(((1,), (0,)), ((), ()))), k),
            (kl.Aggregate().with_pattern(_ring(5)[None]), k),
        ]
    )
    # ImageResize: masked where every input read with non-zero weight is masked.
    want = ~(np.asarray(jax.image.resize((~mask).astype(float), (2, 3), "linear")) > 0)
    np.testing.assert_array_equal(resize.mask1, want)
    # Index: the mask is indexed like the outputs.
    np.testing.assert_array_equal(index.mask1, mask[:, ::-2])
    # DotGeneral: unmasked where some unmasked input has a non-zero weight.
    np.testing.assert_array_equal(dot.mask1, ~(((~mask).astype(float) @ (c != 0)) > 0))
    # Aggregate: masks pass unchanged; kernel entries at masked vertices are zero.
    np.testing.assert_array_equal(agg.mask1, mask)
    assert np.all(np.asarray(agg.nngp)[0, :, 3:] == 0) and np.all(np.asarray(agg.cov1)[1, :, 0] == 0)
    assert np.any(np.asarray(agg.nngp)[0, :, :3] != 0)


# ----------------------------------------------------------------------- errors


def _agg_kernel(layer, x2=None):
    return ka.kernel(kl.Serial(_base(), layer), X1, x2)


ERRORS = {
    "ImageResize of the channel axis": (
        lambda: kl.ImageResize((-1, 8, 8, 3), "linear"),
        ValueError,
        r"resizes the channel axis",
    ),
    "ImageResize of the channel axis (NCHW)": (
        lambda: kl.ImageResize((-1, 3, 8, 8), "linear", channel_axis=1),
        ValueError,
        r"resizes the channel axis 1",
    ),
    "ImageResize of the batch axis": (
        lambda: kl.ImageResize((5, 8, 8, -1), "linear"),
        ValueError,
        r"resizes the batch axis",
    ),
    "ImageResize unknown method": (
        lambda: kl.ImageResize((-1, 8, 8, -1), "bilinar"),
        (ValueError, TypeError),
        r"method",
    ),
    "ImageResize bad size": (
        lambda: kl.ImageResize((-1, 0, 8, -1), "linear"),
        ValueError,
        r"positive ints or -1",
    ),
    "ImageResize shape of the wrong length": (
        lambda: ka.kernel(kl.Serial(_base(), kl.ImageResize((-1, 8, -1), "linear")), X1),
        ValueError,
        r"`ImageResize\(shape=...\)` has 3 entries .* inputs have 4 axes",
    ),
    "ImageResize linear on the spatial diagonal": (
        lambda: ka.kernel(
            kl.Serial(_base(), kl.ImageResize((-1, 8, 8, -1), "linear")), X1, diagonal_spatial=True
        ),
        ValueError,
        r"`ImageResize` needs covariances between different positions",
    ),
    "Index of the channel axis": (
        lambda: ka.kernel(kl.Serial(_base(), kl.Index(kl.Slice[:, :, :, :2])), X1),
        ValueError,
        r"indexes the channel axis",
    ),
    "Index of the channel axis (init)": (
        lambda: kl.Index(kl.Slice[..., 0]).init(_key(0), (4, 4, 2)),
        ValueError,
        r"indexes the channel axis",
    ),
    "Index integer on the batch axis": (
        lambda: kl.Index(kl.Slice[0]).out_shape((4, 4, 2)),
        ValueError,
        r"batch axis 0 with an integer",
    ),
    "Index with too many entries": (
        lambda: kl.Index(kl.Slice[:, :, :, :, :]).out_shape((4, 4, 2)),
        ValueError,
        r"has 5 entries, but its inputs have 4 axes",
    ),
    "Index out of range": (
        lambda: kl.Index(kl.Slice[:, 7]).out_shape((4, 4, 2)),
        ValueError,
        r"does not fit examples of shape \(4, 4, 2\)",
    ),
    "Index selecting nothing": (
        lambda: kl.Index(kl.Slice[:, 3:1]).out_shape((4, 4, 2)),
        ValueError,
        r"selects no positions",
    ),
    "Index with two ellipses": (lambda: kl.Index(kl.Slice[..., 1, ...]), ValueError, r"at most one `...`"),
    "Index with newaxis": (lambda: kl.Index(kl.Slice[:, None]), ValueError, r"does not add axes"),
    "Index with an array": (lambda: kl.Index(kl.Slice[:, np.arange(2)]), TypeError, r"Arrays"),
    "Index twin of a batch slice": (
        lambda: kl.Index(kl.Slice[::2]).init(_key(0), (4, 4, 2)),
        ValueError,
        r"selects examples .* no such twin",
    ),
    "DotGeneral with lhs and rhs": (
        lambda: kl.DotGeneral(lhs=np.eye(2), rhs=np.eye(2)),
        ValueError,
        r"at most one constant",
    ),
    "DotGeneral over the channel axis": (
        lambda: kl.DotGeneral(rhs=np.ones(2), dimension_numbers=(((3,), (0,)), ((), ()))).out_shape(
            (4, 4, 2)
        ),
        ValueError,
        r"channel axis -1",
    ),
    "DotGeneral over the batch axis": (
        lambda: kl.DotGeneral(rhs=np.ones(3), dimension_numbers=(((0,), (0,)), ((), ()))).out_shape(
            (4, 4, 2)
        ),
        ValueError,
        r"batch axis 0",
    ),
    "DotGeneral size mismatch": (
        lambda: kl.DotGeneral(rhs=np.ones(3), dimension_numbers=(((1,), (0,)), ((), ()))).out_shape(
            (4, 4, 2)
        ),
        ValueError,
        r"axis 0 of the constant .* size 3, but the input axis paired with it has size 4",
    ),
    "DotGeneral constant axis out of range": (
        lambda: kl.DotGeneral(rhs=np.ones(3), dimension_numbers=(((1,), (1,)), ((), ()))),
        ValueError,
        r"names axes \(1,\) of the constant",
    ),
    "DotGeneral malformed dimension_numbers": (
        lambda: kl.DotGeneral(rhs=np.ones(3), dimension_numbers=((1, 0), ())),
        (ValueError, TypeError),
        r"dimension_numbers",
    ),
    "Aggregate dense pattern of the wrong shape": (
        lambda: _agg_kernel(kl.Aggregate().with_pattern(np.ones((1, 4, 4)))),
        ValueError,
        r"`pattern1` must have shape \(batch, \*\(4, 4\), \*\(4, 4\)\)",
    ),
    "Aggregate pattern of the wrong batch size": (
        lambda: _agg_kernel(kl.Aggregate(aggregate_axis=1).with_pattern(np.ones((2, 4, 4)))),
        ValueError,
        r"leading \(batch\) axis of 2, but there are 3 examples",
    ),
    "Aggregate sparse pattern of the wrong K": (
        lambda: _agg_kernel(kl.Aggregate(implementation="SPARSE").with_pattern(np.zeros((1, 3, 1, 2), int))),
        ValueError,
        r"1 coordinates per vertex, but 2 axes are aggregated",
    ),
    "Aggregate sparse pattern of floats": (
        lambda: kl.Aggregate(implementation="SPARSE").with_pattern(np.zeros((1, 3, 2))),
        TypeError,
        r"integer vertex indices",
    ),
    "Aggregate sparse pattern without (tail, head)": (
        lambda: kl.Aggregate(implementation="SPARSE").with_pattern(np.zeros((1, 3, 1, 3), int)),
        ValueError,
        r"\(batch, n_edges, K, 2\)",
    ),
    "Aggregate sparse vertex out of range": (
        lambda: _apply(
            kl.Aggregate(aggregate_axis=1, implementation="SPARSE").with_pattern(np.full((1, 2, 2), 4)),
            _base_kernels()[2],
        ),
        RuntimeError,  # eqx.error_if: a value-dependent check under jit
        r"vertex coordinates beyond",
    ),
    "Aggregate pattern2 for x1 with itself": (
        lambda: _agg_kernel(
            kl.Aggregate(aggregate_axis=1).with_pattern(np.ones((1, 4, 4)), np.ones((1, 4, 4)))
        ),
        ValueError,
        r"`pattern2` must be None",
    ),
    "Aggregate x2 without pattern2": (
        lambda: _agg_kernel(kl.Aggregate(aggregate_axis=1).with_pattern(np.ones((3, 4, 4))), X2),
        ValueError,
        r"give the graphs of `x2`",
    ),
    "Aggregate over the channel axis": (
        lambda: _agg_kernel(kl.Aggregate(aggregate_axis=-1).with_pattern(np.ones((1, 8, 8)))),
        ValueError,
        r"includes the channel axis",
    ),
    "Aggregate twin of per-example graphs": (
        lambda: kl.Aggregate(aggregate_axis=1).with_pattern(np.ones((3, 4, 4))).init(_key(0), (4, 4, 2)),
        ValueError,
        r"holds 3 graphs",
    ),
    "Aggregate on the spatial diagonal": (
        lambda: ka.kernel(
            kl.Serial(_base(), kl.Aggregate(aggregate_axis=1).with_pattern(np.ones((1, 4, 4)))),
            X1,
            diagonal_spatial=True,
        ),
        ValueError,
        r"`Aggregate` needs covariances between different positions",
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_clear_early_errors(name):
    fn, exc, match = ERRORS[name]
    with pytest.raises(exc, match=match):
        fn()
