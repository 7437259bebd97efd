import importlib.util
import pathlib

import pytest


EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "spatial.py"


@pytest.fixture(scope="module")
def spatial():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("kernelalg_example_spatial", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_padding_does_not_change_the_attention_kernel(spatial):
    assert spatial.padding_invariance() < 1e-10


def test_myrtle_classifies_digits(spatial):
    # 40 training images: chance is 0.1, a transposed or mis-pooled kernel stays near it.
    data = spatial.digits_images(40, 30)
    assert spatial.accuracy(spatial.myrtle5(), *data) > 0.7


@pytest.mark.slow
def test_every_network_of_the_example(spatial):
    results = spatial.main(60, 30, verbose=False)
    for name in ("mlp", "myrtle5", "wide_resnet"):
        assert results[name] > 0.8, name
    assert results["padding_change"] < 1e-10
