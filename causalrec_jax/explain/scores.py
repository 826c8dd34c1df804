r"""Scores of counterfactual explanations against a known truth: pure functions over sets.

An explanation of instance `i` (a user, the item `C` recommended to them, the history `H_i`
the recommendation was made from) is a set of items `P_i` of `H_i`, empty when the explainer
found none. The truth is a set of *minimal counterfactual sets* `M_i = {M_i1, ...}`: sets whose
removal from `H_i` takes `C` out of the recommendation and none of whose proper subsets does
(PRINCE: Ghazimatin et al., WSDM 2020; ACCENT: Tran et al., SIGIR 2021, which look for the
smallest set of a user's own actions whose removal changes the recommendation). It comes from
one of two places, and every set score below is computed against either:

- the world (`sim.planted.PlantedTruth.minimal_sets`): an AND rule `A ∧ B -> C` gives
  `{{A}, {B}}`, an OR rule `A ∨ B -> C` with both in the history gives `{{A, B}}`;
- the brute-force oracle on the trained model (`oracle_sets`): an explainer explains the model,
  so if the model leans on a confounder `D`, an explanation holding `D` is faithful to it.

Set scores of one instance, with `M*` the minimal set that matches `P` best (highest F1
`2 |P ∩ M| / (|P| + |M|)`, the first such in order on ties):

- `exact_match`: `P` equals one of the minimal sets (0 for an empty `P`);
- `cause_precision`: `|P ∩ M*| / |P|`, over instances with an explanation;
- `cause_recall`: `|P ∩ M*| / |M*|`, over all instances (0 for an empty `P`: finding nothing
  recovers nothing).

Matching the best minimal set, not their union, is what makes the two rule kinds comparable:
for AND truth `{{A}, {B}}`, `P = {A}` is a perfect minimal explanation (precision 1, recall 1,
exact), where recall against the union `{A, B}` would call it half right; `P = {A, B}` is
counterfactual but not minimal (precision 1/2, recall 1). For OR truth `{{A, B}}`, `P = {A}`
is not counterfactual (precision 1, recall 1/2) and `P = {A, D}` is half wrong (1/2, 1/2).

Other scores (`explanation_scores`):

- `confounder_fp_rate`: over explained instances whose history holds a confounder (so that the
  mistake was possible), the fraction whose explanation contains one;
- `pn`, `ps`, `f_ns`: probability of necessity and of sufficiency and their harmonic mean, as
  CountER defines them for recommendation (Tan et al., CIKM 2021, "Counterfactual Explainable
  Recommendation", sec. 5): over explained instances, `pn` is the fraction where removing `P`
  from the history takes `C` out of the top-K, `ps` the fraction where the history cut down to
  `P` alone keeps `C` in the top-K, `f_ns = 2 pn ps / (pn + ps)`. They are measured on the
  model through `in_top_k_fn`, so they need no truth at all;
- `coverage`: fraction of instances with an explanation; `mean_size`: mean `|P|` over them;
- `optimality_gap`: over explained instances with oracle sets, the mean of
  `|P| / min_j |O_ij| - 1` (0: as small as the oracle's smallest counterfactual set; it can be
  negative only for a `P` that is not counterfactual, since the oracle is exhaustive);
- `learned_fraction`: the fraction of instances on which the model learned the rule
  (`learned_instances`: `C` is in the top-K from the full history and drops out when every
  antecedent is removed; `strict=True` also asks that the world's minimal sets be the model's);
  every other score is computed on those instances only, since an explainer cannot recover a
  cause the model does not use.

Sets are sets of item ids; removing an item removes every occurrence of it in the history
(the planted world never repeats an item). A score with nothing to average is NaN (written as
null by `runs.folder.write_metrics`).

The model enters through one callback, batched so that it can be one jitted, vmapped call:
`in_top_k_fn(instances, keep) -> in_top_k`, with `instances` `[m]` int indices of the
instances (rows of `histories`) and `keep` `[m, H]` bool (True: the history position is kept),
returning `[m]` bool, whether the instance's item is in the model's top-K from the kept
history. This module never sees the model, the explainer or the world.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Sequence

import numpy as np

PAD = -1

# in_top_k_fn(instances [m] int, keep [m, H] bool) -> [m] bool
InTopKFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

SCORE_NAMES = ("exact_match", "cause_precision", "cause_recall", "confounder_fp_rate", "pn",
               "ps", "f_ns", "coverage", "mean_size", "optimality_gap", "learned_fraction")


def _as_set(items: Collection[int] | None) -> frozenset[int]:
    return frozenset() if items is None else frozenset(int(item) for item in items)


def best_match(predicted: Collection[int], minimal_sets: Sequence[Collection[int]]
               ) -> frozenset[int] | None:
    """The minimal set with the highest F1 against `predicted` (the first on ties); None when
    there are no minimal sets."""
    predicted = _as_set(predicted)
    best, best_f1 = None, -1.0
    for candidate in map(_as_set, minimal_sets):
        total = len(predicted) + len(candidate)
        f1 = 2 * len(predicted & candidate) / total if total else 1.0
        if f1 > best_f1:
            best, best_f1 = candidate, f1
    return best


def set_scores(predicted: Collection[int] | None, minimal_sets: Sequence[Collection[int]]
               ) -> tuple[float, float, float]:
    """`(exact_match, precision, recall)` of one explanation against its minimal sets.

    Precision is NaN for an empty `predicted` (nothing to be precise about); all three are NaN
    when there are no minimal sets (nothing to recover).
    """
    predicted = _as_set(predicted)
    truth = [_as_set(candidate) for candidate in minimal_sets]
    if not truth:
        return math.nan, math.nan, math.nan
    match = best_match(predicted, truth)
    overlap = len(predicted & match)
    exact = float(predicted in truth) if predicted else 0.0
    precision = overlap / len(predicted) if predicted else math.nan
    recall = overlap / len(match) if match else math.nan
    return exact, precision, recall


def membership(histories: np.ndarray, sets: Sequence[Collection[int]]) -> np.ndarray:
    """`[m, H]` bool: which positions of each history (`[m, H]` items, `PAD` = -1) hold an
    item of the matching set."""
    histories = np.asarray(histories)
    out = np.zeros(histories.shape, bool)
    for row, items in enumerate(sets):
        items = _as_set(items)
        if items:
            out[row] = np.isin(histories[row], np.fromiter(items, np.int64, len(items)))
    return out


def check_subsets(histories: np.ndarray, predicted: Sequence[Collection[int] | None]) -> None:
    """Raises ValueError naming the first explanation holding an item outside its history."""
    for index, items in enumerate(predicted):
        extra = _as_set(items) - set(np.asarray(histories[index]).tolist())
        if extra:
            raise ValueError(f"explanation {index} holds items {sorted(extra)} that are not in "
                             "its history (an explanation is a set of history items)")


def necessity_sufficiency(
    predicted: Sequence[Collection[int] | None],
    histories: np.ndarray,
    in_top_k_fn: InTopKFn,
    instances: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per explanation, whether it is necessary and whether it is sufficient (CountER).

    Args:
        predicted: `[m]` explanations (non-empty sets of history items).
        histories: `[m, H]` their instances' histories (`PAD` = -1 after the items).
        in_top_k_fn: the model's callback (module docstring).
        instances: `[m]` the indices `in_top_k_fn` knows the instances by; default `0..m-1`.

    Returns:
        `([m] necessary, [m] sufficient)` bool: removing the set takes the item out of the
        top-K; keeping only the set keeps it in.
    """
    histories = np.asarray(histories)
    instances = np.arange(len(predicted)) if instances is None else np.asarray(instances)
    if len(predicted) == 0:
        return np.zeros(0, bool), np.zeros(0, bool)
    valid = histories != PAD
    inside = membership(histories, predicted)
    still_in = np.asarray(in_top_k_fn(instances, valid & ~inside), bool)
    alone_in = np.asarray(in_top_k_fn(instances, valid & inside), bool)
    return ~still_in, alone_in


