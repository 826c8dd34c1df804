"""The two evaluation protocols of the debiasing literature on MNAR-train / MAR-test data
(Coat, Yahoo! R3, the simulator), as named presets of config overrides.

Published numbers on these datasets come from two lineages that evaluate differently, and a
figure means little without its protocol:

- **(a)**, the AutoDebias / CDR lineage (Chen et al. SIGIR 2021; Song et al. CIKM 2023):
  ratings >= 4 are positives; the MAR test is split 5 / 5 / 90 into an unbiased training slice
  (read only by the methods that need unbiased data, e.g. naive Bayes propensities), a
  validation slice and the test (the 90% left).
- **(b)**, the StableDR lineage (Li et al. ICLR 2023; TDR, kernel balancing, SuperDR, UPO):
  ratings >= 3 are positives; 5% of the MAR ratings serve the methods that need unbiased data,
  but the test is not reduced: it is every MAR rating. A user without a positive test rating
  scores NDCG = 1 (our `test_literature` block) and AUC is pooled over all test pairs (our
  `auc`). We carve the same 5% validation slice as under (a) to select and stop on; under (b)
  it and the 5% training slice are also test rows, as the published protocol has it.

`overrides(name)` returns the `--set` strings of a preset; `causalrec train --config C --set
...` with them, or `experiments/debias_table.py --protocol b`, runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from causalrec_jax.errors import ConfigError


@dataclass(frozen=True)
class MnarProtocol:
    """One published protocol: its config overrides and how to read its numbers."""

    name: str
    overrides: tuple[str, ...]
    positive_threshold: float
    # The metrics.json block holding the published NDCG convention for this protocol.
    ndcg_block: str
    description: str


_SHARED = (
    'data.split="mar_slice"',
    "data.mar_train_fraction=0.05",
    "data.mar_valid_fraction=0.05",
    'eval.protocol="candidates"',
)

PROTOCOLS = {
    "a": MnarProtocol(
        name="a",
        overrides=(*_SHARED, 'data.mar_test="rest"', "eval.positive_threshold=4.0"),
        positive_threshold=4.0,
        ndcg_block="test",
        description=(
            "protocol (a), AutoDebias / CDR lineage: ratings >= 4 positive; the MAR ratings "
            "split 5/5/90 into a MAR train slice (read only by methods that need unbiased "
            "data), a validation slice and the test (the 90% left); users without a positive "
            "are left out of ndcg and recall"
        ),
    ),
    "b": MnarProtocol(
        name="b",
        overrides=(*_SHARED, 'data.mar_test="all"', "eval.positive_threshold=3.0"),
        positive_threshold=3.0,
        ndcg_block="test_literature",
        description=(
            "protocol (b), StableDR lineage: ratings >= 3 positive; a 5% MAR slice for the "
            "methods that need unbiased data and a 5% validation slice, but the test is not "
            "reduced (every MAR rating, the slices included, as published); users without a "
            "positive score NDCG = 1; AUC pooled over all test pairs"
        ),
    ),
}


def protocol(name: str) -> MnarProtocol:
    """The preset called `name` ("a" or "b").

    Raises:
        ConfigError: an unknown name, in one line listing the known ones.
    """
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown MNAR protocol {name!r}; expected one of {', '.join(PROTOCOLS)}"
        ) from None


def overrides(name: str) -> list[str]:
    """The `--set` strings of the preset `name`."""
    return list(protocol(name).overrides)
