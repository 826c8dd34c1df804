"""Every explanation score on hand-built cases (AND / OR truth, confounders, a fake model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from causalrec_jax.explain.scores import (
    SCORE_NAMES,
    best_match,
    explanation_scores,
    learned_instances,
    necessity_sufficiency,
    set_scores,
)

A, B, D, X = 1, 2, 3, 4  # antecedents, confounder, a distractor
AND_TRUTH = ({A}, {B})
OR_TRUTH = ({A, B},)


def nan_equal(got, want):
    return all((math.isnan(g) and math.isnan(w)) or g == pytest.approx(w)
               for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("predicted, truth, want", [
    ({A}, AND_TRUTH, (1, 1, 1)),  # a minimal explanation of A and B -> C
    ({B}, AND_TRUTH, (1, 1, 1)),
    ({A, B}, AND_TRUTH, (0, 0.5, 1)),  # counterfactual, not minimal
    ({D}, AND_TRUTH, (0, 0, 0)),  # the confounder alone
    (set(), AND_TRUTH, (0, math.nan, 0)),  # nothing found: recall 0, no precision
    (None, AND_TRUTH, (0, math.nan, 0)),
    ({A, B}, OR_TRUTH, (1, 1, 1)),  # the unique minimal set of A or B -> C
    ({A}, OR_TRUTH, (0, 1, 0.5)),  # B still causes C: not counterfactual
    ({A, D}, OR_TRUTH, (0, 0.5, 0.5)),
    ({A, B, X}, OR_TRUTH, (0, 2 / 3, 1)),
    ({A}, (), (math.nan, math.nan, math.nan)),  # no truth to score against
])
def test_set_scores_against_the_best_matching_minimal_set(predicted, truth, want):
    assert nan_equal(set_scores(predicted, truth), want)


def test_best_match_prefers_the_higher_f1_then_the_first():
    assert best_match({A, B}, AND_TRUTH) == {A}
    assert best_match({B, X}, AND_TRUTH) == {B}
    assert best_match({A}, ({A, B, D}, {A, X})) == {A, X}  # F1 2/3 beats 1/2
    assert best_match({A}, ()) is None


# Five instances: histories (items, -1 = padding), rule kinds, world truth, confounders.
HISTORIES = np.array([[A, B, D, X], [A, B, D, X], [A, B, X, -1], [A, B, D, X], [A, B, D, X]])
KINDS = ["and", "and", "or", "or", "and"]
TRUTH = [AND_TRUTH, AND_TRUTH, OR_TRUTH, OR_TRUTH, AND_TRUTH]
CONFOUNDERS = [{D}, {D}, set(), {D}, {D}]
PREDICTED = [{A}, {A, D}, {A, B}, {A}, None]


def rule_model(kinds, calls=None):
    """A fake model that recommends C exactly when its rule holds on the kept history."""

    def in_top_k_fn(instances, keep):
        if calls is not None:
            calls.append(np.asarray(instances).tolist())
        out = []
        for instance, kept in zip(instances, keep, strict=True):
            items = set(HISTORIES[instance][kept].tolist())
            a, b = A in items, B in items
            out.append((a and b) if kinds[instance] == "and" else (a or b))
        return np.array(out)

    return in_top_k_fn


def test_every_score_on_hand_built_instances():
    scores = explanation_scores(PREDICTED, TRUTH, confounders=CONFOUNDERS, oracle_sets=TRUTH,
                                histories=HISTORIES, in_top_k_fn=rule_model(KINDS))
    assert list(scores)[: len(SCORE_NAMES)] == list(SCORE_NAMES)
    assert scores["exact_match"] == pytest.approx(2 / 5)  # {A} for AND, {A, B} for OR
    assert scores["cause_precision"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert scores["cause_recall"] == pytest.approx((1 + 1 + 1 + 0.5 + 0) / 5)
    # Of the explanations whose history holds D (instances 0, 1, 3), one names it.
    assert scores["confounder_fp_rate"] == pytest.approx(1 / 3)
    # Removing {A}, {A, D}, {A, B} breaks the rule; removing A from "A or B" does not.
    assert scores["pn"] == pytest.approx(3 / 4)
    # Kept alone, {A} and {A, D} do not satisfy "A and B"; {A, B} and {A} satisfy the ORs.
    assert scores["ps"] == pytest.approx(2 / 4)
    assert scores["f_ns"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert scores["coverage"] == pytest.approx(4 / 5)
    assert scores["mean_size"] == pytest.approx(6 / 4)
    # |P| / smallest oracle set - 1: 0, 1, 0, -1/2 (the last is not counterfactual).
    assert scores["optimality_gap"] == pytest.approx(0.5 / 4)
    assert scores["oracle_exact_match"] == scores["exact_match"]
    assert math.isnan(scores["learned_fraction"])  # nobody said which instances were learned
    assert (scores["n_instances"], scores["n_scored"], scores["n_explained"]) == (5, 5, 4)


def test_scores_only_instances_the_model_learned_and_reports_the_fraction():
    calls = []
    learned = np.array([True, True, True, True, False])
    scores = explanation_scores(PREDICTED, TRUTH, confounders=CONFOUNDERS, learned=learned,
                                histories=HISTORIES, in_top_k_fn=rule_model(KINDS, calls))
    assert scores["learned_fraction"] == pytest.approx(0.8)
    assert scores["coverage"] == 1.0 and scores["exact_match"] == pytest.approx(0.5)
    assert scores["cause_recall"] == pytest.approx(3.5 / 4)
    assert scores["n_scored"] == 4
    # The callback is told the instances by their own indices.
    assert calls == [[0, 1, 2, 3], [0, 1, 2, 3]]
    skipped = explanation_scores(PREDICTED, TRUTH, learned=[False, False, True, False, False])
    assert skipped["n_scored"] == 1 and skipped["exact_match"] == 1.0
    assert math.isnan(skipped["pn"]) and math.isnan(skipped["confounder_fp_rate"])


def test_learned_instances_from_the_model():
    # Five histories holding A, B and D; the world's rules: "A and B" for 0, 1, 2 and 4, "A or
    # B" for 3. The model of instance 0 follows "A and B"; of 1 never recommends C; of 2 leans
    # on D (C stays when A and B go); of 3 follows "A or B"; of 4 treats the AND as an OR.
    histories = HISTORIES[[0, 1, 3, 4, 4]]
    models = [lambda items: {A, B} <= items, lambda items: False,
              lambda items: bool({A, D} & items), lambda items: bool({A, B} & items),
              lambda items: bool({A, B} & items)]
    calls = []

    def in_top_k_fn(instances, keep):
        calls.append(len(instances))
        return np.array([models[i](set(histories[i][kept].tolist()))
                         for i, kept in zip(instances, keep, strict=True)])

    truth = [AND_TRUTH, AND_TRUTH, AND_TRUTH, OR_TRUTH, AND_TRUTH]
    loose = learned_instances(histories, truth, in_top_k_fn)
    assert loose.tolist() == [True, False, False, True, True]
    strict = learned_instances(histories, truth, in_top_k_fn, strict=True)
    assert strict.tolist() == [True, False, False, True, False]  # 4: {A} alone keeps C
    # One call each: full and without all causes per instance, plus, strict, each AND's two
    # sets and the OR's set {A, B} with its subsets {A}, {B}.
    assert calls == [10, 10 + 4 * 2 + 3]
    # An OR learned as an AND is not strictly learned either: {A} alone already drops C.
    as_and = learned_instances(histories[[3]], [OR_TRUTH], lambda instances, keep: np.array(
        [{A, B} <= set(histories[3][kept].tolist()) for kept in keep]), strict=True)
    assert as_and.tolist() == [False]
    assert learned_instances(histories[:1], [()], in_top_k_fn).tolist() == [False]


def test_an_explanation_with_the_confounder_is_faithful_to_a_model_that_leans_on_it():
    # World: A and B -> C. The model recommends C while (A or D) and B are in the history, so
    # its minimal sets (the oracle's) are {A, D} and {B}: {A, D} is wrong about the world and
    # exact about the model.
    predicted = [{A, D}]
    oracle = [({A, D}, {B})]
    scores = explanation_scores(predicted, [AND_TRUTH], confounders=[{D}], oracle_sets=oracle,
                                histories=HISTORIES[:1])
    assert scores["exact_match"] == 0 and scores["cause_precision"] == 0.5
    assert scores["oracle_exact_match"] == 1 and scores["oracle_cause_recall"] == 1
    assert scores["confounder_fp_rate"] == 1 and scores["optimality_gap"] == 1.0


def test_necessity_and_sufficiency_per_explanation():
    necessary, sufficient = necessity_sufficiency(
        [{A}, {A, B}], HISTORIES[[0, 2]], rule_model(KINDS), instances=np.array([0, 2]))
    assert necessary.tolist() == [True, True] and sufficient.tolist() == [False, True]
    empty = necessity_sufficiency([], HISTORIES[:0], rule_model(KINDS))
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="not in its history"):
        explanation_scores([{A, 9}], [AND_TRUTH], histories=HISTORIES[:1])
    with pytest.raises(ValueError, match="2 explanations but"):
        explanation_scores([{A}, {B}], [AND_TRUTH])
