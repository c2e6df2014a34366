"""`stdc infer` as a real process under SIGTERM and repeated Ctrl-C: exit codes 143 / 130,
and the video of the frames done is complete and playable."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from stdc_deploy.synthetic import synthetic_images

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def write_video(path: Path, frames: int = 400, size=(160, 96)) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for image in synthetic_images(4, size[1], size[0], seed=1) * (frames // 4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def run_and_signal(official_checkpoints, tmp_path, signals: list[int]) -> tuple[int, str, Path]:
    video = write_video(tmp_path / "long.mp4")
    out = tmp_path / "out"
    # the checkpoint runs in PyTorch at a small size: slow enough to interrupt mid-video
    command = [sys.executable, "-m", "stdc_deploy", "infer", str(video), "-m", str(official_checkpoints["stdc1"]),
               "--size", "64x128", "-d", str(out), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the output video is being written
        if out.is_dir() and any(p.name.endswith(".partial") for p in out.iterdir()):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    for number in signals:
        process.send_signal(number)
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr, out / "long_overlay.mp4"


def test_sigterm_finalises_the_video(official_checkpoints, tmp_path):
    code, stderr, output = run_and_signal(official_checkpoints, tmp_path, [signal.SIGTERM])
    assert code == 143, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    assert output.is_file() and 0 < decoded_frames(output) < 400
    assert [p.name for p in output.parent.iterdir()] == ["long_overlay.mp4"]  # no hidden partial files


def test_two_quick_interrupts_exit_cleanly(official_checkpoints, tmp_path):
    code, stderr, output = run_and_signal(official_checkpoints, tmp_path, [signal.SIGINT, signal.SIGINT])
    assert code == 130, stderr
    assert "Traceback" not in stderr and "terminate called" not in stderr
    assert output.is_file() and decoded_frames(output) > 0
