"""The hydrator's in-memory view lookup: the dense position table answers as the binary search."""

from __future__ import annotations

import numpy as np
import pytest

from serving.hydration import hydrator as hydration

pytestmark = pytest.mark.unit


def _lookups(keys: list[tuple], probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(len(keys), 3))
    cache = hydration._ViewCache(keys, matrix)
    assert cache._dense is not None
    dense = cache.take(probe)
    cache._dense = None  # the binary search on the same view
    return dense, cache.take(probe)


def test_dense_table_equals_binary_search_with_misses_and_duplicates() -> None:
    keys = [(k,) for k in (5, 9, 7, 9, 1_000, -3)]  # 9 twice: the first row wins in both
    probe = np.array([9, 5, -3, 1_000, 8, -4, 10**12, -(10**12), 7, 9], dtype=np.int64)
    dense, searched = _lookups(keys, probe)
    np.testing.assert_array_equal(dense, searched)
    assert np.isnan(dense[[4, 5, 6, 7]]).all() and not np.isnan(dense[[0, 1, 2, 3, 8]]).any()


def test_sparse_ids_keep_the_binary_search() -> None:
    keys = [(k * 10**9,) for k in range(10)]
    cache = hydration._ViewCache(keys, np.arange(10.0).reshape(10, 1))
    assert cache._dense is None
    np.testing.assert_array_equal(
        cache.take(np.array([3 * 10**9, 5], dtype=np.int64))[:, 0], [3.0, np.nan]
    )
