"""Readers on small hand-written files: exact values, and a clear error for each malformed case."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN
from causalrec_jax.data.formats import (
    FORMATS,
    YAHOO_TEST_FILE,
    YAHOO_TRAIN_FILE,
    format_names,
    from_dataframe,
    read_coat,
    read_dataset,
    read_movielens,
    read_recbole,
    read_seq_lines,
    read_table,
    read_yahoo_r3,
)
from causalrec_jax.errors import ConfigError, DataFormatError


def write(path: Path, text: str, *, crlf: bool = False) -> Path:
    """Writes `text` (LF line endings) to `path`, as CRLF when asked; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes(text.encode("utf-8"))
    return path


def expect_error(read, file_name: str, line: int | None = None, *, contains: str = "") -> str:
    """Runs `read()`, expecting a DataFormatError naming `file_name` (and `line N`)."""
    with pytest.raises(DataFormatError) as caught:
        read()
    message = str(caught.value)
    assert file_name in message
    if line is not None:
        assert re.search(rf"\bline {line}\b", message), message
    assert contains in message
    return message


def external(ids: np.ndarray) -> list[str]:
    return [str(value) for value in ids]


# --------------------------------------------------------------------------------------------
# RecBole atomic files.

TOY_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u2\ti1\t4\t100\n"
    "u1\ti2\t5\t50\n"
    "u2\ti1\t3\t200\n"
    "u1\ti3\t\t75\n"
)
TOY_USER = (
    "user_id:token\tgender:token\tage:float\n"
    "u1\tF\t30\n"
    "u9\tM\t40\n"  # not in the interactions: ignored, not added to the id map
)  # u2 has no row: zero features
TOY_ITEM = (
    "item_id:token\tgenres:token_seq\tvector:float_seq\n"
    "i1\tAction Comedy\t0.1 0.2\n"
    "i2\tComedy\t0.3 0.4\n"
    "i3\t\t0.5 0.6\n"
)


def write_recbole(folder: Path, *, crlf: bool = False) -> Path:
    write(folder / "toy.inter", TOY_INTER, crlf=crlf)
    write(folder / "toy.user", TOY_USER, crlf=crlf)
    write(folder / "toy.item", TOY_ITEM, crlf=crlf)
    return folder


@pytest.mark.parametrize("crlf", [False, True])
def test_recbole_reads_interactions_and_side_features(tmp_path, crlf):
    dataset = read_recbole(write_recbole(tmp_path / "toy", crlf=crlf))

    assert external(dataset.user_ids) == ["u1", "u2"]
    assert external(dataset.item_ids) == ["i1", "i2", "i3"]
    assert dataset.user.tolist() == [1, 0, 1, 0]
    assert dataset.item.tolist() == [0, 1, 0, 2]
    np.testing.assert_array_equal(dataset.rating, [4.0, 5.0, 3.0, np.nan])
    assert dataset.timestamp.tolist() == [100.0, 50.0, 200.0, 75.0]
    assert dataset.given_split is None
    assert dataset.meta["name"] == "toy"
    assert dataset.meta["format"] == "recbole"
    assert dataset.meta["implicit"] is False
    assert dataset.meta["rating_scale"] == (3.0, 5.0)
    assert dataset.meta["raw_rows"] == 4

    assert dataset.user_feature_names == ("gender=F", "gender=M", "age")
    np.testing.assert_array_equal(dataset.user_features, [[1, 0, 30], [0, 0, 0]])
    assert dataset.user_features.dtype == np.float32
    # The float_seq field is skipped; the empty genre list of i3 is all zeros.
    assert dataset.item_feature_names == ("genres=Action", "genres=Comedy")
    np.testing.assert_array_equal(dataset.item_features, [[1, 1], [0, 1], [0, 0]])


def test_recbole_accepts_the_inter_file_itself(tmp_path):
    folder = write_recbole(tmp_path / "toy")
    dataset = read_recbole(folder / "toy.inter")
    assert dataset.n_interactions == 4
    assert dataset.user_features is not None


def test_recbole_without_rating_is_implicit_and_label_is_a_rating(tmp_path):
    implicit = write(tmp_path / "a" / "a.inter", "user_id:token\titem_id:token\n1\t2\n1\t3\n")
    dataset = read_recbole(implicit)
    assert dataset.meta["implicit"] is True
    assert dataset.rating.tolist() == [1.0, 1.0]
    assert dataset.timestamp is None
    assert dataset.user_features is None and dataset.item_features is None

    labelled = write(
        tmp_path / "b" / "b.inter", "user_id:token\titem_id:token\tlabel:float\n1\t2\t0\n1\t3\t1\n"
    )
    dataset = read_recbole(labelled)
    assert dataset.meta["implicit"] is False
    assert dataset.rating.tolist() == [0.0, 1.0]


def test_recbole_skips_free_text_side_fields(tmp_path):
    n_items = 30
    inter = "user_id:token\titem_id:token\n" + "".join(f"1\t{i}\n" for i in range(n_items))
    items = "item_id:token\ttitle:token_seq\tcolour:token\n" + "".join(
        f"{i}\tMovie number {i}\t{'red' if i % 2 else 'blue'}\n" for i in range(n_items)
    )
    write(tmp_path / "m" / "m.inter", inter)
    write(tmp_path / "m" / "m.item", items)
    dataset = read_recbole(tmp_path / "m")
    # 30 distinct titles > max(15, 20): free text, skipped; two colours are kept.
    assert dataset.item_feature_names == ("colour=blue", "colour=red")
    assert dataset.item_features[:, 1].sum() == 15


def test_recbole_nan_rating_text_is_kept_as_nan(tmp_path):
    path = write(
        tmp_path / "n" / "n.inter", "user_id:token\titem_id:token\trating:float\n1\t2\tnan\n"
    )
    assert np.isnan(read_recbole(path).rating[0])


@pytest.mark.parametrize(
    ("header", "contains"),
    [
        ("uid:token\titem_id:token\n", "user_id"),
        ("user_id:token\titem:token\n", "item_id"),
        ("user_id\titem_id:token\n", "name:type"),
        ("user_id:token\titem_id:integer\n", "unknown type"),
    ],
)
def test_recbole_rejects_a_header_that_does_not_match(tmp_path, header, contains):
    path = write(tmp_path / "h" / "h.inter", header + "1\t2\n")
    expect_error(lambda: read_recbole(path), "h.inter", 1, contains=contains)