def learned_instances(histories: np.ndarray, minimal_sets: Sequence[Sequence[Collection[int]]],
                      in_top_k_fn: InTopKFn, *, strict: bool = False) -> np.ndarray:
    """`[n]` bool: whether the model learned the rule of each instance.

    Loose (the default): the item is in the top-K from the full history and drops out of it
    when every cause is removed (the union of the minimal sets: the rule's antecedents in the
    history). Strict: besides, the world's minimal sets are minimal counterfactual sets of the
    model: removing any one of them drops the item, and removing any non-empty proper subset
    of one does not. An AND rule the model treats as an OR (the item stays while either
    antecedent does) is learned loosely, not strictly; there its own minimal set is `{A, B}`
    and a faithful explanation disagrees with the world's `{A}`.

    Args:
        histories: `[n, H]` the instances' histories (`PAD` = -1 after the items).
        minimal_sets: `[n]` the world's minimal counterfactual sets of each instance (an
            instance without any is not learned).
        in_top_k_fn: the model's callback (module docstring); called with indices `0..n-1`,
            all edits of all instances in one call.
        strict: also ask that the model's counterfactuals be the world's.
    """
    histories = np.asarray(histories)
    valid = histories != PAD
    rows, edits, checks = [], [], []  # check: (instance, edit row, the item should stay)

    def ask(instance: int, removed: frozenset[int], stays: bool) -> None:
        checks.append((instance, len(rows), stays))
        rows.append(instance)
        edits.append(removed)

    for instance, sets in enumerate(minimal_sets):
        sets = [_as_set(candidate) for candidate in sets]
        ask(instance, frozenset(), True)
        ask(instance, frozenset().union(*sets), False)
        if strict:
            for candidate in sets:
                ask(instance, candidate, False)
                for size in range(1, len(candidate)):
                    for subset in itertools.combinations(sorted(candidate), size):
                        ask(instance, frozenset(subset), True)
    rows_array = np.asarray(rows, np.int64)
    keep = valid[rows_array] & ~membership(histories[rows_array], edits)
    in_top_k = np.asarray(in_top_k_fn(rows_array, keep), bool)
    learned = np.array([bool(sets) for sets in minimal_sets], bool)
    for instance, row, stays in checks:
        learned[instance] &= bool(in_top_k[row]) == stays
    return learned


