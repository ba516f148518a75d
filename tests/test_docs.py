"""The walkthrough quotes only numbers docs/make_figures.py produces, and its figures stay legible.

docs/figures/numbers.json holds each quoted number's value and text (written by a full
``python docs/make_figures.py``); here the cheap, deterministic numbers are recomputed in
fast mode and compared with it, and the page must contain every quoted text.
"""
import importlib.util
import json
import os
import re
import struct

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGE = os.path.join(DOCS, "how-backprop-through-backprop-works.md")
NUMBERS = os.path.join(DOCS, "figures", "numbers.json")
# 800 px is the README's width; an SVG's pt are drawn at 4/3 px, and text 10 pt wide at
# 900 pt still renders at about 6.5 px when the page scales it down to 800 px: the limit
LEGIBLE_SVG_PT = 900
LEGIBLE_PNG_PX = 800


def _flat(text):
    return re.sub(r"\s+", " ", text)


def _page():
    with open(PAGE, encoding="utf-8") as handle:
        return handle.read()


def _numbers():
    with open(NUMBERS, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", os.path.join(DOCS, "make_figures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fast_numbers(make_figures):
    return make_figures.compute(fast=True, figures=False).items


def test_the_page_quotes_every_number_make_figures_wrote():
    page = _flat(_page())
    missing = [key for key, item in _numbers().items() if _flat(item["text"]) not in page]
    assert not missing, f"the walkthrough does not quote: {missing}"


def test_the_cheap_numbers_recomputed_now_match_numbers_json(fast_numbers):
    stored = _numbers()
    assert len(fast_numbers) >= 30  # the fast mode really computes most of them
    for key, item in fast_numbers.items():
        assert key in stored, f"{key} is computed but not in numbers.json: rerun docs/make_figures.py"
        now, then = json.loads(json.dumps(item["value"])), stored[key]["value"]
        if isinstance(then, float) and then < 1e-12:
            # rounding-level differences (2.2e-16 here, 4.4e-16 on another BLAS) are
            # the claim "equal to rounding", not a value to reproduce digit for digit
            assert now < 1e-12, key
        elif isinstance(then, float):
            # a cosine of float32 gradients: the last printed digit may move with the
            # summation order of another machine's kernels
            assert now == pytest.approx(then, abs=2e-3), key
        else:
            assert now == then, key
            assert item["text"] == stored[key]["text"], key


def test_the_second_grad_call_adds_nodes_of_two_depths(fast_numbers):
    # the error this page once made: colour is the rule depth, not the pass
    ops, by_depth, added, added_by_depth = fast_numbers["table_order2"]["value"]
    assert added == 19 and set(added_by_depth) == {1, 2}
    assert fast_numbers["d2y_is_depth"]["value"] == 1


def test_maml_extra_memory_is_activations_not_the_weight_gradient(fast_numbers):
    extra = fast_numbers["maml_extra_bytes"]["value"]
    assert fast_numbers["extra_activation_bytes"]["value"] <= extra
    # both graphs hold a (25, 40, 40) per-task gradient of their own
    assert len(fast_numbers["fomaml_weight_arrays"]["value"]) == 2
    assert len(fast_numbers["maml_weight_arrays"]["value"]) == 2


def test_the_product_formulas_hold_to_rounding(fast_numbers):
    for key in ("identity_1step", "identity_3step", "hyper_formula_difference",
                "momentum_formula_difference"):
        assert fast_numbers[key]["value"] < 1e-12, key


def _embedded_figures():
    """Paths (relative to docs/) of the pictures the walkthrough and the README show inline."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = re.findall(r"!\[[^\]]*\]\(docs/(figures/[^)]+)\)", handle.read())
    return re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", _page()) + readme


def test_embedded_figures_exist_and_fit_the_readme_width():
    figures = _embedded_figures()
    assert any(f.endswith(".svg") for f in figures) and any(f.endswith(".png") for f in figures)
    for figure in figures:
        path = os.path.join(DOCS, figure)
        assert os.path.exists(path), figure
        if figure.endswith(".svg"):
            with open(path, encoding="utf-8") as handle:
                svg = handle.read()
            width = float(re.search(r'<svg width="([\d.]+)pt"', svg).group(1))
            assert width <= LEGIBLE_SVG_PT, f"{figure} is {width} pt wide"
            assert "depth 0: recorded by the forward pass" in svg, f"{figure} has no legend"
        else:
            with open(path, "rb") as handle:
                header = handle.read(24)
            assert header[:8] == b"\x89PNG\r\n\x1a\n", figure
            width = struct.unpack(">I", header[16:20])[0]
            assert width <= LEGIBLE_PNG_PX, f"{figure} is {width} px wide"


def test_every_figure_the_page_links_is_committed():
    for link in re.findall(r"\]\((figures/[^)]+)\)", _page()):
        assert os.path.exists(os.path.join(DOCS, link)), link
