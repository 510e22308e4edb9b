"""tools.plan_memory: per-device bytes from the real compiled train step, checked against hand computation.

Tiny variant on the 8 simulated devices of conftest.py: fsdp=8 (parameters and Adam moments split 8 ways,
weights all-gathered) against data=8 (everything replicated, gradients all-reduced).
"""
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tools import plan_memory as pm
from tvts.state import make_setup

DOCUMENTED_KEYS = {"status", "stage", "error", "settings", "params", "per_device_bytes", "memory_analysis", "flops",
                   "collectives", "fits", "timing", "host", "notes"}


def _config(mesh, batch=16, dtype="float32"):
    config = pm.build_config("tiny", mesh, batch, frames=2, remat="full", dtype=dtype)
    config.model.unroll_layers = False  # the demo unrolls; the checks below count the layer loop's iterations
    return config


@pytest.fixture(scope="module")
def plans():
    # the fsdp plan computes in bfloat16 (parameters stay float32): its weight gathers move bfloat16
    settings = (("fsdp", {"fsdp": 8}, "bfloat16"), ("data", {"data": 8}, "float32"))
    return {name: (pm.plan(_config(mesh, dtype=dtype), log=lambda _: None, compiler_options=pm.FAST_COMPILE,
                           keep_hlo=True), _config(mesh, dtype=dtype)) for name, mesh, dtype in settings}


def _hand_bytes(config):
    """(total param bytes, per-device param bytes, per-device trained param bytes) from the partition specs alone:
    a leaf is split by the product of the sizes of the mesh axes its spec names (8 or 1 here)."""
    setup = make_setup(config)
    params = traverse_util.flatten_dict(setup.abstract_state["params"])
    shardings = traverse_util.flatten_dict(setup.params_sharding)
    labels = traverse_util.flatten_dict(setup.labels)
    sizes = dict(setup.mesh.shape)
    total = per_device = trained = 0
    for name, p in params.items():
        spec, label = shardings[name].spec, labels[name]
        nbytes = math.prod(p.shape) * np.dtype(p.dtype).itemsize
        axes = [a for entry in spec if entry is not None for a in (entry if isinstance(entry, tuple) else (entry,))]
        split = math.prod(sizes[a] for a in axes)
        total += nbytes
        per_device += nbytes // split
        trained += nbytes // split if label is not None else 0
    return total, per_device, trained


def test_parameter_and_optimizer_bytes_match_hand_computation(plans):
    for result, config in plans.values():
        assert result["status"] == "ok", result["error"]
        total, per_device, trained = _hand_bytes(config)
        d = result["per_device_bytes"]
        assert result["params"]["bytes"] == total
        assert d["params"] == per_device
        assert d["trained_params"] == trained
        assert 0 < trained < per_device  # the frozen text block is a parameter without optimizer state
        # Adam: mu and nu for trained parameters only, plus a few int32 step counters.
        assert 0 <= d["optimizer"] - 2 * trained < 64
    fsdp, data = plans["fsdp"][0]["per_device_bytes"], plans["data"][0]["per_device_bytes"]
    total = plans["fsdp"][0]["params"]["bytes"]
    assert data["params"] == total
    replicated = (fsdp["params"] - total / 8) * 8 / 7  # bytes that the fsdp mesh keeps whole
    assert 0 <= replicated < 0.01 * total
    assert fsdp["params"] == pytest.approx(total / 8, rel=0.01)
    assert fsdp["optimizer"] == pytest.approx(data["optimizer"] / 8, rel=0.01)


def test_xla_memory_and_fits(plans):
    for result, _ in plans.values():
        d, m = result["per_device_bytes"], result["memory_analysis"]
        assert d["total"] == (m["argument_size_in_bytes"] + m["output_size_in_bytes"] - m["alias_size_in_bytes"]
                              + m["temp_size_in_bytes"] + m["generated_code_size_in_bytes"])
        # The arguments are the state shards plus the batch shard (the rng key is a few bytes); the state is donated.
        assert d["state"] + d["batch"] <= d["argument"] <= d["state"] + d["batch"] + 64
        assert d["alias"] >= d["params"] + d["optimizer"]
        assert d["temp"] > 0
        assert all(v["fits"] for v in result["fits"].values())
    assert plans["fsdp"][0]["per_device_bytes"]["argument"] < plans["data"][0]["per_device_bytes"]["argument"] / 4


def test_collectives(plans):
    fsdp, data = plans["fsdp"][0]["collectives"], plans["data"][0]["collectives"]
    assert fsdp["all-gather"]["count"] + fsdp["reduce-scatter"]["count"] > 0
    assert data["all-reduce"]["count"] > 0
    # Weight gathers exist only with fsdp (data parallel gathers just the embeddings for the global-batch loss).
    assert fsdp["all-gather"]["executed_bytes"] > 10 * data["all-gather"]["executed_bytes"]
    # Inside the scanned video stack (2 layers) collectives run once per layer.
    assert fsdp["all-gather"]["executed_count"] > fsdp["all-gather"]["count"]
    # As partitioned, the bf16 step gathers its weights in bf16; XLA:CPU's own passes then move them in float32.
    cpu = plans["fsdp"][0]["collectives_cpu_compiled"]["all-gather"]
    assert cpu["executed_count"] == fsdp["all-gather"]["executed_count"]
    assert fsdp["all-gather"]["executed_bytes"] < 0.6 * cpu["executed_bytes"]


