"""Config parsing and validation: a bad value fails before anything is allocated, with a message naming the field."""
import pytest
from helpers import one_device_setup, tiny_config

from tvts.config import apply_overrides, load_config, parse_arg, validate
from tvts.evaluators.registry import check_entries


@pytest.mark.parametrize("field,value,message", [
    ("model.mask_ratio", 1.0, r"mask_ratio=1.0 must be in \[0, 1\)"),
    ("model.num_frames", 13, "temporal embedding holds 12 frames"),
    ("model.num_frames", 0, "num_frames=0"),
    ("model.variant", "B/8", "unknown variant 'B/8'"),
    ("model.time_init", "ones", "time_init='ones'"),
    ("model.attention", "einsun", "model.attention='einsun': use one of 'auto', 'einsum', 'einsum_heads_major', "
                                  "'dot_product'"),
    ("model.text_num_frozen", 4, "text_num_frozen=4 exceeds the text tower's 3 blocks"),
    ("data.name", "kinetics", "data.name='kinetics'"),
    ("data.normalization", "unit", "normalization='unit'"),
    ("data.context_length", 78, "exceeds the text tower's 32"),
    ("data.transcript_length", 17, r"transcript_length=17 must be in \[1, context_length=16\]"),
    ("data.transcript_length", -2, r"transcript_length=-2 must be in"),
    ("data.sources", ("transcribed", "subtitled"), "unknown source 'subtitled'"),
    ("data.transcribed_batch", 0, "transcribed_batch=0 must be positive"),
    ("data.source_start", {"transcribed": 1.0}, r"source_start.transcribed=1.0 must be a fraction"),
    ("data.source_start", {"captioned": 0.2, "transcript": 0.0}, "source_start.transcript: unknown source"),
    ("data.source_start", {"transcribed": 0.5, "captioned": 0.0},  # one source here
     r"some source of data.sources=\('transcribed',\) must start at 0"),
    ("optim.group_start", {"txt": 0.5}, "group_start.txt: no such group"),
    ("optim.group_start", {"new": 1.0}, "group_start.new=1.0 must be a fraction"),
    ("optim.freeze_text_embeddings", True, "config.optim.rules is set"),
    ("optim.groups", {"new": -1e-3, "clip": 1e-3}, r"optim.groups.new=-0.001 must be >= 0"),
    ("loss.contrastive_reduction", "max", "contrastive_reduction='max'"),
    ("loss.sort_weight", -2.0, r"sort_weight=-2.0 must be >= 0"),
    ("loss.transcribed_contrastive_weight", -1.0, r"transcribed_contrastive_weight=-1.0 must be >= 0"),
    ("loss.transcribed_contrastive_start", 1.0, r"transcribed_contrastive_start=1.0 must be a fraction"),
    ("nonfinite.policy", "ignore", "nonfinite.policy='ignore': use stop or skip"),
    ("nonfinite.max_skipped", -1, "max_skipped=-1 must be >= 0"),
    ("eval_references", ("init", "ema"), "unknown reference 'ema'"),
    ("log_every", 0, "log_every=0 must be positive"),
    ("checkpoint_every", -5, "checkpoint_every=-5 must be positive"),
    ("grad_accum_steps", 0, "grad_accum_steps=0 must be positive"),
    ("total_steps", 0, "total_steps=0 must be positive"),
    ("resume", "random", "resume takes a checkpoint directory"),
    ("data.num_frames", {"transcribed": 13, "captioned": -1}, r"num_frames.transcribed=13: must be in \[1, 12\]"),
    ("data.num_frames", {"transcribed": -1, "captioned": 0}, r"num_frames.captioned=0: must be in"),
])
def test_bad_config_values_fail_before_allocation(field, value, message):
    config = tiny_config(**{"optim.rules": ((r".*", "new"),)} if field == "optim.freeze_text_embeddings" else {})
    apply_overrides(config, {field: value})
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_the_tiny_config_and_the_demo_are_valid():
    validate(tiny_config(), num_devices=8, process_count=1)
    validate(load_config("configs/demo.py"), num_devices=8, process_count=2)


