r"""Monte Carlo estimates of NNGP and NTK kernels from sampled finite networks."""

import math
import numbers
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PRNGKeyArray, PyTree

from ._empirical._api import (
    NtkImplementation,
    _canonical_get,
    _check_axes_arg,
    _check_implementation,
    _check_vmap_axes,
    _compute_kernels,
)
from .layers._base import AbstractLayer


# Array entries held at once by the networks of one step (their parameters and, for
# the NTK, their Jacobians): 2^25 float64 entries are 256 MiB.
_MEMORY_ENTRIES = 2**25


class MonteCarloKernel(eqx.Module):
    r"""A Monte Carlo estimate of the NNGP and NTK kernels, with standard errors.

    **Fields:**

    - `nngp`, `ntk`: the means $\bar k = \frac1S \sum_s \hat k^{(s)}$ of the empirical
      kernels of $S$ independently sampled networks (None if not requested).
    - `nngp_se`, `ntk_se`: their standard errors, entry by entry, $s_k / \sqrt S$ with
      $s_k$ the sample standard deviation over networks ($+\infty$ when $S = 1$).
    - `n_samples`: $S$.
    """

    nngp: Array | None
    ntk: Array | None
    nngp_se: Array | None
    ntk_se: Array | None
    n_samples: int = eqx.field(static=True)


def _check_n_samples(n_samples) -> tuple[tuple[int, ...], bool]:
    """`(sorted counts, single)`."""
    if isinstance(n_samples, numbers.Integral) and not isinstance(n_samples, bool):
        counts, single = (int(n_samples),), True
    elif isinstance(n_samples, Sequence) and not isinstance(n_samples, str):
        counts, single = tuple(n_samples), False
    else:
        raise TypeError(f"`n_samples` must be an int or a list of ints; got {n_samples!r}.")
    if not counts or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in counts
    ):
        raise ValueError(f"`n_samples` must be positive ints; got {n_samples!r}.")
    if not single and list(counts) != sorted(set(counts)):
        raise ValueError(f"`n_samples` must be strictly increasing; got {n_samples!r}.")
    return tuple(int(n) for n in counts), single


def _sample(net, key, shape):
    """The finite network (a model, or NT-style parameters) sampled with `key`, for
    inputs of `shape` (a layer's twin takes one example's shape)."""
    if isinstance(net, AbstractLayer):
        return net.init(key, shape)
    _, params = net(key, shape)
    return params


def _is_array_like(x) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


@eqx.filter_jit
def _sample_all(net, keys, shape):
    """The networks sampled with each of `keys`, stacked. One after the other
    (`lax.map`) rather than vmapped: each network is then exactly the one a loop would
    draw with its key, for every PRNG implementation (vmapped `rbg` keys draw other
    numbers), so estimates do not depend on the batching."""
    _, static = eqx.partition(eqx.filter_eval_shape(_sample, net, keys[0], shape), _is_array_like)
    arrays = jax.lax.map(lambda k: eqx.filter(_sample(net, k, shape), eqx.is_array), keys)
    return eqx.combine(arrays, static)


@eqx.filter_jit
def _kernels(apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation, networks, x1, x2, kinds):
    """The empirical kernels of each of the (stacked) networks. Takes only what the
    computation needs, so that estimators differing in `n_samples` or batching share
    compilations."""

    def one(network):
        f, params = (network, None) if apply_fn is None else (apply_fn, network)
        return _compute_kernels(
            f,
            trace_axes,
            diagonal_axes,
            vmap_axes,
            implementation,
            "monte_carlo_kernel_fn",
            x1,
            x2,
            kinds,
            params,
        )

    return eqx.filter_vmap(one)(networks)


@eqx.filter_jit
def _moments(samples: dict, na, ma, sa):
    """Add `samples` (a leading axis of networks) to the count `na` (an array, so that
    counts do not recompile), mean `ma` and sum of squared deviations `sa`, with Chan
    et al.'s pairwise update, stable when the mean is large relative to the spread."""
    nb = next(iter(samples.values())).shape[0]
    mb = {g: jnp.mean(v, axis=0) for g, v in samples.items()}
    sb = {g: jnp.sum((v - mb[g][None]) ** 2, axis=0) for g, v in samples.items()}
    n = na + nb
    mean, m2 = {}, {}
    for g in mb:
        delta = mb[g] - ma[g]
        mean[g] = ma[g] + delta * (nb / n).astype(delta.dtype)
        m2[g] = sa[g] + sb[g] + delta**2 * (na * nb / n).astype(delta.dtype)
    return mean, m2


