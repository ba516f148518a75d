"""Helpers shared by the op test files: float64 inputs drawn from a grid, and
first- plus second-order checks on whole Jacobians.

Grid values k/10 + 0.05 are never 0, never +-0.5 or +-1 exactly, and pairwise at least
0.1 apart: they stay away from the kinks of relu/abs/clip, and max/min never tie unless
a test asks for ties.
"""
import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_meta as tgm
from tinygrad_meta.testing import gradcheck, gradgradcheck, shapes

EXAMPLES = settings(max_examples=30, deadline=None)

grid = st.integers(-20, 19).map(lambda k: k / 10 + 0.05)


def arrays(shape, elements=grid, unique=False):
    return hnp.arrays(np.float64, shape, elements=elements, unique=unique)


def T(array):
    return tgm.Tensor(array, dtype="float64")


def check_orders_1_and_2(f, *inputs):
    """gradcheck and gradgradcheck, both in float64, on whole Jacobians (these inputs are
    small enough that comparing every entry is cheap; random projections would be weaker)."""
    assert gradcheck(f, list(inputs), mode="full")
    assert gradgradcheck(f, list(inputs), mode="full")


def assert_forward(result, expected):
    assert result.dtype == np.float64
    assert result.shape == np.shape(expected)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12, atol=1e-12)


@st.composite
def shape_and_axis(draw, max_dims=3):
    """A shape, an axis argument for it (None, an int or a tuple) and keepdims."""
    shape = draw(shapes(max_dims=max_dims))
    ndim = len(shape)
    choices = [st.none()]
    if ndim:
        choices.append(st.integers(-ndim, ndim - 1))
        choices.append(st.lists(st.integers(0, ndim - 1), unique=True, min_size=1).map(tuple))
    return shape, draw(st.one_of(*choices)), draw(st.booleans())