def test_flops(plans):
    for result, _ in plans.values():
        f = result["flops"]
        # The executed matmul FLOPs lie between the model FLOPs and the model FLOPs with a full recomputed forward.
        assert 0.9 * f["model_flops_per_device"] <= f["hlo_flops_per_device"]
        assert f["hlo_flops_per_device"] <= 1.05 * f["model_flops_with_remat_per_device"]


def test_json_round_trip(plans):
    result, _ = plans["fsdp"]
    loaded = json.loads(json.dumps(result))
    assert DOCUMENTED_KEYS <= set(loaded)
    assert set(loaded["collectives"]) == set(pm.COLLECTIVE_KINDS)
    assert {"params", "optimizer", "temp", "total"} <= set(loaded["per_device_bytes"])


def test_cli_reports_a_batch_that_does_not_divide_the_mesh(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = pm.main(["--variant", "tiny", "--devices", "8", "--mesh", "fsdp=8", "--global_batch", "12",
                    "--frames", "2", "--out", str(out)])
    assert code == 1
    result = json.loads(out.read_text())
    assert DOCUMENTED_KEYS <= set(result)
    assert result["status"] == "failed" and result["stage"] == "lower"
    assert "not divisible" in result["error"]
    assert result["settings"]["command"].startswith("python -m tools.plan_memory --variant tiny")
    assert "FAILED" in capsys.readouterr().out


def test_hlo_flops_apply_loop_trip_counts():
    def f(w, x):
        return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0].sum()

    w, x = jax.ShapeDtypeStruct((6, 64, 64), jnp.float32), jax.ShapeDtypeStruct((32, 64), jnp.float32)
    compiled = jax.jit(jax.grad(f)).lower(w, x).compile()
    summary = pm.hlo_summary(compiled.as_text())
    assert summary["hlo_flops"] == 3 * 2 * 32 * 64 * 64 * 6  # forward, input and weight gradients, 6 layers
    assert 6 in summary["while_trip_counts"]


def test_roofline_by_hand():
    flops = {"hlo_flops_per_device": 197e12 * 0.5, "model_flops_per_device": 197e12 * 0.4}
    coll = {k: {"executed_bytes": 0} for k in pm.COLLECTIVE_KINDS}
    coll["all-gather"]["executed_bytes"] = 200e9 * 0.1  # v5e ICI: 1,600 Gbps = 200 GB/s
    coll["all-reduce"]["executed_bytes"] = 200e9 * 0.05  # counted twice (reduce-scatter + all-gather)
    e = pm.roofline(flops, coll)["TPU v5e"]
    assert e["compute_s"] == pytest.approx(0.5) and e["collectives_s"] == pytest.approx(0.2)
    assert e["step_s_overlapped"] == pytest.approx(0.5) and e["step_s_serial"] == pytest.approx(0.7)
    assert e["mfu_overlapped"] == pytest.approx(0.8) and e["mfu_serial"] == pytest.approx(0.4 / 0.7)


def test_the_compiled_step_never_goes_to_the_host(plans):
    """No Python callbacks, infeed/outfeed or send/recv in the step: nothing stalls a device on its host."""
    for result, _ in plans.values():
        text = result["hlo_text"]
        ops = set(re.findall(r"=\s*\S+\s+([a-z][a-z0-9-]*)\(", text))
        assert not ops & {"infeed", "outfeed", "send", "recv", "send-done", "recv-done"}
        targets = set(re.findall(r'custom_call_target="([^"]+)"', text))
        assert not [t for t in targets if "callback" in t.lower() or "host" in t.lower()], targets
        assert "dot" in ops or "fusion" in ops  # the pattern reads the module's instructions


def test_uncached_switches_the_persistent_cache_off_in_a_process_that_has_compiled():
    """JAX decides at a process's first compile whether the persistent cache is used; the plan reads the module the
    partitioner writes, which a cache hit skips. Without a reset the setting changed nothing in a test worker, and
    the bf16 gathers read as float32 whenever the other worker had cached the same step first."""
    from jax._src import compilation_cache  # is_cache_used: not in the public API

    jax.jit(lambda x: x + 1)(jnp.ones(2)).block_until_ready()
    backend = jax.devices()[0].client
    before = compilation_cache.is_cache_used(backend)
    with pm.uncached():
        assert not compilation_cache.is_cache_used(backend)
    assert compilation_cache.is_cache_used(backend) == before
