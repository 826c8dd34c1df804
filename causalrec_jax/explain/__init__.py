"""Counterfactual explanations of recommendations (vmapped interventions on histories).

    model = make_refit_model(mf, user=u, items=history, loss="bpr", l2=...)   # or
    model = make_history_model(graphdef, params, tokens)                       # SASRec, BERT4Rec
    explanation = explain(model, item, k=10, method="greedy")
    explanation.causes, explanation.score_deltas, explanation.minimal_set, explanation.size

`deletion` defines what deleting a past interaction means per model (drop and shift for
sequential models, a re-fit of the user's parameters with items frozen for ID models);
`search` scores all single deletions in one vmapped call and finds minimal counterfactual sets
(greedy, beam, the exhaustive oracle); `baselines` order the history by simpler rules
(random, popular, similar, influence functions, integrated gradients). See README
"Explanations".
"""

from causalrec_jax.explain.baselines import BASELINES, influence_effects, integrated_gradients
from causalrec_jax.explain.counterfactual import METHODS, Explanation, explain
from causalrec_jax.explain.deletion import (
    DeletionModel,
    compact_history,
    feature_effects,
    item_feature_effects,
    keep_without,
    l2_per_user,
    make_history_model,
    make_refit_model,
)
from causalrec_jax.explain.search import (
    beam_search,
    exhaustive_search,
    greedy_search,
    ordered_removal,
    pair_deletions,
    single_deletions,
    standing,
)

__all__ = [
    "BASELINES",
    "METHODS",
    "DeletionModel",
    "Explanation",
    "beam_search",
    "compact_history",
    "exhaustive_search",
    "explain",
    "feature_effects",
    "greedy_search",
    "influence_effects",
    "integrated_gradients",
    "item_feature_effects",
    "keep_without",
    "l2_per_user",
    "make_history_model",
    "make_refit_model",
    "ordered_removal",
    "pair_deletions",
    "single_deletions",
    "standing",
]
