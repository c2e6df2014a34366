"""Video in, video out: exact size, frame count, frame rate and time stamps; codecs; truncated
files; interruptions. Inputs are made with PyAV here and outputs checked with PyAV directly
(not with the package's reader)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stdc_deploy.cli import app
from stdc_deploy.errors import InvalidValue, StdcError
from stdc_deploy.jobs import InferOptions, run_infer
from stdc_deploy.segmenter import Segmenter
from stdc_deploy.sources import resolve_source
from stdc_deploy.synthetic import random_model, to_official_state_dict
from stdc_deploy.video import AtomicVideoWriter, VideoReader, codec_for, output_suffix

av = pytest.importorskip("av")

MP4 = "mov,mp4,m4a,3gp,3g2,mj2"  # FFmpeg's name for the MP4/MOV demuxer


# ----------------------------------------------------------------------------- helpers

def noise(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Frames with a smooth gradient plus noise: every frame costs about the same bytes."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    return [np.clip(ramp + rng.integers(0, 56, (height, width, 3)), 0, 255).astype(np.uint8) for _ in range(count)]


def make_video(path: Path, width: int, height: int, pts: list[int], time_base: Fraction, *, codec: str = "libx264",
               rate: Fraction = Fraction(25), pix_fmt: str = "yuv420p", faststart: bool = False,
               rotation: int | None = None) -> Path:
    """An input video written with PyAV directly, with exactly these time stamps."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image, stamp in zip(noise(len(pts), width, height), pts):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = stamp, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def probe(path: Path) -> dict:
    """What an independent decoder sees: container, codec, size, frames and their times."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times, sizes, errors = [], set(), 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                errors += 1
                continue
            for frame in frames:
                times.append(float(frame.pts * frame.time_base))
                sizes.add((frame.width, frame.height))
        return {"format": container.format.name, "codec": stream.codec_context.name,
                "profile": stream.codec_context.profile, "pix_fmt": stream.codec_context.format.name,
                "width": stream.width, "height": stream.height, "sizes": sizes, "frames": len(times),
                "announced": stream.frames, "rate": stream.average_rate, "times": times, "errors": errors}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- the writer

def test_even_size_is_h264_yuv420p_mp4(tmp_path):
    path = tmp_path / "v.mp4"
    with AtomicVideoWriter(path, Fraction(30000, 1001), (64, 48)) as writer:
        for image in noise(4, 64, 48):
            writer.write(image)
    assert (writer.codec, writer.pixel_format, writer.note()) == ("h264", "yuv420p", None)
    info = probe(path)
    assert (info["format"], info["codec"], info["pix_fmt"], info["profile"]) == (MP4, "h264", "yuv420p", "High")
    assert (info["width"], info["height"], info["frames"]) == (64, 48, 4)
    assert info["rate"] == Fraction(30000, 1001)
    assert path.read_bytes()[:64].find(b"moov") > 0  # index first: browsers start playing at once
    assert leftovers(tmp_path) == []


def test_odd_size_is_kept_exactly(tmp_path):
    path = tmp_path / "odd.mp4"
    images = noise(3, 63, 47)
    with AtomicVideoWriter(path, 25, (63, 47)) as writer:
        for image in images:
            writer.write(image)
    assert writer.pixel_format == "yuv444p" and "63x47" in writer.note()
    info = probe(path)
    assert (info["codec"], info["pix_fmt"], info["profile"]) == ("h264", "yuv444p", "High 4:4:4 Predictive")
    assert (info["width"], info["height"], info["sizes"], info["frames"]) == (63, 47, {(63, 47)}, 3)


def test_colours_survive_the_round_trip(tmp_path):
    """Frames are converted with BT.709 and tagged so: a decoder gives the colours back."""
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (40, 120, 200)]
    for size in ((64, 48), (63, 47)):
        path = tmp_path / f"c{size[0]}.mp4"
        with AtomicVideoWriter(path, 25, size) as writer:
            for colour in colours:
                writer.write(np.full((size[1], size[0], 3), colour, np.uint8))
        with av.open(str(path)) as container:
            decoded = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
        for image, colour in zip(decoded, colours):
            assert np.abs(image.reshape(-1, 3).mean(0) - colour).max() < 6, (size, colour)


@pytest.mark.parametrize("name, codec, expected", [
    ("v.avi", None, "mjpeg"), ("v.mkv", "ffv1", "ffv1"), ("v.mp4", "mpeg4", "mpeg4"), ("v.mov", "h264", "h264"),
])
def test_codecs_and_containers(tmp_path, name, codec, expected):
    images = noise(3, 63, 47)
    path = tmp_path / name
    with AtomicVideoWriter(path, 10, (63, 47), codec=codec) as writer:
        for image in images:
            writer.write(image)
    info = probe(path)
    assert (info["codec"], info["width"], info["height"], info["frames"]) == (expected, 63, 47, 3)
    if expected == "ffv1":  # lossless
        with av.open(str(path)) as container:
            decoded = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
        assert all(np.array_equal(a, b) for a, b in zip(decoded, images))


def test_codec_errors_are_one_line(tmp_path):
    with pytest.raises(InvalidValue, match="unknown video codec 'vp8'; choose one of h264, mpeg4, mjpeg, ffv1"):
        AtomicVideoWriter(tmp_path / "v.mp4", 25, (64, 48), codec="vp8")
    with pytest.raises(InvalidValue, match=r"ffv1 video cannot be stored in a '\.mp4' file; use \.mkv or \.avi"):
        AtomicVideoWriter(tmp_path / "v.mp4", 25, (64, 48), codec="ffv1")
    with pytest.raises(StdcError, match="cannot write '.webm' videos"):
        AtomicVideoWriter(tmp_path / "v.webm", 25, (64, 48))
    assert list(tmp_path.iterdir()) == []
    assert codec_for(Path("a.avi")) == "mjpeg" and codec_for(Path("a.MP4")) == "h264"
    assert output_suffix(".avi") == ".avi" and output_suffix(".webm") == ".mp4"
    assert output_suffix(".mp4", "ffv1") == ".mkv" and output_suffix(".avi", "h264") == ".mp4"


def test_source_time_stamps_are_kept(tmp_path):
    """Variable frame rate: each frame keeps its time, relative to the first."""
    stamps = [900, 3900, 9900, 10900, 30900]  # 1/90000 s, starting late as MPEG-TS does
    path = tmp_path / "vfr.mp4"
    with AtomicVideoWriter(path, 15, (64, 48), time_base=Fraction(1, 90000)) as writer:
        for image, stamp in zip(noise(5, 64, 48), stamps):
            writer.write(image, stamp)
    assert probe(path)["times"] == pytest.approx([(s - 900) / 90000 for s in stamps], abs=1e-6)


def test_failure_leaves_nothing_and_interruption_keeps_the_frames(tmp_path):
    with pytest.raises(RuntimeError), AtomicVideoWriter(tmp_path / "bad.mp4", 25, (64, 48)) as writer:
        writer.write(noise(1, 64, 48)[0])
        raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), AtomicVideoWriter(tmp_path / "cut.mp4", 25, (64, 48)) as writer:
        for image in noise(3, 64, 48):
            writer.write(image)
        raise KeyboardInterrupt
    assert probe(tmp_path / "cut.mp4")["frames"] == 3 and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- the reader

def test_reader_gives_time_base_rate_count_and_stamps(tmp_path):
    stamps = [0, 1001, 2002, 3003, 4004, 5005]
    path = make_video(tmp_path / "in.mp4", 63, 47, stamps, Fraction(1, 30000), codec="mpeg4",
                      rate=Fraction(30000, 1001))
    with VideoReader(path) as reader:
        info = reader.info
        frames = list(reader.frames())
        assert reader.shortfall() is None
    assert (info.width, info.height, info.frame_count, info.codec) == (63, 47, 6, "mpeg4")
    assert info.rate == Fraction(30000, 1001) and info.fps == pytest.approx(29.97, abs=1e-3)
    assert [round(f.pts * info.time_base * 30000) for f in frames] == stamps
    assert all(f.image.shape == (47, 63, 3) for f in frames)


def test_reader_turns_frames_upright(tmp_path):
    """Phone videos carry a rotation; frames come out as players show them (as OpenCV does)."""
    path = make_video(tmp_path / "phone.mp4", 64, 32, [0, 1, 2], Fraction(1, 25), rotation=90)
    with VideoReader(path) as reader:
        assert (reader.info.width, reader.info.height) == (32, 64)
        assert all(image.shape == (64, 32, 3) for image in reader)


# ----------------------------------------------------------------------------- stdc infer

SIZE = (32, 64)  # network input: the smallest accepted


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A random-weight STDC1 checkpoint (PyTorch runs it: no export needed to test video I/O)."""
    path = tmp_path_factory.mktemp("video") / "stdc1.pth"
    torch.save(to_official_state_dict(random_model("stdc1", calib_size=SIZE, calib_images=2)), path)
    return path


