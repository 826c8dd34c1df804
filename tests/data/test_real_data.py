"""Readers on the real Coat and MovieLens 100K files (skipped when ../shared/data is absent)."""

from __future__ import annotations

import numpy as np

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, GIVEN_VALID
from causalrec_jax.data.formats import read_coat, read_dataset, read_movielens, read_recbole

# Counted once from the released files: nonzero entries of train.ascii and test.ascii.
COAT_TRAIN_RATINGS = 6960
COAT_TEST_RATINGS = 4640


def test_coat_real_files(shared_data_dir):
    dataset = read_dataset("coat", shared_data_dir / "coat")

    assert dataset.n_users == 290
    assert dataset.n_items == 300
    assert dataset.user_ids[0] == "1" and dataset.user_ids[-1] == "290"
    assert dataset.item_ids[0] == "1" and dataset.item_ids[-1] == "300"
    assert np.sum(dataset.given_split == GIVEN_TRAIN) == COAT_TRAIN_RATINGS
    assert np.sum(dataset.given_split == GIVEN_TEST) == COAT_TEST_RATINGS
    assert set(np.unique(dataset.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # The MAR test asks every user for ratings of items drawn at random: 16 each.
    test_counts = np.bincount(dataset.user[dataset.given_split == GIVEN_TEST], minlength=290)
    assert np.all(test_counts == 16)
    assert dataset.propensity_matrix.shape == (290, 300)
    assert np.all(dataset.propensity_matrix > 0)
    assert dataset.user_features.shape == (290, 14)
    assert dataset.item_features.shape == (300, 33)
    assert dataset.user_feature_names[0] == "gender:men"
    assert "age:over 60" in dataset.user_feature_names
    assert len(dataset.item_feature_names) == 33
    assert dataset.meta["mnar_train_mar_test"] is True


def test_coat_real_features_are_one_hot_per_group(shared_data_dir):
    dataset = read_coat(shared_data_dir / "coat")
    groups = np.array([name.split(":")[0] for name in dataset.user_feature_names])
    for group in np.unique(groups):
        assert np.all(dataset.user_features[:, groups == group].sum(axis=1) == 1), group


def test_ml100k_recbole_real_files(shared_data_dir):
    dataset = read_recbole(shared_data_dir / "ml-100k")

    assert dataset.n_users == 943
    assert dataset.n_items == 1682
    assert dataset.n_interactions == 100_000
    assert dataset.rating.min() == 1.0 and dataset.rating.max() == 5.0
    assert set(np.unique(dataset.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.all(np.isfinite(dataset.timestamp))
    assert dataset.meta["name"] == "ml-100k"
    assert dataset.meta["rating_scale"] == (1.0, 5.0)
    # First line of the file: user 196 rated item 242 with 3 at 881250949.
    assert dataset.user_ids[dataset.user[0]] == "196"
    assert dataset.item_ids[dataset.item[0]] == "242"
    assert dataset.timestamp[0] == 881250949.0

    assert dataset.user_features.shape[0] == 943
    assert dataset.item_features.shape[0] == 1682
    assert {"gender=F", "gender=M", "occupation=student"} <= set(dataset.user_feature_names)
    assert {"class=Comedy", "class=Drama"} <= set(dataset.item_feature_names)
    # Titles and zip codes are identifiers, not features.
    assert not any(name.startswith("movie_title") for name in dataset.item_feature_names)
    assert not any(name.startswith("zip_code") for name in dataset.user_feature_names)
    assert dataset.meta["skipped_feature_fields"] == ["zip_code", "movie_title"]
    # Every user has exactly one gender.
    gender = [name.startswith("gender=") for name in dataset.user_feature_names]
    assert np.all(dataset.user_features[:, gender].sum(axis=1) == 1)


def test_movielens_reads_u_data_written_from_the_recbole_file(shared_data_dir, tmp_path):
    inter_lines = (shared_data_dir / "ml-100k" / "ml-100k.inter").read_text().splitlines()
    (tmp_path / "u.data").write_text("\n".join(inter_lines[1:]) + "\n")

    from_u_data = read_movielens(tmp_path / "u.data")
    from_recbole = read_recbole(shared_data_dir / "ml-100k" / "ml-100k.inter")

    assert from_u_data.n_users == 943
    assert from_u_data.n_items == 1682
    assert from_u_data.n_interactions == 100_000
    np.testing.assert_array_equal(from_u_data.user_ids, from_recbole.user_ids)
    np.testing.assert_array_equal(from_u_data.item_ids, from_recbole.item_ids)
    np.testing.assert_array_equal(from_u_data.user, from_recbole.user)
    np.testing.assert_array_equal(from_u_data.item, from_recbole.item)
    np.testing.assert_array_equal(from_u_data.rating, from_recbole.rating)
    np.testing.assert_array_equal(from_u_data.timestamp, from_recbole.timestamp)


def test_ml100k_recbole_benchmark_files_read_as_given_splits(shared_data_dir, tmp_path):
    source = shared_data_dir / "ml-100k"
    header, *rows = (source / "ml-100k.inter").read_text().splitlines()
    cuts = {"train": rows[:80_000], "valid": rows[80_000:90_000], "test": rows[90_000:]}
    for part, part_rows in cuts.items():
        (tmp_path / f"ml-100k.{part}.inter").write_text("\n".join([header, *part_rows]) + "\n")
    (tmp_path / "ml-100k.item").write_bytes((source / "ml-100k.item").read_bytes())

    split = read_recbole(tmp_path)
    whole = read_recbole(source)

    assert split.meta["name"] == "ml-100k"
    assert np.bincount(split.given_split).tolist() == [80_000, 10_000, 10_000]
    assert split.given_split[80_000] == GIVEN_VALID
    np.testing.assert_array_equal(split.user_ids, whole.user_ids)
    np.testing.assert_array_equal(split.item_ids, whole.item_ids)
    np.testing.assert_array_equal(split.user, whole.user)
    np.testing.assert_array_equal(split.item, whole.item)
    np.testing.assert_array_equal(split.rating, whole.rating)
    np.testing.assert_array_equal(split.item_features, whole.item_features)
    assert split.user_features is None
