"""Reference points for a sequential run: most-popular and first-order item-to-item transition
counts, under the sequential runs' protocol (leave-one-out, full ranking, history masked).

    python experiments/sequence_baselines.py --data ../shared/data/amazon/Toys_and_Games.txt
        [--format seq_lines] [--out FILE.json]

`popular` ranks items by their training count. `transition` scores item j for a user whose
most recent item is i by the number of times j followed i in the training sequences, ties
broken by popularity (a first-order Markov chain of counts, no parameters learned). A model that
reads the history should beat both; on the sparse Amazon releases a SASRec that does not
is learning little beyond the last item.

The split is the runs' own (`data.split = "leave_one_out"`): the counts come from the training
part; validation ranks the second-to-last item from the training history, the test the last item
from the training and validation history (the validation transitions are not counted: the
models never train on them either). Ranks are pessimistic (an item scoring the same as the
target beats it), through the runs' own `evaluate_full_ranking`; users whose target is in their
history are not ranked.
Prints and, with `--out`, writes `{"valid": {...}, "test": {...}}` per baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from causalrec_jax.config import DataConfig  # noqa: E402
from causalrec_jax.data.dataset import concatenate  # noqa: E402
from causalrec_jax.data.loader import load_dataset  # noqa: E402
from causalrec_jax.data.sequences import user_sequences  # noqa: E402
from causalrec_jax.data.split import make_split  # noqa: E402
from causalrec_jax.eval.ranking import evaluate_full_ranking  # noqa: E402

KS = (10, 20)
CHUNK = 1024


def transition_counts(sequences: list[np.ndarray], n_items: int) -> sparse.csr_matrix:
    """`[n_items, n_items]` counts of item j directly after item i."""
    pairs = [np.stack([s[:-1], s[1:]]) for s in sequences if len(s) > 1]
    rows, cols = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), int)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_items, n_items))


def score_fn(kind: str, sequences: list[np.ndarray], popularity: np.ndarray,
             transitions: sparse.csr_matrix):
    """`users [b] -> scores [b, n_items]` of a baseline: training popularity, or the counts of
    each item after the user's most recent item in `sequences`, ties broken by popularity."""
    last = np.asarray([s[-1] if len(s) else 0 for s in sequences])
    has_history = np.asarray([len(s) > 0 for s in sequences])

    def scores(users):
        users = np.asarray(users)
        out = np.tile(popularity / (popularity.max() + 1), (len(users), 1))
        if kind == "transition":
            out += transitions[last[users]].toarray() * has_history[users, None]
        return out

    return scores


def evaluate(kind: str, seen, target, popularity, transitions) -> dict[str, float]:
    """The runs' full ranking (`evaluate_full_ranking`: pessimistic ties, `seen` masked, users
    whose target they already have not ranked) of a baseline from the `seen` history."""
    result = evaluate_full_ranking(
        score_fn(kind, user_sequences(seen), popularity, transitions), seen, target, ks=KS,
        metrics=("ndcg", "recall"), chunk_size=CHUNK)
    return {"users": int(result["n_users_evaluated"]),
            **{name: float(result[name]) for name in (f"{m}@{k}" for m in ("ndcg", "recall")
                                                      for k in KS)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", default="seq_lines")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    data = DataConfig(format=args.format, path=args.data, split="leave_one_out")
    dataset, _ = load_dataset(data, None)
    split = make_split(dataset, data, seed=0)
    train = split.train
    popularity = np.bincount(train.item, minlength=train.n_items).astype(np.float64)
    transitions = transition_counts(user_sequences(train), train.n_items)
    seen = concatenate([train, split.valid])
    result = {}
    for kind in ("popular", "transition"):
        result[kind] = {"valid": evaluate(kind, train, split.valid, popularity, transitions),
                        "test": evaluate(kind, seen, split.test, popularity, transitions)}
        print(f"{kind}: valid ndcg@10 {result[kind]['valid']['ndcg@10']:.4f}, test ndcg@10 "
              f"{result[kind]['test']['ndcg@10']:.4f}, recall@10 "
              f"{result[kind]['test']['recall@10']:.4f} ({result[kind]['test']['users']} users)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"data": args.data, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
