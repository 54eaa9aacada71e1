"""Video files written by sora_jax read back as the clips they came from; bad files fail clearly."""
import av
import numpy as np
from PIL import Image, ImageSequence
import pytest

from sora_jax.data import video_io


def _clip(t=17, h=32, w=48):
  """A ShapesWorld-like clip: flat background, a red square moving right, a blue bar."""
  v = np.full((t, h, w, 3), 90, np.uint8)
  for i in range(t):
    v[i, 4:14, 2 + i:12 + i] = (220, 40, 40)
    v[i, h - 8:h - 2, 3:9] = (50, 80, 230)
  return v


@pytest.mark.parametrize("shape", [(17, 32, 48), (5, 33, 47), (1, 32, 32)])
def test_mp4_round_trip_keeps_shape_and_fps(tmp_path, shape):
  v = _clip(*shape)
  path = video_io.write_mp4(str(tmp_path / "a.mp4"), v, fps=8)
  out, fps = video_io.read_video(path)
  assert out.shape == v.shape and out.dtype == np.uint8  # odd sides: padding cropped away
  assert fps == pytest.approx(8.0, abs=0.01)
  # H.264 at crf 18 is lossy; flat colours come back within a few levels on average.
  assert np.abs(out.astype(int) - v).mean() < 6


def test_written_files_decode_with_pyav_and_pillow(tmp_path):
  """Other readers see what we wrote: H.264/yuv420p at the fps for mp4, exact GIF frames."""
  v = _clip(9, 32, 48)
  mp4 = video_io.write_mp4(str(tmp_path / "a.mp4"), v, fps=8)
  with av.open(mp4) as container:
    stream = container.streams.video[0]
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert stream.average_rate == 8
    frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
  assert frames.shape == v.shape and np.abs(frames.astype(int) - v).mean() < 6
  gif = video_io.write_gif(str(tmp_path / "a.gif"), v, fps=8)
  with Image.open(gif) as im:
    durations = [f.info["duration"] for f in ImageSequence.Iterator(im)]
    frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
  np.testing.assert_array_equal(frames, v)
  assert sum(durations) == pytest.approx(1000 * len(v) / 8, abs=10)


def test_gif_round_trip_is_exact_for_few_colours(tmp_path):
  v = _clip(9, 33, 47)
  path = video_io.write_gif(str(tmp_path / "a.gif"), v, fps=8)
  out, fps = video_io.read_video(path)
  np.testing.assert_array_equal(out, v)
  assert fps == pytest.approx(8.0, abs=0.01)  # despite GIF's 1/100 s delays


def test_gif_of_many_colours_is_close(tmp_path):
  v = np.random.default_rng(0).integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)
  out, _ = video_io.read_video(video_io.write_gif(str(tmp_path / "n.gif"), v, fps=10))
  assert out.shape == v.shape
  assert np.abs(out.astype(int) - v).mean() < 20  # one 256-colour palette for noise


def test_resampling_picks_frames_nearest_in_time(tmp_path):
  v = _clip(17)
  path = video_io.write_gif(str(tmp_path / "a.gif"), v, fps=8)
  half, fps = video_io.read_video(path, fps=4)
  assert fps == 4 and half.shape[0] == 9  # 2.125 s at 4 fps
  np.testing.assert_array_equal(half, v[::2])
  double, _ = video_io.read_video(path, fps=16)
  assert double.shape[0] == 34
  np.testing.assert_array_equal(double[::2], v)


def test_read_image(tmp_path):
  v = _clip(1, 30, 40)
  path = video_io.write_gif(str(tmp_path / "still.gif"), v, fps=8)
  np.testing.assert_array_equal(video_io.read_image(path), v[0])


def test_bad_files_raise_video_read_error(tmp_path):
  path = video_io.write_mp4(str(tmp_path / "a.mp4"), _clip(), fps=8)
  data = open(path, "rb").read()
  (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
  (tmp_path / "text.mp4").write_text("not a video")
  (tmp_path / "empty.mp4").write_bytes(b"")
  for name in ("cut.mp4", "text.mp4", "empty.mp4", "missing.mp4"):
    with pytest.raises(video_io.VideoReadError, match=name):
      video_io.read_video(str(tmp_path / name))


def test_writers_refuse_wrong_arrays(tmp_path):
  with pytest.raises(ValueError, match="uint8"):
    video_io.write_mp4(str(tmp_path / "x.mp4"), np.zeros((2, 16, 16, 3), np.float32), fps=8)
  with pytest.raises(ValueError, match="fps"):
    video_io.write_gif(str(tmp_path / "x.gif"), _clip(2), fps=0)
