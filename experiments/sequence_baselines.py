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
target beats it), as in every run; users whose target is in their history are not ranked.
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

KS = (10, 20)
CHUNK = 1024


def transition_counts(sequences: list[np.ndarray], n_items: int) -> sparse.csr_matrix:
    """`[n_items, n_items]` counts of item j directly after item i."""
    pairs = [np.stack([s[:-1], s[1:]]) for s in sequences if len(s) > 1]
    rows, cols = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), int)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_items, n_items))


def ranks(scores: np.ndarray, targets: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
    """0-based pessimistic ranks of `targets` in `scores [b, n_items]`, history masked."""
    scores = scores.copy()
    for row, items in enumerate(history):
        scores[row, items] = -np.inf
    target_scores = scores[np.arange(len(targets)), targets]
    return (scores >= target_scores[:, None]).sum(axis=1) - 1


def evaluate(sequences, targets_by_user, popularity, transitions, kind: str) -> dict[str, float]:
    users = np.asarray(sorted(targets_by_user))
    users = np.asarray([u for u in users if len(sequences[u])
                        and targets_by_user[u] not in set(sequences[u].tolist())])
    all_ranks = []
    for start in range(0, len(users), CHUNK):
        part = users[start:start + CHUNK]
        scores = np.tile(popularity, (len(part), 1))
        if kind == "transition":
            last = np.asarray([sequences[u][-1] for u in part])
            scores = transitions[last].toarray() + scores / (popularity.max() + 1)
        targets = np.asarray([targets_by_user[u] for u in part])
        all_ranks.append(ranks(scores, targets, [sequences[u] for u in part]))
    rank = np.concatenate(all_ranks)
    out = {"users": int(len(rank))}
    for k in KS:
        hit = rank < k
        out[f"ndcg@{k}"] = float(np.mean(np.where(hit, 1 / np.log2(rank + 2), 0.0)))
        out[f"recall@{k}"] = float(np.mean(hit))
    return out


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
    train_sequences = user_sequences(train)
    transitions = transition_counts(train_sequences, train.n_items)
    seen_sequences = user_sequences(concatenate([train, split.valid]))
    valid_targets = dict(zip(split.valid.user.tolist(), split.valid.item.tolist(), strict=True))
    test_targets = dict(zip(split.test.user.tolist(), split.test.item.tolist(), strict=True))
    result = {}
    for kind in ("popular", "transition"):
        result[kind] = {
            "valid": evaluate(train_sequences, valid_targets, popularity, transitions, kind),
            "test": evaluate(seen_sequences, test_targets, popularity, transitions, kind)}
        print(f"{kind}: valid ndcg@10 {result[kind]['valid']['ndcg@10']:.4f}, test ndcg@10 "
              f"{result[kind]['test']['ndcg@10']:.4f}, recall@10 "
              f"{result[kind]['test']['recall@10']:.4f} ({result[kind]['test']['users']} users)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"data": args.data, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
