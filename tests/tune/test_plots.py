"""tune/plots.py: what the search's plots show, read back from the figures."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from causalrec_jax.tune import plots  # noqa: E402
from causalrec_jax.tune.space import space_from_dict  # noqa: E402

SPACE = space_from_dict({
    "train": {"learning_rate": {"low": 1e-4, "high": 1e-1, "scale": "log"},
              "loss": {"choice": ["softmax", "bpr"]},
              "weight_decay": [1e-2, 0.0, 1e-4],
              "exclude_seen_negatives": [True, False]},
    "model": {"hidden_dims": [[64], [64, 32]]},
})
PARAMS = {param.key: param for param in SPACE.params}
# (trial, learning rate, loss, weight decay, hidden layers, per-seed validation metric)
TRIALS = [
    (0, 1e-3, "bpr", 0.0, [64], [0.30, 0.32]),
    (1, 3e-2, "softmax", 1e-2, [64, 32], [0.40, 0.44]),
    (2, 1e-2, "bpr", 1e-4, [64], [math.nan, math.nan]),
    (3, 2e-4, "bpr", 0.0, [64, 32], [0.20, 0.22]),
    (4, 5e-2, "softmax", 1e-4, [64], [0.35, 0.35]),
]
RECORDS = [
    {"trial": t, "values": {"train.learning_rate": lr, "train.loss": loss,
                            "train.weight_decay": wd, "model.hidden_dims": layers,
                            "train.exclude_seen_negatives": t % 2 == 0},
     "valid": float(np.mean(seeds)), "valid_per_seed": seeds}
    for t, lr, loss, wd, layers, seeds in TRIALS
]
COMMON = {"metric": "ndcg@10", "sampler": "random", "name": "my_search"}


def chosen_marker(figure):
    (line,) = [line for line in figure.axes[0].lines if line.get_gid() == "chosen"]
    return line.get_xdata()[0], line.get_ydata()[0]


def legend_texts(figure):
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_categorical_keys_get_one_tick_per_candidate_and_the_chosen_trial_is_marked():
    for key, ticks, chosen_tick in [
        ("train.loss", ["softmax", "bpr"], 0),                 # strings: the space's order
        ("train.weight_decay", ["0", "0.0001", "0.01"], 2),    # numbers: increasing
        ("model.hidden_dims", ["[64]", "[64, 32]"], 1),        # lists: as JSON
        ("train.exclude_seen_negatives", ["true", "false"], 1),  # booleans
    ]:
        figure = plots.key_figure(RECORDS, PARAMS[key], lower_is_better=False, chosen=1,
                                  **COMMON)
        axis = figure.axes[0]
        assert [label.get_text() for label in axis.get_xticklabels()] == ticks
        assert list(axis.get_xticks()) == list(range(len(ticks)))
        x, y = chosen_marker(figure)
        # The chosen point is the best record, in its candidate's column (spread by <= 0.25).
        assert y == pytest.approx(0.42) and abs(x - chosen_tick) <= 0.25
        title = axis.get_title()
        assert "my_search" in title and "ndcg@10" in title and key in title
        assert "random search, 5 trials (1 NaN), 2 seeds each" in title
        texts = legend_texts(figure)
        assert any(text.startswith("chosen: trial 1") for text in texts)
        assert "NaN (diverged): 1 trial" in texts


def test_trials_sharing_a_candidate_sit_side_by_side():
    x = plots.key_positions(PARAMS["train.loss"], [r["values"]["train.loss"] for r in RECORDS])
    bpr = x[[r["values"]["train.loss"] == "bpr" for r in RECORDS]]
    assert len(set(bpr)) == 3 and np.all(np.abs(bpr - 1) <= 0.25)


def test_a_log_range_is_a_log_axis_over_the_whole_range_and_nan_trials_are_shown():
    figure = plots.key_figure(RECORDS, PARAMS["train.learning_rate"], lower_is_better=False,
                              chosen=1, **COMMON)
    axis = figure.axes[0]
    assert axis.get_xscale() == "log"
    low, high = axis.get_xlim()
    assert low < 1e-4 and high > 1e-1
    assert chosen_marker(figure) == (pytest.approx(3e-2), pytest.approx(0.42))
    (crosses,) = [line for line in axis.lines if line.get_label().startswith("NaN")]
    assert list(crosses.get_xdata()) == [1e-2]


def test_the_trial_figure_draws_the_running_best():
    figure = plots.trial_figure(RECORDS, lower_is_better=False, chosen=1, **COMMON)
    axis = figure.axes[0]
    (best,) = [line for line in axis.lines if line.get_label() == "running best"]
    assert list(best.get_ydata()) == pytest.approx([0.31, 0.42, 0.42, 0.42, 0.42])
    assert chosen_marker(figure) == (1, pytest.approx(0.42))
    assert plots.running_best([math.nan, 0.5, 0.3, 0.4], lower_is_better=True)[1:].tolist() == [
        0.5, 0.3, 0.3]


def test_plot_trials_writes_one_file_per_key_and_the_trial_figure(tmp_path):
    paths = plots.plot_trials(tmp_path, RECORDS, SPACE, lower_is_better=True, chosen=3,
                              **COMMON)
    assert [path.name for path in paths] == [
        "valid_vs_train_learning_rate.png", "valid_vs_train_loss.png",
        "valid_vs_train_weight_decay.png", "valid_vs_train_exclude_seen_negatives.png",
        "valid_vs_model_hidden_dims.png",
        "valid_by_trial.png"]
    assert all(path.stat().st_size > 10_000 for path in paths)
