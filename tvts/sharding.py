"""Device mesh, logical-axis rules and shardings of the training state.

Modules name parameter and activation axes logically ('embed', 'mlp', 'heads', 'kv', 'vocab',
'joint', 'layers', 'batch', 'length', 'sequence'); the config's rules map them to the mesh axes
('data', 'fsdp', 'tensor'). Plain data parallelism is the mesh with only 'data' > 1.

'length' is a token axis inside the attention and MLP products (kept whole: their activations are split by heads
or units instead); 'sequence' is the token axis of the residual stream between them, which sequence parallelism
(config.sequence_parallel) splits over 'tensor'.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("joint", None),
    ("layers", None),
    ("length", None),
    ("sequence", None),
)


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolve one -1 entry so that the product equals `num_devices`."""
    unknown = [k for k in MESH_AXES if int(axes.get(k, 1)) == -1]
    if set(axes) - set(MESH_AXES):
        raise ValueError(f"unknown mesh axes {sorted(set(axes) - set(MESH_AXES))}; use {MESH_AXES}")
    if len(unknown) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {unknown}")
    known = math.prod(int(axes.get(k, 1)) for k in MESH_AXES if k not in unknown)
    if any(int(axes.get(k, 1)) == 0 or int(axes.get(k, 1)) < -1 for k in MESH_AXES):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(axes)}")
    if unknown:
        if num_devices % known:
            raise ValueError(f"mesh {dict(axes)} does not divide {num_devices} devices")
        axes = {**axes, unknown[0]: num_devices // known}
    shape = tuple(int(axes.get(k, 1)) for k in MESH_AXES)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                         f"there are {num_devices}")
    return shape


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(axes, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def logical_rules(rules: Sequence[Sequence[Any]], sequence_parallel: bool, tensor: int) -> tuple[tuple[str, Any], ...]:
    """config.sharding_rules as flax takes them (tuples), with 'sequence' over 'tensor' if `sequence_parallel`.

    Megatron-style sequence parallelism: each device of a tensor group holds 1/tensor of the residual stream's tokens
    (the scanned stacks' saved layer inputs, the LayerNorms); GSPMD all-gathers the tokens before each attention and
    MLP product and reduces the product's partial sums back to each device's share (see
    `tvts.models.layers.shard_residual`). A token count the group does not divide (1 + T*N video tokens, 77 text
    tokens) is padded to the next multiple, so unlike a parameter's dimension it needs no divisibility check.
    """
    rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)
    if not sequence_parallel:
        return rules
    if tensor == 1:
        raise ValueError("config.sequence_parallel=True splits the residual stream's tokens over the 'tensor' mesh "
                         "axis, which has size 1 here: it would split nothing, and every device would still hold "
                         "every token. Set config.mesh.tensor > 1 (tensor parallelism), or leave "
                         "sequence_parallel False")
    given = dict(rules).get("sequence")
    if given not in (None, "tensor"):
        raise ValueError(f"config.sequence_parallel=True maps logical axis 'sequence' to 'tensor', and "
                         f"config.sharding_rules maps it to {given!r}: keep one of the two")
    # rules written out before 'sequence' existed lack it
    return tuple((k, "tensor" if k == "sequence" else v) for k, v in rules) + (
        () if "sequence" in dict(rules) else (("sequence", "tensor"),))


def check_divisible(spec: P, shape: tuple[int, ...], mesh: Mesh, name: str) -> P:
    """`spec` if its mesh axes divide the dimensions they shard, else an error naming the parameter and the axis
    (a silent fallback to replication would cost memory the plan did not show)."""
    for dim, (size, axes) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        ways = math.prod(mesh.shape[a] for a in names)
        if size % ways:
            raise ValueError(f"parameter {name}: dimension {dim} (size {size}) is sharded over mesh axes "
                             f"{'x'.join(names)} = {ways}, which does not divide it; choose a mesh whose "
                             f"{'/'.join(names)} size divides {size}, or a sharding rule that leaves this axis "
                             f"unsharded")
    return spec


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedSharding per parameter from the logical names in a boxed (abstract) parameter tree."""
    logical_specs = nn.get_partition_spec(boxed_abstract)
    values = nn.unbox(boxed_abstract)

    def to_sharding(path, spec, value):
        mesh_spec = nn.logical_to_mesh_axes(spec, rules) if spec is not None else P()
        return NamedSharding(mesh, check_divisible(mesh_spec, value.shape, mesh,
                                                     "/".join(str(getattr(k, "key", k)) for k in path)))

    return jax.tree_util.tree_map_with_path(to_sharding, logical_specs, values,
                                            is_leaf=lambda x: isinstance(x, P) or x is None)


def state_shardings(abstract_state: Any, params_sharding: Any, mesh: Mesh) -> Any:
    """Shardings for a whole train state: any leaf whose key path ends with a parameter's path (and has its shape)
    is sharded like that parameter (Adam moments); everything else (step counters, scalars) is replicated."""
    from flax import traverse_util

    by_path = {k: s for k, s in traverse_util.flatten_dict(params_sharding).items()}
    max_len = max(len(k) for k in by_path) if by_path else 0
    replicated = NamedSharding(mesh, P())

    def find(path, leaf):
        keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        for n in range(min(max_len, len(keys)), 0, -1):
            s = by_path.get(keys[-n:])
            if s is not None and len(s.spec) <= len(leaf.shape):
                return s
        return replicated

    return jax.tree_util.tree_map_with_path(find, abstract_state)


def replicated_fraction(abstract: Any, shardings: Any) -> float:
    """Fraction of bytes held whole on every device."""
    total = replicated = 0
    for leaf, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        total += nbytes
        if s.is_fully_replicated:
            replicated += nbytes
    return replicated / max(total, 1)


def check_replication(abstract_params: Any, shardings: Any, mesh: Mesh, max_fraction: float) -> float:
    """Stop a run whose rules leave too many parameter bytes replicated on a mesh that shards parameters."""
    frac = replicated_fraction(abstract_params, shardings)
    if mesh.shape["fsdp"] > 1 and frac > max_fraction:
        from flax import traverse_util

        worst = sorted(((math.prod(v.shape), "/".join(k)) for (k, v), s in zip(
            traverse_util.flatten_dict(abstract_params).items(), traverse_util.flatten_dict(shardings).values())
            if s.is_fully_replicated), reverse=True)[:8]
        raise ValueError(f"{frac:.1%} of parameter bytes stay replicated on mesh {dict(mesh.shape)} "
                         f"(limit {max_fraction:.1%}); check the sharding rules. Largest replicated: "
                         + ", ".join(f"{n} ({c:,})" for c, n in worst))
    return frac


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble global arrays from this process's slice of the batch (works with one or many processes)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v) for k, v in local.items()}
