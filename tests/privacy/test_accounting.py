"""The accountant: a published regression point, calibration round trips, bad input."""

import math

import pytest

from causalrec_jax.errors import ConfigError
from causalrec_jax.privacy import accounting


def test_the_pld_accountant_reproduces_the_regression_point():
    # sigma = 1.843, q = 0.01, T = 2,000, delta = 1e-5: epsilon 1.00 (PLD)
    assert accounting.epsilon(1.843, 0.01, 2000, 1e-5) == pytest.approx(1.0, abs=0.01)
    # RDP bounds it from above, looser
    rdp = accounting.epsilon(1.843, 0.01, 2000, 1e-5, "rdp")
    assert rdp == pytest.approx(1.097, abs=0.005)
    assert rdp > accounting.epsilon(1.843, 0.01, 2000, 1e-5)


def test_calibration_round_trips():
    for target, accountant in ((1.0, "pld"), (4.0, "rdp")):
        sigma = accounting.calibrate_noise(target, 0.01, 2000, 1e-5, accountant)
        assert accounting.epsilon(sigma, 0.01, 2000, 1e-5, accountant) <= target * 1.001
        assert accounting.epsilon(0.98 * sigma, 0.01, 2000, 1e-5, accountant) > target
    assert accounting.calibrate_noise(1.0, 0.01, 2000, 1e-5) == pytest.approx(1.843, abs=0.01)


def test_no_noise_is_infinite_epsilon_and_no_steps_none():
    assert accounting.epsilon(0.0, 0.1, 10, 1e-5) == math.inf
    assert accounting.epsilon(1.0, 0.1, 0, 1e-5) == 0.0


def test_bad_input_names_the_key():
    with pytest.raises(ConfigError, match="privacy.target_epsilon.*cannot be reached"):
        accounting.calibrate_noise(1e-4, 0.5, 100_000, 1e-5)
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        accounting.calibrate_noise(-1.0, 0.01, 100, 1e-5)
    for delta in (0.0, 1.0, 0.2):
        with pytest.raises(ConfigError, match="privacy.delta"):
            accounting.check_delta(delta, 10)
    accounting.check_delta(0.1, 10)  # 1/n itself is accepted
    with pytest.raises(ConfigError, match="privacy.accountant"):
        accounting.epsilon(1.0, 0.1, 10, 1e-5, "moments")


def test_the_item_selection_is_composed_into_the_budget():
    alone = accounting.epsilon(1.0, 0.05, 500, 1e-5)
    with_selection = accounting.epsilon(1.0, 0.05, 500, 1e-5, selection_noise=10.0)
    assert with_selection > alone
    # a Gaussian mechanism of noise 10 alone spends about 0.5 at delta 1e-5
    assert 0.3 < accounting.epsilon(1.0, 0.05, 0, 1e-5, selection_noise=10.0) < 0.7
    # (RDP: the same composition, calibrated in a fraction of PLD's time)
    sigma = accounting.calibrate_noise(4.0, 0.05, 500, 1e-5, "rdp", selection_noise=10.0)
    assert sigma > accounting.calibrate_noise(4.0, 0.05, 500, 1e-5, "rdp")
    assert accounting.epsilon(sigma, 0.05, 500, 1e-5, "rdp", selection_noise=10.0) <= 4.004
