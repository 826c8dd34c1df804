"""Named random streams: unique ids per level, indices folded below a named stream."""

import enum

import jax
import numpy as np

from causalrec_jax import streams


def test_each_level_has_unique_ids_and_keeps_the_historic_values():
    for level in (streams.Run, streams.Epoch, streams.Step):
        values = [member.value for member in level]
        assert len(values) == len(set(values))
        assert issubclass(level, enum.IntEnum)
    # The values the library drew with before the streams had names (results unchanged).
    assert (streams.Run.INIT, streams.Run.TRAIN, streams.Run.IMPUTATION) == (0, 1, 2)
    assert (streams.Step.NEGATIVES, streams.Step.DROPOUT, streams.Step.CELLS) == (0, 1, 2)


def test_an_index_never_equals_a_stream_of_the_same_number():
    key = jax.random.key(0)
    data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731
    # "seed 2" of the seeds family and the stream Run.IMPUTATION (= 2) are different keys.
    seeds = streams.derive(key, streams.Run.TRAIN)
    assert not np.array_equal(data(streams.index(seeds, 2)),
                              data(streams.derive(key, streams.Run.IMPUTATION)))
    # The same name gives the same key; another name another.
    assert np.array_equal(data(streams.derive(key, streams.Run.INIT)),
                          data(jax.random.fold_in(key, 0)))
    assert not np.array_equal(data(streams.derive(key, streams.Run.INIT)),
                              data(streams.derive(key, streams.Run.PROPENSITY_MODEL)))
