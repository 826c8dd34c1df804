"""The Dataset type."""


def test_repr_is_a_summary_not_every_id():
    import numpy as np

    from causalrec_jax.data.dataset import from_arrays

    big = from_arrays(np.arange(5000) % 400, np.arange(5000) % 300, meta={"name": "toy"})
    text = repr(big)
    assert text == "Dataset(5,000 interactions, 400 users, 300 items, implicit; name='toy')"
    rated = from_arrays(np.array([0, 1]), np.array([0, 0]), np.array([2.0, 4.5]),
                        np.array([1.0, 2.0]))
    assert repr(rated) == "Dataset(2 interactions, 2 users, 1 items, ratings 2..4.5, with " \
                          "timestamp)"
