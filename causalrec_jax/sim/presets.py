"""Named simulated worlds shaped after released datasets: development proxies whose ground
truth is known, for recipes that must transfer to the real file.

`world_overrides(name)` gives the `--set sim.*` strings of a preset; `experiments/
debias_table.py --data yahoo_proxy` trains the shipped `configs/yahoo_<method>.toml` on it.

- **`yahoo_r3`**: Yahoo! R3's shape and skew (Marlin & Zemel, "Collaborative Prediction and
  Ranking with Non-Random Missing Data", RecSys 2009): 15,400 users x 1,000 items, about 20
  MNAR ratings per user (311,286 drawn; the release has 311,704), 10 MAR ratings for each of
  5,400 users (54,000). The MAR marginal (the published 52.6 / 24.2 / 14.4 / 6.2 / 2.6% of
  ratings 1..5) sets the relevance offset, noise and temperature; the MNAR marginal (31.4 /
  12.7 / 15.8 / 15.6 / 24.6%) sets one exposure log-odds per rating level
  (`sim.selection_by_rating`, Marlin & Zemel's U-shaped missingness: 1s are rated more often
  than 2s), first as `ln(Q_k / P_k)` (exact for small propensities) and then corrected once by
  the ratio of the target to the drawn MNAR marginal. Drawn (seed 0): MNAR 31.2 / 12.7 / 15.8
  / 15.6 / 24.7%, MAR 52.0 / 26.5 / 13.9 / 5.0 / 2.7% (`tests/sim/test_presets.py` holds
  both within 2.5 points). Popularity confounding keeps the library's defaults.
"""

from __future__ import annotations

from causalrec_jax.errors import ConfigError

# Published rating marginals of Yahoo! R3 (ratings 1..5, shares).
YAHOO_R3_MNAR = (0.314, 0.127, 0.158, 0.156, 0.246)
YAHOO_R3_MAR = (0.526, 0.242, 0.144, 0.062, 0.026)

WORLDS: dict[str, tuple[str, ...]] = {
    "yahoo_r3": (
        "sim.n_users=15400",
        "sim.n_items=1000",
        "sim.mean_exposure=0.0202",
        "sim.relevance_offset=-3.0",
        "sim.rating_noise=1.1",
        "sim.relevance_temperature=0.5",
        "sim.selection_strength=0.0",
        "sim.selection_by_rating=[-0.457, -0.801, 0.0, 0.885, 2.197]",
        "sim.mar_users=5400",
        "sim.mar_items_per_user=10",
    ),
}


def world_overrides(name: str) -> list[str]:
    """The `--set` strings of the world preset `name`.

    Raises:
        ConfigError: an unknown name, in one line listing the known ones.
    """
    if name not in WORLDS:
        raise ConfigError(f"unknown world preset {name!r}; expected one of {', '.join(WORLDS)}")
    return list(WORLDS[name])
