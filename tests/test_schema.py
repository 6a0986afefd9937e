"""Rows built from their schemas: a wrong key is refused by name; real rows round-trip."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from conftest import eval_row, stored_run

from mnist_ray import runs
from mnist_ray.config import TrainConfig
from mnist_ray.schema import (
    EVALUATIONS,
    OPTIONAL,
    RUNS,
    SWEEPS,
    RowError,
    evaluation_row,
    run_row,
    sweep_row,
)
from mnist_ray.store import Store, now


def _a_run(**changes) -> dict:
    """Every column of RUNS but the optional ones, as keyword arguments."""
    values = {name: None for name in RUNS.names if name not in OPTIONAL}
    values.update(run_id="run-a", created_at=now(), epoch_costs=[1.0], attempts=1)
    return values | changes


def test_a_misspelt_key_is_refused_by_name():
    values = _a_run()
    values["atempts"] = values.pop("attempts")
    with pytest.raises(RowError, match=r"^runs row: unknown column 'atempts' \(not in the runs"):
        run_row(**values)


def test_a_missing_key_is_refused_by_name():
    values = eval_row()
    del values["correct"]
    with pytest.raises(RowError, match=r"^evaluations row: missing column 'correct'$"):
        evaluation_row(**values)


def test_none_is_a_value_and_only_optional_columns_may_be_left_out():
    row = run_row(**_a_run())
    assert list(row) == RUNS.names  # every column, in the schema's order
    assert row["sweep_id"] is None and row["peak_rss_mib"] is None  # optional: left out
    values = _a_run()
    del values["device"]  # nullable in Parquet, but not optional: say None if you mean it
    with pytest.raises(RowError, match="runs row: missing column 'device'"):
        run_row(**values)


def test_every_table_has_a_builder_that_checks_it():
    with pytest.raises(RowError, match="sweeps row: missing columns 'updated_at', 'status', "):
        sweep_row(sweep_id="sweep-a", created_at=now())
    row = sweep_row(**{name: None for name in SWEEPS.names})
    assert list(row) == SWEEPS.names
    assert set(OPTIONAL) <= set(RUNS.names) | set(EVALUATIONS.names)


def test_a_real_run_and_its_evaluation_round_trip_through_parquet(
    ray_local, mnist_train, mnist_test, tmp_path
):
    store = Store(tmp_path)
    row = runs.train_and_store(TrainConfig(epochs=1), *mnist_train, store, None, log=lambda _: None)
    assert row["attempts"] == 1  # nothing killed it
    table = pq.read_table(tmp_path / "runs" / f"{row['run_id']}.parquet")
    assert table.schema.equals(RUNS)
    assert table.to_pylist() == [row]  # every column as written, none dropped or added

    run = stored_run(store)
    weights = store.read_weights(run)
    evaluation = runs.evaluate_and_store(
        run, weights, *mnist_test, store, address=None, shards=2, log=lambda _: None
    )
    table = pq.read_table(tmp_path / "evaluations" / f"{evaluation['eval_id']}.parquet")
    assert table.schema.equals(EVALUATIONS)
    assert table.to_pylist() == [evaluation]
