"""Layers for images, PyTorch-style (``tgm.nn.Conv2d`` and friends), and the standard
4-block convolutional network of few-shot Omniglot.

Inputs are (N, C, H, W). ``BatchNorm2d``'s running statistics are buffers: state that
``state_dict()`` saves and ``load_state_dict()`` restores, not parameters (no optimizer or
meta-learner updates them). Every layer runs unchanged under ``tgm.vmap`` and
``tgm.func.functional_call``, which is how the meta-learners run it per task.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import functional as F
from .convolution import _pair_of, _pool_arguments
from .nn import Linear, Module, ModuleList, ReLU, Sequential, _resolve_rng
from .tensor import Tensor

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm2d", "LayerNorm", "OmniglotConvNet",
           "omniglot_convnet"]

CONV_INITS = ("default", "maml")


def _positive_int(value, name, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: {what} must be a positive integer, got {value!r}")
    return int(value)


class Conv2d(Module):
    """2-D convolution, as ``torch.nn.Conv2d``: weight (out_channels, in_channels // groups,
    kh, kw), bias (out_channels,).

    ``init="default"``: weight and bias uniform in ±1/sqrt(fan_in), fan_in = in_channels //
    groups * kh * kw (PyTorch's default, kaiming-uniform with a = sqrt(5)). ``init="maml"``:
    Glorot-uniform weight (fans counting the receptive field, as TensorFlow's
    ``xavier_initializer_conv2d`` in the MAML code), zero bias. ``rng``: a numpy Generator
    or int seed.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> conv = Conv2d(1, 8, 3, padding=1, rng=0)
    >>> conv.weight.shape, conv(tgm.Tensor(np.zeros((2, 1, 28, 28)))).shape
    ((8, 1, 3, 3), (2, 8, 28, 28))
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype="float32", device="cpu", init="default", rng=None):
        super().__init__()
        name = "Conv2d"
        in_channels = _positive_int(in_channels, name, "in_channels")
        out_channels = _positive_int(out_channels, name, "out_channels")
        groups = _positive_int(groups, name, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: groups={groups} must divide in_channels ({in_channels}) and "
                             f"out_channels ({out_channels})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair_of(kernel_size, name, "kernel_size", 1)
        self.stride = _pair_of(stride, name, "stride", 1)
        self.padding = _pair_of(padding, name, "padding", 0)
        self.dilation = _pair_of(dilation, name, "dilation", 1)
        rng = _resolve_rng(rng)
        kh, kw = self.kernel_size
        shape = (out_channels, in_channels // groups, kh, kw)
        fan_in = in_channels // groups * kh * kw
        if init == "default":
            bound = 1.0 / math.sqrt(fan_in)
            weight = rng.uniform(-bound, bound, shape)
            bias_value = rng.uniform(-bound, bound, (out_channels,))
        elif init == "maml":
            fan_out = out_channels // groups * kh * kw
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight = rng.uniform(-bound, bound, shape)
            bias_value = np.zeros(out_channels)
        else:
            raise ValueError(f"{name}: unknown init {init!r}; use one of {CONV_INITS}")
        self.weight = Tensor(weight, dtype=dtype, device=device, requires_grad=True)
        self.bias = Tensor(bias_value, dtype=dtype, device=device, requires_grad=True) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


class MaxPool2d(Module):
    """``functional.max_pool2d`` as a module (no parameters); ``stride`` defaults to the kernel.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> MaxPool2d(2)(tgm.Tensor(np.zeros((1, 3, 7, 7)))).shape
    (1, 3, 3, 3)
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        # check the arguments now, not at the first call
        _pool_arguments(kernel_size, stride, padding, dilation, "MaxPool2d")

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """``functional.avg_pool2d`` as a module (no parameters).

    >>> import numpy as np, tinygrad_meta as tgm
    >>> AvgPool2d(2)(tgm.Tensor(np.ones((1, 1, 4, 4)))).numpy().reshape(-1).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = bool(count_include_pad)
        _pool_arguments(kernel_size, stride, padding, 1, "AvgPool2d")

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                            count_include_pad=self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) for each channel of (N, C, H, W) inputs, as
    ``torch.nn.BatchNorm2d``.

    ``affine=True``: a learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
    ``track_running_stats=True``: buffers ``running_mean`` (zeros), ``running_var`` (ones)
    and ``num_batches_tracked``, updated in training mode with ``momentum``; eval mode
    (``module.eval()``) normalises with them. ``track_running_stats=False``: always the
    batch's statistics, in both modes (MAML's reference code does this).

    >>> import numpy as np, tinygrad_meta as tgm
    >>> bn = BatchNorm2d(3)
    >>> [name for name, _ in bn.named_parameters()], [name for name, _ in bn.named_buffers()]
    (['weight', 'bias'], ['running_mean', 'running_var', 'num_batches_tracked'])
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype="float32", device="cpu"):
        super().__init__()
        name = "BatchNorm2d"
        self.num_features = _positive_int(num_features, name, "num_features")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
            raise ValueError(f"{name}: momentum must be a number in [0, 1] (momentum=None, the "
                             f"cumulative average, is not supported), got {momentum!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        n = self.num_features
        if self.affine:
            self.weight = Tensor(np.ones(n), dtype=dtype, device=device, requires_grad=True)
            self.bias = Tensor(np.zeros(n), dtype=dtype, device=device, requires_grad=True)
        else:
            self.weight = self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(n), dtype=dtype, device=device))
            self.register_buffer("running_var", Tensor(np.ones(n), dtype=dtype, device=device))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0), dtype="int64", device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x):
        return self._normalize(x, F.batch_norm)

    def forward_relu(self, x):
        """``relu(self(x))``, in training mode as one fused node (``F.batch_norm_relu``)."""
        return self._normalize(x, F.batch_norm_relu)

    def _normalize(self, x, function):
        if isinstance(x, Tensor) and x.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected a 4-D input (N, C, H, W), got shape {x.shape}")
        use_batch_stats = self.training or not self.track_running_stats
        if self.training and self.track_running_stats:
            # under vmap each example is one batch, as in a loop over them
            examples = x._data.ndim - x.ndim
            count = int(np.prod(x._data.shape[:examples])) if examples else 1
            self.num_batches_tracked._data = self.num_batches_tracked._data + count
        return function(x, self.running_mean, self.running_var, self.weight, self.bias,
                        training=use_batch_stats, momentum=self.momentum, eps=self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` axes, as
    ``torch.nn.LayerNorm``: learnable ``weight`` (ones) and ``bias`` (zeros) of that shape
    when ``elementwise_affine``.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> LayerNorm(4)(tgm.Tensor(np.arange(8.0).reshape(2, 4))).shape
    (2, 4)
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype="float32", device="cpu"):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else \
            tuple(normalized_shape)
        self.normalized_shape = tuple(_positive_int(n, "LayerNorm", "normalized_shape") for n in shape)
        if not self.normalized_shape:
            raise ValueError("LayerNorm: normalized_shape must not be empty")
        self.eps = float(eps)
        affine = bool(elementwise_affine)
        self.weight = Tensor(np.ones(self.normalized_shape), dtype=dtype, device=device,
                             requires_grad=True) if affine else None
        self.bias = Tensor(np.zeros(self.normalized_shape), dtype=dtype, device=device,
                           requires_grad=True) if affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


VARIANTS = ("maml", "protonet")


def _run_block(block, x):
    """``block(x)`` for a Sequential block; a BatchNorm2d followed by a ReLU in it (exact
    types: a subclass may override forward) runs as one fused node (``forward_relu``)."""
    steps = block._steps if type(block) is Sequential else None
    if steps is None:
        return block(x)
    index = 0
    while index < len(steps):
        step = steps[index]
        if (type(step) is BatchNorm2d and index + 1 < len(steps)
                and type(steps[index + 1]) is ReLU):
            x = step.forward_relu(x)
            index += 2
        else:
            x = step(x)
            index += 1
    return x


class OmniglotConvNet(Module):
    """The 4-block convolutional network of few-shot Omniglot (Vinyals et al. 2016's
    embedding, used by MAML and Prototypical Networks): each block a 3x3 convolution with
    ``filters`` channels, batch norm and ReLU.

    * ``variant="maml"`` (Finn et al. 2017, Omniglot): stride-2 convolutions with padding 1
      instead of pooling (28 -> 14 -> 7 -> 4 -> 2), the mean over the final 2x2 map (as the
      reference code's ``reduce_mean``: a ``filters``-d vector), then a Linear layer to
      ``ways`` logits. Batch norm uses the batch's statistics in every mode, as the
      reference code (``track_running_stats=False``).
    * ``variant="protonet"`` (Snell et al. 2017): padding-1 convolutions, each block followed
      by 2x2 max pooling (28 -> 14 -> 7 -> 3 -> 1), giving a ``filters``-d embedding; no
      head unless ``ways`` is given. Batch norm keeps running statistics (PyTorch's default).

    ``init``: the convolutions' initialisation (``Conv2d``'s; the head is a default
    ``Linear``). ``track_running_stats``: None takes the variant's choice above.

    Input (N, in_channels, image_size, image_size); output (N, ways) or (N, filters).
    Parameters are named "blocks.0.0.weight" (conv), "blocks.0.1.weight" (batch norm), ...,
    "head.weight". ``out_features``: the size of the output.
    """

    def __init__(self, ways=None, variant="maml", filters=64, in_channels=1, image_size=28,
                 rng=None, dtype="float32", device="cpu", init="default", track_running_stats=None):
        super().__init__()
        name = "omniglot_convnet"
        if variant not in VARIANTS:
            raise ValueError(f"{name}: unknown variant {variant!r}; use one of {VARIANTS}")
        if ways is None and variant == "maml":
            raise ValueError(f"{name}: the MAML variant classifies: give ways (the number of classes)")
        if ways is not None:
            ways = _positive_int(ways, name, "ways")
        filters = _positive_int(filters, name, "filters")
        in_channels = _positive_int(in_channels, name, "in_channels")
        size = _positive_int(image_size, name, "image_size")
        rng = _resolve_rng(rng)
        if track_running_stats is None:
            track_running_stats = variant == "protonet"
        self.variant, self.ways, self.filters = variant, ways, filters
        blocks, channels = [], in_channels
        for _ in range(4):
            if variant == "maml":
                conv = Conv2d(channels, filters, 3, stride=2, padding=1, dtype=dtype, device=device,
                              init=init, rng=rng)
                size = (size + 2 - 3) // 2 + 1
                steps = [conv, BatchNorm2d(filters, track_running_stats=track_running_stats,
                                           dtype=dtype, device=device), ReLU()]
            else:
                conv = Conv2d(channels, filters, 3, padding=1, dtype=dtype, device=device, init=init,
                              rng=rng)
                size //= 2
                steps = [conv, BatchNorm2d(filters, track_running_stats=track_running_stats,
                                           dtype=dtype, device=device), ReLU(), MaxPool2d(2)]
            if size < 1:
                raise ValueError(f"{name}: image_size {image_size} is too small for four blocks")
            blocks.append(Sequential(*steps))
            channels = filters
        self.blocks = ModuleList(blocks)
        self.final_size = size
        features = filters if variant == "maml" else filters * size * size
        self.head = None if ways is None else Linear(features, ways, dtype=dtype, device=device,
                                                     init="default", rng=rng)
        self.out_features = features if ways is None else ways

    def forward(self, x):
        if isinstance(x, Tensor) and x.ndim != 4:
            raise ValueError(f"OmniglotConvNet: expected (N, C, H, W) images, got shape {x.shape}")
        for block in self.blocks:
            x = _run_block(block, x)
        x = x.mean(axis=(2, 3)) if self.variant == "maml" else x.reshape(x.shape[0], -1)
        return x if self.head is None else self.head(x)

    def extra_repr(self):
        return f"variant={self.variant!r}, ways={self.ways}, filters={self.filters}"


def omniglot_convnet(ways=None, variant="maml", filters=64, in_channels=1, image_size=28, seed=None,
                     dtype="float32", device="cpu", init="default", track_running_stats=None):
    """The standard 4-block Omniglot network (see :class:`OmniglotConvNet`); ``seed``: an int
    or numpy Generator for the initial weights.

    >>> import numpy as np, tinygrad_meta as tgm
    >>> net = tgm.nn.omniglot_convnet(5, variant="maml", seed=0)
    >>> net(tgm.Tensor(np.zeros((3, 1, 28, 28)))).shape
    (3, 5)
    >>> tgm.nn.omniglot_convnet(variant="protonet", seed=0)(tgm.Tensor(np.zeros((3, 1, 28, 28)))).shape
    (3, 64)
    """
    return OmniglotConvNet(ways, variant, filters, in_channels, image_size, rng=seed, dtype=dtype,
                           device=device, init=init, track_running_stats=track_running_stats)
