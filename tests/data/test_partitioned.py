"""A partitioned Parquet log: footers, id maps beside the data, streamed reading and
statistics, host shares, and the refusals (a missing or changed shard, a bad file)."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from causalrec_jax.data import partitioned
from causalrec_jax.data.formats import read_table
from causalrec_jax.data.stats import dataset_statistics
from causalrec_jax.errors import DataFormatError


def write_log(folder, frame, n_files=3, row_group_size=7, hive=True):
    """`frame` cut into `n_files` files (in Hive folders `part=K/`), small row groups."""
    for index in range(n_files):
        part = frame.iloc[index::n_files]
        sub = folder / f"part={index % 2}" if hive else folder
        sub.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False),
                       sub / f"file-{index:02d}.parquet", row_group_size=row_group_size)
    (folder / "_SUCCESS").write_text("")
    return folder


def frame_of(n=200, seed=0, string_ids=False):
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 40, n) * 7  # external ids with gaps
    items = rng.integers(1, 25, n) * 3
    frame = pd.DataFrame({"user_id": users, "item_id": items,
                          "rating": rng.integers(1, 6, n).astype(np.float64),
                          "timestamp": rng.integers(10**9, 10**9 + 10**6, n)})
    if string_ids:
        frame["user_id"] = "u" + frame["user_id"].astype(str)
        frame["item_id"] = frame["item_id"].astype(str)  # integer strings: numeric order
    return frame


def test_footers_describe_the_log_without_reading_it(tmp_path):
    log = partitioned.open_log(write_log(tmp_path / "log", frame_of(200)))
    assert [f.path for f in log.files] == ["part=0/file-00.parquet", "part=0/file-02.parquet",
                                           "part=1/file-01.parquet"]
    assert log.n_rows == 200
    assert sum(f.rows for f in log.files) == 200
    # 67, 67 and 66 rows in row groups of at most 7.
    assert len(log.units) == 10 + 10 + 10
    assert max(unit.rows for unit in log.units) == 7
    assert log.roles == {"user": "user_id", "item": "item_id", "rating": "rating",
                         "timestamp": "timestamp"}


@pytest.mark.parametrize("string_ids", [False, True])
def test_streamed_id_maps_and_blocks_equal_the_log_read_whole(tmp_path, string_ids):
    frame = frame_of(200, string_ids=string_ids)
    folder = write_log(tmp_path / "log", frame)
    whole = read_table(folder, None, kind="parquet")  # the in-memory reader on the folder
    log = partitioned.open_log(folder)
    maps = partitioned.build_id_maps(log)
    assert [str(v) for v in maps.users.to_pylist()] == list(whole.user_ids)
    assert [str(v) for v in maps.items.to_pylist()] == list(whole.item_ids)
    blocks = list(partitioned.iter_blocks(log, maps, log.units))
    users = np.concatenate([block["users"] for block in blocks])
    items = np.concatenate([block["items"] for block in blocks])
    ratings = np.concatenate([block["ratings"] for block in blocks])
    np.testing.assert_array_equal(users, whole.user)
    np.testing.assert_array_equal(items, whole.item)
    np.testing.assert_array_equal(ratings, whole.rating)


def test_streamed_statistics_equal_the_in_memory_ones(tmp_path):
    folder = write_log(tmp_path / "log", frame_of(300, seed=3))
    log = partitioned.open_log(folder)
    streamed = partitioned.log_statistics(log)
    whole = dataset_statistics(read_table(folder, None, kind="parquet"))
    for key in ("n_users", "n_items", "n_interactions", "users_with_interactions",
                "items_with_interactions", "user_counts", "item_counts", "timestamp"):
        assert streamed[key] == whole[key], key
    assert streamed["density"] == pytest.approx(whole["density"])
    assert streamed["rating"]["distribution"] == whole["rating"]["distribution"]
    assert streamed["rating"]["mean"] == pytest.approx(whole["rating"]["mean"])
    assert streamed["partitioned"]["id_maps"] == "built"
    assert streamed["partitioned"]["row_groups"] == len(log.units)


@pytest.mark.parametrize("string_ids", [False, True])
def test_id_maps_stored_beside_the_data_are_read_back_and_checked(tmp_path, string_ids):
    folder = write_log(tmp_path / "log", frame_of(200, string_ids=string_ids))
    log = partitioned.open_log(folder)
    assert partitioned.read_id_maps(log) is None
    maps = partitioned.build_id_maps(log)
    stored = partitioned.write_id_maps(log, maps)
    assert stored == folder / "_causalrec"
    assert sorted(p.name for p in stored.iterdir()) == ["items.parquet", "manifest.json",
                                                          "users.parquet"]
    # The maps' folder is not data: the log lists the same files as before.
    assert partitioned.open_log(folder).files == log.files
    again = partitioned.read_id_maps(partitioned.open_log(folder))
    assert again.digest == maps.digest
    assert again.users.equals(maps.users) and again.items.equals(maps.items)
    with pytest.raises(DataFormatError, match="already exists"):
        partitioned.write_id_maps(log, maps)
    assert partitioned.log_statistics(partitioned.open_log(folder))["partitioned"][
        "id_maps"] == "stored"


def test_a_missing_new_or_changed_shard_is_named(tmp_path):
    folder = write_log(tmp_path / "log", frame_of(200))
    log = partitioned.open_log(folder)
    partitioned.write_id_maps(log, partitioned.build_id_maps(log))
    moved = folder / "part=1" / "file-01.parquet"
    hidden = tmp_path / "aside.parquet"
    os.rename(moved, hidden)
    with pytest.raises(DataFormatError, match=r"part=1/file-01.parquet: a shard listed"):
        partitioned.read_id_maps(partitioned.open_log(folder))
    os.rename(hidden, moved)
    extra = folder / "part=1" / "file-09.parquet"
    pq.write_table(pa.Table.from_pandas(frame_of(5, seed=9), preserve_index=False), extra)
    with pytest.raises(DataFormatError, match=r"file-09.parquet: this shard is not in the id"):
        partitioned.read_id_maps(partitioned.open_log(folder))
    extra.unlink()
    pq.write_table(pa.Table.from_pandas(frame_of(60, seed=5), preserve_index=False), moved)
    with pytest.raises(DataFormatError, match=r"file-01.parquet: this shard changed"):
        partitioned.read_id_maps(partitioned.open_log(folder))


def test_a_shard_deleted_after_the_log_was_opened_is_named(tmp_path):
    folder = write_log(tmp_path / "log", frame_of(100))
    log = partitioned.open_log(folder)
    maps = partitioned.build_id_maps(log)
    (folder / "part=1" / "file-01.parquet").unlink()
    with pytest.raises(DataFormatError, match=r"file-01.parquet: a shard of the log is missing"):
        list(partitioned.iter_blocks(log, maps, log.units))


def test_an_id_outside_the_maps_is_named(tmp_path):
    folder = write_log(tmp_path / "log", frame_of(100))
    log = partitioned.open_log(folder)
    maps = partitioned.build_id_maps(log)
    narrow = partitioned.IdMaps(maps.users.slice(1), maps.items, "x")
    with pytest.raises(DataFormatError, match=r"user id 7 \(row \d+ of this row group\) is not "
                                              "in the id maps"):
        list(partitioned.iter_blocks(log, narrow, log.units))


def test_bad_files_and_columns_are_named(tmp_path):
    folder = write_log(tmp_path / "log", frame_of(60))
    (folder / "part=0" / "broken.parquet").write_text("not parquet")
    with pytest.raises(DataFormatError, match=r"broken.parquet: not a Parquet file"):
        partitioned.open_log(folder)
    (folder / "part=0" / "broken.parquet").unlink()
    pq.write_table(pa.table({"user_id": [1], "rating": [3.0]}), folder / "part=0" / "z.parquet")
    with pytest.raises(DataFormatError, match=r"z.parquet: column 'item_id' is missing"):
        partitioned.open_log(folder)
    with pytest.raises(DataFormatError, match="no \\*.parquet files"):
        partitioned.open_log(_empty(tmp_path))  # only the skipped _causalrec/ folder


def _empty(tmp_path):
    folder = tmp_path / "empty"
    (folder / "_causalrec").mkdir(parents=True)
    (folder / "_causalrec" / "users.parquet").write_text("")
    return folder


def test_host_shares_split_every_row_group_once_and_balance_rows(tmp_path):
    log = partitioned.open_log(write_log(tmp_path / "log", frame_of(500, seed=1),
                                         row_group_size=13))
    for hosts in (1, 2, 3, 5):
        shares = partitioned.host_shares(log, hosts)
        units = [unit for share in shares for unit in share]
        assert sorted(units, key=log.units.index) == list(log.units)
        rows = [sum(unit.rows for unit in share) for share in shares]
        assert max(rows) - min(rows) <= 13
    with pytest.raises(DataFormatError, match="cannot be shared by 1000 hosts"):
        partitioned.host_units(log, 0, 1000)


def test_the_manifest_lists_every_file_with_its_size_and_rows(tmp_path):
    folder = write_log(tmp_path / "log", frame_of(80))
    log = partitioned.open_log(folder)
    partitioned.write_id_maps(log, partitioned.build_id_maps(log))
    manifest = json.loads((folder / "_causalrec" / "manifest.json").read_text())
    assert [entry["path"] for entry in manifest["files"]] == [f.path for f in log.files]
    assert [entry["rows"] for entry in manifest["files"]] == [f.rows for f in log.files]
    assert manifest["n_users"] == len(np.unique(frame_of(80)["user_id"]))


def test_ids_are_normalised_as_the_in_memory_reader_does(tmp_path):
    """Stripped text, decoded dictionaries, whole-number floats, ids equal as numbers ordered
    as the whole read orders them."""
    folder = tmp_path / "log"
    folder.mkdir()
    users = pa.array([" 8", "7", "07", "7", "10"]).dictionary_encode()
    pq.write_table(pa.table({"user_id": users, "item_id": [3.0, 1.0, 2.0, 3.0, 1.0],
                             "timestamp": ["2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z",
                                           "2026-01-03", "2026-01-01", "2026-01-05"]}),
                   folder / "a.parquet")
    pq.write_table(pa.table({"user_id": pa.array(["07", "9 "]).dictionary_encode(),
                             "item_id": [2.0, 5.0],
                             "timestamp": ["2026-01-04", "2026-01-06"]}), folder / "b.parquet")
    whole = read_table(folder, None, kind="parquet")
    log = partitioned.open_log(folder)
    maps = partitioned.build_id_maps(log)
    assert [str(v) for v in maps.users.to_pylist()] == list(whole.user_ids)
    assert [str(v) for v in maps.items.to_pylist()] == list(whole.item_ids) == ["1", "2", "3",
                                                                                 "5"]
    blocks = list(partitioned.iter_blocks(log, maps, log.units, timestamps=True))
    np.testing.assert_array_equal(np.concatenate([b["users"] for b in blocks]), whole.user)
    np.testing.assert_array_equal(np.concatenate([b["timestamps"] for b in blocks]),
                                  whole.timestamp)
    stats = partitioned.log_statistics(log)
    assert stats["timestamp"] == dataset_statistics(whole)["timestamp"]


def test_an_empty_id_and_a_fractional_id_are_named(tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    pq.write_table(pa.table({"user_id": ["a", " ", "c"], "item_id": [1, 2, 3]}),
                   folder / "a.parquet")
    log = partitioned.open_log(folder)
    with pytest.raises(DataFormatError, match=r"a.parquet: row index 1 of its row group: "
                                              r"column 'user_id' \(user ids\) has an empty id"):
        partitioned.build_id_maps(log)
    (folder / "a.parquet").unlink()
    pq.write_table(pa.table({"user_id": ["a"], "item_id": [1.5]}), folder / "b.parquet")
    with pytest.raises(DataFormatError, match="b.parquet: column 'item_id' .* not whole"):
        partitioned.build_id_maps(partitioned.open_log(folder))


def test_causalrec_data_streams_a_folder_and_writes_its_id_maps_once(tmp_path, capsys):
    from causalrec_jax.cli import main

    folder = write_log(tmp_path / "log", frame_of(150, seed=2))
    assert main(["data", "--format", "parquet", "--path", str(folder), "--write-ids",
                 "--json"]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)  # the JSON alone on stdout
    assert "wrote the id maps" in captured.err
    assert stats["n_interactions"] == 150 and stats["partitioned"]["id_maps"] == "stored"
    assert (folder / "_causalrec" / "manifest.json").exists()
    assert main(["data", "--format", "parquet", "--path", str(folder), "--write-ids"]) == 2
    assert "_causalrec/ already exists" in capsys.readouterr().err
    assert main(["data", "--format", "parquet", "--path", str(folder), "--set",
                 "data.k_core_users=5"]) == 2
    assert "key data.k_core_users: a folder of Parquet files is reported as read" in \
        capsys.readouterr().err
    assert main(["data", "--format", "parquet", "--path", str(folder)]) == 0
    assert "id maps stored" in capsys.readouterr().out


def test_a_folder_read_whole_takes_files_of_other_integer_widths(tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    pq.write_table(pa.table({"user_id": pa.array([1, 2], pa.int32()),
                             "item_id": pa.array(["a", "b"], pa.string())}), folder / "a.parquet")
    pq.write_table(pa.table({"user_id": pa.array([3], pa.int64()),
                             "item_id": pa.array(["c"], pa.large_string())}),
                   folder / "b.parquet")
    whole = read_table(folder, None, kind="parquet")
    assert list(whole.user_ids) == ["1", "2", "3"] and list(whole.item_ids) == ["a", "b", "c"]
    maps = partitioned.build_id_maps(partitioned.open_log(folder))
    assert maps.users.to_pylist() == [1, 2, 3] and maps.items.to_pylist() == ["a", "b", "c"]


def test_a_failed_write_of_the_id_maps_leaves_nothing_behind(tmp_path, monkeypatch):
    folder = write_log(tmp_path / "log", frame_of(50))
    log = partitioned.open_log(folder)
    maps = partitioned.build_id_maps(log)
    calls = []

    def failing_write(table, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the items' file, after the users' was written
            raise OSError("disk full")
        return real_write(table, path, *args, **kwargs)

    real_write = pq.write_table
    monkeypatch.setattr(partitioned.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        partitioned.write_id_maps(log, maps)
    assert sorted(p.name for p in folder.iterdir()) == ["_SUCCESS", "part=0", "part=1"]
    monkeypatch.undo()
    partitioned.write_id_maps(log, maps)  # a later write goes through
    assert partitioned.read_id_maps(partitioned.open_log(folder)).digest == maps.digest
