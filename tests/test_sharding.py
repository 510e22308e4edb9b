"""Sharded training on 8 simulated devices matches one device; accumulation; rematerialisation; restore on another
mesh."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import batch_for, tiny_config

from tvts import optim, sharding
from tvts.accumulate import accumulated_grads, split_microbatches
from tvts.checkpoint import Checkpointer, with_shardings
from tvts.config import apply_overrides
from tvts.models.inputs import random_keep
from tvts.objective import Objective
from tvts.state import init_state, make_setup
from tvts.step import make_train_step


def setup_on(config, axes, devices=None):
    return make_setup(config, sharding.make_mesh(axes, devices))


def one_step(setup, start, batch):
    """One update from the host state `start` (put on the setup's shardings): (state, metrics) on the host."""
    state = jax.device_put(start, setup.state_sharding)
    state, metrics = make_train_step(setup, "transcribed")(state, sharding.global_batch(batch, setup.mesh),
                                                           jax.random.key(1))
    return jax.device_get(state), jax.device_get(metrics)


def assert_steps_match(got_state, got_metrics, want_state, want_metrics):
    for k in ("loss", "contrastive_loss", "sort_loss"):
        np.testing.assert_allclose(float(got_metrics[k]), float(want_metrics[k]), rtol=2e-5, err_msg=k)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got_state["params"]),
                            jax.tree.leaves(want_state["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-6, err_msg=optim.path_str(path))


def test_mesh_shape_resolution():
    assert sharding.mesh_shape({"data": -1}, 8) == (8, 1, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 6 devices, there are 8"):
        sharding.mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="only one mesh axis may be -1"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.mesh_shape({"model": 8}, 8)


# Adam's eps is raised to 1 so the first update is ~lr * gradient (plain Adam's first step is lr * sign(g), which
# turns float noise in near-zero gradients into full-size differences); large learning rates make the update visible.
STEP_TEST = {"optim.eps": 1.0, "optim.groups": {"new": 1.0, "clip": 1.0}}


@pytest.fixture(scope="module")
def reference():
    """One step on a single device without rematerialisation: the state before, the batch, the state and metrics
    after."""
    config = tiny_config(**STEP_TEST)
    setup = setup_on(config, {"data": 1}, jax.devices()[:1])
    start = jax.device_get(init_state(setup, jax.random.key(0)))
    batch = batch_for(config)
    state, metrics = one_step(setup, start, batch)
    return config, start, batch, state, metrics


@pytest.mark.slow
@pytest.mark.parametrize("axes", [{"data": 8}, {"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_step_matches_single_device(reference, axes):
    config, start, batch, want_state, want_metrics = reference
    setup = setup_on(config, axes)
    if axes.get("fsdp", 1) > 1:  # parameters really are split, not replicated
        kernel = setup.params_sharding["video"]["blocks"]["mlp"]["fc"]["kernel"]
        assert not kernel.is_fully_replicated
    assert_steps_match(*one_step(setup, start, batch), want_state, want_metrics)


@pytest.mark.slow
def test_full_rematerialisation_gives_the_step_without_it(reference):
    """remat='full' recomputes every block's activations in the backward pass: the same update, less memory."""
    config, start, batch, want_state, want_metrics = reference
    setup = setup_on(tiny_config(**STEP_TEST, **{"model.remat": "full"}), {"data": 1}, jax.devices()[:1])
    # the setting reaches the program: its forward pass holds checkpointed (rematerialised) blocks
    forward = lambda remat_setup: str(jax.make_jaxpr(lambda p: remat_setup.model.apply(
        {"params": p}, jnp.zeros((1, 4, 32, 32, 3)), None, method="encode_video"))(start["params"]))
    assert "remat" in forward(setup)  # jax.checkpoint's primitive
    assert "remat" not in forward(setup_on(config, {"data": 1}, jax.devices()[:1]))
    assert_steps_match(*one_step(setup, start, batch), want_state, want_metrics)


def test_microbatch_split_interleaves_rows():
    x = jnp.arange(8)
    np.testing.assert_array_equal(split_microbatches(x, 2), [[0, 2, 4, 6], [1, 3, 5, 7]])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["transcribed", "captioned"])
def test_accumulated_gradients_equal_full_batch_gradients(kind):
    """Contrastive over the global batch + sorting: the gradient cache reproduces the full-batch gradient."""
    config = tiny_config()
    setup = setup_on(config, {"data": 1}, jax.devices()[:1])
    params = jax.device_get(init_state(setup, jax.random.key(0))["params"])
    trainable, frozen = optim.partition(params, setup.labels)
    batch = batch_for(config)
    if kind == "captioned":
        batch = {"video": batch["video"], "texts": batch["texts"][:, :1]}
    keep = random_keep(jax.random.key(3), 8, setup.model.variant.video.num_patches, 0.5)
    objective = Objective.from_config(config, 0.5)  # weighted on transcribed batches only

    def full(trainable):
        return objective.loss(optim.merge(trainable, frozen), setup.model, batch, keep)

    (want_loss, want_m), want = jax.jit(jax.value_and_grad(full, has_aux=True))(trainable)
    for k in (2, 4):
        (loss, m), got = jax.jit(
            lambda t, k=k: accumulated_grads(objective, t, frozen, setup.model, batch, keep, k))(trainable)
        np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
        if kind == "transcribed":
            np.testing.assert_allclose(float(m["sort_accuracy"]), float(want_m["sort_accuracy"]), rtol=1e-6)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
            # float32 sums in another order: the error scales with the leaf's largest entry, not with each entry
            atol = 1e-6 * max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=atol, err_msg=f"k={k} {optim.path_str(path)}")


def test_replication_check_fires_on_a_bad_rule():
    config = tiny_config()
    with config.unlocked():
        config.sharding_rules = [[k, None if k == "embed" else v] for k, v in config.sharding_rules]
    with pytest.raises(ValueError, match="stay replicated on mesh.*Largest replicated: text/token_embedding"):
        setup_on(config, {"fsdp": 8})
    assert setup_on(tiny_config(), {"fsdp": 8})  # the default rules pass


@pytest.mark.slow
def test_restore_onto_a_different_mesh(tmp_path):
    """Save with fsdp=4 on 8 devices, restore with data=4 on 4 devices: same values, new shardings."""
    config = tiny_config()
    saver = setup_on(config, {"data": 2, "fsdp": 4})
    state = init_state(saver, jax.random.key(0))
    want = jax.device_get(state)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(7, state, {"iteration": 7})
    ckpt.wait()
    ckpt.close()

    loader = setup_on(config, {"data": 4}, jax.devices()[:4])
    restored, meta = Checkpointer(str(tmp_path)).restore(7, with_shardings(loader.abstract_state,
                                                                           loader.state_sharding))
    assert meta == {"iteration": 7}
    kernel = restored["params"]["video"]["blocks"]["mlp"]["fc"]["kernel"]
    assert kernel.sharding.mesh.shape == {"data": 4, "fsdp": 1, "tensor": 1}
    assert len(kernel.sharding.device_set) == 4
    got_leaves, got_def = jax.tree_util.tree_flatten(jax.device_get(restored))
    want_leaves, want_def = jax.tree_util.tree_flatten(want)
    assert got_def == want_def
    for a, b in zip(got_leaves, want_leaves):
        np.testing.assert_array_equal(a, b)


def test_a_mesh_axis_that_does_not_divide_a_parameter_is_an_error_naming_both():
    # tiny's text tower has 4 heads and its mlp 256 units: tensor=8 divides the mlp, not the heads
    with pytest.raises(ValueError, match=r"parameter (sort_head|text)/[\w/]+/kernel: dimension \d \(size 4\) is "
                                         r"sharded over mesh axes tensor = 8, which does not divide it"):
        setup_on(tiny_config(), {"tensor": 8})


@pytest.mark.slow
def test_sequence_parallel_gives_the_one_device_gradients_with_the_residual_stream_split():
    """config.sequence_parallel on fsdp=2 x tensor=2: the loss and gradients of one device, and the compiled program
    keeps each device's quarter of the residual stream. tiny's 33 video tokens do not divide by 2: GSPMD pads them to
    34, so each device holds 17."""
    config = tiny_config(**{"model.remat": "full"})  # remat='full': the scanned stacks save only the residual stream
    one = setup_on(config, {"data": 1}, jax.devices()[:1])
    rng = np.random.default_rng(0)  # any values do for a comparison, and the random init's program is slow to build
    params = jax.tree.map(lambda a: rng.normal(0.0, 0.2, a.shape).astype(a.dtype), one.abstract_state["params"])
    batch = batch_for(config)
    keep = random_keep(jax.random.key(3), 8, one.model.variant.video.num_patches, one.mask_ratio)
    objective = Objective.from_config(config, 1.0)

    def compiled(setup):
        mesh = setup.mesh
        data = (params, {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()},
                jax.device_put(keep, sharding.batch_sharding(mesh, 2)))
        grads = jax.value_and_grad(lambda p, b, k: objective.loss(p, setup.model, b, k)[0])
        with jax.set_mesh(mesh), nn.logical_axis_rules(setup.rules):
            program = jax.jit(grads, in_shardings=(setup.params_sharding, None, None)).lower(*data).compile()
        return program, jax.device_get(program(*data))

    want_loss, want = compiled(one)[1]
    axes = {"data": 1, "fsdp": 2, "tensor": 2}
    program, (loss, got) = compiled(setup_on(apply_overrides(config, {"sequence_parallel": True, "mesh": axes}),
                                             axes, jax.devices()[:4]))
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max())),
                                   err_msg=optim.path_str(path))
    # the video stack's saved layer inputs: [layers, clips per fsdp shard, ceil(33 tokens / tensor), width]
    assert "f32[2,4,17,64]" in program.as_text()
