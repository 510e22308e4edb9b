"""tools.research.learnability: the inputs it classifies are the first event's frames and labels."""
import numpy as np
import pytest

from tools.research import learnability
from tvts.data.synthetic import MOTIONS, SHAPES, SyntheticConfig, SyntheticCorpus


@pytest.mark.parametrize("frames", [1, 3, 12])
def test_inputs_are_the_first_events_frames(frames):
    corpus = SyntheticCorpus(SyntheticConfig(), "test")
    batch = corpus.transcribed_batch(range(6), train=False)
    x, y = learnability.first_event_inputs(batch, "motion", frames)
    assert x.shape == (6, frames, 32, 32, 3)
    for i in range(6):
        video = corpus.video(i)
        times = video.frame_times()                         # evaluation frame times, 3 per clip
        first = video.event_at(times) == 0
        if frames < 12:                                     # only frames of the first event
            assert first[1] and (frames == 1 or first[:3].all())
        np.testing.assert_array_equal(x[i], video.render(times)[{1: [1], 3: [0, 1, 2], 12: slice(None)}[frames]])
        assert MOTIONS[y[i]] == video.events[0].names[2]
    _, shapes = learnability.first_event_inputs(batch, "shape", 1)
    assert [SHAPES[s] for s in shapes] == [corpus.video(i).events[0].names[0] for i in range(6)]
