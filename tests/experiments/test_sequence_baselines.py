"""experiments/sequence_baselines.py: the transition counts learn a planted successor rule that
popularity cannot, under the leave-one-out protocol of the runs."""

import json

SCRIPT = "experiments/sequence_baselines.py"


def test_transitions_learn_the_successor_rule_and_popularity_does_not(tmp_path,
                                                                      load_repo_script):
    # 60 users walk a 15-item cycle from different starts: the next item is the last + 1
    lines = []
    for user in range(60):
        start = user % 15
        lines.append(" ".join(str(x) for x in [user + 1, *((start + i) % 15 + 1
                                                          for i in range(8))]))
    data = tmp_path / "Cycle.txt"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "baselines.json"
    assert load_repo_script(SCRIPT).main(["--data", str(data), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for part in ("valid", "test"):
        assert result["transition"][part]["recall@10"] == 1.0
        assert result["transition"][part]["ndcg@10"] == 1.0  # the successor ranks first
        assert result["transition"][part]["users"] == 60
        assert result["popular"][part]["ndcg@10"] < 0.5


def test_transition_counts_by_hand(load_repo_script):
    import numpy as np

    script = load_repo_script(SCRIPT)
    counts = script.transition_counts([np.array([0, 1, 2]), np.array([1, 2]), np.array([3])],
                                      4).toarray()
    expected = np.zeros((4, 4))
    expected[0, 1], expected[1, 2] = 1, 2
    np.testing.assert_array_equal(counts, expected)
