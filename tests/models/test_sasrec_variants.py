"""SASRec's own block (`block = "sasrec"`), positions counted from the newest item
(`positions = "from_end"`) and Adam's `adam_beta2`: each checked against its formula."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from causalrec_jax.config import TrainConfig, load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.bert4rec import BERT4Rec
from causalrec_jax.models.sasrec import KangBlock, SASRec
from causalrec_jax.train.step import make_optimizer

N_ITEMS = 12


def _layer_norm(x, norm):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + norm.epsilon) * np.asarray(norm.scale.value) + np.asarray(
        norm.bias.value)


def _linear(x, layer):
    return x @ np.asarray(layer.kernel.value) + np.asarray(layer.bias.value)


def test_kang_block_is_the_original_sasrec_layer():
    """q = LN(x), h = q + Attn(q; keys and values x), f = LN(h), y = f + W2 ReLU(W1 f),
    written out in numpy for one head and a causal mask."""
    block = KangBlock(8, 1, 16, dropout_rate=0.0, rngs=nnx.Rngs(0))
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 8)))
    allowed = np.broadcast_to(np.tril(np.ones((5, 5), bool)), (2, 5, 5))
    got = np.asarray(block(jnp.asarray(x), jnp.asarray(allowed)))

    q = _layer_norm(x, block.attention_norm)
    attention = block.attention
    scores = np.einsum("bqd,bkd->bqk", _linear(q, attention.query_layer),
                       _linear(x, attention.key_layer)) / np.sqrt(8)
    scores = np.where(allowed, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = _linear(weights @ _linear(x, attention.value_layer), attention.output_layer)
    f = _layer_norm(q + attended, block.ffn_norm)
    want = f + _linear(np.maximum(_linear(f, block.ffn_in), 0.0), block.ffn_out)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _forward(model):
    graphdef, params = nnx.split(model, nnx.Param)
    return params, jax.jit(lambda params, tokens: nnx.merge(graphdef, params)(tokens))


def test_a_sasrec_block_model_is_causal_and_jit_equals_eager():
    model = SASRec(N_ITEMS, 8, key=jax.random.key(0), hidden_dim=8, n_layers=2, n_heads=2,
                   ffn_dim=8, dropout_rate=0.0, block="sasrec")
    params, forward = _forward(model)
    tokens = jnp.asarray([[0, 0, 3, 4, 5, 6, 7, 8]])
    base = forward(params, tokens)
    np.testing.assert_allclose(base, model(tokens), rtol=1e-5, atol=1e-6)
    changed = forward(params, tokens.at[0, -1].set(9))
    np.testing.assert_allclose(changed[0, :-1], base[0, :-1], rtol=1e-6, atol=1e-6)
    assert not np.allclose(changed[0, -1], base[0, -1])
    names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(params)}
    assert any("final_norm" in name for name in names)


@pytest.mark.parametrize("model_class", [SASRec, BERT4Rec])
def test_from_end_positions_count_from_the_newest_item(model_class):
    """For a history of n items, `from_end` gives the positions n-1, ..., 0: the same
    outputs as `from_start` with the first n rows of the position table reversed; and the
    outputs do not depend on the left padding."""
    kwargs = dict(key=jax.random.key(0), hidden_dim=8, n_layers=1, n_heads=1, ffn_dim=8,
                  dropout_rate=0.0)
    from_end = model_class(N_ITEMS, 8, positions="from_end", **kwargs)
    from_start = model_class(N_ITEMS, 8, **kwargs)
    n = 5
    table = from_end.position_embedding[...]
    from_start.position_embedding[...] = table.at[:n].set(table[:n][::-1])
    tokens = jnp.asarray([[0, 0, 0, 3, 4, 5, 6, 7]])
    got = np.asarray(from_end(tokens))[0, -n:]
    np.testing.assert_allclose(got, np.asarray(from_start(tokens))[0, -n:], rtol=1e-5,
                               atol=1e-6)
    unpadded = np.asarray(from_end(tokens[:, -n:]))[0]
    np.testing.assert_allclose(got, unpadded, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, np.asarray(model_class(N_ITEMS, 8, **kwargs)(tokens))[0, -n:])
    with pytest.raises(ValueError, match="unknown positions 'middle'"):
        model_class(N_ITEMS, 8, positions="middle", **kwargs)


def test_adam_beta2_is_the_second_moment_decay():
    """Two Adam steps with `adam_beta2` equal optax's adam with that b2, and differ from the
    default 0.999."""
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    grads = [{"w": jnp.asarray([0.3, -0.1, 2.0])}, {"w": jnp.asarray([-1.0, 0.4, 0.2])}]

    def run(optimizer):
        state, current = optimizer.init(params), params
        for grad in grads:
            updates, state = optimizer.update(grad, state, current)
            current = optax.apply_updates(current, updates)
        return np.asarray(current["w"])

    ours = run(make_optimizer(TrainConfig(learning_rate=0.1, adam_beta2=0.9)))
    np.testing.assert_allclose(ours, run(optax.adam(0.1, b2=0.9)), rtol=1e-6)
    assert not np.allclose(ours, run(optax.adam(0.1)))
    for optimizer in ("adam", "adamw"):
        config = TrainConfig(optimizer=optimizer, learning_rate=0.1, adam_beta2=0.5)
        assert not np.allclose(run(make_optimizer(config)),
                               run(make_optimizer(TrainConfig(optimizer=optimizer,
                                                              learning_rate=0.1))))


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.adam_beta2=1.0"], "key train.adam_beta2: got 1.0, expected a number in (0, 1)"),
    (['train.optimizer="sgd"', "train.adam_beta2=0.98"],
     "key train.adam_beta2: got 0.98, expected unset with train.optimizer = 'sgd' (only adam "
     "and adamw read it)"),
])
def test_bad_adam_beta2_is_refused(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=overrides)
    # the error names the --set that gave the refused value
    assert str(error.value) == f"--set {overrides[-1]!r}: {message}"


def test_hstu_refuses_the_transformer_positions_key():
    from causalrec_jax.tasks.sequential import check_sequential_config

    config = load_config(overrides=['data.split="leave_one_out"', 'model.name="hstu"',
                                    'train.loss="sampled_softmax"',
                                    'model.positions="from_end"'])
    with pytest.raises(ConfigError, match="key model.positions: set to 'from_end', but only "
                                          "model.name = 'sasrec' or 'bert4rec' reads it"):
        check_sequential_config(config)
