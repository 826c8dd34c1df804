"""The format registry, and the pyarrow adapter that reads delimited text (`formats.text`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from causalrec_jax.config import DataConfig, load_config
from causalrec_jax.data import loader
from causalrec_jax.data.dataset import from_arrays
from causalrec_jax.data.formats import (
    FORMATS,
    Source,
    format_names,
    get_format,
    read_dataset,
    read_recbole,
    read_table,
    register_format,
    registry,
    text,
)
from causalrec_jax.errors import ConfigError, DataFormatError


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry that the test may change (the real one is left as it was)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def toy_reader(source: Source):
    dataset = from_arrays(np.array([1, 2]), np.array([5, 5]), meta={"format": "toy"})
    return dataset, {"truth": source.sim}


def test_data_layer_registers_its_file_formats():
    assert set(FORMATS) <= set(format_names())
    assert get_format("csv").needs_path and not get_format("dataframe").needs_path


def test_a_registered_format_is_read_by_name(scratch_registry, tmp_path):
    register_format("toy", toy_reader, needs_path=False)
    assert "toy" in format_names()
    dataset = read_dataset("toy")
    assert dataset.meta["format"] == "toy" and dataset.n_interactions == 2
    raw, truth = loader.read_raw(DataConfig(format="toy"))
    assert raw.n_users == 2 and truth == {"truth": None}
    # Registering the same reader again is harmless; another one needs replace=True.
    register_format("toy", toy_reader, needs_path=False)
    with pytest.raises(ConfigError, match="'toy' is already registered"):
        register_format("toy", lambda source: toy_reader(source))
    register_format("toy", lambda source: (dataset.replace(meta={"format": "x"}), None),
                    needs_path=False, replace=True)
    assert read_dataset("toy").meta["format"] == "x"


def test_a_registered_format_can_be_named_in_a_config_file(scratch_registry, tmp_path):
    register_format("toy", toy_reader, needs_path=False)
    path = tmp_path / "toy.toml"
    path.write_text('[data]\nformat = "toy"\n')
    config = load_config(path)
    assert config.data.format == "toy"
    raw, _ = loader.read_raw(config.data)
    assert raw.meta["format"] == "toy" and raw.n_interactions == 2
    # An unregistered name fails when the data is read, naming the key; an empty one at once.
    with pytest.raises(ConfigError, match="key data.format: unknown format 'tyo'.*'toy'"):
        loader.read_raw(load_config(path, ["data.format=tyo"]).data)
    with pytest.raises(ConfigError, match="data.format"):
        load_config(path, ['data.format=""'])


def test_a_format_that_needs_a_path_checks_it(scratch_registry, tmp_path):
    register_format("toy", toy_reader)
    with pytest.raises(DataFormatError, match="format 'toy' needs a path"):
        read_dataset("toy")
    with pytest.raises(DataFormatError, match="no such file or folder"):
        read_dataset("toy", tmp_path / "missing")
    assert read_dataset("toy", tmp_path).n_interactions == 2


def test_unknown_formats_name_the_key_and_suggest_a_name():
    with pytest.raises(ConfigError) as caught:
        get_format("recbol")
    message = str(caught.value)
    assert message.startswith("key data.format: unknown format 'recbol'")
    assert "did you mean 'recbole'?" in message and "seq_lines" in message


def test_the_simulator_formats_unregistered_say_which_module_registers_them(scratch_registry):
    for name in ("simulator", "simlog"):
        registry._REGISTRY.pop(name, None)
        with pytest.raises(ConfigError, match="import causalrec_jax.sim first") as caught:
            loader.load_dataset(DataConfig(format=name, path="somewhere"))
        assert f"key data.format: {name!r}" in str(caught.value)


# --------------------------------------------------------------------------------------------
# The pyarrow adapter.


def write(path: Path, text_: str, *, crlf: bool = False, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((text_.replace("\n", "\r\n") if crlf else text_).encode(encoding))
    return path


def error_of(read) -> tuple[str, int | None]:
    with pytest.raises(DataFormatError) as caught:
        read()
    message = str(caught.value)
    assert "\n" not in message  # one line
    found = re.search(r", line (\d+): ", message)
    return message, None if found is None else int(found.group(1))


def big_rows(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{u},{i},{r},{t}" for u, i, r, t in zip(
        rng.integers(1, 300, n), rng.integers(1, 200, n), rng.integers(1, 6, n),
        rng.integers(10**9, 2 * 10**9, n), strict=True)]


def no_exact_reading(monkeypatch):
    """Makes the line-by-line reading fail: what succeeds was read by pyarrow."""

    def refuse(*args, **kwargs):
        raise AssertionError("read line by line")

    monkeypatch.setattr(text, "_python_fields", refuse)


@pytest.mark.parametrize("crlf", [False, True])
def test_pyarrow_reads_a_large_table_with_blank_lines_and_keeps_line_numbers(
    tmp_path, monkeypatch, crlf
):
    rows = big_rows(20_000)
    rows[100] = ""
    rows[5_000] = " , ,\t, "
    path = write(tmp_path / "t.csv", "user,item,rating,timestamp\n" + "\n".join(rows) + "\n",
                 crlf=crlf)
    no_exact_reading(monkeypatch)
    dataset = read_table(path, None)
    keep = [row for index, row in enumerate(rows) if index not in (100, 5_000)]
    expected = np.array([row.split(",") for row in keep], dtype=np.int64)
    assert dataset.n_interactions == len(keep)
    np.testing.assert_array_equal(dataset.user_ids[dataset.user].astype(int), expected[:, 0])
    np.testing.assert_array_equal(dataset.rating, expected[:, 2])
    np.testing.assert_array_equal(dataset.timestamp, expected[:, 3])
    # Canonical integers are read as numbers: the id map is in numeric order.
    assert (np.diff(dataset.user_ids.astype(int)) > 0).all()
    rows[15_000] = "7,1,2,3,4"
    rows[17_000] = "7,1"
    path = write(tmp_path / "bad.csv", "user,item,rating,timestamp\n" + "\n".join(rows) + "\n",
                 crlf=crlf)
    message, line = error_of(lambda: read_table(path, None))
    assert line == 15_002 and "bad.csv" in message and "found 5" in message
    rows[15_000] = "7,1,x,3"
    path = write(tmp_path / "nan.csv", "user,item,rating,timestamp\n" + "\n".join(rows[:16_000]))
    message, line = error_of(lambda: read_table(path, None))
    assert line == 15_002 and "'x' is not a number" in message


def test_quoted_fields_without_line_breaks_are_read_by_pyarrow(tmp_path, monkeypatch):
    body = "".join(f'"u,{index % 7}",{index % 5}," {index % 4 + 1} ",{index}\n'
                   for index in range(3000))
    path = write(tmp_path / "q.csv", "user,item,rating,timestamp\n" + body)
    no_exact_reading(monkeypatch)
    dataset = read_table(path, None)
    assert sorted(dataset.user_ids) == [f"u,{index}" for index in range(7)]
    np.testing.assert_array_equal(dataset.rating, np.arange(3000) % 4 + 1)


def test_pyarrow_and_the_exact_reading_agree_on_ids_and_numbers(tmp_path):
    body = " 7 ,x, 4 ,10\n007,y,,11\n12,z,nan,12\n+7,x,3,13\n"
    plain = read_table(write(tmp_path / "p.csv", "user,item,rating,timestamp\n" + body), None)
    # A quoted field with a line break sends the file through the exact reading.
    quoted = read_table(write(tmp_path / "q.csv", "user,item,rating,timestamp\n" + body
                              + '9,"a\nb",1,14\n'), None)
    assert sorted(plain.user_ids) == ["+7", "007", "12", "7"]  # 007 and +7 are not 7
    np.testing.assert_array_equal(quoted.user_ids[quoted.user][:4], plain.user_ids[plain.user])
    np.testing.assert_array_equal(quoted.rating[:4], plain.rating)
    np.testing.assert_array_equal(plain.rating, [4.0, np.nan, np.nan, 3.0])
    numeric = read_table(write(tmp_path / "n.csv", "user,item\n 7 ,1\n12,2\n"), None)
    assert list(numeric.user_ids) == ["7", "12"]  # numbers, in numeric order


def test_a_latin1_file_read_by_pyarrow_keeps_distinct_ids(tmp_path, monkeypatch):
    rows = "".join(f"caf{'éè'[index % 2]}{index % 3}\t{index}\n" for index in range(2000))
    path = write(tmp_path / "l" / "l.inter", "user_id:token\titem_id:token\n" + rows,
                 encoding="latin-1")
    no_exact_reading(monkeypatch)
    dataset = read_recbole(path)
    assert dataset.n_users == 6 and "café0" in set(dataset.user_ids)


def test_a_lone_carriage_return_is_read_line_by_line_and_named(tmp_path):
    path = write(tmp_path / "r.csv", "user,item\n1,2\n3\r4,5\n")
    message, line = error_of(lambda: read_table(path, None))
    assert line is not None and "r.csv" in message
