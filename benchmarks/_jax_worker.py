"""The JAX side of the benchmarks, in its own process (JAX is never a dependency).

Started by ``benchmarks/_jax.py`` with the problem in an .npz file; jit-compiles each
named step, prints ``ready``, then answers lines ``<name> <calls>`` with one line of
JSON: the seconds of each call. Nothing of tinygrad_meta is imported here, so JAX may
come with its own numpy (``TGM_JAX_PATH`` on ``PYTHONPATH``).

Steps (written as a JAX user would: one ``jit`` around the whole iteration):

* ``maml2`` / ``maml1`` -- sinusoid MAML meta-iteration, second / first order:
  ``jit(value_and_grad(mean(vmap(task_loss))))`` and the outer Adam update, as in
  benchmarks/maml.py (MLP [1, 40, 40, 1] ReLU, one inner SGD step);
* ``grad`` / ``hvp`` -- MLP 64-256-256-10 tanh, softmax cross-entropy, batch 64: the
  gradient, and the Hessian-vector product by reverse over reverse.
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def mlp(params, x, activation):
    for i, (w, b) in enumerate(params):
        x = x @ w.T + b  # weights (out, in), as ours and PyTorch's
        if i < len(params) - 1:
            x = activation(x)
    return x


def maml_step(data, first_order):
    inner_lr, meta_lr = float(data["inner_lr"]), float(data["meta_lr"])
    layers = int(data["maml_layers"])
    params = [(jnp.asarray(data[f"maml_w{i}"]), jnp.asarray(data[f"maml_b{i}"])) for i in range(layers)]

    def loss(p, x, y):
        return jnp.mean((mlp(p, x, jax.nn.relu) - y) ** 2)

    def task_loss(p, sx, sy, qx, qy):
        g = jax.grad(loss)(p, sx, sy)
        if first_order:
            g = jax.lax.stop_gradient(g)
        fast = jax.tree_util.tree_map(lambda a, b: a - inner_lr * b, p, g)
        return loss(fast, qx, qy)

    def meta_loss(p, sx, sy, qx, qy):
        return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(p, sx, sy, qx, qy))

    @jax.jit
    def step(p, m, v, t, sx, sy, qx, qy):
        value, g = jax.value_and_grad(meta_loss)(p, sx, sy, qx, qy)
        t = t + 1
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        scale = meta_lr * jnp.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        p = jax.tree_util.tree_map(lambda a, mm, vv: a - scale * mm / (jnp.sqrt(vv) + 1e-8), p, m, v)
        return p, m, v, t, value

    batches = [tuple(data[f"batch{i}_{k}"] for k in range(4)) for i in range(int(data["batches"]))]
    state = [params, jax.tree_util.tree_map(jnp.zeros_like, params),
             jax.tree_util.tree_map(jnp.zeros_like, params), jnp.asarray(0.0)]
    calls = [0]

    def run():
        batch = batches[calls[0] % len(batches)]
        calls[0] += 1
        p, m, v, t, value = step(*state, *batch)
        state[:] = [p, m, v, t]
        return float(value)  # ours returns the loss as a float too
    return run


def hvp_steps(data):
    layers = int(data["hvp_layers"])
    params = [(jnp.asarray(data[f"hvp_w{i}"]), jnp.asarray(data[f"hvp_b{i}"])) for i in range(layers)]
    vector = [(jnp.asarray(data[f"hvp_vw{i}"]), jnp.asarray(data[f"hvp_vb{i}"])) for i in range(layers)]
    x, labels = jnp.asarray(data["hvp_x"]), jnp.asarray(data["hvp_labels"])

    def loss(p):
        logits = mlp(p, x, jnp.tanh)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    gradient = jax.jit(jax.grad(loss))

    @jax.jit
    def hvp(p, v):  # reverse over reverse, as ours
        return jax.grad(lambda q: sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss)(q)),
                                                                     jax.tree_util.tree_leaves(v))))(p)

    def run_grad():
        jax.block_until_ready(gradient(params))

    def run_hvp():
        jax.block_until_ready(hvp(params, vector))
    return run_grad, run_hvp, gradient(params), hvp(params, vector)


def main():
    data = dict(np.load(sys.argv[1]))
    steps = {}
    if "maml_layers" in data:
        steps["maml2"] = maml_step(data, first_order=False)
        steps["maml1"] = maml_step(data, first_order=True)
    if "hvp_layers" in data:
        steps["grad"], steps["hvp"], g, h = hvp_steps(data)
        np.savez(sys.argv[1] + ".out.npz",
                 **{f"grad{i}": np.asarray(a) for i, a in enumerate(jax.tree_util.tree_leaves(g))},
                 **{f"hvp{i}": np.asarray(a) for i, a in enumerate(jax.tree_util.tree_leaves(h))})
    for run in steps.values():  # compile and warm up
        for _ in range(5):
            run()
    print(f"ready jax {jax.__version__} {jax.devices()[0].platform}", flush=True)
    for line in sys.stdin:
        name, calls = line.split()
        run = steps[name]
        times = []
        for _ in range(int(calls)):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)


if __name__ == "__main__":
    main()
