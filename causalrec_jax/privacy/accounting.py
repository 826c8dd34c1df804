"""Privacy accounting of DP-SGD with Google's `dp-accounting` (we never write our own).

A run of DP-SGD composes `steps` Poisson-subsampled Gaussian mechanisms: each step samples
every privacy unit (a user, or one example) with probability `sampling_rate`, clips each
sampled unit's gradient to norm `C` and adds `N(0, (noise_multiplier * C)^2)` noise (Abadi et
al., CCS 2016). Its `(epsilon, delta)` follows from the privacy loss distribution (`pld`, the
default: tight; Koskela et al. 2020, Doroshenko et al. 2022) or from Renyi DP (`rdp`, Mironov
2017: an upper bound, looser by about 10% at the regression point the tests check: sigma =
1.843, q = 0.01, T = 2,000, delta = 1e-5 give epsilon 1.000 with PLD and 1.097 with RDP).

`calibrate_noise` inverts it: the smallest noise multiplier whose run meets a target epsilon.
"""

from __future__ import annotations

import contextlib
import logging
import math

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from causalrec_jax.errors import ConfigError

ACCOUNTANTS = ("pld", "rdp")

# Noise multipliers searched by `calibrate_noise`: a target needing more is refused (a run
# at sigma > 1000 learns nothing: its update is noise); one met below the least is given
# the least (the PLD of a smaller sigma takes gigabytes to discretise, for an epsilon in the
# hundreds that protects nothing).
MAX_NOISE_MULTIPLIER = 1000.0
MIN_NOISE_MULTIPLIER = 0.3


def _accountant(name: str) -> dp_accounting.PrivacyAccountant:
    if name == "pld":
        return pld_privacy_accountant.PLDAccountant()
    if name == "rdp":
        return rdp_privacy_accountant.RdpAccountant()
    raise ConfigError(f"key privacy.accountant: got {name!r}, expected one of "
                      f"{', '.join(ACCOUNTANTS)}")


def dp_sgd_event(noise_multiplier: float, sampling_rate: float, steps: int,
                 selection_noise: float = 0.0) -> dp_accounting.DpEvent:
    """The `DpEvent` of `steps` Poisson-subsampled Gaussian steps, after (when
    `selection_noise` > 0) one Gaussian mechanism of that noise multiplier on the whole data:
    the noisy item counts (`dpsgd.noisy_counts`) that choose which item rows train and give a
    private PDA run its popularity."""
    events = []
    if selection_noise > 0:
        events.append(dp_accounting.GaussianDpEvent(selection_noise))
    if steps > 0:
        events.append(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps))
    return events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)


def combined_noise_multiplier(*noise_multipliers: float) -> float:
    """The noise multiplier of one Gaussian mechanism equal to several run on the same
    sample: `(sum sigma_k^-2)^(-1/2)` (0 when any is 0: a release without noise).

    A step of DP-AdaFEST releases two sums over the same Poisson sample, the clipped
    contribution maps with noise `sigma_1 C_1` and the clipped gradients with noise
    `sigma_2 C_2` (`dpsgd.DPSpec.adaptive_threshold`). Dividing each release by its noise's
    std makes both noises standard and a unit's joint contribution of norm at most
    `sqrt(sigma_1^-2 + sigma_2^-2)`: one Gaussian mechanism of that sensitivity, i.e. of
    noise multiplier its inverse (Ghazi et al., NeurIPS 2023, account DP-AdaFEST this way)."""
    if any(sigma <= 0 for sigma in noise_multipliers):
        return 0.0
    return float(sum(sigma ** -2 for sigma in noise_multipliers) ** -0.5)


def gradient_noise_for(combined: float, selection_noise: float) -> float:
    """The gradients' noise multiplier that, beside a selection of multiplier
    `selection_noise` on the same sample, gives `combined` (`combined_noise_multiplier`
    inverted). Raises a ConfigError naming `privacy.adaptive_noise` when the selection alone
    already spends more (`selection_noise <= combined`)."""
    if selection_noise <= combined:
        raise ConfigError(
            f"key privacy.adaptive_noise: {selection_noise:g} leaves nothing for the gradients "
            f"at the target epsilon, whose steps need a combined noise multiplier of "
            f"{combined:.4g}; set privacy.adaptive_noise above it")
    return float((combined ** -2 - selection_noise ** -2) ** -0.5)


