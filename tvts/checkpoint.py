"""Orbax checkpoints of the train state (params, optimizer state, step) and the data-loader state.

Every process takes part in saves and restores; arrays are written and read sharded, and a
restore targets the abstract sharded state of the *current* mesh, which may differ from the
mesh that saved it.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from tvts.trees import path_str, unflatten


def with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


class Checkpointer:
    def __init__(self, directory, keep: int = 3):
        directory = epath.Path(directory)
        # orbax wants absolute paths; resolve() makes a local one absolute and leaves gs:// alone
        self.directory = directory.resolve() if "://" not in str(directory) else directory
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """abstract_state: ShapeDtypeStructs carrying the target shardings (see `with_shardings`)."""
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


PARAMS_STEP = 0  # the one step of a params-only directory (`save_params`)


def save_params(directory, params: Any, metadata: dict[str, Any]) -> None:
    """A params-only checkpoint (e.g. converted CLIP weights) that `restore_params` reads, as `config.init` does.

    Same layout as a training checkpoint (step 0, items 'state' = {'params': ...} and 'meta'), so anything that reads
    a run's parameters reads this too. `params` may be partial (the leaves the source had); the JSON metadata gains
    'leaves', the '/'-joined paths written. Leaves may be numpy or jax arrays.
    """
    leaves = sorted(path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))
    directory = epath.Path(directory)
    directory = directory.resolve() if "://" not in str(directory) else directory
    # Uncompressed: orbax then holds one extra copy of the tree while it writes (with compression, two; measured
    # in docs/convert.md). Numpy leaves stay on the host.
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(use_compression=False),
                       "meta": ocp.JsonCheckpointHandler()})
    try:
        if manager.latest_step() is not None:
            raise FileExistsError(f"{directory} already holds a checkpoint (step {manager.latest_step()}); "
                                  f"choose an empty directory")
        manager.save(PARAMS_STEP, args=ocp.args.Composite(state=ocp.args.PyTreeSave({"params": params}),
                                                          meta=ocp.args.JsonSave({**metadata, "leaves": leaves})),
                     force=True)
        manager.wait_until_finished()
    finally:
        manager.close()


def read_meta(directory, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata of a checkpoint directory's newest (or given) step."""
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {directory}")
        return dict(ckpt.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    finally:
        ckpt.close()


def saved_params_shapes(directory, step: int | None = None) -> dict[str, tuple[int, ...]]:
    """'/'-joined parameter path -> shape, for the parameters stored in a checkpoint directory (nothing is read)."""
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {directory}")
        state_dir = ckpt.directory / str(step) / "state"
    finally:
        ckpt.close()
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = handler.metadata(state_dir)
    finally:
        handler.close()
    tree = getattr(tree, "tree", tree)
    if "params" not in tree:
        raise ValueError(f"the checkpoint in {directory} holds no 'params'")
    return {path_str(p): tuple(m.shape) for p, m in
            jax.tree_util.tree_leaves_with_path(tree["params"], is_leaf=lambda x: hasattr(x, "shape"))}


def restore_params(directory, abstract_params: Any, step: int | None = None) -> Any:
    """The parameters of a checkpoint directory (another run's, or a params-only one from `save_params`) onto the
    current shardings, for `config.init`.

    Returns only the leaves the directory holds, as a nested dict shaped like `abstract_params` restricted to them
    (a converted CLIP directory has no time attention or sort head: merge with an init, `tvts.models.tvtsv2.
    merge_loaded`). A stored leaf the model lacks, or one whose shape differs, is an error naming it.
    """
    saved = saved_params_shapes(directory, step)
    flat = {path_str(p): a for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
    unknown = sorted(set(saved) - set(flat))
    if unknown:
        raise ValueError(f"{directory}: {len(unknown)} stored parameters the model does not have (another variant "
                         f"or text_num_frozen?): {', '.join(unknown)}")
    wrong = [f"{k} stored {saved[k]}, model {tuple(flat[k].shape)}" for k in sorted(saved)
             if tuple(flat[k].shape) != saved[k]]
    if wrong:
        meta = read_meta(directory, step)
        how = f" (converted with {meta['conversion']})" if "conversion" in meta else ""
        raise ValueError(f"{directory}{how}: shape mismatch: {'; '.join(wrong)}")
    target = unflatten({k: flat[k] for k in saved})
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step() if step is None else step
        restored = ckpt.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item={"params": target},
                                         restore_args=jax.tree.map(
                                             lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype),
                                             {"params": target}),
                                         partial_restore=True)))
    finally:
        ckpt.close()
    return restored["state"]["params"]


def read_params(directory, step: int | None = None) -> dict[str, Any]:
    """Every stored parameter of a checkpoint directory as host numpy arrays (no model needed; e.g. for export)."""
    saved = saved_params_shapes(directory, step)
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step() if step is None else step
        target = unflatten({k: 0 for k in saved})
        restored = ckpt.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item={"params": target},
                                         restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                                                   {"params": target}),
                                         partial_restore=True)))
    finally:
        ckpt.close()
    return restored["state"]["params"]


