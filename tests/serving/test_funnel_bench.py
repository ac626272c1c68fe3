"""``feedrank bench funnel``'s arithmetic: NDCG of the funnel's order per cap and the recall of
the full ranking's top, on a hand-made request whose figures are worked out below."""

from __future__ import annotations

import numpy as np
import pytest

from serving.funnel_bench import RankedCandidates, funnel_quality

pytestmark = pytest.mark.unit

LOG2_3 = np.log2(3.0)


def _request(relevance: list[float]) -> RankedCandidates:
    return RankedCandidates(
        relevance=np.array(relevance),
        light=np.array([0.1, 0.9, 0.8, 0.7]),
        heavy=np.array([0.9, 0.8, 0.1, 0.5]),
        oracle=np.array(relevance),
        authors=np.arange(4),  # one author each: no diversity discount
    )


def test_ndcg_share_and_recall_per_cap() -> None:
    # Gains 3, 0, 1, 2. Top 2 by heavy: 0, 1. The light ranker's top 2 is {1, 2}, top 3 is
    # {1, 2, 3}; the heavy ranker orders them 1, 2 and 1, 3. The oracle serves 0, 3.
    figures = funnel_quality(
        [_request([3.0, 0.0, 1.0, 2.0]), _request([0.0, 0.0, 0.0, 0.0])],
        caps=(2, 3, 4),
        top_k=2,
        diversity_floor=1.0,
        k=2,
    )
    ideal = 3.0 + 2.0 / LOG2_3
    full = 3.0 / ideal
    assert figures["full_ndcg"] == pytest.approx(full)
    assert figures["oracle_ndcg"] == pytest.approx(1.0)
    caps = figures["caps"]
    assert caps[2]["ndcg"] == pytest.approx((1.0 / LOG2_3) / ideal)
    assert caps[3]["ndcg"] == pytest.approx((2.0 / LOG2_3) / ideal)
    assert caps[3]["share_of_full"] == pytest.approx((2.0 / LOG2_3) / 3.0)
    assert caps[3]["share_of_oracle"] == pytest.approx((2.0 / LOG2_3) / ideal)
    assert caps[4]["share_of_full"] == pytest.approx(1.0)
    # The full top 2 is {0, 1}: only 1 survives the cut at 2 or 3 (the all-zero request
    # counts for recall, not for NDCG, which skips it).
    assert [caps[c]["recall_full_top"] for c in (2, 3, 4)] == pytest.approx([0.5, 0.5, 1.0])
    assert [caps[c]["heavy_rows_mean"] for c in (2, 3, 4)] == [2, 3, 4]


def test_no_request_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one request"):
        funnel_quality([], caps=(2,), top_k=2, diversity_floor=1.0)