def check_delta(delta: float, n_units: int) -> None:
    """Refuses a delta that is not in (0, 1/n_units] (`privacy.delta`): above 1/n a mechanism
    that publishes one whole unit's data at random is (0, delta)-DP."""
    if not (0.0 < delta < 1.0) or delta > 1.0 / n_units:
        raise ConfigError(f"key privacy.delta: got {delta!r}, expected a number in (0, 1/n] "
                          f"with n = {n_units} privacy units (at most {1.0 / n_units:.3g})")


def _check(sampling_rate: float, steps: int) -> None:
    if not 0.0 < sampling_rate <= 1.0:
        raise ConfigError(f"sampling rate {sampling_rate!r}: expected a number in (0, 1] "
                          "(train.batch_size over the privacy units)")
    if steps < 0:
        raise ConfigError(f"steps {steps!r}: expected an integer >= 0")


def epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float,
            accountant: str = "pld", selection_noise: float = 0.0) -> float:
    """The epsilon at `delta` of `steps` DP-SGD steps (inf without noise; 0 without steps and
    selection), after a selection of noise multiplier `selection_noise` when > 0."""
    _check(sampling_rate, steps)
    if steps == 0 and selection_noise <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    account = _accountant(accountant)
    with _quiet():
        account.compose(dp_sgd_event(noise_multiplier, sampling_rate, steps, selection_noise))
        return float(account.get_epsilon(delta))


def calibrate_noise(target_epsilon: float, sampling_rate: float, steps: int, delta: float,
                    accountant: str = "pld", tolerance: float = 1e-3,
                    selection_noise: float = 0.0) -> float:
    """The smallest noise multiplier (within `tolerance`) whose `steps` steps spend at most
    `target_epsilon` at `delta` (after the selection of noise `selection_noise`, when > 0);
    `MIN_NOISE_MULTIPLIER` when that one already does.

    Renyi DP bounds the epsilon of the privacy loss distribution from above, so the RDP
    calibration (fast) brackets the PLD one from above; the PLD search runs inside it.

    Raises:
        ConfigError: naming `privacy.target_epsilon` when the target is not a number > 0, or
            needs more than `MAX_NOISE_MULTIPLIER` in the given steps (so cannot be reached).
    """
    _check(sampling_rate, steps)
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigError(f"key privacy.target_epsilon: got {target_epsilon!r}, expected a "
                          "finite number > 0")
    _accountant(accountant)
    if steps == 0:
        return MIN_NOISE_MULTIPLIER
    if epsilon(MAX_NOISE_MULTIPLIER, sampling_rate, steps, delta, accountant,
               selection_noise) > target_epsilon:
        raise ConfigError(
            f"key privacy.target_epsilon: epsilon = {target_epsilon} cannot be reached in "
            f"{steps} steps at sampling rate {sampling_rate:.4g} and delta = {delta:.3g} "
            f"(even noise multiplier {MAX_NOISE_MULTIPLIER:g} spends more"
            + (f", after the noisy item counts of multiplier {selection_noise:g}" if selection_noise
               else "") + "); train fewer steps, sample fewer units per step or allow a "
            "larger epsilon")
    upper = _search("rdp", target_epsilon, sampling_rate, steps, delta,
                    MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER, tolerance, selection_noise)
    if accountant == "rdp" or upper <= MIN_NOISE_MULTIPLIER:
        return upper
    lower = upper
    while True:  # widen downwards until the PLD epsilon exceeds the target
        lower = max(MIN_NOISE_MULTIPLIER, 0.8 * lower)
        if epsilon(lower, sampling_rate, steps, delta, "pld", selection_noise) > target_epsilon:
            break
        if lower == MIN_NOISE_MULTIPLIER:
            return lower
    return _search("pld", target_epsilon, sampling_rate, steps, delta, lower, upper, tolerance,
                   selection_noise)


def _search(accountant: str, target_epsilon: float, sampling_rate: float, steps: int,
            delta: float, lower: float, upper: float, tolerance: float,
            selection_noise: float) -> float:
    """The noise multiplier in `[lower, upper]` spending `target_epsilon` (the least one
    meeting it when `lower` already does)."""
    if epsilon(lower, sampling_rate, steps, delta, accountant,
               selection_noise) <= target_epsilon:
        return lower
    with _quiet():
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda sigma: dp_sgd_event(sigma, sampling_rate, steps, selection_noise),
            target_epsilon, delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(lower, upper),
            tol=tolerance,
        ))


@contextlib.contextmanager
def _quiet():
    """absl's warnings off: RDP warns of each Renyi order it drops at small sigma (the bound
    is still valid, from the orders left)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