def _merge(state, samples: dict):
    if state is None:
        zeros = {g: jnp.zeros(v.shape[1:], v.dtype) for g, v in samples.items()}
        state = (0, zeros, zeros)
    na, ma, sa = state
    mean, m2 = _moments(samples, jnp.asarray(float(na)), ma, sa)
    return na + next(iter(samples.values())).shape[0], mean, m2


class MonteCarloKernelFn(eqx.Module):
    r"""Monte Carlo NNGP and NTK of randomly initialised finite networks, made by
    `monte_carlo_kernel_fn`. Call as `kernel_fn(x1, x2=None, get=None)`: `get="nngp"`
    or `"ntk"` returns the mean alone (as neural-tangents does); a tuple or None
    returns a `MonteCarloKernel` with standard errors. When `n_samples` is a list, a
    list with one estimate per count is returned (estimates share their first
    networks, like neural-tangents' generator).
    """

    net: AbstractLayer | Callable
    apply_fn: Callable | None
    key: PRNGKeyArray
    n_samples: tuple[int, ...] = eqx.field(static=True)
    single: bool = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    device_count: int = eqx.field(static=True)
    store_on_device: bool = eqx.field(static=True)
    trace_axes: tuple[int, ...] = eqx.field(static=True)
    diagonal_axes: tuple[int, ...] = eqx.field(static=True)
    vmap_axes: PyTree
    implementation: NtkImplementation = eqx.field(static=True)
    samples_per_step: int | None = eqx.field(static=True)

    def __call__(
        self,
        x1: PyTree[ArrayLike],
        x2: PyTree[ArrayLike] | None = None,
        get: str | tuple[str, ...] | None = None,
    ) -> Array | MonteCarloKernel | list:
        kinds, single_get = _canonical_get(get)
        x1 = jax.tree_util.tree_map(jnp.asarray, x1)
        x2 = None if x2 is None else jax.tree_util.tree_map(jnp.asarray, x2)
        estimates = self._blocks(x1, x2, kinds)
        out = []
        for n, (mean, se) in zip(self.n_samples, estimates):
            if not self.store_on_device:
                cpu = jax.devices("cpu")[0]
                mean, se = jax.device_put((mean, se), cpu)
            if single_get:
                out.append(mean[kinds[0]])
            else:
                out.append(
                    MonteCarloKernel(
                        nngp=mean.get("nngp"),
                        ntk=mean.get("ntk"),
                        nngp_se=se.get("nngp"),
                        ntk_se=se.get("ntk"),
                        n_samples=n,
                    )
                )
        return out[0] if self.single else out

    def _input_shape(self, x1):
        """What the sampler is told: one example's shape for a layer's twin (so that
        blocks of examples share networks and compilations), the batch's for
        neural-tangents' `init_fn`."""
        if isinstance(self.net, AbstractLayer):
            return tuple(x1.shape[1:])
        return jax.tree_util.tree_map(lambda a: tuple(a.shape), x1)

    def _outputs(self, x):
        """Shapes of the (batched) outputs of a sampled network on `x`."""
        if isinstance(self.net, AbstractLayer):
            return [(x.shape[0],) + self.net.out_shape(tuple(x.shape[1:]))]
        params = eqx.filter_eval_shape(lambda k: _sample(self.net, k, self._input_shape(x)), self.key)
        out = eqx.filter_eval_shape(self.apply_fn, params, x)
        return [leaf.shape for leaf in jax.tree_util.tree_leaves(out)]

    def _output_ndim(self, x1) -> int:
        """Axes of the batched outputs (the batch is axis 0 when blocks are used)."""
        return min(len(s) for s in self._outputs(x1))

    def _steps(self, x1, x2, kinds) -> int:
        """Networks per step: as many as keep their parameters and (for the NTK) the
        Jacobians of their outputs within the memory budget."""
        if self.samples_per_step is not None:
            return self.samples_per_step
        shapes = eqx.filter_eval_shape(lambda k: _sample(self.net, k, self._input_shape(x1)), self.key)
        leaves = [a for a in jax.tree_util.tree_leaves(shapes) if _is_array_like(a)]
        n_params = max(1, sum(math.prod(a.shape) for a in leaves))
        rows = sum(math.prod(s) for x in (x1, x2) if x is not None for s in self._outputs(x))
        per_network = n_params * (1 + (rows if "ntk" in kinds else 0))
        return max(1, _MEMORY_ENTRIES // per_network)

    def _devices(self) -> int:
        available = len(jax.devices())
        if self.device_count in (0, 1):
            return 1
        return available if self.device_count < 0 else min(self.device_count, available)

    def _estimates(self, x1, x2, kinds) -> list[tuple[dict, dict]]:
        """(mean, standard error) at each count in `n_samples`, for one block."""
        total = self.n_samples[-1]
        devices = self._devices()
        # Equal steps (one compilation), each a multiple of the device count.
        n_steps = -(-total // self._steps(x1, x2, kinds))
        per_step = -(-total // n_steps)
        if devices > 1:
            per_step = -(-per_step // devices) * devices
        keys = jax.random.split(self.key, total)
        if n_steps * per_step > total:
            # Pad the last step to the common size; the extra networks are discarded.
            pad = jax.random.split(jax.random.fold_in(self.key, 1), n_steps * per_step - total)
            keys = jnp.concatenate([keys, pad])
        pending: dict | None = None  # networks computed but not yet merged
        state, done, out = None, 0, []
        for target in self.n_samples:
            while done < target:
                if pending is None:
                    k = keys[done : done + per_step]
                    if devices > 1:
                        mesh = jax.sharding.Mesh(jax.devices()[:devices], ("networks",))
                        k = jax.device_put(
                            k, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("networks"))
                        )
                    # Sampled in a program of its own: compiled together with the
                    # kernels, XLA's CPU compilation was several times slower.
                    networks = _sample_all(self.net, k, self._input_shape(x1))
                    pending = _kernels(
                        self.apply_fn,
                        self.trace_axes,
                        self.diagonal_axes,
                        self.vmap_axes,
                        self.implementation,
                        networks,
                        x1,
                        x2,
                        kinds,
                    )
                size = min(next(iter(pending.values())).shape[0], target - done)
                state = _merge(state, {g: v[:size] for g, v in pending.items()})
                rest = {g: v[size:] for g, v in pending.items()}
                pending = rest if next(iter(rest.values())).shape[0] else None
                done += size
            n, mean, m2 = state
            if n > 1:
                se = {g: jnp.sqrt(v / (n - 1) / n) for g, v in m2.items()}
            else:
                se = {g: jnp.full_like(v, jnp.inf) for g, v in m2.items()}
            out.append((mean, se))
        return out

    def _blocks(self, x1, x2, kinds) -> list[tuple[dict, dict]]:
        """Estimates over blocks of `batch_size` examples of `x1` and `x2`, assembled."""
        if self.batch_size == 0:
            return self._estimates(x1, x2, kinds)
        if 0 in [a % 2**30 for a in self.trace_axes] or (any(a < 0 for a in self.trace_axes) and False):
            raise ValueError(
                "`monte_carlo_kernel_fn(batch_size=...)` splits the batch axis (0) into blocks, "
                "so it cannot also be traced over: drop 0 from `trace_axes` or use `batch_size=0`."
            )
        diagonal = 0 in self.diagonal_axes
        xb = x1 if x2 is None else x2
        n1, n2 = jax.tree_util.tree_leaves(x1)[0].shape[0], jax.tree_util.tree_leaves(xb)[0].shape[0]
        b = self.batch_size
        if n1 % b or n2 % b:
            raise ValueError(
                f"`monte_carlo_kernel_fn(batch_size={b})` must divide the batch sizes of `x1` ({n1}) "
                f"and `x2` ({n2}); pick a divisor, or `batch_size=0` for no blocks."
            )

        def take(x, i):
            return jax.tree_util.tree_map(lambda a: a[i * b : (i + 1) * b], x)

        rows = []
        for i in range(n1 // b):
            cols = []
            for j in [i] if diagonal else range(n2 // b):
                cols.append(self._estimates(take(x1, i), take(xb, j), kinds))
            rows.append(cols)
        out = []
        for c in range(len(self.n_samples)):
            mean, se = {}, {}
            for g in kinds:
                for d, name in ((mean, 0), (se, 1)):
                    if diagonal:
                        d[g] = jnp.concatenate([rows[i][0][c][name][g] for i in range(len(rows))], axis=0)
                    else:
                        d[g] = jnp.concatenate(
                            [jnp.concatenate([blk[c][name][g] for blk in row], axis=1) for row in rows],
                            axis=0,
                        )
            out.append((mean, se))
        return out


def monte_carlo_kernel_fn(
    init_fn: AbstractLayer | Callable,
    apply_fn: Callable | None = None,
    key: PRNGKeyArray | None = None,
    n_samples: int | Sequence[int] | None = None,
    batch_size: int = 0,
    device_count: int = -1,
    store_on_device: bool = True,
    trace_axes: int | tuple[int, ...] = (-1,),
    diagonal_axes: int | tuple[int, ...] = (),
    vmap_axes: PyTree = None,
    implementation: NtkImplementation | int = NtkImplementation.JACOBIAN_CONTRACTION,
    *,
    samples_per_step: int | None = None,
) -> MonteCarloKernelFn:
    r"""Monte Carlo estimates of the NNGP and NTK kernels, averaging the empirical
    kernels (`empirical_kernel_fn`) of $S$ randomly initialised finite networks:

    $$\bar k(x_1, x_2) = \frac1S \sum_{s=1}^S \hat k_{\theta_s}(x_1, x_2),\qquad
      \mathrm{se} = \frac{1}{\sqrt S}\Big(\frac{1}{S-1}\sum_s (\hat k_{\theta_s} -
      \bar k)^2\Big)^{1/2},$$

    the standard error entry by entry (accumulated in one pass with Chan et al.'s
    stable update). As the width grows, $\mathbb E\,\hat k$ tends to the infinite-width
    kernel `kernelalg.kernel(layer, x1, x2)`.

    **Arguments:**

    - `init_fn`: a kernelalg layer, whose finite twin `layer.init(key, x1.shape[1:])` is
      sampled (then leave `apply_fn` as None); or neural-tangents' `init_fn(key,
      input_shape) -> (output_shape, params)`, with `apply_fn(params, x)`.
    - `apply_fn`: see `init_fn`.
    - `key`: PRNG key; network $s$ is sampled with `jax.random.split(key, S)[s]`, so an
      estimate does not depend on how it was batched.
    - `n_samples`: $S$, or a strictly increasing list of counts: then one estimate per
      count is returned, the later ones reusing the earlier networks.
    - `batch_size`: if positive, `x1` and `x2` are processed in blocks of this many
      examples (it must divide both batch sizes), as in neural-tangents; `0`: whole.
    - `device_count`: networks of a step are spread over this many devices (`-1`: all,
      `0` or `1`: one).
    - `store_on_device`: `False` moves the estimates to host (CPU) memory.
    - `trace_axes`, `diagonal_axes`, `vmap_axes`, `implementation`: as in
      `empirical_kernel_fn`.
    - `samples_per_step`: networks sampled and differentiated at once (vmapped); None
      chooses as many as keep their parameters and Jacobians within about 256 MiB.

    **Returns:** a `MonteCarloKernelFn`. neural-tangents: `nt.monte_carlo_kernel_fn`
    (which returns no standard errors, and a generator rather than a list).
    """
    if isinstance(init_fn, AbstractLayer):
        if apply_fn is not None:
            raise ValueError(
                "`monte_carlo_kernel_fn(layer, apply_fn=...)`: a kernelalg layer brings its own "
                "finite twin (`layer.init`); leave `apply_fn` as None."
            )
    elif not callable(init_fn) or not callable(apply_fn):
        raise TypeError(
            "`monte_carlo_kernel_fn` takes a kernelalg layer, or `init_fn` and `apply_fn` "
            f"(neural-tangents style); got {type(init_fn).__name__} and {type(apply_fn).__name__}."
        )
    if key is None:
        raise TypeError("`monte_carlo_kernel_fn` needs `key=...`, a PRNG key for the networks.")
    if n_samples is None:
        raise TypeError("`monte_carlo_kernel_fn` needs `n_samples=...`, an int or a list of ints.")
    counts, single = _check_n_samples(n_samples)
    for name, v, low in (("batch_size", batch_size, 0), ("device_count", device_count, -1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise ValueError(f"`monte_carlo_kernel_fn({name}=...)` must be an int >= {low}; got {v!r}.")
    if samples_per_step is not None and (
        isinstance(samples_per_step, bool)
        or not isinstance(samples_per_step, numbers.Integral)
        or samples_per_step < 1
    ):
        raise ValueError(f"`samples_per_step` must be a positive int or None; got {samples_per_step!r}.")
    return MonteCarloKernelFn(
        init_fn,
        apply_fn,
        key,
        counts,
        single,
        int(batch_size),
        int(device_count),
        bool(store_on_device),
        _check_axes_arg("trace_axes", trace_axes),
        _check_axes_arg("diagonal_axes", diagonal_axes),
        _check_vmap_axes(vmap_axes),
        _check_implementation(implementation),
        None if samples_per_step is None else int(samples_per_step),
    )
