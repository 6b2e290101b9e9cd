import json
import pathlib

import keras
import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "peft"


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() == "tensorflow":
        return
    skip = pytest.mark.skip(reason="runs on the TensorFlow backend in CI")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def peft_layers():
    return dict(np.load(FIXTURES / "layers.npz"))


@pytest.fixture(scope="session")
def peft_cases():
    return json.loads((FIXTURES / "README.json").read_text())["layer_cases"]


@pytest.fixture(autouse=True)
def _reset_policy():
    yield
    keras.config.set_dtype_policy("float32")
