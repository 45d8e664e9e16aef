"""Rollout tests run single-threaded.

The tiny model gains nothing from a second thread, and when the 2 cores are shared (pytest
-n 2, other jobs) OpenMP threads spin at every barrier of every small matmul: measured
76 s for three engine tests with 2 threads under load vs 9 s with one.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
