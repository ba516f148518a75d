"""Image layers (issue 11): nn.Conv2d / MaxPool2d / AvgPool2d / BatchNorm2d / LayerNorm and
the 4-block Omniglot network. Initialisation follows PyTorch's bounds, BatchNorm's running
statistics are buffers (state, not parameters) that state_dict, checkpoints and devices
carry, and the network runs under tgm.vmap (how the meta-learners run it per task) exactly
as a loop over tasks does, gradients and second-order MAML included."""
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import functional as F, nn
from tinygrad_meta.checkpoint import load_checkpoint, save_checkpoint
from tinygrad_meta.func import functional_call
from tinygrad_meta.meta import MAML
from tinygrad_meta.run import load_parameters, parameters_as_numpy


def T(array):
    return tgm.Tensor(array, dtype="float64")


def images(shape, seed=0):
    return T(np.random.default_rng(seed).standard_normal(shape))


# ---- Conv2d and the pools ---------------------------------------------------------------

def test_conv2d_default_init_is_uniform_within_one_over_sqrt_fan_in():
    # kaiming-uniform with a = sqrt(5): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in)
    conv = nn.Conv2d(8, 32, (3, 2), groups=2, rng=0)
    fan_in = 8 // 2 * 3 * 2
    bound = 1 / np.sqrt(fan_in)
    w, b = conv.weight.numpy(), conv.bias.numpy()
    assert conv.weight.shape == (32, 4, 3, 2) and conv.bias.shape == (32,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.95 * bound  # 768 draws fill the interval
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)  # the uniform's spread


def test_conv2d_maml_init_is_glorot_uniform_with_zero_bias():
    conv = nn.Conv2d(4, 16, 3, init="maml", rng=1)
    bound = np.sqrt(6 / (4 * 9 + 16 * 9))
    assert np.abs(conv.weight.numpy()).max() <= bound
    assert np.abs(conv.weight.numpy()).max() > 0.95 * bound
    assert not conv.bias.numpy().any()


def test_conv2d_module_is_the_functional_op_on_its_parameters():
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1, dtype="float64", rng=2)
    x = images((2, 2, 7, 7))
    np.testing.assert_array_equal(conv(x).numpy(),
                                  F.conv2d(x, conv.weight, conv.bias, 2, 1).numpy())
    assert [n for n, _ in conv.named_parameters()] == ["weight", "bias"]
    assert nn.Conv2d(2, 3, 3, bias=False).bias is None
    assert "kernel_size=(3, 3)" in repr(conv)


def test_pool_modules_are_the_functional_ops():
    x = images((1, 2, 5, 5))
    np.testing.assert_array_equal(nn.MaxPool2d(2)(x).numpy(), F.max_pool2d(x, 2).numpy())
    np.testing.assert_array_equal(nn.AvgPool2d(3, 1, 1)(x).numpy(), F.avg_pool2d(x, 3, 1, 1).numpy())
    assert not list(nn.MaxPool2d(2).parameters())


