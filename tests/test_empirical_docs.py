"""The example on the empirical-kernels API page runs, and does what it says."""

import pathlib
import re

import pytest


PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "api" / "empirical.md"


@pytest.mark.slow
def test_resnet_example_runs_and_the_ntk_moves():
    blocks = dict(re.findall(r'```python title="(.*?)"\n(.*?)```', PAGE.read_text(), flags=re.DOTALL))
    namespace = {"__name__": "resnet_ntk"}
    exec(compile(blocks["resnet_ntk.py"], "resnet_ntk.py", "exec"), namespace)
    history = namespace["main"](steps=40, every=20, width=32)
    (t0, loss0, change0), *_, (t1, loss1, change1) = history
    assert change0 == 0.0 and loss1 < loss0
    assert 0.0 < change1 < 1.0
