"""Time JAX next to ours: a worker process (benchmarks/_jax_worker.py) we alternate with.

JAX is found on the normal path, or in the folder ``TGM_JAX_PATH`` names (e.g. after
``pip install --target /tmp/jaxenv "jax[cpu]"``, so the project's environment stays as
it is). ``JaxWorker(arrays)`` returns None-like ``available = False`` when JAX cannot be
started, with the reason in ``why``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


class JaxWorker:
    """The JAX process: ``times(name, calls)`` -> list of seconds per call."""

    def __init__(self, arrays):
        self.available, self.why, self.version, self.outputs = False, "", "", {}
        handle, self.path = tempfile.mkstemp(suffix=".npz")
        os.close(handle)
        np.savez(self.path, **arrays)
        env = dict(os.environ)
        extra = os.environ.get("TGM_JAX_PATH")
        # only the JAX folder: the worker must not pick up this repository's packages
        env["PYTHONPATH"] = extra or ""
        try:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "_jax_worker.py"), self.path], env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except OSError as error:
            self.why = str(error)
            return
        line = self.process.stdout.readline()
        if not line.startswith("ready"):
            self.why = (self.process.stderr.read().strip().splitlines() or ["no output"])[-1]
            self.process.wait()
            return
        self.available, self.version = True, line.split(maxsplit=1)[1].strip()
        if os.path.exists(self.path + ".out.npz"):
            self.outputs = dict(np.load(self.path + ".out.npz"))

    def times(self, name, calls):
        self.process.stdin.write(f"{name} {calls}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self):
        if self.available:
            self.process.stdin.close()
            self.process.wait()
        for path in (self.path, self.path + ".out.npz"):
            if os.path.exists(path):
                os.remove(path)