@pytest.mark.parametrize("overrides,devices,processes,message", [
    # data-parallel size = mesh.data x mesh.fsdp (tensor splits no batch); 8 devices
    ({"data.transcribed_batch": 12}, 8, 1, r"transcribed_batch=12 must be divisible by the data-parallel mesh size 8"),
    ({"data.transcribed_batch": 8, "grad_accum_steps": 2}, 8, 1, r"mesh size 8 .* x grad_accum_steps=2"),
    ({"data.transcribed_batch": 6, "mesh": {"data": 2, "fsdp": 1, "tensor": 4}}, 8, 1, None),  # 6 % 2 == 0
    ({"data.transcribed_batch": 6, "mesh": {"data": 2, "fsdp": 2, "tensor": 2}}, 8, 1, "mesh size 4"),
    ({"data.transcribed_batch": 16, "grad_accum_steps": 2}, 8, 1, None),
    ({}, 8, 3, "transcribed_batch=8 must be divisible by the process count 3"),
    ({"data.sources": ("transcribed", "captioned"), "data.captioned_batch": 4}, 8, 1, "captioned_batch=4"),
    ({"data.sources": ("transcribed",), "data.captioned_batch": 4}, 8, 1, None),  # an unused source is not checked
])
def test_batches_are_checked_against_the_mesh_and_the_processes(overrides, devices, processes, message):
    config = tiny_config(**overrides)
    validate(config)  # without the device and process counts nothing about them is checked
    if message is None:
        validate(config, devices, processes)
    else:
        with pytest.raises(ValueError, match=message):
            validate(config, devices, processes)


def test_sequence_parallel_needs_a_tensor_axis_and_its_own_rule():
    split_nothing = r"sequence_parallel=True splits the residual stream's tokens over the 'tensor' mesh axis, which " \
                    r"has size 1 here: it would split nothing"
    with pytest.raises(ValueError, match=split_nothing):
        validate(tiny_config(sequence_parallel=True))  # mesh data=-1: tensor=1
    config = tiny_config(sequence_parallel=True, mesh={"data": 1, "fsdp": 1, "tensor": -1})
    validate(config)  # tensor=-1 is known with the device count only
    validate(config, num_devices=8, process_count=1)
    with pytest.raises(ValueError, match=split_nothing):
        validate(config, num_devices=1, process_count=1)
    config = tiny_config(sequence_parallel=True, mesh={"data": 4, "fsdp": 1, "tensor": 2})
    validate(config)
    rules = [[k, "data" if k == "sequence" else v] for k, v in config.sharding_rules]
    apply_overrides(config, {"sharding_rules": rules})
    with pytest.raises(ValueError, match=r"maps logical axis 'sequence' to 'tensor', and config.sharding_rules maps "
                                         r"it to 'data'"):
        validate(config)


def test_published_variants_need_an_init_and_a_missing_path_is_named(tmp_path):
    published = load_config("configs/pretrain.py:variant=B/16")
    with pytest.raises(ValueError, match="config.init is empty, and variant B/16 starts from pretrained CLIP"):
        validate(published)
    with published.unlocked():
        published.init = "random"
    validate(published)
    with published.unlocked():
        published.init = str(tmp_path / "converted")
    with pytest.raises(FileNotFoundError, match=r"config.init=.*converted' does not exist"):
        validate(published)
    (tmp_path / "converted").mkdir()
    validate(published)
    validate(load_config("configs/demo.py"))  # the tiny variant starts from random weights


def test_a_rule_that_matches_nothing_fails_at_setup():
    config = tiny_config(**{"optim.rules": ((r"^vision/", "new"), (r".*", "clip"))})
    with pytest.raises(ValueError, match=r"optimizer rules match no parameter: \['\^vision/'\]"):
        one_device_setup(config)


