"""The curriculum's counters and phases, against hand counts and against the loop itself written out update by
update (the reference: for each iteration, one update per source that has started, in source order)."""
import itertools

import pytest
from helpers import tiny_config

from tvts.config import load_config
from tvts.curriculum import Curriculum, Phase


def curriculum(total, sources=("transcribed", "captioned"), source_start=None, group_start=None,
               contrastive_start=0.0, contrastive_weight=1.0):
    return Curriculum(total_iterations=total, sources=tuple(sources), source_start_fraction=source_start or {},
                      group_start_fraction=group_start or {}, contrastive_start_fraction=contrastive_start,
                      transcribed_contrastive_weight=contrastive_weight)


def unrolled(total, sources, source_start):
    """[(iteration, kind)] of every update in order: the trainer's loop, written out without any arithmetic."""
    updates = []
    for iteration in range(total):
        for kind in sources:
            if iteration >= int(source_start.get(kind, 0.0) * total):
                updates.append((iteration, kind))
    return updates


def test_a_late_source_by_hand():
    # 10 iterations; transcribed from iteration 3; captioned from 0. Iterations 0-2: one captioned update each
    # (updates 0-2); from iteration 3: transcribed, then captioned (updates 3, 4 at iteration 3; 5, 6 at 4; ...).
    c = curriculum(10, source_start={"transcribed": 0.3, "captioned": 0.0})
    assert [c.active_sources(i) for i in (0, 2, 3, 9)] == [("captioned",), ("captioned",),
                                                          ("transcribed", "captioned"), ("transcribed", "captioned")]
    assert [c.update_index(i) for i in (0, 1, 3, 4, 10)] == [0, 1, 3, 5, 17]
    assert (c.update_index(3, "transcribed"), c.update_index(3, "captioned")) == (3, 4)
    assert c.total_updates == 3 + 7 * 2
    assert [c.iteration_of_update(u) for u in (0, 2, 3, 4, 5, 16)] == [0, 2, 3, 3, 4, 9]
    # a group at half of training starts at iteration 5, whose first update is 3 + 2 * 2 = 7
    assert c.start_update(0.5) == 7
    groups = ("clip", "new", "text")
    c = curriculum(10, source_start={"transcribed": 0.3}, group_start={"text": 0.5})
    assert c.group_start_updates(groups) == {"clip": 0, "new": 0, "text": 7}
    assert [c.phase(u, "captioned", groups).waiting for u in (6, 7)] == [frozenset({"text"}), frozenset()]


@pytest.mark.parametrize("total,sources,source_start", [
    (10, ("transcribed", "captioned"), {"transcribed": 0.3, "captioned": 0.0}),
    (7, ("transcribed", "captioned"), {"transcribed": 0.0, "captioned": 0.5}),
    (6, ("captioned", "transcribed"), {"transcribed": 0.2}),  # update order is data.sources' order
    (5, ("transcribed",), {}),
    (9, ("transcribed", "captioned"), {}),
])
def test_counters_agree_with_the_unrolled_loop(total, sources, source_start):
    c = curriculum(total, sources, source_start)
    updates = unrolled(total, sources, source_start)
    assert c.total_updates == len(updates)
    for iteration in range(total + 1):
        first = next((u for u, (i, _) in enumerate(updates) if i >= iteration), len(updates))
        assert c.update_index(iteration) == first, iteration
        kinds = tuple(k for i, k in updates if i == iteration)
        if iteration < total:
            assert c.active_sources(iteration) == kinds
        for kind in kinds:
            assert c.update_index(iteration, kind) == updates.index((iteration, kind))
    assert [c.iteration_of_update(u) for u in range(len(updates))] == [i for i, _ in updates]


def test_phases_follow_the_group_starts_and_the_contrastive_start():
    # one source, so update = iteration: text waits for updates 0-4, the contrastive term joins at update 3
    groups = ("clip", "new", "text")
    c = curriculum(10, ("transcribed",), group_start={"text": 0.5}, contrastive_start=0.3, contrastive_weight=0.25)
    phases = [c.phase(u, "transcribed", groups) for u in range(10)]
    assert [p.waiting for p in phases] == [frozenset({"text"})] * 5 + [frozenset()] * 5
    assert [p.transcribed_weight for p in phases] == [0.0] * 3 + [0.25] * 7
    # captioned batches have no other term: their contrastive weight is always 1
    assert {c.phase(u, "captioned", groups).transcribed_weight for u in range(10)} == {1.0}
    # phases are values: equal phases share one compiled program
    assert len({*phases}) == 3 and phases[5] == Phase(frozenset(), 0.25)


def test_phases_with_two_sources_switch_at_the_iteration_not_the_update_count():
    """Fractions are of the iterations: with both sources on, a group at 0.5 starts at iteration 4 of 8, i.e. at
    update 8 (2 updates per iteration), not at update 8 // 2 = 4 (half of the updates would be iteration 2)."""
    groups = ("clip", "new")
    c = curriculum(8, group_start={"new": 0.5}, contrastive_start=0.25)
    assert c.total_updates == 16 and c.group_start_updates(groups) == {"clip": 0, "new": 8}
    waiting = [c.phase(u, "transcribed", groups).waiting for u in range(16)]
    assert waiting == [frozenset({"new"})] * 8 + [frozenset()] * 8
    # the contrastive term joins at iteration 2 = update 4 (the transcribed update of iteration 2)
    assert [c.phase(u, "transcribed", groups).transcribed_weight for u in (2, 3, 4)] == [0.0, 0.0, 1.0]


def test_from_config_reads_the_fractions():
    config = tiny_config(**{"total_steps": 10, "data.sources": ("transcribed", "captioned"),
                            "data.source_start": {"transcribed": 0.3, "captioned": 0.0},
                            "optim.group_start": {"new": 0.5}, "loss.transcribed_contrastive_start": 0.2,
                            "loss.transcribed_contrastive_weight": 0.5})
    c = Curriculum.from_config(config)
    assert (c.total_iterations, c.sources) == (10, ("transcribed", "captioned"))
    assert c.source_start_iterations() == {"transcribed": 3, "captioned": 0}
    assert c.group_start_updates(("clip", "new")) == {"clip": 0, "new": 7}
    # the contrastive term starts at iteration 2, a captioned-only iteration: update 2
    assert [c.phase(u, "transcribed", ()).transcribed_weight for u in (1, 2)] == [0.0, 0.5]


def test_the_demo_gives_captions_a_head_start_and_published_variants_do_not():
    demo = Curriculum.from_config(load_config("configs/demo.py"))
    published = Curriculum.from_config(load_config("configs/pretrain.py:variant=B/16"))
    assert [demo.active_sources(i) for i in (0, 399, 400)] == [("captioned",), ("captioned",),
                                                              ("transcribed", "captioned")]
    assert demo.total_updates == 1600 + 1200  # captioned every iteration, transcribed from iteration 400
    # the text group and the transcribed contrastive term join at 70% of the iterations: iteration 1120
    assert demo.group_start_updates(("text",)) == {"text": 400 + 2 * 720}
    assert published.active_sources(0) == ("transcribed", "captioned")
    assert published.total_updates == 2 * 100_000


def test_iteration_of_update_inverts_update_index_everywhere():
    for total, start in itertools.product((1, 4, 9), (0.0, 0.25, 0.5)):
        c = curriculum(total, source_start={"transcribed": start})
        for iteration in range(total):
            for kind in c.active_sources(iteration):
                assert c.iteration_of_update(c.update_index(iteration, kind)) == iteration
