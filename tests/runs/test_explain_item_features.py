"""The direct effect of the explained item's own features (MLP and NeuMF with item features):
each feature set to 0 alone moves the item's score by what the model with that feature zeroed
scores, and nothing else; through `causalrec explain` on a run with named RecBole item
features."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.explain import item_feature_effects, make_refit_model
from causalrec_jax.models.mf import MF
from causalrec_jax.models.mlp import MLP
from causalrec_jax.models.neumf import NeuMF
from causalrec_jax.runs import train as run_train
from causalrec_jax.runs.explain import explain_run
from causalrec_jax.runs.load import known_items, load_run
from causalrec_jax.train.loop import seed_slice

ITEM_FEATURES = np.asarray([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]] * 15, np.float32)  # 30 items


def zeroed(item, column):
    table = ITEM_FEATURES.copy()
    table[item, column] = 0.0
    return table


@pytest.mark.parametrize("kind", ["mlp", "neumf"])
def test_each_item_feature_removed_alone_is_the_model_without_it(kind):
    def build(item_features):
        if kind == "mlp":
            return MLP(2, 30, embedding_dim=4, hidden_dims=(8,), key=jax.random.key(3),
                       item_features=item_features)
        return NeuMF(2, 30, embedding_dim=4, hidden_dims=(8,), key=jax.random.key(3),
                     item_features=item_features)

    model = build(ITEM_FEATURES)
    deletion = make_refit_model(model, user=1, items=[3, 5, 9], loss="bce", l2=0.5)
    target = 4  # features [1, 0, 2]
    effects = item_feature_effects(deletion, target)
    assert effects.shape == (3,)
    assert abs(effects[1]) < 1e-6  # the item lacks feature 1
    served = np.asarray(model.score_all(jnp.asarray([1]))[0])
    for column in (0, 2):
        without = np.asarray(build(zeroed(target, column)).score_all(jnp.asarray([1]))[0])
        np.testing.assert_allclose(served[target] + effects[column], without[target],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.delete(without, target), np.delete(served, target),
                                   rtol=1e-6, atol=1e-6)  # only the item's own score moves
    assert np.abs(effects).max() > 1e-4


def test_models_without_item_features_have_none():
    mf = MF(2, 30, embedding_dim=4, key=jax.random.key(0))
    assert item_feature_effects(make_refit_model(mf, user=0, items=[1, 2], loss="bce",
                                                 l2=1.0), 3) is None
    mlp = MLP(2, 30, embedding_dim=4, hidden_dims=(8,), key=jax.random.key(3))
    assert item_feature_effects(make_refit_model(mlp, user=0, items=[1, 2], loss="bce",
                                                 l2=1.0), 3) is None


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """An MLP run on a RecBole dataset whose `.item` file has two float features."""
    folder = tmp_path_factory.mktemp("item_features")
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\trating:float"]
    for user in range(30):
        for item in rng.choice(30, size=10, replace=False):
            lines.append(f"u{user}\ti{item}\t{1 + (item + user) % 5}")
    (folder / "toy.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\tprice:float\tnew:float"]
    items += [f"i{item}\t{1 + item % 4}\t{item % 2}" for item in range(30)]
    (folder / "toy.item").write_text("\n".join(items) + "\n")
    config = load_config(None, [
        'data.format="recbole"', f'data.path="{folder}"', 'data.split="user_random"',
        'model.name="mlp"', "model.embedding_dim=4", "model.hidden_dims=[8]",
        "train.epochs=3", 'train.loss="bce"', 'eval.metrics=["recall"]', "eval.ks=[5]",
        'train.early_stopping_metric="recall@5"', "eval.positive_threshold=3.0"])
    run_train.train_run(config, folder / "run", quiet=True)
    return folder / "run"


def test_the_command_lists_the_items_features(mlp_run, capsys):
    result = explain_run(mlp_run, "u2", k=3)
    rows = {row["feature"]: row for row in result.item_features}
    item = int(result.item_id[1:])
    expected = {"price"} | ({"new"} if item % 2 else set())
    assert set(rows) == expected
    assert rows["price"]["value"] == 1 + item % 4
    # check against the loaded model with the feature zeroed
    run = load_run(mlp_run)
    user = int(np.flatnonzero(run.user_ids == "u2")[0])
    index = int(np.flatnonzero(run.item_ids == result.item_id)[0])
    column = 0  # price, the first float field of toy.item
    model = nnx.merge(run.parts.graphdef, seed_slice(run.parts.params, 0), run.parts.constants)
    served = np.asarray(model.score_all(jnp.asarray([user]))[0])
    model.item_features[...] = model.item_features[...].at[index, column].set(0.0)
    without = np.asarray(model.score_all(jnp.asarray([user]))[0])
    np.testing.assert_allclose(served[index] + rows["price"]["score_change"], without[index],
                               rtol=1e-5, atol=1e-5)
    exclude = np.zeros(len(served), bool)
    exclude[known_items(run, user)] = True
    others = ~exclude & (np.arange(len(served)) != index)
    assert rows["price"]["rank_after"] == int(np.sum(others & (served >= without[index]))) + 1
    assert main(["explain", "--run", str(mlp_run), "--user", "u2", "--k", "3"]) == 0
    assert "the item's features, each set to 0 alone" in capsys.readouterr().out
    assert main(["explain", "--run", str(mlp_run), "--user", "u2", "--k", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {row["feature"] for row in payload["item_features"]} == expected


def test_a_model_reading_feature_tables_serves_from_one_device(mlp_run, tmp_path):
    """Its feature rows would not match tables padded to a mesh: `--mesh` is refused."""
    from causalrec_jax.errors import RunError
    from causalrec_jax.parallel import make_mesh
    from causalrec_jax.runs.serve import recommend_all

    with pytest.raises(RunError, match="--mesh: a model with feature tables serves from one"):
        recommend_all(load_run(mlp_run), 3, out=tmp_path / "r.parquet", mesh=make_mesh([1, 1]))
    assert not (tmp_path / "r.parquet").exists()