def test_an_unknown_evaluator_type_is_named():
    check_entries({"heldout": {"type": "synthetic_heldout"}})
    with pytest.raises(ValueError, match=r"config.evals.probe.type='linear': known evaluators \['synthetic_heldout'\]"):
        check_entries({"heldout": {"type": "synthetic_heldout"}, "probe": {"type": "linear"}})
    # benchmark evaluators run on one process: a pod run is told before it trains, not when it ends
    entries = {"heldout": {"type": "synthetic_heldout"}, "msrvtt": {"type": "msrvtt_retrieval"}}
    check_entries(entries, process_count=1)
    check_entries({"heldout": {"type": "synthetic_heldout"}}, process_count=4)
    with pytest.raises(ValueError, match=r"config.evals.msrvtt.type='msrvtt_retrieval': .* this run has 4"):
        check_entries(entries, process_count=4)


def test_mistyped_overrides_fail():
    config = load_config("configs/demo.py")
    with pytest.raises(AttributeError, match="lerning_rate"):
        config.optim.lerning_rate = 1.0
    with pytest.raises(KeyError, match="optim.lerning_rate"):
        apply_overrides(tiny_config(), {"optim.lerning_rate": 1.0})
    with pytest.raises(ValueError, match="unknown config argument 'variantt'"):
        parse_arg("variantt=B/16", variant="tiny")
    with pytest.raises(ValueError, match="'steps' is not key=value"):
        parse_arg("steps", steps=-1)
    with pytest.raises(ValueError, match="unknown variant 'B/17'"):
        validate(load_config("configs/pretrain.py:variant=B/17"))
    with pytest.raises(FileNotFoundError, match="configs/nope.py"):
        load_config("configs/nope.py")


def test_config_arguments_are_python_literals_or_strings():
    args = parse_arg("variant=B/16,steps=8,eval=False,data=synthetic", variant="tiny", steps=-1, eval=True,
                     data="x")
    assert (args.variant, args.steps, args.eval, args.data) == ("B/16", 8, False, "synthetic")
    assert type(args.steps) is int and type(args.eval) is bool
    demo = load_config("configs/demo.py:steps=40,eval=False")
    assert demo.total_steps == 40 and dict(demo.evals) == {} and tuple(demo.eval_references) == ()
    assert load_config("configs/demo.py").total_steps == 1600


def test_frames_the_synthetic_corpus_cannot_split_fail_in_validation():
    from tvts.config import validate_data

    config = tiny_config(**{"model.num_frames": 6})
    validate(config)  # the model takes 6 frames; only the corpus cannot split them into 4 clips
    with pytest.raises(ValueError, match="num_frames=6"):
        validate_data(config)


def test_frames_per_source():
    """data.num_frames gives a source its own frame count (TVTS v1's first stage: WebVid at 4 frames); the data
    sources sample it, the FLOP count uses it, and a count the source's reader cannot use fails in validation."""
    from tvts.config import source_frames, validate_data
    from tvts.data.pipeline import make_sources
    from tvts.flops import step_shape

    config = tiny_config(**{"model.num_frames": 8, "data.num_frames.captioned": 4,
                            "data.sources": ("transcribed", "captioned")})
    validate(config)
    validate_data(config)
    assert (source_frames(config, "transcribed"), source_frames(config, "captioned")) == (8, 4)
    assert (step_shape(config, "transcribed").frames, step_shape(config, "captioned").frames) == (8, 4)
    frames = {k: source_frames(config, k) for k in config.data.sources}
    sources = make_sources(config.data, 32, frames)
    assert {k: s.batch(0)["video"].shape[1] for k, s in sources.items()} == {"transcribed": 8, "captioned": 4}
    with pytest.raises(ValueError, match="num_frames=6"):   # the synthetic corpus splits frames over 4 clips
        validate_data(tiny_config(**{"data.num_frames.captioned": 6, "data.sources": ("transcribed", "captioned")}))
    v1 = load_config("configs/demo_v1.py:eval=False")
    apply_overrides(v1, {"data.num_frames.captioned": 3})
    with pytest.raises(ValueError, match=r"data.num_frames.captioned=3: v1-tiny embeds tubelets of 2 frames"):
        validate(v1)
