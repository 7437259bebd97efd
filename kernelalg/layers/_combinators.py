import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray

from .._kernel import Kernel
from .._requirements import Diagonals
from ._base import AbstractFinite, AbstractLayer, check_in_shape, check_int, remask_kernel


def _check_layers(owner: str, layers) -> tuple[AbstractLayer, ...]:
    for i, layer in enumerate(layers):
        if not isinstance(layer, AbstractLayer):
            raise TypeError(
                f"`{owner}` takes kernelalg layers; argument {i} is {type(layer).__name__}. "
                "(neural-tangents' `(init_fn, apply_fn, kernel_fn)` triples are not layers.)"
            )
    return tuple(layers)


class Serial(AbstractLayer):
    r"""Composition: `Serial(f, g)(k) == g(f(k))`, the network $g \circ f$.
    neural-tangents: `stax.serial`."""

    layers: tuple[AbstractLayer, ...]

    def __init__(self, *layers: AbstractLayer):
        self.layers = _check_layers("Serial", layers)

    def __call__(self, k: Kernel) -> Kernel:
        for layer in self.layers:
            k = remask_kernel(layer(k))
        return k

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteSerial":
        in_shape = check_in_shape("Serial", in_shape)
        keys = jax.random.split(key, max(len(self.layers), 1))
        models = []
        for layer, k in zip(self.layers, keys):
            models.append(layer.init(k, in_shape))
            in_shape = layer.out_shape(in_shape)
        return FiniteSerial(tuple(models))

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        for layer in self.layers:
            in_shape = layer.out_shape(in_shape)
        return in_shape

    def requires(self, out: Diagonals) -> Diagonals:
        for layer in reversed(self.layers):
            out = layer.requires(out)
        return out


class FiniteSerial(AbstractFinite):
    """Finite twin of `Serial`."""

    layers: tuple[eqx.Module, ...]

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        keys = [None] * len(self.layers) if key is None else jax.random.split(key, len(self.layers))
        for layer, k in zip(self.layers, keys):
            x = layer(x, key=k)
        return x


class Identity(AbstractLayer):
    """The identity: the shortcut branch of a residual block. neural-tangents:
    `stax.Identity`."""

    def __call__(self, k: Kernel) -> Kernel:
        return k

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteIdentity":
        check_in_shape("Identity", in_shape)
        return FiniteIdentity()

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return check_in_shape("Identity", in_shape)

    def requires(self, out: Diagonals) -> Diagonals:
        return out


class FiniteIdentity(AbstractFinite):
    """Finite twin of `Identity`."""

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        return x


class Repeat(AbstractLayer):
    r"""`layer` applied `n` times, as `Serial(layer, ..., layer)` with independent
    parameters in the finite twin; compiled once through `lax.scan`.

    The layer must map a kernel to one of the same structure (shapes and flags), as a
    `Serial(Dense(w), Relu())` block on width-`w` inputs does; the first application is
    unrolled so that a first block changing the width is fine.
    neural-tangents: `stax.repeat`.
    """

    layer: AbstractLayer
    n: int = eqx.field(static=True)

    def __init__(self, layer: AbstractLayer, n: int):
        (self.layer,) = _check_layers("Repeat", (layer,))
        self.n = check_int("Repeat", "n", n, minimum=0)

    def __call__(self, k: Kernel) -> Kernel:
        if self.n == 0:
            return k
        k = self.layer(k)
        if self.n == 1:
            return k
        out = jax.eval_shape(self.layer, k)
        if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(k) or jax.tree_util.tree_map(
            lambda a: (a.shape, a.dtype), out
        ) != jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), k):
            raise ValueError(
                f"`Repeat({type(self.layer).__name__}, n={self.n})`: the layer changes the "
                "kernel's shape or flags between applications, so it cannot be scanned; "
                "use `Serial` with explicit copies instead."
            )

        def body(kernel, _):
            return remask_kernel(self.layer(kernel)), None

        k, _ = jax.lax.scan(body, k, length=self.n - 1)
        return k

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteSerial":
        in_shape = check_in_shape("Repeat", in_shape)
        models = []
        for k in jax.random.split(key, max(self.n, 1))[: self.n]:
            models.append(self.layer.init(k, in_shape))
            in_shape = self.layer.out_shape(in_shape)
        return FiniteSerial(tuple(models))

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        for _ in range(self.n):
            in_shape = self.layer.out_shape(in_shape)
        return in_shape

    def requires(self, out: Diagonals) -> Diagonals:
        # Requirements only ever get stricter along a chain, so n steps reach a fixed
        # point after at most two.
        for _ in range(min(self.n, 2)):
            out = self.layer.requires(out)
        return out
