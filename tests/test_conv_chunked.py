"""Convolution's chunked CPU schedule (ops._image_chunks and the _chunked_conv* helpers):
conv2d and both gradients run chunk by chunk over the images when the im2col columns are
large. The shapes here are small, so the tests shrink ``ops._CHUNK_COLUMN_BYTES`` to force
the chunks and compare against the same call run whole.

* The forward and the input gradient compute every output element with the same products
  in the same order whatever the chunks (a column of a GEMM does not depend on the other
  columns; col2im sums one image at a time), so with our kernels they are bit-exact.
* The weight gradient sums over images, chunk by chunk: it differs from the whole-batch
  sum only by float rounding, checked against the rigorous bound for two summation
  orders of the same terms (2 * n * u * sum of |terms|, n terms, unit roundoff u).
* Through the engine, chunked convolutions keep first and second derivatives (gradcheck
  and gradgradcheck in float64 with chunks forced).
"""
import numpy as np
import pytest

import tinygrad_meta as tgm
from tinygrad_meta import functional as F, ops
from tinygrad_meta.backends import cpu
from tinygrad_meta.backends.cpu import BACKEND
from tinygrad_meta.testing import gradcheck, gradgradcheck


@pytest.fixture
def kernels():
    """Our compiled kernels selected for the test (skipped when they are not built)."""
    if not cpu.kernel_info()["built"]:
        pytest.skip(f"compiled CPU kernels are not built ({cpu.kernel_info()['error']})")
    old = cpu.set_kernels("cython")
    yield
    cpu.set_kernels(old)


def _schedule(monkeypatch, chunk_bytes):
    """Chunks of about ``chunk_bytes`` for any batch larger than one chunk."""
    monkeypatch.setattr(ops, "_CHUNK_COLUMN_BYTES", chunk_bytes)
    monkeypatch.setattr(ops, "_CHUNKS_FROM", 1)


def _whole(monkeypatch):
    monkeypatch.setattr(ops, "_CHUNK_COLUMN_BYTES", 1 << 60)


def _per_image_bytes(c, o, length, itemsize, kernel=(3, 3)):
    return (c * kernel[0] * kernel[1] + o) * length * itemsize


def _three_ops(x, w, geometry):
    stride, padding, dilation = geometry
    out = ops._task_conv(x, w, stride, padding, dilation, 1, BACKEND)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
    grad_x = ops._task_conv_input_grad(g, w, x.shape[1:], stride, padding, dilation, 1, BACKEND)
    grad_w = ops._task_conv_weight_grad(x, g, w.shape[1:], stride, padding, dilation, 1, BACKEND)
    return out, g, grad_x, grad_w


def _weight_grad_bound(x, g, w, geometry):
    """2 * n * u * sum |x_tap| |g|: how far two summation orders of the weight gradient's
    n terms per element can be apart (each is within n * u * sum|terms| of the exact sum)."""
    stride, padding, dilation = geometry
    t, n = x.shape[:2]
    kernel = w.shape[-2:]
    cols = np.abs(ops._task_columns(np.abs(x), kernel, stride, padding, dilation, 1, BACKEND))
    rows = np.abs(ops._task_rows(g, 1))
    terms = cols.shape[-1]
    magnitude = np.matmul(rows.astype(np.float64), np.swapaxes(cols, -1, -2).astype(np.float64))
    return 2 * terms * np.finfo(x.dtype).eps / 2 * magnitude.reshape((t,) + tuple(w.shape[1:]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,stride,images_per_chunk", [
    ((1, 7, 3, 9, 9), 1, 3),     # 7 images in chunks of 3, 3 and 1
    ((1, 6, 4, 8, 8), 2, 1),     # one image per chunk, strided
    ((3, 5, 2, 6, 6), 1, 2),     # several tasks (vmap's task axis), each chunked
])
def test_chunked_schedule_equals_the_whole_batch(kernels, monkeypatch, dtype, shape, stride,
                                                 images_per_chunk):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((shape[0], 5, shape[2], 3, 3)).astype(dtype)
    geometry = ((stride, stride), (1, 1), (1, 1))
    _whole(monkeypatch)
    out, g, grad_x, grad_w = _three_ops(x, w, geometry)
    length = out.shape[-1] * out.shape[-2]
    per_image = _per_image_bytes(shape[2], 5, length, np.dtype(dtype).itemsize)
    _schedule(monkeypatch, per_image * images_per_chunk)
    chunks = ops._image_chunks(shape[1], w.shape[1:], length, np.dtype(dtype).itemsize, BACKEND)
    assert chunks is not None and max(c.stop - c.start for c in chunks) == images_per_chunk
    assert [c.start for c in chunks] == list(range(0, shape[1], images_per_chunk))
    out_c, _, grad_x_c, grad_w_c = _three_ops(x, w, geometry)
    np.testing.assert_array_equal(out_c, out)
    np.testing.assert_array_equal(grad_x_c, grad_x)
    assert grad_w_c.shape == grad_w.shape
    assert np.all(np.abs(grad_w_c - grad_w) <= _weight_grad_bound(x, g, w, geometry))


