"""Gradient descent (with or without momentum) on any loss, as an ODE in function space."""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Real

from ._common import (
    KernelLike,
    Layout,
    check,
    check_nonnegative,
    checked_finite,
    count_nonfinite,
    is_concrete,
    outputs,
    same_dtype,
    shape_of,
    targets,
    to_matrix,
)
from ._linalg import symmetrized
from ._mse import Times, check_predict_inputs, ntk_matrix, scaled_times


Loss = Callable[[Array, Array], Array]


class ODEState(eqx.Module):
    """State of the function-space ODE (neural-tangents' `ODEState`).

    Pass one as `fx_train_or_state_0` to get one back, e.g. to read or resume the
    momentum variables; `ODEState(fx_train_0, fx_test_0)` starts from scratch.

    **Fields:**

    - `fx_train`, `fx_test`: train and test outputs.
    - `qx_train`, `qx_test`: their velocities $\\dot f$ under momentum (`None` without).
    """

    fx_train: Float[ArrayLike, "..."] | None = None
    fx_test: Float[ArrayLike, "..."] | None = None
    qx_train: Float[ArrayLike, "..."] | None = None
    qx_test: Float[ArrayLike, "..."] | None = None


class GradientDescent(eqx.Module):
    r"""Outputs under gradient descent on any loss, returned by `gradient_descent`.

    Call it as `predictor(t=None, fx_train_or_state_0=0., fx_test_0=None,
    k_test_train=None)`.

    **Fields:**

    - `loss`: `loss(fx_train, y_train)`, a scalar.
    - `k_train_train`: $\Theta_{dd}$ as an $N \times N$ matrix.
    - `y_train`: the targets, in the kernel's dtype.
    - `learning_rate`: $\eta$.
    - `momentum`: $\mu$, or `None` for plain gradient descent.
    - `rtol`, `atol`, `max_steps`: settings of the adaptive ODE solver (diffrax's
      `Tsit5` with a PID step-size controller).
    - `layout`: how the targets' axes split into kernel axes and `trace_axes`.
    """

    loss: Loss
    k_train_train: Float[Array, "n n"]
    y_train: Float[Array, "..."]
    learning_rate: Float[Array, ""]
    momentum: Float[Array, ""] | None
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    layout: Layout = eqx.field(static=True)

    def __call__(
        self,
        t: Times = None,
        fx_train_or_state_0: Float[ArrayLike, "..."] | float | ODEState | None = 0.0,
        fx_test_0: Float[ArrayLike, "..."] | float | None = None,
        k_test_train: KernelLike | None = None,
    ) -> Float[Array, "..."] | tuple[Float[Array, "..."], Float[Array, "..."]] | ODEState:
        r"""Solve the function-space ODE from $t = 0$ to the times `t`.

        Without momentum, $\dot f_d = -\eta\, \Theta_{dd} \nabla_f L(f_d, Y)$ and
        $\dot f_x = -\eta\, \Theta_{xd} \nabla_f L(f_d, Y)$ (Lee et al. 2019,
        arXiv:1902.06720, eq. 5). With momentum $\mu$, the continuous limit of heavy-ball
        descent in time units of $\sqrt{\eta}$ (as neural-tangents):
        $\ddot f = -\Theta \nabla_f L + \frac{\mu - 1}{\sqrt\eta} \dot f$.

        **Arguments:**

        - `t`: a time or an array of times, non-decreasing and non-negative, in units
          of the learning rate (of its square root with momentum); the outputs get
          `t.shape` as leading axes. `None` integrates until the state stops changing
          (to within `rtol`/`atol`), which may not happen for losses without a minimum.
        - `fx_train_or_state_0`: train outputs at $t = 0$ (a scalar broadcasts;
          `None` returns no train outputs), or an `ODEState`, in which case an
          `ODEState` is returned.
        - `fx_test_0`: test outputs at $t = 0$ (`None`: no test outputs; must be `None`
          when an `ODEState` is passed).
        - `k_test_train`: test-train NTK (an array, or a `Kernel` whose `ntk` is used).

        **Returns:** `fx_train_t`, `fx_test_t`, `(fx_train_t, fx_test_t)`, or an
        `ODEState`.
        """
        is_state = isinstance(fx_train_or_state_0, ODEState)
        if is_state:
            if fx_test_0 is not None:
                raise ValueError(
                    "`fx_test_0` must be None when an `ODEState` is passed: put the test "
                    "outputs in `ODEState(fx_train_0, fx_test_0)`."
                )
            state = fx_train_or_state_0
            f0, g0, q0, p0 = state.fx_train, state.fx_test, state.qx_train, state.qx_test
        else:
            f0, g0, q0, p0 = fx_train_or_state_0, fx_test_0, None, None
        check_predict_inputs(f0, g0, k_test_train)
        if self.momentum is None and (q0 is not None or p0 is not None):
            raise ValueError(
                "The `ODEState` holds momentum variables (`qx_train`/`qx_test`), but the "
                "predictor has `momentum=None`."
            )
        lay = self.layout
        dtype = self.k_train_train.dtype
        y_shape = self.y_train.shape
        want_train = f0 is not None
        # Train outputs drive the test outputs, so they are integrated even when not
        # asked for (from zero, as in neural-tangents).
        f0 = outputs(np.zeros(y_shape, dtype) if f0 is None else f0, y_shape, "fx_train_0", dtype)
        ktd = None
        x_shape = lay.x_shape
        if g0 is not None:
            assert k_test_train is not None
            ktd = ntk_matrix(k_test_train, "k_test_train")
            same_dtype({"k_train_train": self.k_train_train, "k_test_train": ktd})
            x_shape = lay.test_shape(ktd, "k_test_train")
            g0 = outputs(g0, lay.out_shape(x_shape), "fx_test_0", dtype)
        if self.momentum is not None:
            q0 = None if q0 is None else outputs(q0, y_shape, "qx_train", dtype)
            p0 = None if g0 is None or p0 is None else outputs(p0, lay.out_shape(x_shape), "qx_test", dtype)
        if t is not None:
            t = scaled_times(t, dtype)
            if t.size == 0:
                raise ValueError("`t` must hold at least one time.")
            if is_concrete(t):  # checked before compiling anything; traced times are checked inside
                ts = np.asarray(t).ravel()
                _check_times(None, t, np.any(ts[1:] < ts[:-1]) | np.any(ts < 0) | ~np.all(np.isfinite(ts)))
        ys, failed, bad_times, nonfinite = _solve(self, t, f0, g0, q0, p0, ktd, x_shape)
        ys = checked_finite(ys, nonfinite)
        if t is not None:
            ys = _check_times(ys, t, bad_times)
        ys = check(ys, failed, _solver_message(self.max_steps))
        if is_state:
            return ODEState(ys["f"], ys.get("g"), ys.get("q"), ys.get("p"))
        if "g" not in ys:
            return ys["f"]
        if not want_train:
            return ys["g"]
        return ys["f"], ys["g"]


