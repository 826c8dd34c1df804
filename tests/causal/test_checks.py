"""check_causal_setup and the bad-input errors of propensities and MAR slices name their key."""

from __future__ import annotations

import numpy as np
import pytest

from causalrec_jax.causal.checks import METHODS_NEEDING_PROPENSITIES, check_causal_setup
from causalrec_jax.causal.propensity import (
    PropensityError,
    clip_propensities,
    estimate_propensities,
)
from causalrec_jax.config import CausalConfig, Config, DataConfig, TrainConfig
from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, Split, from_arrays
from causalrec_jax.data.split import given_split, make_split, mar_slice_split
from causalrec_jax.errors import CausalRecError, ConfigError, SplitError

N_USERS, N_ITEMS = 4, 5
# Training (MNAR) cells, then MAR test cells; every user has two of each.
TRAIN_CELLS = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 4)]
TEST_CELLS = [(0, 2), (0, 3), (1, 3), (1, 4), (2, 0), (2, 4), (3, 0), (3, 1)]
UNOBSERVED = (0, 4)  # in neither part


def dataset(propensity_matrix=None, n_test_copies=1):
    """Ratings 1..5 on TRAIN_CELLS (given train) and TEST_CELLS (given test, repeated)."""
    cells = TRAIN_CELLS + TEST_CELLS * n_test_copies
    codes = [GIVEN_TRAIN] * len(TRAIN_CELLS) + [GIVEN_TEST] * len(TEST_CELLS) * n_test_copies
    users, items = np.array(cells).T
    data = from_arrays(
        users, items, rating=(np.arange(len(cells)) % 5 + 1).astype(float),
        given_split=np.array(codes), user_ids=np.arange(N_USERS), item_ids=np.arange(N_ITEMS),
    )
    return data.replace(propensity_matrix=propensity_matrix)


def good_matrix():
    matrix = np.full((N_USERS, N_ITEMS), 0.5, np.float32)
    matrix[UNOBSERVED] = 0.0  # never divided by: allowed
    return matrix


def config(method="naive", propensity="none", loss="mse", clip=0.0, **data):
    return Config(
        data=DataConfig(**data),
        causal=CausalConfig(method=method, propensity=propensity, propensity_clip=clip),
        train=TrainConfig(loss=loss),
    )


def check(cfg, split):
    """`check_causal_setup` with the sections of a whole config (`config(...)`)."""
    return check_causal_setup(cfg.causal, cfg.data, split, loss=cfg.train.loss)


def mar_split(train_fraction=0.25):
    """A mar_slice split of dataset() with 4 copies of the MAR cells (32 rows)."""
    return mar_slice_split(
        dataset(n_test_copies=4), train_fraction=train_fraction, valid_fraction=0.0, seed=0
    )


# ----------------------------------------------------------------------------- valid setups


@pytest.mark.parametrize(
    "method, propensity, loss",
    [
        ("naive", "none", "mse"),
        ("naive", "none", "bpr"),
        ("ips", "popularity", "mse"),
        ("snips", "logistic", "bce"),
        ("dr_jl", "learned", "mse"),
        ("rel_mf", "popularity", "bce"),
        ("pda", "none", "bpr"),
        ("macr", "none", "bce"),
        ("ips", "given", "mse"),
    ],
)
def test_valid_setups_pass(method, propensity, loss):
    split = given_split(dataset(good_matrix()))
    assert check(config(method, propensity, loss), split) is None


def test_naive_bayes_with_a_mar_slice_passes():
    cfg = config("ips", "naive_bayes", split="mar_slice", mar_train_fraction=0.25)
    check(cfg, mar_split())


# ----------------------------------------------------------------------------- method needs


@pytest.mark.parametrize("method", METHODS_NEEDING_PROPENSITIES)
def test_propensity_methods_need_a_propensity_source(method):
    loss = "bce" if method == "rel_mf" else "mse"
    with pytest.raises(ConfigError, match="key causal.propensity") as error:
        check(config(method, "none", loss), given_split(dataset()))
    assert "given, popularity, naive_bayes, logistic, learned, true" in str(error.value)