def test_recbole_rejects_a_wrong_column_count(tmp_path):
    path = write(tmp_path / "c" / "c.inter", "user_id:token\titem_id:token\n1\t2\n3\t4\t5\n")
    expect_error(lambda: read_recbole(path), "c.inter", 3, contains="expected 2 fields")


def test_recbole_rejects_a_rating_that_is_not_a_number(tmp_path):
    text = "user_id:token\titem_id:token\trating:float\n1\t2\t4\n1\t3\tabc\n"
    path = write(tmp_path / "r" / "r.inter", text, crlf=True)
    expect_error(lambda: read_recbole(path), "r.inter", 3, contains="'abc'")


def test_recbole_rejects_an_empty_file_and_a_folder_without_inter(tmp_path):
    path = write(tmp_path / "e" / "e.inter", "")
    expect_error(lambda: read_recbole(path), "e.inter", 1, contains="empty")
    (tmp_path / "nothing").mkdir()
    expect_error(lambda: read_recbole(tmp_path / "nothing"), "nothing", contains=".inter")


def test_recbole_rejects_a_header_without_rows(tmp_path):
    path = write(tmp_path / "o" / "o.inter", "user_id:token\titem_id:token\n")
    expect_error(lambda: read_recbole(path), "o.inter", 2, contains="no interactions")


def test_recbole_rejects_a_malformed_side_file(tmp_path):
    folder = write_recbole(tmp_path / "toy")
    write(folder / "toy.user", "user_id:token\tgender:token\nu1\tF\tM\n")
    expect_error(lambda: read_recbole(folder), "toy.user", 2)
    write(folder / "toy.user", "gender:token\nF\n")
    expect_error(lambda: read_recbole(folder), "toy.user", 1, contains="user_id")


# --------------------------------------------------------------------------------------------
# MovieLens.

U_DATA = "1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t20\t4\t881250951\n"


@pytest.mark.parametrize("crlf", [False, True])
def test_movielens_reads_u_data(tmp_path, crlf):
    dataset = read_movielens(write(tmp_path / "ml" / "u.data", U_DATA, crlf=crlf).parent)
    assert external(dataset.user_ids) == ["1", "2"]
    assert external(dataset.item_ids) == ["10", "20"]
    assert dataset.user.tolist() == [0, 1, 0]
    assert dataset.item.tolist() == [0, 0, 1]
    assert dataset.rating.tolist() == [5.0, 3.0, 4.0]
    assert dataset.timestamp.tolist() == [881250949.0, 881250950.0, 881250951.0]
    assert dataset.meta["name"] == "ml"
    assert dataset.meta["format"] == "movielens"
    assert dataset.meta["rating_scale"] == (1.0, 5.0)
    assert dataset.meta["raw_rows"] == 3
    assert dataset.user_features is None and dataset.item_features is None


def test_movielens_reads_ratings_dat_and_csv(tmp_path):
    dat = write(tmp_path / "m1" / "ratings.dat", "1::1193::5::978300760\n2::661::3::978302109\n")
    dataset = read_movielens(dat)
    assert external(dataset.item_ids) == ["661", "1193"]
    assert dataset.rating.tolist() == [5.0, 3.0]

    csv = write(
        tmp_path / "m2" / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n",
        crlf=True,
    )
    dataset = read_movielens(csv)
    assert dataset.rating.tolist() == [4.0, 3.5]
    assert dataset.meta["rating_scale"] == (0.5, 5.0)


def test_movielens_keeps_an_empty_rating_as_nan(tmp_path):
    path = write(tmp_path / "ml" / "u.data", "1\t10\t\t5\n1\t20\t4\t6\n")
    dataset = read_movielens(path)
    assert np.isnan(dataset.rating[0]) and dataset.rating[1] == 4.0