@pytest.mark.parametrize("call, message", [
    (lambda: nn.Conv2d(3, 4, 3, groups=2), "Conv2d: groups=2 must divide"),
    (lambda: nn.Conv2d(0, 4, 3), "Conv2d: in_channels must be a positive integer"),
    (lambda: nn.Conv2d(1, 4, 3, init="xavier"), "Conv2d: unknown init"),
    (lambda: nn.MaxPool2d(2, padding=3), "MaxPool2d: padding"),
    (lambda: nn.BatchNorm2d(4, momentum=None), "BatchNorm2d: momentum"),
    (lambda: nn.BatchNorm2d(4)(tgm.Tensor(np.ones((2, 4)))), "BatchNorm2d: expected a 4-D input"),
    (lambda: nn.omniglot_convnet(variant="resnet"), "unknown variant"),
    (lambda: nn.omniglot_convnet(variant="maml"), "give ways"),
    (lambda: nn.omniglot_convnet(5, variant="protonet", image_size=8), "too small"),
])
def test_bad_module_arguments_raise_errors_naming_the_module(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_layernorm_module_has_affine_parameters_of_the_normalized_shape():
    ln = nn.LayerNorm((2, 3), dtype="float64")
    assert [(n, p.shape) for n, p in ln.named_parameters()] == [("weight", (2, 3)), ("bias", (2, 3))]
    x = images((4, 2, 3))
    np.testing.assert_array_equal(ln(x).numpy(), F.layer_norm(x, (2, 3), ln.weight, ln.bias).numpy())
    assert not list(nn.LayerNorm(3, elementwise_affine=False).parameters())
    assert [n for n, _ in nn.LayerNorm(3, bias=False).named_parameters()] == ["weight"]


# ---- BatchNorm2d: running statistics are buffers ------------------------------------------
# ---- BatchNorm2d: running statistics are buffers ------------------------------------------

def test_batchnorm_running_statistics_are_buffers_not_parameters():
    bn = nn.BatchNorm2d(3)
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    assert not any(b.requires_grad for b in bn.buffers())
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked"]
    with pytest.raises(TypeError, match="is a buffer"):
        bn.running_mean = tgm.zeros(3).requires_grad_(True)


def test_batchnorm_trains_on_batch_statistics_and_evaluates_on_running_ones():
    bn = nn.BatchNorm2d(2, momentum=0.5, dtype="float64")
    x = images((4, 2, 3, 3))
    y = bn(x)
    axes = (0, 2, 3)
    raw = x.numpy()
    np.testing.assert_allclose(y.numpy().mean(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.5 * raw.mean(axis=axes), rtol=1e-13)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.5 + 0.5 * raw.var(axis=axes, ddof=1), rtol=1e-13)
    assert int(bn.num_batches_tracked.numpy()) == 1
    bn.eval()
    want = (raw - bn.running_mean.numpy()[:, None, None]) / np.sqrt(bn.running_var.numpy()[:, None, None] + 1e-5)
    np.testing.assert_allclose(bn(x).numpy(), want, rtol=1e-12)
    assert int(bn.num_batches_tracked.numpy()) == 1  # eval leaves the statistics alone


def test_a_copied_network_has_its_own_buffers():
    import copy
    net = nn.omniglot_convnet(variant="protonet", filters=2, seed=0, dtype="float64")
    twin = copy.deepcopy(net)
    net(images((3, 1, 28, 28)))
    moved = net.blocks[0][1].running_mean.numpy()
    assert moved.any() and not twin.blocks[0][1].running_mean.numpy().any()
    assert [n for n, _ in twin.named_buffers()] == [n for n, _ in net.named_buffers()]


def test_batchnorm_without_running_statistics_uses_the_batch_in_every_mode():
    bn = nn.BatchNorm2d(2, track_running_stats=False, affine=False, dtype="float64").eval()
    x = images((3, 2, 2, 2))
    assert not list(bn.buffers()) and not list(bn.parameters())
    np.testing.assert_allclose(bn(x).numpy(), F.batch_norm(x, None, None, training=True).numpy())


def test_batchnorm_module_matches_pytorch_over_training_and_eval():
    torch = pytest.importorskip("torch")
    ours, theirs = nn.BatchNorm2d(3, momentum=0.3, dtype="float64"), torch.nn.BatchNorm2d(3, momentum=0.3).double()
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal((5, 3, 2, 4)) * 2 + 1
        np.testing.assert_allclose(ours(T(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[name], value.numpy(), rtol=1e-12, err_msg=name)
    ours.eval(), theirs.eval()
    x = rng.standard_normal((2, 3, 2, 2))
    np.testing.assert_allclose(ours(T(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10)


def test_state_dict_round_trip_restores_buffers_and_checks_them():
    net = nn.omniglot_convnet(variant="protonet", filters=4, seed=0, dtype="float64")
    net(images((6, 1, 28, 28)))  # moves the running statistics off their initial values
    saved = net.state_dict()
    fresh = nn.omniglot_convnet(variant="protonet", filters=4, seed=1, dtype="float64")
    fresh.load_state_dict(saved)
    for name, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)
    fresh.eval(), net.eval()
    x = images((2, 1, 28, 28), seed=5)
    np.testing.assert_array_equal(fresh(x).numpy(), net(x).numpy())
    missing = {k: v for k, v in saved.items() if not k.endswith("running_var")}
    with pytest.raises(KeyError, match="running_var"):
        fresh.load_state_dict(missing)
    wrong = dict(saved, **{"blocks.0.1.running_mean": np.zeros(5)})
    with pytest.raises(ValueError, match="buffer 'running_mean' has shape"):
        fresh.load_state_dict(wrong)


def test_a_checkpoint_of_a_meta_learner_carries_the_batchnorm_buffers(tmp_path):
    def learner(seed):
        net = nn.omniglot_convnet(5, variant="maml", filters=4, seed=seed, dtype="float64",
                                  track_running_stats=True)
        return MAML(net, inner_lr=0.1, loss_fn=F.cross_entropy)
    trained = learner(0)
    trained.model(images((4, 1, 28, 28)))
    path = save_checkpoint(tmp_path / "c.npz", params=parameters_as_numpy(trained))
    restored = learner(1)
    load_parameters(restored, load_checkpoint(path).params, path)
    for (name, a), (_, b) in zip(trained.model.named_buffers(), restored.model.named_buffers()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    for name, p in trained.meta_parameters().items():
        np.testing.assert_array_equal(p.numpy(), restored.meta_parameters()[name].numpy(), err_msg=name)


# ---- the Omniglot network ----------------------------------------------------------------

def _block_shapes(net, x):
    shapes = []
    for block in net.blocks:
        x = block(x)
        shapes.append(x.shape[1:])
    return shapes


def test_maml_variant_strided_blocks_then_the_spatial_mean_and_a_linear_head():
    net = nn.omniglot_convnet(5, variant="maml", seed=0)
    x = tgm.Tensor(np.random.default_rng(0).standard_normal((3, 1, 28, 28)))
    assert _block_shapes(net, x) == [(64, 14, 14), (64, 7, 7), (64, 4, 4), (64, 2, 2)]
    assert net(x).shape == (3, 5) and net.out_features == 5
    conv = 64 * 1 * 9 + 64 + 3 * (64 * 64 * 9 + 64)
    assert net.num_parameters() == conv + 4 * 2 * 64 + 64 * 5 + 5
    assert not list(net.buffers())  # batch statistics always, as MAML's reference code


def test_protonet_variant_pools_down_to_a_64_d_embedding():
    net = nn.omniglot_convnet(variant="protonet", seed=0)
    x = tgm.Tensor(np.random.default_rng(0).standard_normal((3, 1, 28, 28)))
    assert _block_shapes(net, x) == [(64, 14, 14), (64, 7, 7), (64, 3, 3), (64, 1, 1)]
    assert net(x).shape == (3, 64) and net.head is None and net.out_features == 64
    assert len(list(net.buffers())) == 12


def test_the_network_is_deterministic_from_its_seed():
    a, b = (nn.omniglot_convnet(5, seed=7) for _ in range(2))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)


# ---- vmap over tasks equals a loop over tasks ---------------------------------------------

def _task_params(net, tasks, seed):
    rng = np.random.default_rng(seed)
    return OrderedDict((n, T(p.numpy() + 0.05 * rng.standard_normal((tasks,) + p.shape)))
                       for n, p in net.named_parameters())


@pytest.mark.parametrize("variant", ["maml", "protonet"])
def test_vmapped_network_equals_the_loop_in_outputs_gradients_and_running_statistics(variant):
    nets = [nn.omniglot_convnet(3 if variant == "maml" else None, variant=variant, filters=4, seed=0,
                                dtype="float64") for _ in range(2)]
    fast = _task_params(nets[0], 3, seed=1)
    for p in fast.values():
        p.requires_grad_(True)
    xs = images((3, 4, 1, 28, 28), seed=2)
    out = tgm.vmap(lambda p, x: functional_call(nets[0], p, x))(fast, xs)
    loop = tgm.stack([functional_call(nets[1], {n: v[t] for n, v in fast.items()}, xs[t])
                      for t in range(3)])
    np.testing.assert_allclose(out.numpy(), loop.numpy(), rtol=1e-12, atol=1e-13)
    grads = tgm.grad((out * out).sum(), list(fast.values()))
    grads_loop = tgm.grad((loop * loop).sum(), list(fast.values()))
    for name, a, b in zip(fast, grads, grads_loop):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    for (name, a), (_, b) in zip(nets[0].named_buffers(), nets[1].named_buffers()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-13, err_msg=name)


def test_batch_norm_statistics_are_per_task_under_vmap():
    # tasks at very different scales: statistics pooled over tasks would not normalise each
    net = nn.omniglot_convnet(2, variant="maml", filters=2, seed=0, dtype="float64")
    scales = np.array([1.0, 100.0])[:, None, None, None, None]
    xs = T(np.random.default_rng(3).standard_normal((2, 3, 1, 28, 28)) * scales)
    first_conv = lambda x: net.blocks[0][1](net.blocks[0][0](x))  # noqa: E731
    normalised = tgm.vmap(first_conv)(xs).numpy()
    for t in range(2):
        np.testing.assert_allclose(normalised[t].mean(axis=(0, 2, 3)), 0.0, atol=1e-10)
        np.testing.assert_allclose(normalised[t].var(axis=(0, 2, 3)), 1.0, rtol=1e-3)


def _classification_tasks(tasks=2, ways=2, shots=2, seed=0):
    rng = np.random.default_rng(seed)
    sx = rng.standard_normal((tasks, ways * shots, 1, 28, 28))
    qx = rng.standard_normal((tasks, ways * shots, 1, 28, 28))
    labels = np.tile(np.repeat(np.arange(ways), shots), (tasks, 1))
    return sx, labels, qx, labels.copy()


def test_second_order_maml_on_the_conv_net_vectorised_equals_looped():
    data = _classification_tasks()
    results = []
    for vectorize in (True, False):
        net = nn.omniglot_convnet(2, variant="maml", filters=3, seed=4, dtype="float64")
        maml = MAML(net, inner_lr=0.4, inner_steps=2, loss_fn=F.cross_entropy, vectorize=vectorize)
        results.append(maml.meta_step(data))
    (loss_v, grads_v), (loss_l, grads_l) = results
    assert loss_v == pytest.approx(loss_l, rel=1e-11)
    for name in grads_v:
        np.testing.assert_allclose(grads_v[name].numpy(), grads_l[name].numpy(), rtol=1e-8,
                                   atol=1e-11, err_msg=name)


@pytest.mark.parametrize("variant", ["maml", "protonet"])
def test_the_network_matches_a_pytorch_twin_in_outputs_and_gradients(variant):
    torch = pytest.importorskip("torch")
    net = nn.omniglot_convnet(3 if variant == "maml" else None, variant=variant, filters=4, seed=5,
                              dtype="float64")
    stride, pool = (2, False) if variant == "maml" else (1, True)
    layers = []
    for block in net.blocks:
        conv = torch.nn.Conv2d(block[0].in_channels, 4, 3, stride=stride, padding=1).double()
        norm = torch.nn.BatchNorm2d(4, track_running_stats=variant == "protonet").double()
        layers += [conv, norm, torch.nn.ReLU()] + ([torch.nn.MaxPool2d(2)] if pool else [])
    body = torch.nn.Sequential(*layers)
    head = torch.nn.Linear(4, 3).double() if variant == "maml" else None
    twin = {f"blocks.{i // (4 if pool else 3)}.{i % (4 if pool else 3)}.{name}": p
            for i, layer in enumerate(layers) for name, p in layer.named_parameters()}
    if head is not None:
        twin.update({f"head.{name}": p for name, p in head.named_parameters()})
    with torch.no_grad():
        for name, p in net.named_parameters():
            twin[name].copy_(torch.tensor(p.numpy()))
    x = np.random.default_rng(6).standard_normal((5, 1, 28, 28))
    y = net(T(x))
    features = body(torch.tensor(x))
    yt = head(features.mean(dim=(2, 3))) if head is not None else features.flatten(1)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-9, atol=1e-11)
    names = [n for n, _ in net.named_parameters()]
    grads = tgm.grad((y.tanh() * y).sum(), list(net.parameters()))
    grads_t = torch.autograd.grad((yt.tanh() * yt).sum(), [twin[n] for n in names])
    for name, g, gt in zip(names, grads, grads_t):
        np.testing.assert_allclose(g.numpy(), gt.numpy(), rtol=1e-8, atol=1e-10, err_msg=name)