@eqx.filter_jit
def _solve(
    p: GradientDescent,
    t: Array | None,
    f0: Array,
    g0: Array | None,
    q0: Array | None,
    p0: Array | None,
    ktd: Array | None,
    x_shape: tuple[int, ...],
) -> tuple[dict[str, Array], Array, Array, dict[str, Array]]:
    # float32 matrix products at full precision (not TF32 on GPUs): predictions
    # multiply kernels that were solved against, where 1e-3 errors are amplified.
    with jax.default_matmul_precision("highest"):
        lay, k, y = p.layout, p.k_train_train, p.y_train
        dtype = k.dtype
        test_shape = lay.out_shape(x_shape)
        nonfinite = {} if ktd is None else {"k_test_train": count_nonfinite(ktd)}
        ktd2 = None if ktd is None else to_matrix(ktd)

        def start(x, shape):
            return lay.flatten(jnp.zeros(shape, dtype) if x is None else jnp.broadcast_to(x, shape))

        y0 = {"f": start(f0, y.shape)}
        if g0 is not None:
            y0["g"] = start(g0, test_shape)
        if p.momentum is not None:
            y0["q"] = start(q0, y.shape)
            if g0 is not None:
                y0["p"] = start(p0, test_shape)

        rate = p.learning_rate if p.momentum is None else jnp.sqrt(p.learning_rate)
        friction = None if p.momentum is None else (p.momentum - 1) / rate
        loss = p.loss

        def grad_loss(f):
            return lay.flatten(jax.grad(lambda fx: loss(fx, y))(lay.unflatten(f, lay.x_shape)))

        def field(_, s, __):
            g = grad_loss(s["f"])
            force = {"f": -(k @ g)}
            if "g" in s:
                assert ktd2 is not None
                force["g"] = -(ktd2 @ g)
            if friction is None:
                return force
            out = {"f": s["q"], "q": force["f"] + friction * s["q"]}
            if "g" in s:
                out["g"], out["p"] = s["p"], force["g"] + friction * s["p"]
            return out

        if t is None:
            t_shape: tuple[int, ...] = ()
            saveat = diffrax.SaveAt(t1=True)
            t1 = jnp.asarray(jnp.inf, dtype)
            event = diffrax.Event(diffrax.steady_state_event())
            bad_times = jnp.array(False)
        else:
            t_shape = t.shape
            ts = t.reshape(-1) * rate
            bad_times = jnp.any(ts[1:] < ts[:-1]) | jnp.any(ts < 0) | ~jnp.all(jnp.isfinite(ts))
            # Keep the solver well-defined on bad times; the check outside raises.
            ts = jnp.where(bad_times, jnp.zeros_like(ts), ts)
            saveat = diffrax.SaveAt(ts=ts)
            t1 = ts[-1]
            event = None
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Tsit5(),
            t0=jnp.zeros((), dtype),
            t1=t1,
            dt0=None,
            y0=y0,
            saveat=saveat,
            stepsize_controller=diffrax.PIDController(rtol=p.rtol, atol=p.atol),
            event=event,
            max_steps=p.max_steps,
            throw=False,
        )
        failed = (sol.result != diffrax.RESULTS.successful) & (sol.result != diffrax.RESULTS.event_occurred)

        def shaped(a, x_shape):
            a = lay.unflatten(a, x_shape, lead=1)
            return a.reshape(t_shape + a.shape[1:])

        assert sol.ys is not None
        ys = {name: shaped(a, lay.x_shape if name in ("f", "q") else x_shape) for name, a in sol.ys.items()}
        return ys, failed, bad_times, nonfinite


