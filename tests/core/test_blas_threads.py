"""The fast BLAS's thread policy (mlx_zoo.blas, issue 30): adaptive by default (each large
product shape timed on one thread and on every available core), fixed by
``MLX_ZOO_BLAS_THREADS`` or ``set_blas_threads``, a user's ``OPENBLAS_NUM_THREADS`` left alone.
Checked by what the shim records and reports, in fresh interpreters -- never by timing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from mlx_zoo import blas

LINUX = sys.platform.startswith("linux")
CC = shutil.which(os.environ.get("CC", "cc"))
PIP_BLAS = blas._scipy_openblas32() if LINUX else []

pytestmark = pytest.mark.skipif(not (LINUX and PIP_BLAS and CC),
                                reason="the policy lives in the gemv shim: needs Linux, the "
                                       "scipy-openblas32 wheel and a C compiler")

PROBE = """
import json, os, sys
{before}
import numpy as np, mlx_zoo, mlx.core as mx
from mlx_zoo import blas
{after}
rng = np.random.default_rng(0)
a, w = (rng.standard_normal(s).astype(np.float32) for s in ((64, 256), (256, 384)))
errors = []
for _ in range(6):  # one shape: timed on both thread counts while it is new
    out = np.array(mx.array(a) @ mx.array(w), np.float64)
    errors.append(float(np.abs(out - a.astype(np.float64) @ w).max()))
small = np.array(mx.ones((4, 4)) @ mx.ones((4, 4)))
shim = blas._shim
print(json.dumps({{"threads": blas.blas_status().threads, "cores": blas.available_cores(),
                  "large": shim.mlx_zoo_blas_tried(64, 384, 256),
                  "small": shim.mlx_zoo_blas_tried(4, 4, 4),
                  "now": shim.mlx_zoo_blas_threads_now(), "error": max(errors),
                  "timeout_left": "OPENBLAS_THREAD_TIMEOUT" in os.environ}}))
"""


def probe(before: str = "", after: str = "", **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items()
               if k not in (blas.BLAS_ENV, blas.SHIM_ENV, blas.THREADS_ENV,
                            "OPENBLAS_NUM_THREADS", blas.THREAD_TIMEOUT_ENV)}
    environ[blas.BLAS_ENV] = PIP_BLAS[0]  # the shim in front of the pip wheel, everywhere
    done = subprocess.run([sys.executable, "-c", PROBE.format(before=before, after=after)],
                          capture_output=True, text=True, env={**environ, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_adaptive_by_default_times_each_large_shape_on_both():
    out = probe()
    if out["cores"] < 2:
        pytest.skip("one core available: nothing to choose")
    assert out["threads"].startswith(f"adaptive: 1 or {out['cores']}"), out
    assert out["large"] == 3 and out["small"] == -1, out  # both tried; tiny products untimed
    assert out["error"] < 1e-3 and not out["timeout_left"], out


def test_one_available_core_runs_one_thread():
    out = probe(before="os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})")
    assert out["cores"] == 1 and out["threads"] == "1 (one core available)", out
    assert out["large"] == -1 and out["now"] == 1, out


@pytest.mark.parametrize("count", ["1", "2"])
def test_environment_fixes_the_count(count):
    out = probe(**{blas.THREADS_ENV: count})
    assert out["threads"] == f"{count} ({blas.THREADS_ENV})", out
    assert out["large"] == -1 and out["now"] == int(count) and out["error"] < 1e-3, out


def test_bad_setting_is_reported_and_the_policy_serves():
    out = probe(**{blas.THREADS_ENV: "many"})
    assert "MLX_ZOO_BLAS_THREADS='many' is not a positive integer" in out["threads"], out


def test_openblas_setting_of_the_user_stands():
    out = probe(OPENBLAS_NUM_THREADS="1")
    assert out["threads"] == "OpenBLAS's own (OPENBLAS_NUM_THREADS=1)", out
    assert out["large"] == -1 and out["now"] == 0, out  # the shim never set a count


def test_set_blas_threads_stops_the_policy():
    out = probe(after="assert blas.set_blas_threads(1)")
    assert out["threads"] == "1 (set_blas_threads)" and out["large"] == -1, out
    assert out["now"] == 1, out


def test_cgroup_quota_caps_the_cores(monkeypatch):
    monkeypatch.setattr(blas, "_cgroup_cpu_limit", lambda: 1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert blas.available_cores() == 2
    monkeypatch.setattr(blas, "_cgroup_cpu_limit", lambda: None)
    assert blas.available_cores() == 4
