"""Fully connected networks: NNGP + NTK of 3 × [Dense(512), φ] + Dense(1), kernelalg vs NT.

    python benchmarks/bench_fc.py [--repeats 3] [--quick] [--only TEXT] [--no-nt] [--json PATH]

φ in Relu, Erf, Gelu; float32 and float64; N=2048 inputs of dimension 784, x2=None
(`--quick`: N=256, a smoke run). See benchmarks/README.md.
"""

import sys

import _harness as h


def fc_spec(nonlinearity: str, depth: int = 3, width: int = 512) -> h.Spec:
    dense = {"W_std": 1.5, "b_std": 0.05}
    hidden = [h.layer("Dense", out_dim=width, **dense), h.layer(nonlinearity)]
    return h.serial(*(hidden * depth), h.layer("Dense", out_dim=1, **dense))


def cases(quick: bool) -> list[h.Case]:
    n = 256 if quick else 2048
    return [
        h.Case(
            name=f"3×[Dense(512), {phi}] + Dense(1)",
            spec=fc_spec(phi),
            inputs={"x1": (n, 784)},
            dtype=dtype,
            options={"get": ["nngp", "ntk"]},
        )
        for phi in ("Relu", "Erf", "Gelu")
        for dtype in ("float32", "float64")
    ]


if __name__ == "__main__":
    sys.exit(h.cli(__doc__, cases))
