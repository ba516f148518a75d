"""PyTorch twins of our few-shot learners, for the benchmarks only (torch is never a dependency).

The network is our ``nn.omniglot_convnet`` (or the fully connected ``--model mlp`` net)
written as a plain function of a dict of torch tensors copied from our parameters, so
both engines start from the same weights. Batch norm runs as ours does: the batch's
statistics in training, running statistics (PyTorch's update rule, momentum 0.1, which
ours follows) in the ProtoNet variant's eval mode.

* ``ProtoNetTwin``: prototypes, negative squared distances, cross-entropy, Adam.
* ``MAMLTwin``: MAML with SGD inner steps on each task (a loop over tasks with
  ``torch.autograd.grad``, ``create_graph`` for second order), outer Adam.
"""
from __future__ import annotations

import numpy as np

import torch
import torch.nn.functional as F

__all__ = ["torch_parameters", "torch_buffers", "network", "ProtoNetTwin", "MAMLTwin"]


def torch_parameters(module):
    """Our module's parameters as torch leaves (copies), by our names."""
    return {name: torch.tensor(np.array(p.numpy()), requires_grad=True)
            for name, p in module.parameter_dict().items()}


def torch_buffers(module):
    """Our module's batch-norm running statistics as torch tensors (copies), by our names."""
    return {name: torch.tensor(np.array(value)) for name, value in module.state_dict().items()
            if name.endswith(("running_mean", "running_var"))}


def network(kind, variant):
    """``forward(params, buffers, x, training) -> output``: our network's forward in torch.

    ``kind``: "conv" (``nn.omniglot_convnet``) or "mlp" (tasks.fewshot.fully_connected_net);
    ``variant``: "protonet" (max-pool blocks, an embedding) or "maml" (strided blocks, a head).
    """
    if kind == "mlp":
        def forward_mlp(params, buffers, x, training=True):
            x = x.reshape(x.shape[0], -1)
            layers = sorted({int(name.split(".")[2]) for name in params})
            for index in layers:
                x = F.linear(x, params[f"1.layers.{index}.weight"], params[f"1.layers.{index}.bias"])
                if index != layers[-1]:
                    x = torch.relu(x)
            return x
        return forward_mlp

    def forward_conv(params, buffers, x, training=True):
        for block in range(4):
            prefix = f"blocks.{block}"
            stride = 2 if variant == "maml" else 1
            x = F.conv2d(x, params[f"{prefix}.0.weight"], params[f"{prefix}.0.bias"], stride=stride, padding=1)
            mean, var = buffers.get(f"{prefix}.1.running_mean"), buffers.get(f"{prefix}.1.running_var")
            x = F.batch_norm(x, mean, var, params[f"{prefix}.1.weight"], params[f"{prefix}.1.bias"],
                             training=training or mean is None, momentum=0.1, eps=1e-5)
            x = torch.relu(x)
            if variant == "protonet":
                x = F.max_pool2d(x, 2)
        if variant == "maml":
            return F.linear(x.mean(dim=(2, 3)), params["head.weight"], params["head.bias"])
        return x.reshape(x.shape[0], -1)
    return forward_conv


class ProtoNetTwin:
    """ProtoNet on a torch copy of ``module`` (our embedding net), trained with Adam(lr)."""

    def __init__(self, module, kind="conv", lr=1e-3):
        self.params, self.buffers = torch_parameters(module), torch_buffers(module)
        self.forward = network(kind, "protonet")
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=lr)

    def logits(self, support_x, support_y, query_x, training):
        tasks, shots = support_y.shape
        queries = query_x.shape[1]
        images = torch.cat([support_x.reshape((tasks * shots,) + support_x.shape[2:]),
                            query_x.reshape((tasks * queries,) + query_x.shape[2:])])
        embedded = self.forward(self.params, self.buffers, images, training)
        support = embedded[:tasks * shots].reshape(tasks, shots, -1)
        query = embedded[tasks * shots:].reshape(tasks, queries, -1)
        ways = int(support_y.max()) + 1
        one_hot = F.one_hot(support_y, ways).to(support.dtype).transpose(1, 2)        # (T, N, S)
        prototypes = one_hot @ support / one_hot.sum(dim=2, keepdim=True)
        return -((query[:, :, None, :] - prototypes[:, None, :, :]) ** 2).sum(dim=-1)

    def step(self, batch, lr=None):
        support_x, support_y, query_x, query_y = (torch.from_numpy(np.asarray(a)) for a in batch)
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.zero_grad()
        logits = self.logits(support_x, support_y, query_x, training=True)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), query_y.reshape(-1))
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def accuracy(self, batch):
        support_x, support_y, query_x, query_y = (torch.from_numpy(np.asarray(a)) for a in batch)
        with torch.no_grad():
            logits = self.logits(support_x, support_y, query_x, training=False)
        return (logits.argmax(dim=-1) == query_y).double().mean(dim=1).numpy()


class MAMLTwin:
    """MAML on a torch copy of ``module`` (our classifier net): per-task SGD inner steps."""

    def __init__(self, module, kind="conv", inner_lr=0.4, inner_steps=1, first_order=False, lr=1e-3):
        self.params, self.buffers = torch_parameters(module), torch_buffers(module)
        self.forward = network(kind, "maml")
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=lr)

    def _loss(self, params, x, y):
        return F.cross_entropy(self.forward(params, self.buffers, x, True), y)

    def _adapt(self, x, y, steps, create_graph):
        fast = dict(self.params)
        names = list(fast)
        for _ in range(steps):
            grads = torch.autograd.grad(self._loss(fast, x, y), [fast[n] for n in names],
                                        create_graph=create_graph)
            fast = {n: fast[n] - self.inner_lr * g for n, g in zip(names, grads)}
        return fast

    def step(self, batch):
        support_x, support_y, query_x, query_y = (torch.from_numpy(np.asarray(a)) for a in batch)
        self.optimizer.zero_grad()
        total = 0.0
        for t in range(support_x.shape[0]):
            fast = self._adapt(support_x[t], support_y[t], self.inner_steps, not self.first_order)
            total = total + self._loss(fast, query_x[t], query_y[t])
        loss = total / support_x.shape[0]
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def accuracy(self, batch, steps):
        support_x, support_y, query_x, query_y = (torch.from_numpy(np.asarray(a)) for a in batch)
        scores = []
        for t in range(support_x.shape[0]):
            fast = {n: p.detach().requires_grad_(True) for n, p in self._adapt(support_x[t], support_y[t],
                                                                              steps, False).items()}
            with torch.no_grad():
                scores.append(float((self.forward(fast, self.buffers, query_x[t], True).argmax(dim=-1)
                                     == query_y[t]).double().mean()))
        return np.array(scores)
