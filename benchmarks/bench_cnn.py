"""Convolutional networks: NNGP + NTK, kernelalg vs NT (the cases of NT's README table,
scaled down to a 2-core machine).

    python benchmarks/bench_cnn.py [--repeats 3] [--quick] [--only TEXT] [--no-nt] [--json PATH]

(a) 21 × [Conv(C, (3, 3), SAME), Relu] + Flatten + Dense(1) on 8×8×3 images;
(b) the same with GlobalAvgPool instead of Flatten (the full spatial covariance);
(c) Myrtle-5 (Conv/Relu stages with AvgPool(2, 2), GlobalAvgPool, Dense) on 8×8×3 and
16×16×3; (d) Conv1D, Relu, GlobalSelfAttention (4 heads, softmax), Relu, GlobalAvgPool,
Dense on sequences of length 16 (8 channels) of lengths 5 to 16, padded with a mask
constant. float32 and float64, x2 = None. Divide the times by N² for the
milliseconds per kernel entry that NT's README reports. `--quick`: fewer examples.
"""

import sys

import _harness as h


CONV = {"W_std": 1.4, "b_std": 0.05}


def conv(c: int = 16) -> h.Spec:
    return h.layer("Conv", out_chan=c, filter_shape=[3, 3], padding="SAME", **CONV)


def deep(readout: str, depth: int = 21) -> h.Spec:
    body = [conv(), h.layer("Relu")] * depth
    return h.serial(*body, h.layer(readout), h.layer("Dense", out_dim=1, W_std=1.4, b_std=0.05))


def myrtle5() -> h.Spec:
    pool = h.layer("AvgPool", window_shape=[2, 2], strides=[2, 2])
    relu = h.layer("Relu")
    return h.serial(
        conv(),
        relu,
        conv(),
        relu,
        pool,
        conv(),
        relu,
        pool,
        conv(),
        relu,
        pool,
        h.layer("GlobalAvgPool"),
        h.layer("Dense", out_dim=1, W_std=1.4, b_std=0.05),
    )


def attention() -> h.Spec:
    return h.serial(
        h.layer("Conv", out_chan=16, filter_shape=[3], padding="SAME", **CONV),
        h.layer("Relu"),
        h.layer("GlobalSelfAttention", n_chan_out=16, n_chan_key=16, n_chan_val=16, n_heads=4),
        h.layer("Relu"),
        h.layer("GlobalAvgPool"),
        h.layer("Dense", out_dim=1, W_std=1.4, b_std=0.05),
    )


MASKED = {"mask_constant": 0.0, "lengths": [16, 5, 11, 8, 13, 16, 7, 10]}


def cases(quick: bool) -> list[h.Case]:
    out = []
    for dtype in ("float32", "float64"):
        out.append(
            h.Case(
                "(a) 21×[Conv, Relu] + Flatten", deep("Flatten"), {"x1": (8 if quick else 64, 8, 8, 3)}, dtype
            )
        )
        out.append(
            h.Case(
                "(b) 21×[Conv, Relu] + GlobalAvgPool",
                deep("GlobalAvgPool"),
                {"x1": (2 if quick else 8, 8, 8, 3)},
                dtype,
            )
        )
        out.append(h.Case("(c) Myrtle-5, 8×8", myrtle5(), {"x1": (4 if quick else 16, 8, 8, 3)}, dtype))
        out.append(h.Case("(c) Myrtle-5, 16×16", myrtle5(), {"x1": (2 if quick else 4, 16, 16, 3)}, dtype))
        out.append(
            h.Case(
                "(d) masked attention, length 16",
                attention(),
                {"x1": (8 if quick else 64, 16, 8)},
                dtype,
                options=MASKED,
            )
        )
    return out


if __name__ == "__main__":
    sys.exit(h.cli(__doc__, cases))