def test_chunks_are_even_and_cover_the_batch():
    be = BACKEND
    per_image = _per_image_bytes(64, 64, 196, 4)
    old = ops._CHUNK_COLUMN_BYTES, ops._CHUNKS_FROM
    try:
        ops._CHUNKS_FROM = 1
        ops._CHUNK_COLUMN_BYTES = int(per_image * 2.5)      # 100 images: 40 chunks of 2-3
        chunks = ops._image_chunks(100, (64, 64, 3, 3), 196, 4, be)
        sizes = [c.stop - c.start for c in chunks]
        assert sum(sizes) == 100 and max(sizes) - min(sizes) <= 2
        assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
        assert max(sizes) * per_image <= ops._CHUNK_COLUMN_BYTES * 1.5
    finally:
        ops._CHUNK_COLUMN_BYTES, ops._CHUNKS_FROM = old


def test_small_batches_and_other_backends_run_whole():
    # the defaults: a batch whose columns fit in a few MiB runs whole (the 64x3x3 layer)
    assert ops._image_chunks(100, (64, 64, 3, 3), 9, 4, BACKEND) is None
    # the 64x14x14 layer at N = 100 (columns 45 MB) is chunked
    assert ops._image_chunks(100, (64, 64, 3, 3), 196, 4, BACKEND) is not None

    class OtherBackend:
        name = "cuda"
    assert ops._image_chunks(100, (64, 64, 3, 3), 196, 4, OtherBackend()) is None
    # a weight per task (vmap): each task's images are one chunk on the CPU, never on
    # other backends; a large task is still cut as one large batch would be
    assert ops._image_chunks(25, (64, 64, 3, 3), 49, 4, BACKEND, tasks=32) == [slice(0, 25)]
    assert ops._image_chunks(25, (64, 64, 3, 3), 49, 4, BACKEND) is None
    assert ops._image_chunks(25, (64, 64, 3, 3), 49, 4, OtherBackend(), tasks=32) is None
    assert ops._image_chunks(100, (64, 64, 3, 3), 196, 4, BACKEND, tasks=2) == \
        ops._image_chunks(100, (64, 64, 3, 3), 196, 4, BACKEND)


def test_chunked_convolution_keeps_first_and_second_derivatives(kernels, monkeypatch):
    _schedule(monkeypatch, 1)     # one image per chunk
    rng = np.random.default_rng(3)
    x = tgm.Tensor(rng.standard_normal((3, 2, 5, 5)), dtype="float64", requires_grad=True)
    w = tgm.Tensor(rng.standard_normal((3, 2, 3, 3)), dtype="float64", requires_grad=True)

    def f(x, w):
        return F.conv2d(x, w, stride=1, padding=1)
    assert ops._image_chunks(3, (3, 2, 3, 3), 25, 8, BACKEND) is not None
    assert gradcheck(f, (x, w))
    assert gradgradcheck(f, (x, w))


def test_chunked_conv_compiles_bit_for_bit(monkeypatch, kernels):
    """tgm.compile replays a step whose convolutions run chunked, second order included
    (the chunk helpers join new arrays rather than writing into a preallocated one, which
    a trace cannot follow), and the replay equals eager bit for bit."""
    _schedule(monkeypatch, _per_image_bytes(2, 3, 36, 4) * 2)  # 2 images a chunk of 5
    rng = np.random.default_rng(0)
    w = tgm.Tensor(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), requires_grad=True)

    def step(images):
        loss = (F.conv2d(images, w, padding=1) ** 2).mean()
        (gw,) = tgm.grad(loss, [w], create_graph=True)
        (ggw,) = tgm.grad((gw * gw).sum(), [w])
        return loss, gw, ggw

    compiled = tgm.compile(step)
    for seed in range(3):  # trace, then two replays on new inputs
        images = tgm.Tensor(np.random.default_rng(seed).standard_normal((5, 2, 6, 6)).astype(np.float32))
        for a, b in zip(step(images), compiled(images)):
            assert np.array_equal(a.numpy(), b.numpy())
    assert compiled.cache_info().hits == 2
    assert ops._image_chunks(5, (3, 2, 3, 3), 36, 4, BACKEND) is not None  # it did chunk
