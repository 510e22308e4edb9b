"""Orbax checkpoints of the train state (params, optimizer state, step) and the data-loader state.

Every process takes part in saves and restores; arrays are written and read sharded, and a
restore targets the abstract sharded state of the *current* mesh, which may differ from the
mesh that saved it.
"""
from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


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


def restore_params(directory, abstract_params: Any, step: int | None = None) -> Any:
    """Only the parameters of another run's checkpoint (for `config.init`), onto the current shardings."""
    ckpt = Checkpointer(directory)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                     restore_args=jax.tree.map(
                                         lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding),
                                         {"params": abstract_params}),
                                     partial_restore=True)))
    ckpt.close()
    return restored["state"]["params"]