def _check_times(anchor: Any, t: Array, bad: Bool[ArrayLike, ""]) -> Any:
    return check(
        anchor,
        bad,
        "`t` must be finite, non-negative and non-decreasing (the ODE is integrated "
        "forward from t = 0 and saved at each time in order){detail}. Sort the times, "
        "or pass `t=None` to integrate until the outputs stop changing.",
        lambda: f"; got {np.asarray(t).ravel().tolist()[:8]}",
    )


def _solver_message(max_steps: int) -> str:
    return (
        f"The ODE solver did not reach the last time `t` within `max_steps={max_steps}` "
        "steps (or failed). Large times with a stiff kernel (a large ratio of the largest "
        "NTK eigenvalue to the smallest) need many steps: raise `max_steps`, loosen "
        "`rtol`/`atol`, ask for smaller times, or, for the MSE loss, use the closed form "
        "`gradient_descent_mse`."
    )


def gradient_descent(
    loss: Loss,
    k_train_train: KernelLike,
    y_train: Float[ArrayLike, "..."],
    *,
    learning_rate: Real[ArrayLike, ""] = 1.0,
    momentum: Real[ArrayLike, ""] | None = None,
    trace_axes: int | tuple[int, ...] = (-1,),
    rtol: float = 1.4e-8,
    atol: float = 1.4e-8,
    max_steps: int = 65536,
) -> GradientDescent:
    r"""Function-space gradient descent on any loss, solved as an ODE (`nt.predict.gradient_descent`).

    The outputs of a linearised (or infinitely wide) network trained by
    continuous-time gradient descent, with or without momentum, given its NTK; see
    `GradientDescent.__call__` for the equations. Solved with diffrax (`Tsit5`,
    adaptive steps); differentiable with respect to the kernel, targets and initial
    outputs.

    **Arguments:**

    - `loss`: `loss(fx_train, y_train) -> scalar`; it should treat the batch and
      output axes symmetrically (e.g. a mean), as neural-tangents asks. For the MSE
      $\frac{1}{2}\operatorname{mean}((f - y)^2)$ the result matches
      `gradient_descent_mse` to solver tolerance.
    - `k_train_train`: the train-train NTK (an array, or a `Kernel` whose `ntk` is
      used); the non-traced axes of `y_train`, each twice, zipped.
    - `y_train`: training targets.
    - `learning_rate`: $\eta$.
    - `momentum`: $\mu$ for heavy-ball momentum; `None` for plain gradient descent.
    - `trace_axes`: output axes along which the kernel is a multiple of the identity.
    - `rtol`, `atol`: tolerances of the adaptive solver (defaults: those of
      `jax.experimental.ode.odeint`, which neural-tangents used).
    - `max_steps`: the most solver steps before giving up with an error.

    **Returns:** a `GradientDescent`.
    """
    if not callable(loss):
        raise TypeError(f"`loss` must be a function `loss(fx, y_train)`; got {type(loss).__name__}.")
    check_nonnegative(learning_rate, "learning_rate")
    if momentum is not None:
        check_nonnegative(momentum, "momentum")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol > 0:
            raise ValueError(f"`{name}` must be a positive float; got {tol!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int; got {max_steps!r}.")
    layout = Layout.of(shape_of(y_train, "y_train"), trace_axes)
    k = ntk_matrix(k_train_train, "k_train_train")
    layout.train_shape(k, "k_train_train")
    m = symmetrized(k, "k_train_train")
    y = targets(y_train, "y_train", m.dtype)
    mu = None if momentum is None else jnp.asarray(momentum, m.dtype)
    return GradientDescent(
        loss, m, y, jnp.asarray(learning_rate, m.dtype), mu, float(rtol), float(atol), max_steps, layout
    )
