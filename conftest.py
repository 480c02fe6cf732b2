"""pytest configuration shared by the tests and the package's docstring examples (``--doctest-modules``)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_threads():
    # CI has 2 cores; more threads than that only adds contention.
    torch.set_num_threads(2)
