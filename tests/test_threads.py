"""Grad mode, the backward pass's own mode switch and the origin tag are per thread: two
threads training two MAML models while a third works under no_grad get, bit for bit,
what each gets alone."""
import sys
import threading

import numpy as np

import tinygrad_meta as tgm
from tinygrad_meta.meta import MAML
from tinygrad_meta.nn import MLP
from tinygrad_meta.optim import Adam
from tinygrad_meta.tasks.sinusoid import sample_batch

STEPS = 25


def train_maml(seed, first_order=False):
    """Meta-train a small MAML model; every meta-loss and meta-gradient, as numpy arrays."""
    model = MLP([1, 16, 16, 1], dtype="float64", rng=np.random.default_rng(seed))
    maml = MAML(model, inner_lr=0.05, inner_steps=2, first_order=first_order)
    opt = Adam(maml.meta_parameters(), lr=1e-3)
    rng = np.random.default_rng(100 + seed)
    history = []
    for _ in range(STEPS):
        batch = sample_batch(num_tasks=4, shots=5, rng=rng)
        batch = tuple(np.asarray(a, dtype=np.float64) for a in batch)
        loss, grads = maml.meta_step(batch)
        history.append(float(loss))
        history.extend(g.numpy().copy() for g in grads.values())
        opt.step(grads)
    return history


def no_grad_worker(stop, seen):
    x = tgm.Tensor(np.ones((8, 8)), requires_grad=True)
    while not stop.is_set():
        with tgm.no_grad():
            y = (x * 2.0).tanh().sum()
        seen.append(y.requires_grad)


def assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_two_training_threads_and_a_no_grad_thread_get_their_single_threaded_results():
    alone = {0: train_maml(0), 1: train_maml(1, first_order=True)}
    results, errors = {}, []
    stop, seen = threading.Event(), []

    def run(seed, first_order):
        try:
            results[seed] = train_maml(seed, first_order)
        except BaseException as error:  # reported below, with the thread it came from
            errors.append((seed, error))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the three interleave op by op
    try:
        workers = [threading.Thread(target=run, args=(0, False)),
                   threading.Thread(target=run, args=(1, True)),
                   threading.Thread(target=no_grad_worker, args=(stop, seen))]
        for worker in workers:
            worker.start()
        workers[0].join()
        workers[1].join()
        stop.set()
        workers[2].join()
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors
    assert_same(results[0], alone[0])
    assert_same(results[1], alone[1])
    assert seen and not any(seen)          # the no_grad thread never recorded a graph
    assert tgm.is_grad_enabled()           # and nobody turned grad mode off here


def test_no_grad_in_one_thread_leaves_another_recording():
    inside, outside = threading.Event(), threading.Event()
    recorded = []

    def under_no_grad():
        with tgm.no_grad():
            inside.set()
            outside.wait(5)

    worker = threading.Thread(target=under_no_grad)
    worker.start()
    inside.wait(5)
    x = tgm.Tensor([1.0], requires_grad=True)
    recorded.append((x * 3.0).requires_grad)
    outside.set()
    worker.join()
    assert recorded == [True]


def test_a_new_thread_starts_with_grad_enabled():
    seen = []
    with tgm.no_grad():
        worker = threading.Thread(target=lambda: seen.append(tgm.is_grad_enabled()))
        worker.start()
        worker.join()
    assert seen == [True]