@pytest.fixture(scope="module")
def seg(model):
    with Segmenter(model, backend="torch", device="cpu", size=SIZE) as opened:
        yield opened


def infer(model: Path, *args: str):
    return CliRunner().invoke(app, ["infer", *map(str, args), "-m", str(model), "--size", "32x64", "--device", "cpu",
                                    "--no-progress"])


def test_odd_size_mp4_in_same_video_out(model, tmp_path):
    stamps = [i * 1001 for i in range(6)]
    source = make_video(tmp_path / "odd.mp4", 63, 47, stamps, Fraction(1, 30000), codec="mpeg4",
                        rate=Fraction(30000, 1001))
    result = infer(model, source, "-d", tmp_path / "out")
    assert result.exit_code == 0, result.output
    out, src = probe(tmp_path / "out" / "odd_overlay.mp4"), probe(source)
    assert (out["format"], out["codec"], out["pix_fmt"]) == (MP4, "h264", "yuv444p")
    assert (out["width"], out["height"], out["sizes"], out["frames"]) == (63, 47, {(63, 47)}, 6)
    assert out["rate"] == src["rate"] == Fraction(30000, 1001)
    assert out["times"] == pytest.approx(src["times"], abs=1e-6)
    assert leftovers(tmp_path / "out") == []


