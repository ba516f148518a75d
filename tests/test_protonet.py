"""Prototypical Networks: the maths against a hand computation, gradients, errors, learning."""
import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import optim
from tinygrad_meta.evaluate_fewshot import episode_accuracy, evaluation_cells, mean_ci
from tinygrad_meta.meta import ProtoNet
from tinygrad_meta.meta.protonet import class_counts
from tinygrad_meta.tasks.fewshot import fully_connected_net, glyph_task, head_prefix


def _batch(rng, tasks=2, ways=3, shots=2, queries=4, features=5):
    support_y = np.tile(np.repeat(np.arange(ways), shots), (tasks, 1))
    query_y = np.tile(np.repeat(np.arange(ways), queries), (tasks, 1))
    return (rng.normal(size=(tasks, ways * shots, features)), support_y,
            rng.normal(size=(tasks, ways * queries, features)), query_y)


def _hand_logits(weight, bias, support_x, support_y, query_x):
    """Embeddings x W^T + b, class means, then -||q - c||^2, one task and one class at a time."""
    logits = []
    for t in range(support_x.shape[0]):
        embedded_support = support_x[t] @ weight.T + bias
        embedded_query = query_x[t] @ weight.T + bias
        ways = support_y[t].max() + 1
        prototypes = [embedded_support[support_y[t] == n].mean(axis=0) for n in range(ways)]
        logits.append([[-np.sum((q - c) ** 2) for c in prototypes] for q in embedded_query])
    return np.array(logits)


def test_logits_are_negative_squared_distances_to_the_class_means():
    rng = np.random.default_rng(0)
    model = tgm.nn.Linear(5, 4, dtype="float64", rng=1)
    support_x, support_y, query_x, _ = _batch(rng)
    # shuffle the support order: prototypes group by label, not by position
    order = rng.permutation(support_y.shape[1])
    support_x, support_y = support_x[:, order], support_y[:, order]
    ours = ProtoNet(model).logits(support_x, support_y, query_x).numpy()
    expected = _hand_logits(model.weight.numpy(), model.bias.numpy(), support_x, support_y, query_x)
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10)


def test_the_loss_is_the_cross_entropy_of_the_hand_logits():
    rng = np.random.default_rng(1)
    model = tgm.nn.Linear(5, 3, dtype="float64", rng=2)
    batch = _batch(rng)
    logits = _hand_logits(model.weight.numpy(), model.bias.numpy(), *batch[:3])
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    expected = -np.take_along_axis(log_probabilities, batch[3][..., None], axis=-1).mean()
    assert float(ProtoNet(model).meta_loss(batch).item()) == pytest.approx(expected, rel=1e-12)


def test_meta_gradients_match_central_differences():
    rng = np.random.default_rng(2)
    model = tgm.nn.MLP([5, 6, 3], activation="tanh", dtype="float64", rng=3)
    net = ProtoNet(model)
    batch = _batch(rng)
    _, grads = net.meta_step(batch)
    eps = 1e-6
    for name, param in model.parameter_dict().items():
        values = param.numpy()
        for index in list(np.ndindex(values.shape))[:4]:
            original = values[index]
            values[index] = original + eps
            param.data = values
            up = float(net.meta_loss(batch).item())
            values[index] = original - eps
            param.data = values
            down = float(net.meta_loss(batch).item())
            values[index] = original
            param.data = values
            assert grads[name].numpy()[index] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8), \
                f"{name}{index}"


def test_a_class_missing_from_a_support_set_is_named():
    with pytest.raises(ValueError, match="task 1 has no support example of class 1"):
        class_counts(np.array([[0, 1, 2], [0, 2, 2]]))