@pytest.mark.parametrize(
    "method, loss, expected",
    [
        ("pda", "bce", "'bpr'"),
        ("rel_mf", "mse", "'bce'"),
        ("rel_mf", "bpr", "'bce'"),
        ("macr", "bpr", "'bce'"),
        ("ips", "bpr", "'mse' or 'bce'"),
        ("dr", "softmax", "'mse' or 'bce'"),
        ("mrdr", "bpr", "'mse' or 'bce'"),
    ],
)
def test_method_needs_its_loss(method, loss, expected):
    with pytest.raises(ConfigError, match="key train.loss") as error:
        check(config(method, "popularity", loss), given_split(dataset()))
    assert expected in str(error.value) and repr(loss) in str(error.value)


def test_naive_bayes_without_mar_slice_names_mar_train_fraction():
    cfg = config("ips", "naive_bayes")  # data.split = "given": no MAR slice
    with pytest.raises(ConfigError, match="key data.mar_train_fraction.*missing"):
        check(cfg, given_split(dataset()))
    cfg = config("ips", "naive_bayes", split="mar_slice", mar_train_fraction=0.0)
    with pytest.raises(ConfigError, match="key data.mar_train_fraction"):
        check(cfg, mar_split(train_fraction=0.0))
    split = mar_split()
    empty = Split(split.train, split.valid, split.test,
                  extra={"mar_train": split.extra["mar_train"].subset(np.array([], int))})
    with pytest.raises(ConfigError, match="key data.mar_train_fraction.*empty"):
        check(cfg, empty)


def test_true_propensities_need_the_simulator():
    with pytest.raises(ConfigError, match="key causal.propensity.*simulator"):
        check(config("ips", "true", format="coat"), given_split(dataset()))


def test_empty_test_part_names_the_split_keys():
    split = given_split(dataset())
    empty = Split(split.train, None, split.test.subset(np.array([], int)))
    with pytest.raises(SplitError, match="key data.split_ratios"):
        check(config(), empty)
    with pytest.raises(SplitError, match="key data.mar_train_fraction"):
        check(config(split="mar_slice"), empty)


# ----------------------------------------------------------------------------- MAR slices


def test_mar_fraction_rounding_to_an_empty_slice_names_its_key():
    data = dataset()  # 8 MAR test rows: 0.05 * 8 rounds to 0
    with pytest.raises(SplitError, match="key data.mar_train_fraction.*empty mar_train"):
        mar_slice_split(data, train_fraction=0.05, valid_fraction=0.0, seed=0)
    with pytest.raises(SplitError, match="key data.mar_valid_fraction.*empty mar_valid"):
        mar_slice_split(data, train_fraction=0.0, valid_fraction=0.05, seed=0)
    with pytest.raises(SplitError, match="key data.mar_train_fraction"):
        make_split(data, DataConfig(split="mar_slice", mar_train_fraction=0.05,
                                    mar_valid_fraction=0.0), seed=0)


def test_mar_slices_that_leave_no_test_name_the_keys():
    two_rows = dataset().subset(np.arange(len(TRAIN_CELLS) + 2))  # 2 MAR rows
    with pytest.raises(SplitError, match="key data.mar_train_fraction / data.mar_valid_fraction"
                       ".*leave none"):
        mar_slice_split(two_rows, train_fraction=0.3, valid_fraction=0.3, seed=0)
    with pytest.raises(SplitError, match="key data.mar_train_fraction.*leave a test part"):
        mar_slice_split(dataset(), train_fraction=0.5, valid_fraction=0.5, seed=0)


def test_mar_slices_that_leave_most_users_without_test_name_the_keys():
    # 8 MAR rows over 4 users; carving 3 + 4 leaves 1 row: a test rating for 1 user of 4.
    with pytest.raises(SplitError, match="key data.mar_train_fraction.*fewer than half"):
        mar_slice_split(dataset(), train_fraction=0.4, valid_fraction=0.5, seed=0)
    # With 32 MAR rows the same fractions leave 3 test rows, here over at least half the users.
    split = mar_slice_split(dataset(n_test_copies=4), train_fraction=0.4, valid_fraction=0.5,
                            seed=0)
    assert len(split.test) == 3 and len(np.unique(split.test.user)) >= 2


