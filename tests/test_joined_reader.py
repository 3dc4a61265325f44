"""The one reader of the joined slate tables: committed parts only, column selection, the
learnable rows, a range of parts, and parts written before the `learn` column existed."""

import pandas as pd
import pytest

from service.join.parts import CHECKPOINT, Checkpoint, part_name
from service.join.reader import SLATE_TABLE_COLUMNS, JoinedLog
from service.layout import DataPaths


def write_parts(root, parts: list[pd.DataFrame], committed: int) -> JoinedLog:
    paths = DataPaths(root)
    paths.slates.mkdir(parents=True)
    paths.joined.mkdir(parents=True)
    for number, frame in enumerate(parts):
        frame.to_parquet(paths.slates / part_name(number, ".parquet"), index=False)
    Checkpoint(next_part=committed).write(paths.joined / CHECKPOINT)
    return JoinedLog(root)


def part(first_event: int, learn: list[bool] | None) -> pd.DataFrame:
    n = 3 if learn is None else len(learn)
    frame = pd.DataFrame({"event_id": [f"e{first_event + i}" for i in range(n)], "slot": 0,
                          "action": [f"s{i}" for i in range(n)], "reward": [float(first_event + i) for i in range(n)]})
    return frame if learn is None else frame.assign(learn=learn)


def test_the_reader_selects_columns_and_learnable_rows_of_committed_parts(tmp_path):
    log = write_parts(tmp_path, [part(0, None), part(10, [True, False, True]), part(20, [False, True]), part(30, [True])], committed=3)
    everything = log.slate_table()
    assert everything["event_id"].tolist() == ["e0", "e1", "e2", "e10", "e11", "e12", "e20", "e21"]  # part 3 is not committed
    learnable = log.slate_table(columns=["action", "reward"], learnable=True)
    assert list(learnable.columns) == ["action", "reward"]
    assert learnable["reward"].tolist() == [0.0, 1.0, 2.0, 10.0, 12.0, 21.0]  # part 0 has no `learn`: all its rows count
    assert log.slate_table(1, 2, ["event_id", "learn"])["event_id"].tolist() == ["e10", "e11", "e12"]
    assert list(log.slate_part(0, ["event_id", "learn"]).columns) == ["event_id"]  # only the columns a part holds
    assert log.slate_part(3, ["event_id"], learnable=True)["event_id"].tolist() == ["e30"]  # any part by number
    seen = []
    log.slate_table(1, progress=seen.append)
    assert seen == [1, 1]


def test_no_committed_part_reads_as_an_empty_table_with_the_asked_columns(tmp_path):
    log = write_parts(tmp_path, [part(0, [True])], committed=0)
    assert log.slate_table().empty and tuple(log.slate_table().columns) == SLATE_TABLE_COLUMNS
    assert list(log.slate_table(columns=["action"], learnable=True).columns) == ["action"]
    assert JoinedLog(tmp_path / "none").slate_table(5).empty


def test_a_missing_committed_part_is_an_error_not_an_empty_table(tmp_path):
    log = write_parts(tmp_path, [part(0, [True])], committed=2)
    with pytest.raises(FileNotFoundError):
        log.slate_table()
