"""Rollout tests run single-threaded, on the tiny model (`policy`: model, tokenizer).

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


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    """(model, tokenizer) of the tiny random Llama, loaded once per test module."""
    from spo.policy.models import load_policy

    return load_policy(str(tiny_model_dir))
