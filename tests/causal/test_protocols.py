"""The published MNAR protocols as presets (causal/protocols.py), through the run path."""

from pathlib import Path

import pytest

from causalrec_jax.causal import protocols
from causalrec_jax.config import load_config
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.data.split import make_split
from causalrec_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COAT = ROOT.parent / "shared" / "data" / "coat"


def test_presets_set_the_threshold_and_the_test_and_unknown_names_fail():
    a, b = protocols.overrides("a"), protocols.overrides("b")
    assert 'data.mar_test="rest"' in a and "eval.positive_threshold=4.0" in a
    assert 'data.mar_test="all"' in b and "eval.positive_threshold=3.0" in b
    assert protocols.protocol("b").ndcg_block == "test_literature"
    with pytest.raises(ConfigError, match="unknown MNAR protocol 'c'; expected one of a, b"):
        protocols.protocol("c")


@pytest.mark.skipif(not COAT.exists(), reason=f"Coat data not found at {COAT}")
def test_protocol_b_tests_every_mar_rating_of_coat_and_a_the_rest():
    """Coat's 4,640 MAR ratings: (a) tests the 90% left after two 5% slices, (b) all of them;
    both carve the same slices from the same seed."""
    splits = {}
    for name in ("a", "b"):
        config = load_config(ROOT / "configs" / "coat_naive.toml",
                             [*protocols.overrides(name), f'data.path="{COAT}"'])
        dataset, _ = load_dataset(config.data, config.sim)
        splits[name] = make_split(dataset, config.data, seed=0)
        assert config.eval.positive_threshold == protocols.protocol(name).positive_threshold
    assert len(splits["b"].test) == 4640
    assert len(splits["a"].test) == 4640 - 232 - 232
    assert len(splits["a"].valid) == len(splits["b"].valid) == 232
    assert splits["b"].valid_in_test and not splits["a"].valid_in_test