def test_movielens_100k_side_files_become_features(tmp_path):
    folder = write(tmp_path / "ml" / "u.data", U_DATA).parent
    flags = ["0"] * 19
    action = list(flags)
    action[1] = "1"
    comedy_drama = list(flags)
    comedy_drama[5] = comedy_drama[8] = "1"
    write(
        folder / "u.item",
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{'|'.join(action)}\n"
        f"20|Heat (1995)|01-Jan-1995||http://y|{'|'.join(comedy_drama)}\n"
        f"99|Not rated|01-Jan-1995||http://z|{'|'.join(action)}\n",
    )
    write(folder / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    dataset = read_movielens(folder)
    assert dataset.item_feature_names == ("genre=Action", "genre=Comedy", "genre=Drama")
    np.testing.assert_array_equal(dataset.item_features, [[1, 0, 0], [0, 1, 1]])
    assert dataset.user_feature_names == (
        "age=24",
        "age=53",
        "gender=F",
        "gender=M",
        "occupation=other",
        "occupation=technician",
    )
    np.testing.assert_array_equal(dataset.user_features, [[1, 0, 0, 1, 0, 1], [0, 1, 1, 0, 1, 0]])


def test_movielens_1m_side_files_become_features(tmp_path):
    folder = write(tmp_path / "m1" / "ratings.dat", "1::10::5::1\n2::20::3::2\n").parent
    write(folder / "movies.dat", "10::Toy Story (1995)::Animation|Comedy\n20::Heat::Crime\n")
    write(folder / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    dataset = read_movielens(folder)
    assert dataset.item_feature_names == ("genre=Animation", "genre=Comedy", "genre=Crime")
    np.testing.assert_array_equal(dataset.item_features, [[1, 1, 0], [0, 0, 1]])
    assert dataset.user_feature_names == (
        "gender=F",
        "gender=M",
        "age=1",
        "age=56",
        "occupation=10",
        "occupation=16",
    )


def test_movielens_rejects_a_csv_header_that_does_not_match(tmp_path):
    path = write(tmp_path / "m" / "ratings.csv", "user,movie,rating,timestamp\n1,1,4,5\n")
    expect_error(lambda: read_movielens(path), "ratings.csv", 1, contains="userId")


@pytest.mark.parametrize(
    ("text", "line", "contains"),
    [
        ("1\t10\t5\t1\n0\t10\t5\t2\n", 2, "user id 0"),
        ("1\t10\t5\t1\n1\t20\t4\t2\n2\t-3\t5\t2\n", 3, "item id -3"),
        ("1\t10\t5\t1\n1\t10\t5\n", 2, "expected 4 fields"),
        ("1\t10\tfive\t1\n", 1, "'five'"),
        ("1\t10\t5\t1\n\n1\t10\t5\tnoon\n", 3, "'noon'"),
        ("", 1, "empty"),
    ],
)
def test_movielens_rejects_malformed_u_data(tmp_path, text, line, contains):
    path = write(tmp_path / "ml" / "u.data", text, crlf=True)
    expect_error(lambda: read_movielens(path), "u.data", line, contains=contains)


@pytest.mark.parametrize(
    ("text", "line", "contains"),
    [
        ("1::10::5::1\n2::20::3\n", 2, "expected 4 fields"),
        ("1::10::5::1\n2:20::3::1\n", 2, "expected 4 fields"),
        ("1::10::5::1\n-2::20::3::1\n", 2, "user id -2"),
    ],
)
def test_movielens_rejects_malformed_ratings_dat(tmp_path, text, line, contains):
    path = write(tmp_path / "m1" / "ratings.dat", text)
    expect_error(lambda: read_movielens(path), "ratings.dat", line, contains=contains)


def test_movielens_rejects_a_malformed_side_file(tmp_path):
    folder = write(tmp_path / "ml" / "u.data", U_DATA).parent
    write(folder / "u.user", "1|24|M|technician|85711\n2|53|F|other\n")
    expect_error(lambda: read_movielens(folder), "u.user", 2, contains="expected 5 fields")


def test_movielens_rejects_unknown_file_names(tmp_path):
    path = write(tmp_path / "ml" / "scores.tsv", U_DATA)
    expect_error(lambda: read_movielens(path), "scores.tsv", contains="u.data")
    expect_error(lambda: read_movielens(path.parent), "ml", contains="ratings.dat")


# --------------------------------------------------------------------------------------------
# Coat.

COAT_TRAIN = "0 4 0 1\n0 0 0 0\n5 0 0 2\n"
COAT_TEST = "3 0 0 0\n0 0 1 0\n0 0 0 0\n"
COAT_PROPENSITIES = "0.1 0.2 0.3 0.4\n0.5 0.6 0.7 0.8\n0.9 1.0 0.05 0.15\n"


def write_coat(folder: Path, *, features: bool = True) -> Path:
    write(folder / "train.ascii", COAT_TRAIN, crlf=True)
    write(folder / "test.ascii", COAT_TEST, crlf=True)
    write(folder / "propensities.ascii", COAT_PROPENSITIES)
    if features:
        features_folder = folder / "user_item_features"
        write(features_folder / "user_features.ascii", "1 0\n0 1\n1 0\n", crlf=True)
        write(features_folder / "user_features_map.txt", "gender:men\ngender:women")
        write(features_folder / "item_features.ascii", "1\n0\n0\n1\n", crlf=True)
        write(features_folder / "item_features_map.txt", "onfrontpage:yes\n")
    return folder


def test_coat_reads_matrices_propensities_and_features(tmp_path):
    dataset = read_coat(write_coat(tmp_path / "coat"))

    # Every row and column is in the id maps, 1-based, even user 3 with no test rating.
    assert external(dataset.user_ids) == ["1", "2", "3"]
    assert external(dataset.item_ids) == ["1", "2", "3", "4"]
    # Train entries first, row-major, then test entries.
    assert dataset.user.tolist() == [0, 0, 2, 2, 0, 1]
    assert dataset.item.tolist() == [1, 3, 0, 3, 0, 2]
    assert dataset.rating.tolist() == [4.0, 1.0, 5.0, 2.0, 3.0, 1.0]
    assert dataset.given_split.tolist() == [GIVEN_TRAIN] * 4 + [GIVEN_TEST] * 2
    assert dataset.timestamp is None
    np.testing.assert_allclose(
        dataset.propensity_matrix, np.array(COAT_PROPENSITIES.split(), dtype=float).reshape(3, 4)
    )
    assert dataset.propensity_matrix.dtype == np.float32
    assert dataset.user_feature_names == ("gender:men", "gender:women")
    np.testing.assert_array_equal(dataset.user_features, [[1, 0], [0, 1], [1, 0]])
    assert dataset.item_feature_names == ("onfrontpage:yes",)
    np.testing.assert_array_equal(dataset.item_features, [[1], [0], [0], [1]])
    assert dataset.meta["mnar_train_mar_test"] is True
    assert dataset.meta["rating_scale"] == (1.0, 5.0)
    assert dataset.meta["raw_rows"] == 6


def test_coat_optional_files_may_be_absent(tmp_path):
    folder = write_coat(tmp_path / "coat", features=False)
    (folder / "propensities.ascii").unlink()
    dataset = read_coat(folder)
    assert dataset.propensity_matrix is None
    assert dataset.user_features is None and dataset.item_features is None
    assert dataset.n_interactions == 6


@pytest.mark.parametrize(
    ("train", "line", "contains"),
    [
        ("0 4 0 1\n0 0 0\n5 0 0 2\n", 2, "3 values, expected 4"),
        ("0 4 0 1\n0 0 x 0\n5 0 0 2\n", 2, "'x'"),
        ("0 4 0 1\n0 0 0 0\n5 0 7 2\n", 3, "not a rating 0..5"),
        ("0 4 0 1\n0 0 0 0\n5 0 2.5 2\n", 3, "not a rating 0..5"),
        ("0 4 0 1\n\n5 0 0 2\n", 2, "blank line"),
        ("\n0 4 0 1\n5 0 0 2\n", 1, "blank line"),
        ("", 1, "empty"),
    ],
)
def test_coat_rejects_malformed_matrices(tmp_path, train, line, contains):
    folder = write_coat(tmp_path / "coat")
    write(folder / "train.ascii", train, crlf=True)
    expect_error(lambda: read_coat(folder), "train.ascii", line, contains=contains)


def test_coat_rejects_shapes_that_differ(tmp_path):
    folder = write_coat(tmp_path / "coat")
    write(folder / "test.ascii", "3 0 0\n0 0 1\n0 0 0\n")
    expect_error(lambda: read_coat(folder), "test.ascii", contains="3 x 3")
    folder = write_coat(tmp_path / "coat2")
    write(folder / "propensities.ascii", "0.1 0.2\n")
    expect_error(lambda: read_coat(folder), "propensities.ascii", contains="1 x 2")


def test_coat_rejects_feature_names_that_do_not_match(tmp_path):
    folder = write_coat(tmp_path / "coat")
    write(folder / "user_item_features" / "user_features_map.txt", "gender:men\n")
    expect_error(lambda: read_coat(folder), "user_features_map.txt", contains="2 columns")


@pytest.mark.parametrize("missing", ["train.ascii", "test.ascii"])
def test_coat_names_a_missing_required_file(tmp_path, missing):
    folder = write_coat(tmp_path / "coat")
    (folder / missing).unlink()
    expect_error(lambda: read_coat(folder), "coat", contains=missing)


# --------------------------------------------------------------------------------------------
# Yahoo! R3.


def write_yahoo(folder: Path, train: str, test: str) -> Path:
    write(folder / YAHOO_TRAIN_FILE, train, crlf=True)
    write(folder / YAHOO_TEST_FILE, test, crlf=True)
    return folder


def test_yahoo_reads_train_and_test(tmp_path):
    folder = write_yahoo(tmp_path / "yahoo", "1\t1\t5\n1\t3\t1\n2 \t 2  4\n", "1\t2\t3\n")
    dataset = read_yahoo_r3(folder)
    assert external(dataset.user_ids) == ["1", "2"]
    assert external(dataset.item_ids) == ["1", "2", "3"]
    assert dataset.user.tolist() == [0, 0, 1, 0]
    assert dataset.item.tolist() == [0, 2, 1, 1]
    assert dataset.rating.tolist() == [5.0, 1.0, 4.0, 3.0]
    assert dataset.given_split.tolist() == [GIVEN_TRAIN] * 3 + [GIVEN_TEST]
    assert dataset.meta["mnar_train_mar_test"] is True
    assert dataset.meta["raw_rows"] == 4


@pytest.mark.parametrize(
    ("train", "line", "contains"),
    [
        ("1\t1\t5\n0\t2\t4\n", 2, "user id 0"),
        ("1\t1\t5\n\n1\t-2\t4\n", 3, "item id -2"),
        ("1\t1\t5\n1\t2\t6\n", 2, "rating 6 is outside 1..5"),
        ("1\t1\t5\n1\t2\tgood\n", 2, "'good'"),
        ("1\t1\t5\n1\t2\n", 2, "expected 3 fields"),
        ("", 1, "empty"),
    ],
)
def test_yahoo_rejects_malformed_lines(tmp_path, train, line, contains):
    folder = write_yahoo(tmp_path / "yahoo", train, "1\t2\t3\n")
    expect_error(lambda: read_yahoo_r3(folder), YAHOO_TRAIN_FILE, line, contains=contains)


def test_yahoo_names_a_missing_file(tmp_path):
    folder = tmp_path / "yahoo"
    write(folder / YAHOO_TRAIN_FILE, "1\t1\t5\n")
    expect_error(lambda: read_yahoo_r3(folder), "yahoo", contains=YAHOO_TEST_FILE)


# --------------------------------------------------------------------------------------------
# One sequence per line.


@pytest.mark.parametrize("crlf", [False, True])
def test_seq_lines_reads_sequences_in_order(tmp_path, crlf):
    path = write(tmp_path / "Beauty.txt", "1 5 6 7\n2 6 8\n\n", crlf=crlf)
    dataset = read_seq_lines(path)
    assert external(dataset.user_ids) == ["1", "2"]
    assert external(dataset.item_ids) == ["5", "6", "7", "8"]
    assert dataset.user.tolist() == [0, 0, 0, 1, 1]
    assert dataset.item.tolist() == [0, 1, 2, 1, 3]
    assert dataset.timestamp.tolist() == [0.0, 1.0, 2.0, 0.0, 1.0]
    assert dataset.rating.tolist() == [1.0] * 5
    assert dataset.meta["implicit"] is True
    assert dataset.meta["name"] == "Beauty"
    assert dataset.meta["raw_rows"] == 5


def test_seq_lines_warns_of_an_odd_item_id_naming_the_line(tmp_path):
    import warnings

    from causalrec_jax.errors import DataWarning

    path = write(tmp_path / "Toys.txt", "1 5 6 7\n2 6 8\n3 7 5x 8\n")
    with pytest.warns(DataWarning, match=r"Toys.txt, line 3: item '5x' is not like the others "
                                         r"\(7 of 8 item ids are integers"):
        dataset = read_seq_lines(path)
    assert "5x" in external(dataset.item_ids)  # read, as its own item
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_seq_lines(write(tmp_path / "ok.txt", "1 5 6\n2 6 8\n"))  # all integers: silent
        read_seq_lines(write(tmp_path / "names.txt", "a x y\nb y z\n"))  # no integer: silent


def test_the_command_line_prints_a_data_warning_as_one_line(tmp_path, capsys):
    from causalrec_jax.cli import main

    path = write(tmp_path / "Toys.txt", "1 5 6 7\n2 6 8\n3 7 5x 8\n")
    assert main(["data", "--format", "seq_lines", "--path", str(path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line for line in err if line.startswith("causalrec data: warning: ")]
    assert len(err) == 1 and "line 3: item '5x'" in err[0]


def test_seq_lines_reads_the_single_txt_of_a_folder(tmp_path):
    write(tmp_path / "data" / "Sports.txt", "a x y\n")
    assert read_seq_lines(tmp_path / "data").n_interactions == 2
    write(tmp_path / "data" / "Toys.txt", "a x y\n")
    expect_error(lambda: read_seq_lines(tmp_path / "data"), "data", contains="Sports.txt")


def test_seq_lines_rejects_a_user_without_items_and_an_empty_file(tmp_path):
    path = write(tmp_path / "s.txt", "1 5 6\n2\n")
    expect_error(lambda: read_seq_lines(path), "s.txt", 2, contains="no items")
    path = write(tmp_path / "e.txt", "\n")
    expect_error(lambda: read_seq_lines(path), "e.txt", 1, contains="empty")


# --------------------------------------------------------------------------------------------
# Tables and DataFrames.

TABLE = "uid,sku,stars,when\nalice,x,4,10\nbob,y,2,20\n\nalice,y,5,30\n"
TABLE_COLUMNS = {"user": "uid", "item": "sku", "rating": "stars", "timestamp": "when"}


def test_read_table_csv_maps_columns(tmp_path):
    path = write(tmp_path / "log.csv", TABLE, crlf=True)
    dataset = read_table(path, TABLE_COLUMNS)
    assert external(dataset.user_ids) == ["alice", "bob"]
    assert external(dataset.item_ids) == ["x", "y"]
    assert dataset.user.tolist() == [0, 1, 0]
    assert dataset.item.tolist() == [0, 1, 1]
    assert dataset.rating.tolist() == [4.0, 2.0, 5.0]
    assert dataset.timestamp.tolist() == [10.0, 20.0, 30.0]
    assert dataset.meta["format"] == "csv"
    assert dataset.meta["name"] == "log"
    assert dataset.meta["raw_rows"] == 3


def test_read_table_without_rating_is_implicit_and_reads_dates(tmp_path):
    path = write(tmp_path / "log.tsv", "u\ti\tt\n1\t2\t2020-01-01T00:00:10\n")
    dataset = read_table(path, {"user": "u", "item": "i", "timestamp": "t"}, sep="\t")
    assert dataset.meta["implicit"] is True
    assert dataset.rating.tolist() == [1.0]
    assert dataset.timestamp.tolist() == [1577836810.0]


def test_read_table_parquet(tmp_path):
    frame = pd.DataFrame({"uid": [3, 1], "sku": ["a", "b"], "stars": [1.0, 2.0], "when": [5, 6]})
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    dataset = read_table(path, TABLE_COLUMNS)
    assert dataset.meta["format"] == "parquet"
    assert external(dataset.user_ids) == ["1", "3"]
    assert dataset.user.tolist() == [1, 0]
    assert dataset.rating.tolist() == [1.0, 2.0]


def test_read_table_names_a_missing_column(tmp_path):
    path = write(tmp_path / "log.csv", TABLE)
    message = expect_error(
        lambda: read_table(path, {**TABLE_COLUMNS, "rating": "score"}),
        "log.csv",
        contains="'score'",
    )
    assert "uid, sku, stars, when" in message


def test_read_table_rejects_a_rating_that_is_not_a_number(tmp_path):
    path = write(tmp_path / "log.csv", "uid,sku,stars,when\nalice,x,4,10\n\nbob,y,lots,20\n")
    expect_error(lambda: read_table(path, TABLE_COLUMNS), "log.csv", 4, contains="'lots'")


def test_read_table_rejects_an_empty_file(tmp_path):
    path = write(tmp_path / "log.csv", "")
    expect_error(lambda: read_table(path, TABLE_COLUMNS), "log.csv", 1, contains="empty")
    path = write(tmp_path / "header.csv", "uid,sku,stars,when\n\n")
    expect_error(lambda: read_table(path, TABLE_COLUMNS), "header.csv", 2, contains="no rows")


def test_read_table_accepts_a_byte_order_mark_and_infers_the_kind(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xef\xbb\xbf" + TABLE.encode())
    assert read_table(path, TABLE_COLUMNS).n_interactions == 3
    expect_error(lambda: read_table(path, TABLE_COLUMNS, kind="xlsx"), "xlsx")


def test_from_dataframe_uses_default_column_names():
    frame = pd.DataFrame({"user_id": ["a", "b"], "item_id": [1, 2], "rating": [3.0, np.nan]})
    dataset = from_dataframe(frame)
    assert external(dataset.user_ids) == ["a", "b"]
    assert external(dataset.item_ids) == ["1", "2"]
    np.testing.assert_array_equal(dataset.rating, [3.0, np.nan])
    assert dataset.timestamp is None
    assert dataset.meta["format"] == "dataframe"


def test_from_dataframe_errors_name_the_column_and_row():
    frame = pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": ["4", "bad"]}, index=[10, 11])
    message = expect_error(lambda: from_dataframe(frame), "dataframe column 'rating'")
    assert "row index 11" in message
    expect_error(lambda: from_dataframe(frame, {"user": "who", "item": "item"}), "'who'",
                 contains="(data.columns.user)")
    # The messages name the config key a run sets, not only the Python argument.
    expect_error(lambda: from_dataframe(frame[["rating"]]), "no user column",
                 contains="set data.columns.user")
    expect_error(lambda: from_dataframe(frame, {"item": "item"}), "role 'user'",
                 contains="data.columns.user")


# --------------------------------------------------------------------------------------------
# Dispatch.


def test_read_dataset_dispatches_every_format(tmp_path):
    write(tmp_path / "ml" / "u.data", U_DATA)
    write_yahoo(tmp_path / "yahoo", "1\t1\t5\n", "1\t2\t3\n")
    write(tmp_path / "seq.txt", "1 5 6\n")
    write(tmp_path / "log.csv", TABLE)
    pd.DataFrame({"uid": [1], "sku": [2], "stars": [3.0], "when": [4]}).to_parquet(
        tmp_path / "log.parquet"
    )
    cases = {
        "recbole": (write_recbole(tmp_path / "toy"), 4),
        "movielens": (tmp_path / "ml", 3),
        "coat": (write_coat(tmp_path / "coat"), 6),
        "yahoo_r3": (tmp_path / "yahoo", 2),
        "seq_lines": (tmp_path / "seq.txt", 2),
        "csv": (tmp_path / "log.csv", 3),
        "parquet": (tmp_path / "log.parquet", 1),
    }
    for format_name, (path, n_interactions) in cases.items():
        dataset = read_dataset(format_name, path, columns=TABLE_COLUMNS)
        assert dataset.meta["format"] == format_name
        assert dataset.n_interactions == n_interactions
    frame = pd.DataFrame({"user": [1], "item": [2]})
    assert read_dataset("dataframe", "", frame=frame).n_interactions == 1
    assert set(cases) | {"dataframe"} == set(FORMATS)  # simulator, simlog: tests/sim
    assert set(FORMATS) <= set(format_names())


def test_read_dataset_rejects_unknown_formats_and_missing_paths(tmp_path):
    with pytest.raises(ConfigError) as caught:
        read_dataset("excel", tmp_path)
    message = str(caught.value)
    assert message.startswith("key data.format: unknown format 'excel'")
    assert all(name in message for name in (*FORMATS, "simulator", "simlog"))
    with pytest.raises(ConfigError, match="did you mean 'parquet'"):
        read_dataset("parquett", tmp_path)
    expect_error(lambda: read_dataset("coat", tmp_path / "nowhere"), "nowhere", contains="no such")
    expect_error(lambda: read_dataset("dataframe", None), "DataFrame")


# --------------------------------------------------------------------------------------------
# Review fixes: each malformed case is a DataFormatError naming the file and line.


def test_movielens_ratings_dat_has_half_stars(tmp_path):
    # ML-10M rates in half stars from 0.5; ML-1M's whole stars lie inside the same scale.
    path = write(
        tmp_path / "ml10m" / "ratings.dat", "1::122::0.5::838985046\n1::185::5::838983525\n"
    )
    dataset = read_movielens(path)
    assert dataset.rating.tolist() == [0.5, 5.0]
    assert dataset.meta["rating_scale"] == (0.5, 5.0)
    whole = read_movielens(write(tmp_path / "ml1m" / "ratings.dat", "1::1193::5::978300760\n"))
    assert whole.meta["rating_scale"] == (0.5, 5.0)
    assert read_movielens(write(tmp_path / "ml" / "u.data", U_DATA)).meta["rating_scale"] == (
        1.0,
        5.0,
    )


def test_recbole_skips_side_fields_with_a_large_vocabulary(tmp_path):
    # 2,400 items: brand has 1,200 values (not free text: at most half the rows) and
    # categories 1,201 distinct tokens, both over MAX_FEATURE_VOCABULARY; colour is kept.
    n_items = 2400
    inter = "user_id:token\titem_id:token\n" + "".join(f"1\t{i}\n" for i in range(n_items))
    items = "item_id:token\tbrand:token\tcategories:token_seq\tcolour:token\tv:float_seq\n"
    items += "".join(
        f"{i}\tb{i % 1200}\tc{i % 1200} c{(i + 1) % 1200} shared\t{'red' if i % 2 else ''}\t1 2\n"
        for i in range(n_items)
    )
    write(tmp_path / "big" / "big.inter", inter)
    write(tmp_path / "big" / "big.item", items)
    dataset = read_recbole(tmp_path / "big")
    assert dataset.meta["skipped_feature_fields"] == ["brand", "categories", "v"]
    assert dataset.item_feature_names == ("colour=red",)
    assert dataset.item_features.shape == (n_items, 1)
    # Item ids map numerically; odd items are red, and an empty token is all zeros.
    order = dataset.item_ids.astype(int)
    np.testing.assert_array_equal(dataset.item_features[:, 0], order % 2)


def test_recbole_token_seq_features_are_vectorised_multi_hot(tmp_path):
    write(tmp_path / "t" / "t.inter", "user_id:token\titem_id:token\n1\t10\n1\t9\n2\t7\n")
    write(
        tmp_path / "t" / "t.item",
        "item_id:token\ttags:token_seq\tsize:token\n"
        "7\t b  a \t10\n"
        "8\tz\t7\n"  # not in the interactions: ignored
        "9\t\t7\n"
        "10\ta a c\t10\n",
    )
    dataset = read_recbole(tmp_path / "t")
    assert external(dataset.item_ids) == ["7", "9", "10"]
    # Integer tokens order numerically (7 before 10); the vocabulary is the side file's.
    assert dataset.item_feature_names == (
        "tags=a",
        "tags=b",
        "tags=c",
        "tags=z",
        "size=7",
        "size=10",
    )
    np.testing.assert_array_equal(
        dataset.item_features, [[1, 1, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0], [1, 0, 1, 0, 0, 1]]
    )
    assert dataset.meta["skipped_feature_fields"] == []


@pytest.mark.parametrize("kind", ["user", "item"])
def test_recbole_rejects_an_id_twice_in_a_side_file(tmp_path, kind):
    folder = write_recbole(tmp_path / "toy")
    if kind == "user":
        write(folder / "toy.user", "user_id:token\tgender:token\nu1\tF\nu2\tM\n\nu1\tM\n")
        line, first = 5, 2
    else:
        write(folder / "toy.item", "item_id:token\tgenres:token_seq\ni1\tA\ni1\tB\n")
        line, first = 3, 2
    message = expect_error(lambda: read_recbole(folder), f"toy.{kind}", line)
    assert f"line {first}" in message


def test_recbole_reads_a_large_inter_file_through_the_fast_path(tmp_path):
    n = 50_000
    rng = np.random.default_rng(0)
    user, item = rng.integers(1, 500, n), rng.integers(1, 900, n)
    rating, when = rng.integers(1, 6, n), rng.integers(10**9, 2 * 10**9, n)
    lines = [f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in zip(user, item, rating, when, strict=True)]
    lines[1000] = "\n"  # a blank line: later rows keep their own line numbers
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    path = write(tmp_path / "big" / "big.inter", header + "".join(lines), crlf=True)
    dataset = read_recbole(path)
    keep = np.arange(n) != 1000
    assert dataset.n_interactions == n - 1
    np.testing.assert_array_equal(dataset.user_ids[dataset.user].astype(int), user[keep])
    np.testing.assert_array_equal(dataset.item_ids[dataset.item].astype(int), item[keep])
    np.testing.assert_array_equal(dataset.rating, rating[keep])
    np.testing.assert_array_equal(dataset.timestamp, when[keep])
    lines[30_000] = "5\t7\tfour\t1\n"
    path = write(tmp_path / "bad" / "bad.inter", header + "".join(lines))
    expect_error(lambda: read_recbole(path), "bad.inter", 30_002, contains="'four'")
    lines[20_000] = "5\t7\t1\n"
    path = write(tmp_path / "short" / "short.inter", header + "".join(lines))
    expect_error(lambda: read_recbole(path), "short.inter", 20_002, contains="found 3")


def test_recbole_keeps_ids_that_differ_as_text(tmp_path):
    # Read as numbers, 007, +7 and 7 would be one user.
    text = "user_id:token\titem_id:token\n7\t1\n007\t1\n+7\t2\n7\t-3\n"
    dataset = read_recbole(write(tmp_path / "z" / "z.inter", text))
    assert sorted(external(dataset.user_ids)) == ["+7", "007", "7"]
    assert external(dataset.item_ids) == ["-3", "1", "2"]
    assert dataset.n_users == 3


def test_recbole_skips_blank_and_separator_only_lines(tmp_path):
    text = "user_id:token\titem_id:token\trating:float\n1\t2\t3\n\n  \n\t\t\n1\t3\t\n1\t4\tx\n"
    path = write(tmp_path / "b" / "b.inter", text)
    expect_error(lambda: read_recbole(path), "b.inter", 7, contains="'x'")
    path = write(tmp_path / "c" / "c.inter", text.replace("1\t4\tx\n", ""))
    dataset = read_recbole(path)
    assert dataset.n_interactions == 2
    assert np.isnan(dataset.rating[1])


def test_recbole_says_fields_must_be_tab_separated(tmp_path):
    path = write(tmp_path / "s" / "s.inter", "user_id:token item_id:token\n1 2\n")
    expect_error(lambda: read_recbole(path), "s.inter", 1, contains="fields must be tab-separated")
    path = write(tmp_path / "d" / "d.inter", "user_id:token\titem_id:token\n1\t2\n1 3\n")
    expect_error(lambda: read_recbole(path), "d.inter", 3, contains="fields must be tab-separated")


def write_benchmark(folder: Path, parts=("train", "valid", "test")) -> Path:
    header = "user_id:token\titem_id:token\trating:float\n"
    rows = {"train": "u1\ti1\t4\nu1\ti2\t5\n", "valid": "u2\ti1\t3\n", "test": "u2\ti3\t2\n"}
    for part in parts:
        write(folder / f"bench.{part}.inter", header + rows[part])
    write(folder / "bench.item", "item_id:token\tkind:token\ni1\ta\ni2\tb\ni3\ta\n")
    return folder


def test_recbole_reads_benchmark_split_files(tmp_path):
    from causalrec_jax.data.dataset import GIVEN_VALID

    folder = write_benchmark(tmp_path / "bench")
    for path in (folder, folder / "bench.valid.inter"):
        dataset = read_recbole(path)
        assert dataset.meta["name"] == "bench"
        assert dataset.given_split.tolist() == [GIVEN_TRAIN, GIVEN_TRAIN, GIVEN_VALID, GIVEN_TEST]
        assert external(dataset.user_ids[dataset.user]) == ["u1", "u1", "u2", "u2"]
        assert dataset.rating.tolist() == [4.0, 5.0, 3.0, 2.0]
        # Side files are bench.item, not bench.train.item.
        assert dataset.item_feature_names == ("kind=a", "kind=b")
        np.testing.assert_array_equal(dataset.item_features, [[1, 0], [0, 1], [1, 0]])
    # Without a validation file, train and test alone.
    folder = write_benchmark(tmp_path / "two", parts=("train", "test"))
    assert read_recbole(folder).given_split.tolist() == [GIVEN_TRAIN, GIVEN_TRAIN, GIVEN_TEST]
    # A plain bench.inter beside them is the dataset itself.
    write(tmp_path / "two" / "bench.inter", "user_id:token\titem_id:token\nu9\ti9\n")
    plain = read_recbole(tmp_path / "two")
    assert plain.given_split is None and plain.n_interactions == 1


def test_recbole_rejects_incomplete_or_inconsistent_benchmark_files(tmp_path):
    folder = write_benchmark(tmp_path / "bench", parts=("train", "valid"))
    expect_error(lambda: read_recbole(folder), "bench", contains="bench.test.inter is missing")
    folder = write_benchmark(tmp_path / "other")
    write(folder / "bench.test.inter", "user_id:token\titem_id:token\nu2\ti3\n")
    expect_error(lambda: read_recbole(folder), "bench.test.inter", 1, contains="differ")


def test_seq_lines_rejects_a_user_on_two_lines(tmp_path):
    path = write(tmp_path / "s.txt", "1 5 6\n2 7 8\n\n1 9 5\n")
    message = expect_error(lambda: read_seq_lines(path), "s.txt", 4, contains="'1'")
    assert "line 1" in message


def test_seq_lines_marks_positions_and_keeps_repeats(tmp_path):
    dataset = read_seq_lines(write(tmp_path / "s.txt", "1 5 6 5\n2 7\n"))
    assert dataset.meta["timestamps_are_positions"] is True
    assert dataset.meta["default_dedupe"] == "keep"
    assert dataset.item.tolist() == [0, 1, 0, 2]


def test_read_table_names_a_file_that_is_not_parquet(tmp_path):
    path = write(tmp_path / "log.parquet", TABLE)
    expect_error(lambda: read_table(path, TABLE_COLUMNS), "log.parquet", contains="not a parquet")
    path = write(tmp_path / "log.csv", TABLE)
    expect_error(
        lambda: read_dataset("parquet", path, columns=TABLE_COLUMNS),
        "log.csv",
        contains="not a parquet file",
    )


def test_read_table_rejects_a_folder_and_bad_separators(tmp_path):
    (tmp_path / "log.csv").mkdir()
    expect_error(
        lambda: read_table(tmp_path / "log.csv", TABLE_COLUMNS), "log.csv", contains="folder"
    )
    path = write(tmp_path / "t.csv", TABLE)
    expect_error(lambda: read_table(path, TABLE_COLUMNS, sep=""), "''")
    expect_error(lambda: read_table(path, TABLE_COLUMNS, sep="(("), "'(('")
    expect_error(lambda: read_dataset("csv", path, columns=TABLE_COLUMNS, sep="\n"), "'\\n'")
    # A separator the file does not use leaves one column: the error says so.
    expect_error(lambda: read_table(path, TABLE_COLUMNS, sep=";"), "t.csv", 1, contains="';'")


@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize(("row", "found"), [("bob,y,2", 3), ("bob,y,2,20,extra", 5), ("bob", 1)])
def test_read_table_rejects_rows_with_a_wrong_field_count(tmp_path, quoted, row, found):
    first = '"al,ice",x,4,10' if quoted else "alice,x,4,10"  # quotes take the exact parser
    path = write(tmp_path / "log.csv", f"uid,sku,stars,when\n{first}\n\n{row}\n", crlf=True)
    expect_error(lambda: read_table(path, TABLE_COLUMNS), "log.csv", 4, contains=f"found {found}")


@pytest.mark.parametrize("quoted", [False, True])
def test_read_table_keeps_empty_ratings_and_skips_separator_only_lines(tmp_path, quoted):
    first = '"alice",x,,10' if quoted else "alice,x,,10"
    path = write(tmp_path / "log.csv", f"uid,sku,stars,when\n{first}\n,,,\n  \nbob,y,2,20\n")
    dataset = read_table(path, TABLE_COLUMNS)
    assert external(dataset.user_ids) == ["alice", "bob"]
    np.testing.assert_array_equal(dataset.rating, [np.nan, 2.0])
    assert dataset.meta["raw_rows"] == 2


def test_read_table_reads_quoted_fields(tmp_path):
    text = 'uid,sku,stars,when\n"smith, j",x,4,10\n"line\nbreak",y,2,20\nbob,z,oops,30\n'
    path = write(tmp_path / "log.csv", text)
    # The record that spans lines 3-4 does not shift the next line's number.
    expect_error(lambda: read_table(path, TABLE_COLUMNS), "log.csv", 5, contains="'oops'")
    path = write(tmp_path / "ok.csv", text.replace("oops", "1"))
    assert sorted(external(read_table(path, TABLE_COLUMNS).user_ids)) == [
        "bob",
        "line\nbreak",
        "smith, j",
    ]


def test_read_table_decodes_latin1_without_merging_ids(tmp_path):
    path = tmp_path / "log.csv"
    # Decoding with replacement would turn both ids into "caf\ufffd".
    path.write_bytes("uid,sku\ncafé,x\ncafè,y\ncafe,z\n".encode("latin-1"))
    dataset = read_table(path, {"user": "uid", "item": "sku"})
    assert set(external(dataset.user_ids)) == {"cafe", "café", "cafè"}


def test_read_table_reads_numeric_ids_as_numbers_but_keeps_text_ids(tmp_path):
    path = write(tmp_path / "n.csv", "user,item,rating\n10,3,1\n9,3,2\n10,1,3\n")
    dataset = read_table(path, None)
    assert external(dataset.user_ids) == ["9", "10"]  # numeric order
    assert dataset.user.tolist() == [1, 0, 1]
    path = write(tmp_path / "z.csv", "user,item\n007,1\n7,1\n7.0,2\n1e1,2\n10,2\n")
    dataset = read_table(path, None)
    assert sorted(external(dataset.user_ids)) == ["007", "10", "1e1", "7", "7.0"]
    path = write(tmp_path / "e.csv", "user,item\n1,1\n,2\n")
    expect_error(lambda: read_table(path, None), "e.csv", 3, contains="empty id")


def test_read_table_reports_the_line_of_a_bad_date(tmp_path):
    text = "u,i,t\n1,2,2020-01-01T00:00:10\n1,3,\n1,4,2020-02-30\n1,5,2020-03-01\n"
    path = write(tmp_path / "d.csv", text)
    expect_error(
        lambda: read_table(path, {"user": "u", "item": "i", "timestamp": "t"}),
        "d.csv",
        4,
        contains="'2020-02-30'",
    )
    dataset = read_table(
        write(tmp_path / "ok.csv", text.replace("2020-02-30", "2020-02-28")),
        {"user": "u", "item": "i", "timestamp": "t"},
    )
    assert dataset.timestamp[0] == 1577836810.0 and np.isnan(dataset.timestamp[1])


@pytest.mark.parametrize(("value", "column"), [("0", 3), ("1.5", 3), ("-0.1", 3)])
def test_coat_rejects_propensities_outside_zero_one(tmp_path, value, column):
    folder = write_coat(tmp_path / "coat")
    text = COAT_PROPENSITIES.splitlines()
    cells = text[1].split()
    cells[column - 1] = value
    text[1] = " ".join(cells)
    write(folder / "propensities.ascii", "\n".join(text) + "\n")
    message = expect_error(lambda: read_coat(folder), "propensities.ascii", 2, contains=value)
    assert f"column {column}" in message


@pytest.mark.parametrize("file_name", [YAHOO_TRAIN_FILE, YAHOO_TEST_FILE])
def test_yahoo_accepts_one_of_its_files(tmp_path, file_name):
    folder = write_yahoo(tmp_path / "yahoo", "1\t1\t5\n1\t3\t1\n", "1\t2\t3\n")
    dataset = read_yahoo_r3(folder / file_name)
    assert dataset.given_split.tolist() == [GIVEN_TRAIN, GIVEN_TRAIN, GIVEN_TEST]
    other = write(tmp_path / "yahoo" / "notes.txt", "1\t1\t5\n")
    expect_error(lambda: read_yahoo_r3(other), "notes.txt", contains=YAHOO_TRAIN_FILE)


def test_yahoo_rejects_a_rating_that_is_not_whole(tmp_path):
    folder = write_yahoo(tmp_path / "yahoo", "1\t1\t5\n1\t2\t3.5\n", "1\t2\t3\n")
    expect_error(lambda: read_yahoo_r3(folder), YAHOO_TRAIN_FILE, 2, contains="3.5")


@pytest.mark.parametrize("seed", range(6))
def test_read_table_fast_and_exact_parsers_agree(tmp_path, seed):
    # A quoted header cell sends the same rows through the exact (csv module) parser.
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(300):
        kind = rng.integers(0, 12)
        if kind == 0:
            lines.append(rng.choice(["", "   ", ",,,", " , ,\t, "]))
        else:
            pad = " " if rng.random() < (0.9 if seed % 2 else 0.02) else ""
            rating = "" if kind == 1 else str(rng.integers(1, 6))
            user = rng.choice(["7", "007", "x", "12"])
            lines.append(f"{pad}{user},{rng.integers(1, 50)}{pad},{rating},{rng.integers(100)}")
    body = "\n".join(lines) + "\n"
    fast_path = write(tmp_path / "f.csv", "uid,sku,stars,when\n" + body, crlf=seed % 3 == 0)
    fast = read_table(fast_path, TABLE_COLUMNS)
    exact = read_table(write(tmp_path / "e.csv", '"uid",sku,stars,when\n' + body), TABLE_COLUMNS)
    np.testing.assert_array_equal(fast.user_ids, exact.user_ids)
    np.testing.assert_array_equal(fast.item_ids, exact.item_ids)
    np.testing.assert_array_equal(fast.user, exact.user)
    np.testing.assert_array_equal(fast.item, exact.item)
    np.testing.assert_array_equal(fast.rating, exact.rating)
    np.testing.assert_array_equal(fast.timestamp, exact.timestamp)
    bad = rng.integers(0, len(lines))
    lines[bad] = "7,1,2,3,4"
    body = "\n".join(lines) + "\n"
    for header in ("uid,sku,stars,when\n", '"uid",sku,stars,when\n'):
        path = write(tmp_path / "b.csv", header + body)
        expect_error(
            lambda path=path: read_table(path, TABLE_COLUMNS), "b.csv", int(bad) + 2, contains="5"
        )
