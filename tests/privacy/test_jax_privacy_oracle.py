"""jax-privacy (Google DeepMind's DP library, a test dependency only) as an independent oracle:
its per-user clipped gradient sum over whole tables equals our private step's, which takes
each user's gradient over the rows it reads; its DP-SGD accountant, given a run's settings as
its own parameters (examples, batch size, noise multiplier, steps), gives our epsilon (both
compose the same `dp_accounting` events: this checks the mapping of settings to events)."""

import math

import jax
import jax.numpy as jnp
import jax_privacy
import numpy as np
import pytest

from causalrec_jax.models.base import make_scorers
from causalrec_jax.privacy import accounting, dpsgd
from causalrec_jax.train.objectives import make_objective

from .test_dpsgd import N_ITEMS, ROWS, _setup, _summed_update


@pytest.mark.parametrize(("loss", "name"), [("mse", "mf"), ("bce", "neumf")])
def test_our_per_user_clipped_sum_is_jax_privacys(loss, name):
    rows = ROWS if loss == "mse" else {**ROWS, "ratings": (ROWS["ratings"] > 3).astype(
        np.float32)}
    parts, params, spec, data, step, state, _ = _setup(loss, clip=0.05, user_rows="noised",
                                                       name=name, rows=rows, seen=False)
    ours, metrics = _summed_update(step, state, data, jax.random.key(0), spec)
    assert int(metrics["clipped"]) >= 1  # the bound is active

    scorers = make_scorers(parts.graphdef, parts.constants)
    objective = make_objective(loss, scorers.score_pairs, scorers.score_all, n_items=N_ITEMS)

    def user_loss(p, unit):
        """One user's summed row loss over the whole tables (a slice of the batch)."""
        batch = {"users": jnp.full(spec.examples_per_unit, unit["user"]),
                 "items": unit["items"], "ratings": unit["ratings"], "mask": unit["mask"]}
        value, _ = objective(p, batch, jax.random.key(0))
        return value * jnp.sum(unit["mask"])

    units = {"user": data["unit_users"], "items": data["items"], "ratings": data["ratings"],
             "mask": data["unit_mask"]}
    theirs = jax.jit(jax_privacy.clipped_grad(user_loss, l2_clip_norm=spec.clip,
                                              keep_batch_dim=False))(params, units)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-6)


@pytest.mark.parametrize(("noise", "rate", "steps"), [(1.843, 0.01, 2000), (0.9, 0.05, 300)])
def test_our_epsilon_is_jax_privacys(noise, rate, steps):
    from jax_privacy.accounting import (
        DpParams,
        DpsgdTrainingAccountant,
        PldAccountantConfig,
    )

    n, delta = 100_000, 1e-5
    ours = accounting.epsilon(noise, rate, steps, delta, "pld")
    params = DpParams(noise_multipliers=noise, num_samples=n, delta=delta,
                      batch_size=int(rate * n))
    theirs = DpsgdTrainingAccountant(PldAccountantConfig()).compute_epsilon(steps, params)
    assert math.isfinite(ours) and ours == pytest.approx(theirs, rel=1e-9)
    assert dpsgd.steps_per_epoch(n, rate * n) == round(1 / rate)
