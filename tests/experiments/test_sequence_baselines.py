"""experiments/sequence_baselines.py: the transition counts learn a planted successor rule that
popularity cannot, under the leave-one-out protocol of the runs."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "sequence_baselines", ROOT / "experiments" / "sequence_baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transitions_learn_the_successor_rule_and_popularity_does_not(tmp_path):
    # 60 users walk a 15-item cycle from different starts: the next item is the last + 1
    lines = []
    for user in range(60):
        start = user % 15
        lines.append(" ".join(str(x) for x in [user + 1, *((start + i) % 15 + 1
                                                          for i in range(8))]))
    data = tmp_path / "Cycle.txt"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "baselines.json"
    assert _script().main(["--data", str(data), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for part in ("valid", "test"):
        assert result["transition"][part]["recall@10"] == 1.0
        assert result["transition"][part]["ndcg@10"] == 1.0  # the successor ranks first
        assert result["transition"][part]["users"] == 60
        assert result["popular"][part]["ndcg@10"] < 0.5


def test_transition_counts_by_hand():
    import numpy as np

    counts = _script().transition_counts([np.array([0, 1, 2]), np.array([1, 2]), np.array([3])],
                                         4).toarray()
    expected = np.zeros((4, 4))
    expected[0, 1], expected[1, 2] = 1, 2
    np.testing.assert_array_equal(counts, expected)