def _mean(values: np.ndarray | list) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _harmonic(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def _truth_scores(predicted: list[frozenset[int]], truth: Sequence[Sequence[Collection[int]]]
                  ) -> dict[str, float]:
    """exact_match, cause_precision, cause_recall over the instances that have truth sets."""
    rows = np.array([set_scores(items, sets) for items, sets in zip(predicted, truth, strict=True)],
                    np.float64).reshape(-1, 3)
    return {"exact_match": _mean(rows[:, 0]), "cause_precision": _mean(rows[:, 1]),
            "cause_recall": _mean(rows[:, 2])}


def explanation_scores(
    predicted: Sequence[Collection[int] | None],
    minimal_sets: Sequence[Sequence[Collection[int]]],
    *,
    confounders: Sequence[Collection[int]] | None = None,
    oracle_sets: Sequence[Sequence[Collection[int]]] | None = None,
    learned: np.ndarray | None = None,
    histories: np.ndarray | None = None,
    in_top_k_fn: InTopKFn | None = None,
) -> dict[str, float]:
    """Every score of the module docstring for one explainer on `n` instances.

    Args:
        predicted: `[n]` the explanations (item sets; None or empty: none found).
        minimal_sets: `[n]` the world's minimal counterfactual sets of each instance (an
            instance without any is left out of the set scores, counted in `n_without_truth`).
        confounders: `[n]` the confounders in each instance's history (empty: none), or None
            (then `confounder_fp_rate` is NaN).
        oracle_sets: `[n]` the oracle's minimal counterfactual sets on the model, or None;
            gives `optimality_gap` and the set scores against the oracle (`oracle_`-prefixed).
        learned: `[n]` bool, whether the model learned each instance's rule
            (`learned_instances`), or None (every instance scored; `learned_fraction` NaN).
        histories: `[n, H]` the instances' histories (`PAD` = -1), needed for `pn` / `ps`;
            when given, explanations are checked to be subsets of them.
        in_top_k_fn: the model's callback, called with indices into the `n` instances; None
            leaves `pn`, `ps`, `f_ns` NaN.

    Returns:
        `{name: value}` with every name of `SCORE_NAMES`, `oracle_exact_match`,
        `oracle_cause_precision`, `oracle_cause_recall` when `oracle_sets` is given, and the
        counts `n_instances` (all), `n_scored` (learned), `n_explained` (scored with an
        explanation), `n_without_truth` (scored without world minimal sets).

    Raises:
        ValueError: inputs of different lengths, or an explanation outside its history.
    """
    n = len(predicted)
    lengths = {"minimal_sets": len(minimal_sets)}
    for name, value in (("confounders", confounders), ("oracle_sets", oracle_sets),
                        ("learned", learned), ("histories", histories)):
        if value is not None:
            lengths[name] = len(value)
    wrong = {name: length for name, length in lengths.items() if length != n}
    if wrong:
        raise ValueError(f"explanation_scores: {n} explanations but {wrong}")
    sets = [_as_set(items) for items in predicted]
    if histories is not None:
        histories = np.asarray(histories)
        check_subsets(histories, sets)
    learned_mask = np.ones(n, bool) if learned is None else np.asarray(learned, bool)
    scored = np.flatnonzero(learned_mask)
    chosen = [sets[i] for i in scored]
    explained = scored[[bool(sets[i]) for i in scored]] if len(scored) else scored
    out: dict[str, float] = _truth_scores(chosen, [minimal_sets[i] for i in scored])

    if confounders is not None:
        exposed = [i for i in explained if _as_set(confounders[i])]
        out["confounder_fp_rate"] = _mean([bool(sets[i] & _as_set(confounders[i]))
                                           for i in exposed])
    else:
        out["confounder_fp_rate"] = math.nan

    out["pn"] = out["ps"] = math.nan
    if in_top_k_fn is not None and histories is not None and len(explained):
        necessary, sufficient = necessity_sufficiency(
            [sets[i] for i in explained], histories[explained], in_top_k_fn, explained)
        out["pn"], out["ps"] = float(necessary.mean()), float(sufficient.mean())
    out["f_ns"] = _harmonic(out["pn"], out["ps"])
    out["coverage"] = float(len(explained) / len(scored)) if len(scored) else math.nan
    out["mean_size"] = _mean([len(sets[i]) for i in explained])

    out["optimality_gap"] = math.nan
    if oracle_sets is not None:
        gaps = []
        for i in explained:
            sizes = [len(_as_set(candidate)) for candidate in oracle_sets[i]]
            if sizes and min(sizes) > 0:
                gaps.append(len(sets[i]) / min(sizes) - 1)
        out["optimality_gap"] = _mean(gaps)
        oracle = _truth_scores(chosen, [oracle_sets[i] for i in scored])
        out.update({f"oracle_{name}": value for name, value in oracle.items()})
    out["learned_fraction"] = float(learned_mask.mean()) if learned is not None and n else (
        math.nan)
    out["n_instances"] = n
    out["n_scored"] = int(len(scored))
    out["n_explained"] = int(len(explained))
    out["n_without_truth"] = int(sum(1 for i in scored if not minimal_sets[i]))
    ordered = {name: out[name] for name in SCORE_NAMES}
    ordered.update({name: value for name, value in out.items() if name not in ordered})
    return ordered
