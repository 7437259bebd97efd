import importlib.util
import pathlib

import pytest


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"kernelalg_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    # scikit-learn is in the `examples` extra, not necessarily installed with `test`.
    pytest.importorskip("sklearn")
    return _load("digits")


def test_digits_small(digits):
    # 400 digits: 300 train, 100 test. Both posterior means reach ~0.98 here; a broken
    # kernel (wrong dual, transposed test-train block) falls to chance, 0.1.
    results = digits.main(400, verbose=False)
    assert results["nngp"] > 0.9
    assert results["ntk"] > 0.9


@pytest.mark.slow
def test_digits_full(digits):
    results = digits.main(verbose=False)
    assert results["nngp"] > 0.95
    assert results["ntk"] > 0.95
    # The README promises seconds; a minute on two cores is the budget.
    assert results["seconds"] < 60
