"""Planning is pure: table-driven tests on packet tables built here, plus one real clip."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from montage_ray.media.info import PacketIndex, inspect
from montage_ray.media.plan import plan_segments

TB = Fraction(1, 30)  # one tick per frame at 30 fps


def closed_gops(frames: int, gop: int, bframes: int = 0) -> PacketIndex:
    """Decode-order pts of closed GOPs: I, then (P, B...) groups where each P is shown after its Bs."""
    pts, key = [], []
    for start in range(0, frames, gop):
        end = min(start + gop, frames)
        pts.append(start)
        key.append(True)
        t = start + 1
        while t < end:
            p = min(t + bframes, end - 1)
            pts.append(p)
            key.append(False)
            pts.extend(range(t, p))
            key.extend([False] * (p - t))
            t = p + 1
    return PacketIndex(np.array(pts, dtype=np.int64), np.array(key))


def open_gops(frames: int, gop: int) -> PacketIndex:
    """Like closed_gops with 2 B-frames, but each I after the first is followed by 2 leading B-frames."""
    pts, key = [0], [True]
    t = 1
    while t < frames:
        if t % gop == 0 and t + 2 < frames:  # open-GOP I shown after the 2 Bs that follow it
            pts += [t + 2, t, t + 1]
            key += [True, False, False]
            t += 3
        else:
            pts.append(t)
            key.append(False)
            t += 1
    return PacketIndex(np.array(pts, dtype=np.int64), np.array(key))


def test_clean_cuts_closed_gop_with_bframes():
    idx = closed_gops(90, 30, bframes=2)
    cuts = idx.clean_cuts()
    assert [int(idx.pts[c]) for c in cuts] == [0, 30, 60]


def test_open_gop_keyframes_are_not_clean_cuts():
    idx = open_gops(90, 30)
    assert idx.key.sum() == 3
    assert idx.clean_cuts().tolist() == [0]


@pytest.mark.parametrize("frames,gop,seconds,expected", [
    (300, 30, 2, [60, 60, 60, 60, 60]),          # GOPs grouped to the segment length
    (300, 1, 2, [60, 60, 60, 60, 60]),           # all-intra: groups of many tiny GOPs, not 300 segments
    (90, 30, 2, [90]),                           # shorter than two segments: one segment
    (330, 30, 2, [60, 60, 60, 60, 90]),          # a 1 s tail joins the last segment
    (310, 50, 3, [100, 100, 110]),               # cut at the keyframe nearest each 3 s boundary
])
def test_segments(frames, gop, seconds, expected):
    idx = closed_gops(frames, gop, bframes=2)
    segs = plan_segments(idx, TB, seconds)
    assert [s.frames for s in segs] == expected
    # contiguous, exact, and every start is a keyframe
    assert segs[0].first_packet == 0 and segs[-1].end_packet == len(idx)
    for a, b in zip(segs, segs[1:]):
        assert a.end_packet == b.first_packet and idx.key[b.first_packet]
        assert a.start_ticks + a.duration_ticks == b.start_ticks
    assert sum(s.duration_ticks for s in segs) == frames


def test_durations_are_exact_in_ticks_for_odd_time_bases():
    idx = closed_gops(300, 30)
    tb = Fraction(1001, 30000)
    segs = plan_segments(idx, tb, 2)
    assert sum(s.duration_ticks for s in segs) == 300
    assert segs[1].start == pytest.approx(float(segs[1].start_ticks * tb))


def test_plan_rejects_non_positive_length():
    with pytest.raises(ValueError):
        plan_segments(closed_gops(30, 10), TB, 0)


def test_real_clip_packet_table(make_clip):
    info = inspect(make_clip("bframes"))
    assert info.video.frames == 180 and info.video.codec == "h264"
    assert info.video.frame_rate == 30
    cuts = info.clean_cuts()
    assert cuts[0] == 0 and len(cuts) >= 6
    assert info.packets.key[cuts].all()
    segs = plan_segments(info.packets, info.video.time_base, 2)
    assert [s.frames for s in segs] == [60, 60, 60]


def test_real_open_gop_clip_has_no_clean_cut_after_the_first(make_clip):
    info = inspect(make_clip("opengop"))
    assert info.packets.key.sum() > 1       # keyframes exist...
    assert info.clean_cuts().tolist() == [0]  # ...but none is a clean cut


def test_taper_cuts_the_tail_into_half_length_segments():
    packets = closed_gops(3000, 30)                       # 100 s at 30 fps, a keyframe every second
    plain = plan_segments(packets, Fraction(1, 30), 10)
    tapered = plan_segments(packets, Fraction(1, 30), 10, taper=0.2)
    assert [s.frames for s in plain] == [300] * 10
    assert [s.frames for s in tapered] == [300] * 8 + [150] * 4
    assert sum(s.frames for s in tapered) == 3000
    assert all(a.end_packet == b.first_packet for a, b in zip(tapered, tapered[1:]))  # still exact

    # a 45 s clip with a 9 s tail: the segment that would reach into the tail is already cut short
    straddle = plan_segments(closed_gops(1350, 30), Fraction(1, 30), 10, taper=0.2)
    assert [s.frames for s in straddle] == [300] * 3 + [150] * 3


def test_the_stream_ends_when_its_last_frame_does_as_the_source_says():
    """Frames 1/6 s apart, the last one lasting 1/30 s (a WebM block duration): the end is last pts + 1/30 s."""
    pts = np.arange(0, 60) * 167
    tb = Fraction(1, 1000)
    told = plan_segments(PacketIndex(pts=pts, key=np.ones(60, bool), last_duration=33), tb, 2.0)
    assert told[-1].start_ticks + told[-1].duration_ticks == 59 * 167 + 33
    untold = plan_segments(PacketIndex(pts=pts, key=np.ones(60, bool)), tb, 2.0)  # typical gap then
    assert untold[-1].start_ticks + untold[-1].duration_ticks == 60 * 167


@pytest.mark.parametrize("size,fit", [((640, 360), (640, 360, None)),
                                      ((641, 361), (642, 362, "pad=642:362:0:0,fillborders=right=1:bottom=1:mode=smear")),
                                      ((641, 360), (642, 360, "pad=642:360:0:0,fillborders=right=1:bottom=0:mode=smear")),
                                      ((1, 1), (2, 2, "pad=2:2:0:0,fillborders=right=1:bottom=1:mode=smear"))])
def test_odd_frame_sizes_are_padded_to_even(size, fit):
    from montage_ray.media.plan import fit_frame

    got = fit_frame(*size)
    assert (got.width, got.height, got.filter) == fit
    assert (got.note is None) == (fit[2] is None)


@pytest.mark.parametrize("packets, seconds, taper", [
    (closed_gops(3000, 30, bframes=2), 10, 0.2),   # B-frames, a tapered tail
    (open_gops(900, 30), 4, 0.0),                  # open GOPs: cuts that decode frames they drop
    (closed_gops(600, 600), 5, 0.0),               # one keyframe: cuts at any frame
])
def test_a_plan_is_rebuilt_from_its_frame_counts(packets, seconds, taper):
    """scripts/bench.py's limit line encodes the very pieces a job used, from the report's frame counts."""
    from montage_ray.media.plan import segments_at

    plan = plan_segments(packets, TB, seconds, taper=taper)
    assert len(plan) >= 2
    assert segments_at(packets, TB, [s.frames for s in plan]) == plan
    with pytest.raises(ValueError):
        segments_at(packets, TB, [s.frames for s in plan][:-1])


# -- the length policy: segments priced with what each costs beyond its frames -------------------------------

def test_the_plan_takes_fewer_longer_segments_where_a_segment_costs_more():
    from montage_ray.media.plan import EncoderCost, choose_plan

    packets = closed_gops(3600, 30)  # 120 s, a keyframe every second
    cheap = choose_plan(packets, TB, [EncoderCost(fps=30, overhead_frames=0, overhead_seconds=0)] * 4)
    dear = choose_plan(packets, TB, [EncoderCost(fps=30, overhead_frames=150, overhead_seconds=1)] * 4)
    assert len(cheap.segments) > 4                 # nothing to save: short pieces keep the end even
    assert len(dear.segments) == 4                 # each more would cost 6 s: one per encoder
    for plan in (cheap, dear):
        assert sum(s.frames for s in plan.segments) == 3600
        assert all(a.end_packet <= b.first_packet + b.skip_frames for a, b in zip(plan.segments, plan.segments[1:]))


def test_a_small_machine_gets_one_even_segment_per_encoder():
    """Two equal encoders, 30 s with a keyframe every 2 s: two halves, the second cut off its keyframe
    (it decodes 30 frames to drop them) rather than 14 s and 16 s at keyframes."""
    from montage_ray.media.plan import EncoderCost, choose_plan

    packets = closed_gops(900, 60, bframes=2)
    plan = choose_plan(packets, TB, [EncoderCost(fps=100, overhead_frames=5, overhead_seconds=0.05,
                                                 decode_fps=400)] * 2)
    assert [s.frames for s in plan.segments] == [450, 450]
    assert [s.skip_frames for s in plan.segments] == [0, 30]
    assert "1 per encoder" in plan.describe()


def test_uneven_encoders_share_the_work_to_an_even_end():
    """One encoder 8x faster than three others: more pieces than encoders, so the fast one takes more, and
    the predicted end is near the ideal (all frames over the summed speed)."""
    from montage_ray.media.plan import EncoderCost, choose_plan

    costs = [EncoderCost(fps=240, overhead_seconds=0.1)] + [EncoderCost(fps=30, overhead_seconds=0.1)] * 3
    plan = choose_plan(closed_gops(3600, 30), TB, costs)
    ideal = 3600 / (240 + 3 * 30)
    assert len(plan.segments) > 4
    assert plan.predicted < 1.15 * ideal


def test_a_chosen_length_is_kept_a_short_clip_is_one_segment_and_pass_through_cuts_at_keyframes():
    from montage_ray.media.plan import EncoderCost, choose_plan

    costs = [EncoderCost(fps=100, overhead_frames=5)] * 2
    chosen = choose_plan(closed_gops(900, 30), TB, costs, chosen=2)
    assert [s.frames for s in chosen.segments] == [60] * 15 and chosen.predicted > 0
    assert len(choose_plan(closed_gops(450, 30), TB, costs).segments) == 1     # 15 s: one segment
    copies = [EncoderCost(fps=3000, evens=False)] * 2                          # it cannot drop frames
    plan = choose_plan(closed_gops(900, 60, bframes=2), TB, copies)
    assert all(s.skip_frames == 0 and s.tail_frames == 0 for s in plan.segments)


def test_predict_prices_overhead_and_a_slow_encoder():
    from montage_ray.media.plan import SPEED_SPREAD, EncoderCost, plan_segments, predict

    segments = plan_segments(closed_gops(600, 30), TB, 5)                      # 4 x 150 frames
    cost = EncoderCost(fps=50, overhead_frames=10, overhead_seconds=0.5)
    assert predict(segments, [cost] * 4) == pytest.approx(0.5 + 160 / 50)
    assert predict(segments, [cost] * 2) == pytest.approx(2 * (0.5 + 160 / 50))
    slowed = predict(segments, [cost] * 4, slow=0)
    assert slowed == pytest.approx(0.5 + 160 / (50 / (1 + SPEED_SPREAD)))
