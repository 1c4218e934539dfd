import os

import av
import numpy as np
import pytest

from common import video_io
from common.errors import UserError
from conftest import make_video


def test_written_video_is_h264_yuv420p_with_every_frame(tmp_path):
    path = tmp_path / "clip.mp4"
    frames = make_video(path, num_frames=7, fps=12)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert float(stream.average_rate) == 12
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 7
    assert np.abs(decoded[3].astype(int) - frames[3]).mean() < 4  # crf 18: near lossless
    assert not any(n.endswith(".tmp.mp4") for n in os.listdir(tmp_path))


def test_aborted_writer_leaves_no_file(tmp_path):
    writer = video_io.VideoWriter(str(tmp_path / "v.mp4"), 24)
    writer.write(np.zeros((16, 16, 3), np.uint8))
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_probe_count_and_read_selected_frames(tmp_path):
    path = str(tmp_path / "clip.mp4")
    frames = make_video(path, num_frames=8, height=96, width=128, fps=12)
    assert video_io.probe_video(path)[:3] == (128, 96, 12.0)
    assert video_io.count_frames(path) == 8
    got = video_io.read_video(path, [1, 5], 128, 96, "crop")
    assert len(got) == 2 and np.abs(got[1].astype(int) - frames[5]).mean() < 4


@pytest.mark.parametrize("kwargs, indices, fps", [
    (dict(), list(range(10)), 30),
    (dict(stride=3), [0, 3, 6, 9], 10),
    (dict(start=0.2, max_frames=2), [6, 7], 30),
    (dict(fps=10), [0, 3, 6, 9], 10),
    (dict(fps=12), [0, 2, 5, 7], 12),
])
def test_select_frames(kwargs, indices, fps):
    assert video_io.select_frames(10, 30.0, **kwargs) == (indices, fps)


def test_fit_crop_fills_and_pad_letterboxes():
    image = np.full((100, 200, 3), 200, np.uint8)
    cropped = video_io.fit_image(image, 64, 64, "crop")
    padded = video_io.fit_image(image, 64, 64, "pad")
    assert cropped.shape == padded.shape == (64, 64, 3)
    assert cropped.min() == 200
    assert not padded[:10].any() and padded[32, 32, 0] == 200  # black bars above, picture in the middle


def test_missing_and_corrupt_videos_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        video_io.probe_video(str(tmp_path / "none.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(UserError, match="cannot read video"):
        video_io.probe_video(str(bad))


def test_a_video_cut_short_is_a_user_error(tmp_path):
    path = tmp_path / "clip.mp4"
    make_video(path, num_frames=12)
    data = path.read_bytes()
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError):
        video_io.read_video(str(truncated), list(range(12)), 64, 64, "crop")
