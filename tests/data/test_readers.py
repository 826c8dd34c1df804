"""Readers on small hand-written files: exact values, and a clear error for each malformed case."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN
from causalrec_jax.data.readers import (
    FORMATS,
    YAHOO_TEST_FILE,
    YAHOO_TRAIN_FILE,
    from_dataframe,
    read_coat,
    read_dataset,
    read_movielens,
    read_recbole,
    read_seq_lines,
    read_table,
    read_yahoo_r3,
)
from causalrec_jax.errors import DataFormatError


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
    expect_error(lambda: from_dataframe(frame, {"user": "who", "item": "item"}), "'who'")
    expect_error(lambda: from_dataframe(frame[["rating"]]), "no user column")


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
    assert set(cases) | {"dataframe"} == set(FORMATS)


def test_read_dataset_rejects_unknown_formats_and_missing_paths(tmp_path):
    message = expect_error(lambda: read_dataset("excel", tmp_path), "excel")
    assert all(name in message for name in FORMATS)
    expect_error(lambda: read_dataset("coat", tmp_path / "nowhere"), "nowhere", contains="no such")
    expect_error(lambda: read_dataset("dataframe", None), "DataFrame")
