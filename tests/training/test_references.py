"""Knowable references: no_pair ≤ ceiling ≤ oracle, the ceiling learns a pair, point in time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, logit

from feedrank.config import HEADS, Settings, SimulatorConfig
from feedrank.lake import read_lake_table
from feedrank.offline_metrics import head_metrics
from feedrank.simulator.backfill import simulate_backfill
from feedrank.simulator.oracle import oracle_labels
from feedrank.simulator.references import (
    ReferenceRows,
    WorldMismatch,
    affinity_loadings,
    lake_references,
    reference_probabilities,
)

WINDOW_US = 3_600 * 1_000_000
# A world unlike the defaults (seed, topics, author share), as FEEDRANK_SIMULATOR__* sets it.
OTHER_WORLD = {"seed": 23, "topics": 6, "author_share": 0.3}


def _one_pair(affinity: float, n: int, seed: int = 0) -> ReferenceRows:
    """``n`` impressions of one pair two hours apart, labels drawn from the truth."""
    rng = np.random.default_rng(seed)
    load = affinity_loadings()
    base = {h: np.full(n, -3.0) for h in HEADS}
    oracle = {h: expit(base[h] + load[h] * affinity) for h in HEADS}
    return ReferenceRows(
        pair=np.zeros(n, np.int64),
        served_us=np.arange(n, dtype=np.int64) * 2 * WINDOW_US,
        oracle=oracle,
        affinity=np.full(n, affinity),
        labels={h: (rng.random(n) < oracle[h]).astype(np.int8) for h in HEADS},
    )


@pytest.mark.unit
def test_ceiling_moves_from_the_prior_to_the_oracle_as_the_pair_history_grows() -> None:
    rows = _one_pair(affinity=2.0, n=400)
    refs = reference_probabilities(rows, WINDOW_US)
    assert list(refs["history"][:3]) == [0, 1, 2]  # only earlier, closed impressions
    gap = np.abs(logit(refs["ceiling"]["like"]) - logit(rows.oracle["like"]))
    no_pair_gap = np.abs(logit(refs["no_pair"]["like"]) - logit(rows.oracle["like"]))
    assert no_pair_gap[0] == pytest.approx(2.0 * affinity_loadings()["like"])
    assert gap[:5].mean() > gap[100:200].mean() > gap[300:].mean()
    assert gap[300:].mean() < 0.3 * no_pair_gap[0]


@pytest.mark.unit
def test_ceiling_uses_only_impressions_whose_window_closed_before() -> None:
    rows = _one_pair(affinity=-1.0, n=50, seed=3)
    rows.served_us[10] = rows.served_us[9] + WINDOW_US // 2  # inside row 9's window
    before = reference_probabilities(rows, WINDOW_US)
    assert before["history"][10] == 9  # row 9's labels are not final at row 10's time
    # Rewriting the labels of row 9 and of every later row leaves row 10's ceiling alone.
    for h in HEADS:
        rows.labels[h][9:] = 1 - rows.labels[h][9:]
    after = reference_probabilities(rows, WINDOW_US)
    for h in HEADS:
        assert after["ceiling"][h][:11] == pytest.approx(before["ceiling"][h][:11])
        assert not np.allclose(after["ceiling"][h][12:], before["ceiling"][h][12:])


@pytest.fixture(scope="module", params=["defaults", "other_world"])
def tiny_lake(request, settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    """A 3-day, 400-user lake of the default world and of another world."""
    world = OTHER_WORLD if request.param == "other_world" else {}
    simulator = SimulatorConfig.model_validate({**settings.simulator.model_dump(), **world})
    world_settings = settings.model_copy(update={"simulator": simulator})
    root = tmp_path_factory.mktemp(f"references-{request.param}")
    simulate_backfill(world_settings, root, days=3, users=400, candidates=100, progress=False)
    return world_settings, root


@pytest.mark.unit
def test_no_pair_ceiling_oracle_order_in_log_loss_on_a_tiny_world(tiny_lake) -> None:
    settings, root = tiny_lake
    last = sorted(p.name.removeprefix("date=") for p in (root / "oracle").glob("date=*"))[-1]
    keys = read_lake_table(root, "oracle", [last]).select(["request_id", "tweet_id"]).to_pandas()
    refs = lake_references(settings, root, keys)
    window_s = settings.training_data.attribution_window_s
    day = oracle_labels(root, last, window_s).to_pandas().merge(refs, on=keys.columns.tolist())
    assert len(day) == len(keys)
    for head in HEADS:
        y = day[f"label_{head}"].to_numpy()
        loss = {
            name: head_metrics(y, day[column].to_numpy())["log_loss"]
            for name, column in (
                ("no_pair", f"no_pair_{head}"),
                ("ceiling", f"ceiling_{head}"),
                ("oracle", f"p_{head}"),
            )
        }
        assert loss["no_pair"] > loss["ceiling"] > loss["oracle"], (head, loss)
    # Pairs seen often are known better: the ceiling is closer to the truth there.
    gap = np.abs(logit(day["ceiling_like"]) - logit(day["p_like"]))
    history = day["pair_history"].to_numpy()
    assert gap[history >= 20].mean() < 0.7 * gap[history == 0].mean()


@pytest.mark.unit
def test_lake_without_engagements_is_refused(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "oracle" / "date=2026-11-01").mkdir(parents=True)
    keys = read_lake_table(tmp_path, "oracle").select(["request_id", "tweet_id"]).to_pandas()
    with pytest.raises(FileNotFoundError):
        lake_references(settings, tmp_path, keys)


@pytest.mark.unit
@pytest.mark.parametrize("other", [{"author_share": 0.5}, {"topics": 30}])
def test_references_refuse_a_lake_of_another_world(tiny_lake, other: dict) -> None:
    settings, root = tiny_lake
    simulator = settings.simulator.model_copy(update=other)
    keys = read_lake_table(root, "oracle").select(["request_id", "tweet_id"]).to_pandas()
    (name,) = other
    # Not a ValueError: evaluate omits the references for a lake that is not the
    # simulator's, but refuses one simulated by another world.
    with pytest.raises(WorldMismatch, match=rf"{name} .* in the lake, {other[name]} configured"):
        lake_references(settings.model_copy(update={"simulator": simulator}), root, keys[:10])
