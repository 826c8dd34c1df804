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
    """One published protocol: what it sets, and where its published NDCG convention is."""

    name: str
    positive_threshold: float
    # `data.mar_test`: the MAR rows left after the slices ("rest") or all of them ("all").
    mar_test: str
    # The metrics.json block holding the published NDCG convention for this protocol.
    ndcg_block: str

    @property
    def overrides(self) -> tuple[str, ...]:
        """The `--set` strings of the preset: the shared 5% / 5% carve and candidates
        protocol, then this protocol's test and threshold."""
        return ('data.split="mar_slice"', "data.mar_train_fraction=0.05",
                "data.mar_valid_fraction=0.05", 'eval.protocol="candidates"',
                f'data.mar_test="{self.mar_test}"',
                f"eval.positive_threshold={self.positive_threshold}")


PROTOCOLS = {
    "a": MnarProtocol("a", positive_threshold=4.0, mar_test="rest", ndcg_block="test"),
    "b": MnarProtocol("b", positive_threshold=3.0, mar_test="all",
                      ndcg_block="test_literature"),
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
