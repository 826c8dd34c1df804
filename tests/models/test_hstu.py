"""Tests for HSTU: jit, causal mask, padding, sizes, config errors, and a run that learns."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from causalrec_jax.config import load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.hstu import HSTU, parameter_count, time_buckets

N_ITEMS = 30


def _model(max_len=12, seed=0, **options):
    options = {"hidden_dim": 16, "n_layers": 2, "n_heads": 2, "dropout_rate": 0.0, **options}
    return HSTU(N_ITEMS, max_len, key=jax.random.key(seed), **options)


@functools.lru_cache(maxsize=8)
def _forward(graphdef):
    """The jitted forward pass of a model structure, shared by the tests (fewer compiles)."""
    return jax.jit(lambda params, sequences, timestamps: nnx.merge(graphdef, params)(
        sequences, timestamps=timestamps))


def _encode(model):
    """The forward pass as one jitted function of the tokens (and optional timestamps)."""
    graphdef, params = nnx.split(model, nnx.Param)
    forward = _forward(graphdef)
    return lambda sequences, timestamps=None: forward(params, sequences, timestamps)


def _tokens(seed, shape):
    return jax.random.randint(jax.random.key(seed), shape, 1, N_ITEMS + 1)


def test_jit_equals_eager():
    model = _model(temperature=0.05, n_layers=1)
    sequences = _tokens(1, (3, 8)).at[0, :3].set(0)
    graphdef, params = nnx.split(model, nnx.Param)
    jitted = jax.jit(lambda params, s: nnx.merge(graphdef, params).score_next(s))
    # one eager call (op by op, slow): score_next runs the whole forward pass
    np.testing.assert_allclose(jitted(params, sequences), model.score_next(sequences),
                               rtol=1e-5, atol=1e-5)


def test_a_future_item_changes_no_earlier_output():
    encode = _encode(_model())
    before = _tokens(1, (2, 8))
    for t in (0, 3, 6):
        after = before.at[:, t + 1:].set(_tokens(2 + t, (2, 7 - t)))
        assert not jnp.array_equal(before, after)
        hidden_before, hidden_after = encode(before), encode(after)
        np.testing.assert_allclose(hidden_before[:, :t + 1], hidden_after[:, :t + 1],
                                   atol=1e-5)
        assert float(jnp.abs(hidden_before[:, t + 1:] - hidden_after[:, t + 1:]).max()) > 1e-4


def test_padding_never_changes_real_outputs():
    model = _model()
    encode = _encode(model)
    items = _tokens(3, (2, 5))
    short = jnp.concatenate([jnp.zeros((2, 3), jnp.int32), items], axis=1)
    long = jnp.concatenate([jnp.zeros((2, 7), jnp.int32), items], axis=1)
    # The amount of left padding (the bucket width) does not matter: positions and the
    # relative bias count real items, and the attention divides by max_len, not the width ...
    np.testing.assert_allclose(encode(short)[:, -5:], encode(long)[:, -5:], atol=1e-5)
    np.testing.assert_allclose(encode(items), encode(long)[:, -5:], atol=1e-5)
    # ... nor does the padding row's embedding.
    model.token_embedding[...] = model.token_embedding[...].at[0].set(5.0)
    np.testing.assert_allclose(encode(short)[:, -5:], _encode(model)(short)[:, -5:], atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(encode(long))))


@pytest.mark.parametrize("sizes", [
    {"n_heads": 2},
    {"n_heads": 2, "attention_dim": 4, "linear_dim": 12, "n_layers": 3, "temperature": 0.1,
     "n_time_buckets": 16},
])
def test_parameter_count_and_shapes(sizes):
    model = _model(**sizes)
    _, params = nnx.split(model, nnx.Param)
    heads = sizes["n_heads"]
    attention_dim = sizes.get("attention_dim", 16 // heads)
    linear_dim = sizes.get("linear_dim", 16 // heads)
    expected = parameter_count(
        N_ITEMS, 12, hidden_dim=16, n_layers=sizes.get("n_layers", 2), n_heads=heads,
        attention_dim=attention_dim, linear_dim=linear_dim,
        temperature=sizes.get("temperature", 0.0), n_time_buckets=sizes.get("n_time_buckets", 0))
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == expected
    layer = model.layers[0]
    assert layer.uvqk.kernel.shape == (16, heads * (2 * linear_dim + 2 * attention_dim))
    assert layer.output.kernel.shape == (heads * linear_dim, 16)
    assert layer.position_bias.shape == (12,)
    assert model.token_embedding.shape == (N_ITEMS + 1, 16)


def test_cosine_head_scores_are_bounded_by_the_temperature():
    model = _model(temperature=0.05)
    graphdef, params = nnx.split(model, nnx.Param)
    next_scores = jax.jit(lambda params, s: nnx.merge(graphdef, params).score_next(s))(
        params, _tokens(4, (2, 6)))
    assert next_scores.shape == (2, N_ITEMS)
    assert float(jnp.abs(next_scores).max()) <= 1 / 0.05 + 1e-3
    np.testing.assert_allclose(jnp.linalg.norm(model.item_embeddings(), axis=-1), 1.0,
                               rtol=1e-5)


def test_time_bias_uses_log_buckets_and_needs_time_parameters():
    timestamps = jnp.array([[0, 0, 10, 1000, 1000]])
    buckets = time_buckets(timestamps, 30)
    # query q predicts the event at q + 1: its time minus each key's time, log-bucketed
    assert int(buckets[0, 2, 0]) == int(np.floor(np.log(1000) / 0.301))
    assert int(buckets[0, 1, 0]) == int(np.floor(np.log(10) / 0.301))
    assert int(buckets[0, 0, 0]) == 0 and int(time_buckets(timestamps, 5).max()) == 5
    model = _model(n_time_buckets=30)
    encode = _encode(model)
    sequences = _tokens(5, (1, 5))
    with_time = encode(sequences, timestamps)
    assert float(jnp.abs(with_time - encode(sequences)).max()) > 1e-5
    # the last item's time only moves the second last query (whose next event it is)
    later = timestamps.at[0, 4].set(5000)
    np.testing.assert_allclose(encode(sequences, later)[:, :3], with_time[:, :3], atol=1e-6)
    with pytest.raises(ValueError, match="n_time_buckets = 0"):
        _model()(sequences, timestamps=timestamps)


def test_gradients_are_finite_on_padded_windows():
    from causalrec_jax.data.sequences import training_windows
    from causalrec_jax.train.sequence import make_sequence_loss

    model = _model(max_len=8, n_layers=1, temperature=0.05)
    graphdef, params = nnx.split(model, nnx.Param)
    # short sequences: most of each window is padding, whose outputs start exactly at zero
    # (the L2 normalisation of the cosine head must not turn them into NaN gradients)
    windows = training_windows([np.array([3, 5, 7]), np.array([2, 4])], 8)
    batch = {"inputs": jnp.asarray(windows.inputs), "targets": jnp.asarray(windows.targets)}
    loss_fn = make_sequence_loss(graphdef, "sampled_softmax", n_negatives=4)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch, jax.random.key(0))
    assert np.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_dropout_needs_a_key():
    model = _model(dropout_rate=0.5, n_layers=1)
    graphdef, params = nnx.split(model, nnx.Param)
    forward = jax.jit(lambda params, s, key: nnx.merge(graphdef, params)(s, key=key))
    sequences = _tokens(5, (2, 6))
    plain = _encode(model)(sequences)
    np.testing.assert_array_equal(plain, _encode(model)(sequences))
    assert not jnp.allclose(forward(params, sequences, jax.random.key(0)), plain)


def test_history_deletion_works_on_hstu():
    from causalrec_jax.explain.deletion import make_history_model

    model = _model(temperature=0.05)
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = np.array([0, 0, 4, 9, 2, 7], np.int32)
    deletion = make_history_model(graphdef, params, tokens)
    score_next = jax.jit(lambda params, s: nnx.merge(graphdef, params).score_next(s))
    score_fn = jax.jit(deletion.score_fn)
    full = score_fn(deletion.data, jnp.ones(6))
    np.testing.assert_allclose(full, score_next(params, jnp.asarray(tokens)[None])[0],
                               atol=1e-5)
    dropped = score_fn(deletion.data, jnp.array([1, 1, 1, 0, 1, 1.0]))
    shifted = score_next(params, jnp.array([[0, 0, 0, 4, 2, 7]]))[0]
    np.testing.assert_allclose(dropped, shifted, atol=1e-5)
    relaxed = jax.jit(deletion.relaxed_fn)(deletion.data, jnp.ones(6))
    np.testing.assert_allclose(relaxed, full, atol=1e-5)


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(("overrides", "message"), [
    (['model.name="hstu"', 'train.loss="masked_item"'],
     "key train.loss: got 'masked_item', expected one of full_softmax, bce_one_negative, "
     "sampled_softmax, gbce for hstu"),
    (['model.name="sasrec"', 'train.loss="full_softmax"', "model.attention_dim=8"],
     "key model.attention_dim: set to 8, but only model.name = 'hstu' reads it; remove it"),
    (['model.name="bert4rec"', 'train.loss="masked_item"', "model.temperature=0.05"],
     "key model.temperature: set to 0.05, but only model.name = 'hstu' reads it; remove it"),
    # a Transformer whose heads would not split the width: one line, before any run folder
    (['model.name="sasrec"', 'train.loss="full_softmax"', "model.embedding_dim=30",
      "model.n_heads=4"],
     "key model.n_heads: model.embedding_dim 30 is not divisible by model.n_heads 4 (each "
     "head takes embedding_dim // n_heads)"),
    (['model.name="hstu"', 'train.loss="sampled_softmax"', "model.embedding_dim=10",
      "model.n_heads=3"],
     "key model.attention_dim: 0 (= embedding_dim // n_heads), but embedding_dim 10 is not "
     "divisible by n_heads 3; set model.attention_dim to the width per head"),
])
def test_invalid_combinations_are_one_line_config_errors(overrides, message):
    from causalrec_jax.tasks.sequential import check_sequential_config

    config = load_config(overrides=['data.split="leave_one_out"', *overrides])
    with pytest.raises(ConfigError) as error:
        check_sequential_config(config)
    assert str(error.value) == message and "\n" not in str(error.value)


@pytest.mark.parametrize("override", ["model.temperature=-1", "model.linear_dim=-2"])
def test_negative_sizes_are_refused_when_the_config_loads(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(overrides=['model.name="hstu"', override])


# ----------------------------------------------------------------------------- a run


def test_an_hstu_run_learns_the_planted_rule_round_trips_and_recommends(tmp_path, capsys,
                                                                     write_walks):
    from causalrec_jax.cli import main
    from causalrec_jax.runs.load import evaluate_run, load_run, recommend
    from causalrec_jax.train.loop import seed_slice

    path, successor = write_walks(tmp_path)
    out = tmp_path / "run"
    sets = ['data.format="csv"', f'data.path="{path}"', 'data.split="leave_one_out"',
            'data.columns={user = "user", item = "item", timestamp = "time"}',
            'model.name="hstu"', "model.embedding_dim=16", "model.n_layers=1",
            "model.n_heads=1", "model.max_len=8", "model.temperature=0.1",
            'train.loss="sampled_softmax"', "train.n_negatives=8",
            "train.learning_rate=0.01", "train.batch_size=32", "train.epochs=2",
            'train.early_stopping_metric="hit@1"', "train.patience=2",
            'eval.metrics=["hit", "ndcg"]', "eval.ks=[1, 10]", "eval.positive_threshold=0.0"]
    assert main(["train", "--quiet", "--out", str(out),
                 *sum((["--set", s] for s in sets), [])]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    # the next item is the successor of the last one: popularity (20 equally common items,
    # the history masked) would hit about 1 in 9; the rule hits nearly always
    assert metrics["test"]["hit@1"] > 0.9
    # checkpoints, the stored model and the data fingerprint round trip: evaluate reproduces
    again = evaluate_run(out, "test")
    for name, value in metrics["test"].items():
        assert again["test"][name] == pytest.approx(value, abs=1e-6)
    run = load_run(out)
    assert isinstance(nnx.merge(run.parts.graphdef, seed_slice(run.parts.params, 0)), HSTU)
    assert (out / "checkpoints" / "seed0").is_dir()
    frame = pd.read_csv(path)
    last = frame.sort_values("time").groupby("user")["item"].last()
    for user in ("0", "23", "59"):
        top = recommend(run, user, k=3)
        assert len({item for item, _ in top}) == 3
        assert top[0][0] == successor[str(last[int(user)])]
    capsys.readouterr()
    assert main(["recommend", "--run", str(out), "--user", "7", "--k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
