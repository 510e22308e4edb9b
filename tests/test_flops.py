"""tvts.flops: the analytic FLOP count against a hand count of a small model, and the step shape of a config."""
import pytest
from helpers import REPO

from tvts import flops
from tvts.config import load_config, model_variant
from tvts.models.variants import SortHeadConfig, TextTower, Variant, VideoTower

# video: 8 wide, 1 block, 4 patches of 2x2 per frame; text: 4 wide, 2 blocks (1 frozen); joint and sort head 4 wide
SMALL = Variant("small", VideoTower(width=8, depth=1, heads=2, mlp_dim=16, patch_size=2, image_size=4),
                TextTower(width=4, depth=2, heads=1, num_frozen=1, context_length=8),
                SortHeadConfig(width=4, heads=1, depth=1, num_clips=2), joint_dim=4, act="gelu", mask_ratio=0.5,
                init="random")


def test_hand_count_of_a_small_model():
    # 2 clips of 2 frames, 2 of 4 patches kept: 1 + 2 * 2 = 5 video tokens; 2 texts of 3 tokens per clip
    got = flops.analytic_flops(SMALL, batch=2, frames=2, n_keep=2, num_texts=2, text_len=3, remat="full")
    # a video block per clip: 5 tokens through time qkv+out (4 * 8 * 8), space qkv+out (4 * 8 * 8) and the mlp
    # (2 * 8 * 16), at 2 FLOPs a multiply-add; each attention has 4 patch queries x 3 keys + the CLS query x 5 keys
    # = 17 (query, key) pairs at 2 * 2 * 8 FLOPs (q.k and attention.v)
    video_block = 2 * 5 * (256 + 256 + 256) + 2 * 17 * 32
    video_blocks = 2 * video_block  # 2 clips, 1 block
    patch = 2 * 2 * 2 * 2 * (2 * 2 * 3) * 8  # clips x frames x kept patches x 2 x (patch pixels x 3) x width
    video_proj = 2 * 2 * 5 * 8 * 4  # clips x 2 x tokens x width x joint
    text_block = 2 * 3 * 12 * 16 + 4 * 4 * 3 * 3  # 3 tokens through 12 w^2 weights; 3 x 3 attention pairs
    text_frozen = 4 * text_block  # 4 texts, 1 frozen block
    text_tuned = 4 * text_block + 4 * 2 * 4 * 4  # 1 tuned block + the projection of each text's EOT token
    sort = 2 * (2 * 7 * 12 * 16 + 4 * 4 * 7 * 7)  # per clip: 5 video tokens + 2 transcripts, 1 block
    contrastive = 2 * 2 * 2 * 4  # a 2 x 2 similarity matrix of 4-wide embeddings
    assert (video_block, patch, text_block, sort) == (8768, 1536, 1296, 6944)

    forward = video_blocks + patch + video_proj + text_frozen + text_tuned + sort + contrastive
    model = 3 * (video_blocks + video_proj + text_tuned + sort + contrastive) + 2 * (text_frozen + patch)
    assert got == {"forward_flops": forward, "model_flops": model,
                   "model_flops_with_remat": model + video_blocks + text_frozen + text_tuned}
    assert flops.analytic_flops(SMALL, 2, 2, 2, 2, 3, "none")["model_flops_with_remat"] == model


def test_captioned_batches_skip_the_sort_head():
    transcribed = flops.analytic_flops(SMALL, 2, 2, 2, num_texts=2, text_len=3, remat="none")
    captioned = flops.analytic_flops(SMALL, 2, 2, 2, num_texts=1, text_len=3, remat="none")
    one_text = 2 * 1296 + 2 * 4 * 4  # both text blocks and the projection
    assert transcribed["forward_flops"] - captioned["forward_flops"] == 6944 + 2 * one_text  # sort head, 1 text/clip


@pytest.mark.parametrize("source, batch, texts, length", [("transcribed", 32, 4, 16), ("captioned", 64, 1, 32)])
def test_step_shape_of_the_demo(source, batch, texts, length):
    config = load_config(f"{REPO / 'configs' / 'demo.py'}:eval=False")
    shape = flops.step_shape(config, source)
    # 12 frames of 4 x 4 patches at mask ratio 0.5
    assert shape == flops.StepShape(batch=batch, frames=12, kept_patches=8, num_texts=texts, text_length=length)
    assert shape.video_tokens == 1 + 12 * 8
    assert flops.step_flops(config, source) == flops.analytic_flops(
        model_variant(config.model), batch, 12, 8, texts, length, config.model.remat)


def test_masking_shrinks_the_lowered_steps_flops_as_the_analytic_count_says(ratio=0.75):
    """XLA's count of the trainer's own step program (lowered, not compiled) falls with the tube mask as the analytic
    model FLOPs do: the kept patches are gathered before the blocks, so compute follows the kept tokens."""
    import jax
    from helpers import one_device_setup, tiny_config

    from tvts.checkpoint import with_shardings
    from tvts.data.texts import text_length
    from tvts.step import make_train_step

    def lowered_flops(mask):
        config = tiny_config(**{"model.mask_ratio": mask})
        setup = one_device_setup(config)
        state = with_shardings(setup.abstract_state, setup.state_sharding)
        b, t, s = config.data.transcribed_batch, config.model.num_frames, setup.spec.image_size
        batch = {"video": jax.ShapeDtypeStruct((b, t, s, s, 3), "uint8"),
                 "texts": jax.ShapeDtypeStruct((b, 4, text_length(config.data, "transcribed")), "int32")}
        program = make_train_step(setup, "transcribed").jitted_for(setup.curriculum.total_updates - 1)
        with jax.set_mesh(setup.mesh):
            lowered = program.lower(state, batch, jax.eval_shape(lambda: jax.random.key(0)))
        return lowered.cost_analysis()["flops"], flops.step_flops(config, "transcribed")["model_flops"]

    (xla_0, model_0), (xla_r, model_r) = lowered_flops(0.0), lowered_flops(ratio)
    assert xla_r / xla_0 == pytest.approx(model_r / model_0, abs=0.06)
    assert model_r / model_0 < 1 - ratio / 2  # the video tower dominates tiny's step