def test_mjpeg_avi_in(model, tmp_path):
    source = make_video(tmp_path / "cam.avi", 64, 48, list(range(5)), Fraction(1, 10), codec="mjpeg",
                        rate=Fraction(10), pix_fmt="yuvj420p")
    result = infer(model, source, "-d", tmp_path / "out", "--save", "overlay,color", "-o", tmp_path / "web.mp4")
    assert result.exit_code == 0, result.output
    web, colour = probe(tmp_path / "web.mp4"), probe(tmp_path / "out" / "cam_color.avi")
    assert (web["format"], web["codec"], web["pix_fmt"], web["frames"], web["rate"]) == (MP4, "h264", "yuv420p", 5, 10)
    assert web["times"] == pytest.approx([i / 10 for i in range(5)])
    assert (colour["format"], colour["codec"], colour["frames"], colour["rate"]) == ("avi", "mjpeg", 5, 10)
    assert (web["width"], web["height"], colour["width"], colour["height"]) == (64, 48, 64, 48)


def test_variable_frame_rate_keeps_its_timing(model, seg, tmp_path):
    stamps = [0, 3000, 9000, 10000, 30000, 31000, 60000]  # 1/90000 s: gaps from 11 ms to 333 ms
    source = make_video(tmp_path / "vfr.mp4", 64, 48, stamps, Fraction(1, 90000))
    report = run_infer(seg, resolve_source(str(source)), InferOptions(out_dir=tmp_path / "out", codec="ffv1"))
    assert not report.failed and report.frames == 7
    out = probe(tmp_path / "out" / "vfr_overlay.mkv")  # ffv1 does not fit .mp4: the default for it, .mkv
    assert (out["codec"], out["frames"]) == ("ffv1", 7)
    assert out["times"] == pytest.approx([s / 90000 for s in stamps], abs=1e-3)  # Matroska counts milliseconds
    result = infer(model, source, "-d", tmp_path / "out2")
    assert result.exit_code == 0, result.output
    assert probe(tmp_path / "out2" / "vfr_overlay.mp4")["times"] == pytest.approx([s / 90000 for s in stamps], abs=1e-6)


def test_truncated_file_keeps_the_frames_decoded_and_fails(model, tmp_path):
    whole = make_video(tmp_path / "whole.mp4", 64, 48, list(range(20)), Fraction(1, 25), faststart=True)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.6)])
    decodable = probe(cut)["frames"]
    assert 0 < decodable < 20 and probe(cut)["announced"] == 20
    result = infer(model, cut, "-d", tmp_path / "out")
    assert result.exit_code == 1
    assert "announces 20 frames but only" in result.stderr and "Traceback" not in result.output
    out = probe(tmp_path / "out" / "cut_overlay.mp4")
    assert (out["frames"], out["errors"]) == (decodable, 0)  # playable: every frame decodes
    assert leftovers(tmp_path / "out") == []


def test_file_cut_before_its_index_is_a_one_line_error(model, tmp_path):
    whole = make_video(tmp_path / "whole.mp4", 64, 48, list(range(10)), Fraction(1, 25))  # index at the end
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:-200])
    result = infer(model, cut, "-d", tmp_path / "out")
    assert result.exit_code == 1 and "cannot open this video" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


class _Terminated(KeyboardInterrupt):
    signum = 15  # what SIGTERM raises in the CLI


@pytest.mark.parametrize("interrupt, signal", [(KeyboardInterrupt, 2), (_Terminated, 15)])
def test_interruption_finalises_the_video(seg, tmp_path, monkeypatch, interrupt, signal):
    source = make_video(tmp_path / "long.mp4", 64, 48, list(range(12)), Fraction(1, 25))
    calls = {"n": 0}
    original = Segmenter.overlay

    def overlay_then_stop(self, image, labels, alpha=0.5):
        calls["n"] += 1
        if calls["n"] > 4:
            raise interrupt()
        return original(self, image, labels, alpha)

    monkeypatch.setattr(Segmenter, "overlay", overlay_then_stop)
    report = run_infer(seg, resolve_source(str(source)), InferOptions(out_dir=tmp_path / "out"))
    assert report.interrupted and report.signal == signal and report.frames == 4 and not report.failed
    out = probe(tmp_path / "out" / "long_overlay.mp4")
    assert (out["frames"], out["errors"], out["times"]) == (4, 0, pytest.approx([0, 0.04, 0.08, 0.12]))
    assert leftovers(tmp_path / "out") == []


def test_failure_mid_video_leaves_no_video(seg, tmp_path, monkeypatch):
    source = make_video(tmp_path / "v.mp4", 64, 48, list(range(6)), Fraction(1, 25))
    monkeypatch.setattr(Segmenter, "colorize", lambda self, labels: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_infer(seg, resolve_source(str(source)), InferOptions(out_dir=tmp_path / "out", save=("overlay", "color")))
    assert list((tmp_path / "out").iterdir()) == []
