"""The readers of `causalrec_jax.data.formats`, under the name older code imports.

Kept so that code written against `causalrec_jax.data.readers` (other branches, users'
scripts) keeps working; new code imports `causalrec_jax.data.formats`.
"""

from causalrec_jax.data.formats import (
    FORMATS,
    from_dataframe,
    read_coat,
    read_dataset,
    read_movielens,
    read_recbole,
    read_seq_lines,
    read_table,
    read_yahoo_r3,
)
from causalrec_jax.data.formats.common import ROLES
from causalrec_jax.data.formats.features import MAX_FEATURE_VOCABULARY
from causalrec_jax.data.formats.movielens import MOVIELENS_100K_GENRES
from causalrec_jax.data.formats.yahoo_r3 import YAHOO_TEST_FILE, YAHOO_TRAIN_FILE

__all__ = [
    "FORMATS",
    "MAX_FEATURE_VOCABULARY",
    "MOVIELENS_100K_GENRES",
    "ROLES",
    "YAHOO_TEST_FILE",
    "YAHOO_TRAIN_FILE",
    "from_dataframe",
    "read_coat",
    "read_dataset",
    "read_movielens",
    "read_recbole",
    "read_seq_lines",
    "read_table",
    "read_yahoo_r3",
]
