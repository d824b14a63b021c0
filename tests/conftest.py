"""Fixtures of every test module. Shared cases and the float64 oracle are the
helper modules cases.py and overlap_oracle.py, which the test modules import;
no test module imports another, nor this file."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