def test_compiled_meta_steps_equal_eager_ones_bit_for_bit_across_ways():
    # the labels' values (ways, class sizes) are read outside the trace: a compiled step is
    # the eager one, also after the number of ways changes (a new program) and back; the
    # conv net's batch norm updates its running statistics inside the compiled step
    nets = [tgm.nn.omniglot_convnet(None, variant="protonet", filters=4, seed=0) for _ in range(2)]
    eager, compiled = ProtoNet(nets[0]), ProtoNet(nets[1], compile=True)
    optimizers = [optim.Adam(n.meta_parameters(), lr=1e-2) for n in (eager, compiled)]
    rng = np.random.default_rng(4)
    for ways in (3, 2, 3, 3):
        support_x, support_y, query_x, query_y = _batch(rng, tasks=1, ways=ways, shots=2, queries=2,
                                                        features=28 * 28)
        support_y = rng.permuted(support_y, axis=1)  # class sizes stay; the order changes
        batch = (support_x.reshape(1, -1, 1, 28, 28).astype(np.float32), support_y,
                 query_x.reshape(1, -1, 1, 28, 28).astype(np.float32), query_y)
        results = [learner.meta_step(batch) for learner in (eager, compiled)]
        assert results[0][0] == results[1][0]
        for name in results[0][1]:
            np.testing.assert_array_equal(results[0][1][name].numpy(), results[1][1][name].numpy(),
                                          err_msg=name)
        for optimizer, (_, grads) in zip(optimizers, results):
            optimizer.step(grads)
    for (name, a), (_, b) in zip(nets[0].named_buffers(), nets[1].named_buffers()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    info = compiled._compiled_step.cache_info()
    assert info.misses == 2 and info.hits == 2
    with pytest.raises(ValueError, match="task 0 has no support example of class 1"):
        compiled.meta_step((batch[0], np.zeros_like(support_y) + 2 * (support_y > 0), *batch[2:]))

def test_predictions_are_the_same_for_every_step_and_carry_no_graph():
    rng = np.random.default_rng(3)
    net = ProtoNet(tgm.nn.Linear(5, 3, rng=0))
    predictions = net.predictions(_batch(rng), steps=(0, 3))
    assert predictions[0] is predictions[3] and not predictions[0].requires_grad
    with pytest.raises(TypeError, match="no fast weights"):
        net.predictions(_batch(rng), params={})


def test_protonet_learns_glyphs_above_chance_in_a_few_steps():
    task = glyph_task(ways=5, queries=5, num_classes=200)
    net = ProtoNet(fully_connected_net(None, rng=np.random.default_rng(0)))
    test = task.evaluation_tasks(seed=0, num_tasks=100, shots=1)
    before = episode_accuracy(net, test, 0)
    optimizer = optim.Adam(net.meta_parameters(), lr=1e-3)
    for iteration in range(25):
        _, grads = net.meta_step(task.meta_batch(seed=0, iteration=iteration, num_tasks=2, shots=1))
        optimizer.step(grads)
    after_mean, after_ci = mean_ci(episode_accuracy(net, test, 0))
    before_mean, before_ci = mean_ci(before)
    assert after_mean - after_ci > 0.2            # chance is 1 in 5
    assert after_mean - after_ci > before_mean + before_ci


def test_the_confidence_interval_is_1_96_standard_errors():
    values = np.array([1.0, 0.8, 0.6, 1.0, 0.4])
    mean, ci = mean_ci(values)
    deviation = np.sqrt(((values - values.mean()) ** 2).sum() / (len(values) - 1))
    assert mean == pytest.approx(0.76) and ci == pytest.approx(1.96 * deviation / np.sqrt(5))


def test_a_gradient_learner_is_evaluated_only_at_its_own_ways():
    cells, note = evaluation_cells({"algo": "maml", "ways": 5})
    assert cells == [(5, 1), (5, 5)] and "--ways 20" in note
    assert evaluation_cells({"algo": "protonet", "ways": 5}) == ([(5, 1), (5, 5), (20, 1), (20, 5)], None)


def test_anil_adapts_the_output_layer():
    assert head_prefix(fully_connected_net(5, rng=0)) == "1.layers.4"