# ----------------------------------------------------------------------------- propensities


def _observed(data):
    observed = np.zeros((N_USERS, N_ITEMS), bool)
    train = data.subset(data.given_split == GIVEN_TRAIN)
    observed[train.user, train.item] = True
    return train, observed


@pytest.mark.parametrize(
    "value, what",
    [(np.nan, "NaN"), (1.5, "> 1"), (0.0, "<= 0"), (-0.2, "<= 0")],
)
def test_bad_given_values_name_key_and_first_cell(value, what):
    matrix = good_matrix()
    matrix[1, 2] = value  # an observed training cell
    train, observed = _observed(dataset(matrix))
    estimated = estimate_propensities("given", train)
    with pytest.raises(PropensityError, match="key causal.propensity") as error:
        clip_propensities(estimated, 0.0, where=observed, name="dataset propensities")
    message = str(error.value)
    assert what in message and "(user, item) index (1, 2)" in message
    assert isinstance(error.value, CausalRecError)
    if what == "<= 0":
        assert "causal.propensity_clip" in message
    # check_causal_setup finds the same cell.
    with pytest.raises(PropensityError, match=r"key causal.propensity.*index \(1, 2\)"):
        check(config("ips", "given"), given_split(dataset(matrix)))


def test_zero_on_observed_cell_is_an_error_naming_the_clip():
    matrix = good_matrix()
    matrix[0, 0] = 0.0
    with pytest.raises(PropensityError, match="causal.propensity_clip") as error:
        check(config("snips", "given", clip=0.0), given_split(dataset(matrix)))
    assert "1/0" in str(error.value)


def test_zero_on_unobserved_cell_is_fine():
    train, observed = _observed(dataset(good_matrix()))
    clipped, report = clip_propensities(
        estimate_propensities("given", train), 0.0, where=observed
    )
    assert report.n == len(TRAIN_CELLS) and clipped[UNOBSERVED] == 0.0


def test_targeted_dr_refuses_a_zero_on_an_unobserved_cell():
    """TDR reads the propensity of every cell (its covariate 1/p - 1 moves the imputed errors
    of unobserved cells): a zero anywhere is refused, naming the key and the cell, where DR
    accepts it."""
    matrix = good_matrix()
    matrix[UNOBSERVED] = 0.0
    check(config("dr", "given"), given_split(dataset(matrix)))
    for method in ("tdr", "tdr_jl"):
        with pytest.raises(PropensityError, match="key causal.propensity") as error:
            check(config(method, "given"), given_split(dataset(matrix)))
        message = str(error.value)
        assert "at cells" in message and f"index {UNOBSERVED}" in message
        assert "\n" not in message


def test_wrong_shape_names_key_and_shapes():
    train, _ = _observed(dataset(np.full((3, 3), 0.5)))
    with pytest.raises(PropensityError, match=r"key causal.propensity.*\(3, 3\).*\(4, 5\)"):
        estimate_propensities("given", train)
    with pytest.raises(PropensityError, match=r"key causal.propensity.*\(3, 3\)"):
        check(config("ips", "given"), given_split(dataset(np.ones((3, 3)))))


def test_missing_given_matrix_names_key():
    with pytest.raises(PropensityError, match="key causal.propensity"):
        check(config("dr", "given"), given_split(dataset()))


def test_a_bce_imputed_value_must_be_a_probability():
    import dataclasses

    base = config("dr", "popularity", "bce")
    split = given_split(dataset())
    bad = dataclasses.replace(base, causal=dataclasses.replace(base.causal, imputation_value=3.0))
    with pytest.raises(ConfigError, match="causal.imputation_value"):
        check(bad, split)
    good = dataclasses.replace(base, causal=dataclasses.replace(base.causal, imputation_value=0.2))
    check(good, split)
