"""`stdc bench`: statistics, the JSON/CSV it writes, and real (tiny) runs."""

import csv
import importlib.util
import json

import pytest
from typer.testing import CliRunner

from stdc_deploy.bench import (
    SCHEMA,
    BenchSettings,
    LatencyStats,
    Target,
    preset_targets,
    run_bench,
    time_interleaved,
    time_steps,
)
from stdc_deploy.cli import app
from stdc_deploy.errors import InvalidValue, StdcError
from stdc_deploy.models import DEFAULT_PRESETS, PRESETS, Preset
from stdc_deploy.synthetic import synthetic_images


def test_percentiles_on_known_samples():
    stats = LatencyStats.from_seconds([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats.iters == 100 and stats.mean_ms == pytest.approx(50.5)
    # numpy's linear interpolation between order statistics: rank q/100 * (n - 1)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert (stats.min_ms, stats.max_ms) == (pytest.approx(1.0), pytest.approx(100.0))
    single = LatencyStats.from_seconds([0.004])
    assert single.p50_ms == single.p99_ms == pytest.approx(4.0)
    with pytest.raises(ValueError):
        LatencyStats.from_seconds([])


def test_time_steps_counts_warmup_and_iterations():
    calls = []
    samples = time_steps(lambda: calls.append(1), warmup=4, iters=7, seconds=None)
    assert len(samples) == 7 and len(calls) == 11
    calls.clear()
    samples = time_steps(lambda: calls.append(1), warmup=0, iters=None, seconds=0.0, min_iters=3)
    assert len(samples) == 3  # the minimum, even with no time budget


def test_settings_defaults_and_validation():
    settings = BenchSettings()
    assert settings.for_device("cpu") == (3, None, 3.0)
    assert settings.for_device("cuda") == (20, None, 10.0)
    assert BenchSettings(iters=50, warmup=1).for_device("cuda") == (1, 50, None)
    with pytest.raises(StdcError, match="unknown mode"):
        BenchSettings(modes=("fastest",))
    for bad, message in (({"batch": 0}, "batch: must be >= 1"), ({"warmup": -1}, "warmup: must be >= 0"),
                         ({"iters": 0}, "iters: must be >= 1"), ({"seconds": 0.0}, "seconds: must be > 0")):
        with pytest.raises(InvalidValue, match=message):
            BenchSettings(**bad)


def test_presets_are_the_papers():
    assert [(p.name, p.height, p.width, p.paper_fps) for p in (PRESETS[n] for n in DEFAULT_PRESETS)] == [
        ("stdc1-seg50", 512, 1024, 250.4), ("stdc1-seg75", 768, 1536, 126.7),
        ("stdc2-seg50", 512, 1024, 188.6), ("stdc2-seg75", 768, 1536, 97.0)]
    with pytest.raises(StdcError, match="unknown preset"):
        preset_targets(["stdc3-seg50"])


@pytest.fixture(scope="module")
def tiny_report():
    """Both modes, two backends, on a random-weight 64x128 model: a real run, kept small."""
    target = Target("tiny", (64, 128), preset=Preset("tiny", "stdc1", 64, 128))
    settings = BenchSettings(iters=3, warmup=1, modes=("model-only", "end-to-end"), batch=2)
    return run_bench([target], ["onnxruntime", "torch"], settings, device="cpu", compare_bare=True)


def test_run_bench_rows(tiny_report):
    rows = tiny_report.rows
    assert [(r.backend, r.mode) for r in rows] == [("onnxruntime", "model-only"), ("onnxruntime", "end-to-end"),
                                                  ("torch", "model-only"), ("torch", "end-to-end")]
    for row in rows:
        assert (row.height, row.width, row.batch, row.device, row.precision) == (64, 128, 2, "cpu", "fp32")
        assert row.latency.iters == 3 and row.latency.mean_ms > 0
        assert row.fps == pytest.approx(2 * 1000 / row.latency.mean_ms)
        assert row.peak_rss_mb > 50 and row.gpu_peak_mb is None
    (reference,) = tiny_report.reference
    assert reference["bare_fps"] > 0 and reference["ratio"] == pytest.approx(
        rows[0].fps / reference["bare_fps"])


def test_json_and_csv_schema(tiny_report, tmp_path):
    from stdc_deploy.bench.report import CSV_COLUMNS, write_csv, write_json

    write_json(tiny_report, tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["schema"] == SCHEMA and "1080Ti" in data["paper_setup"]
    assert set(data) == {"schema", "paper_setup", "environment", "settings", "rows", "reference", "choices"}
    assert {"cpu", "cpu_count", "torch_threads", "platform", "versions", "gpu"} <= set(data["environment"])
    assert "torch" in data["environment"]["versions"] and "onnxruntime" in data["environment"]["versions"]
    row = data["rows"][0]
    assert set(row["latency"]) == {"iters", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms"}
    assert {"model", "backend", "device", "precision", "mode", "batch", "fps", "peak_rss_mb"} <= set(row)
    write_csv(tiny_report, tmp_path / "b.csv")
    with open(tmp_path / "b.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 4
    assert float(rows[0]["mean_ms"]) == pytest.approx(tiny_report.rows[0].latency.mean_ms)


def test_cli_bench_arch_and_model(tmp_path, official_checkpoints, monkeypatch):
    from stdc_deploy.cli.common import console

    monkeypatch.setattr(console, "_width", None)  # follow COLUMNS, as in a fresh process
    runner = CliRunner()
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["bench", "--arch", "stdc1", "--size", "64x128", "--iters", "2", "--warmup", "1",
                                 "--backend", "onnxruntime", "--backend", "openvino", "--json", str(out),
                                 "--mode", "model-only", "--mode", "end-to-end"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    backends = {r["backend"] for r in data["rows"]}
    # precision auto (the CLI's default) runs ONNX without the final upsampling; its rows say so
    assert "onnxruntime" in backends and {r["mode"] for r in data["rows"]} == {"model-only", "end-to-end"}
    assert {r["logits"] for r in data["rows"]} == {"1/8"} and "model-only*" in result.stdout
    assert "* without the final 8x upsampling" in result.stdout
    assert "model-only" in result.stdout and "2 timed runs per row after 1 warm-up runs" in result.stdout
    # the table is readable in 80 columns: no cell cut short, every row's numbers shown
    table = result.stdout.split("stdc bench:")[1].split("environment:")[0]
    assert "…" not in table and max(map(len, table.splitlines())) <= 80, table
    assert "input 64x128" in table and "batch 1" in table
    for row in data["rows"]:
        line = next(line for line in table.splitlines() if f"{row['latency']['mean_ms']:.2f}" in line)
        assert f"{row['fps']:.1f}" in line and row["mode"] in line and row["backend"] in line
    result = runner.invoke(app, ["bench", "--model", str(official_checkpoints["stdc1"]), "--size", "64x128",
                                 "--iters", "2", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.stdout and "stdc1_official.pth" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "missing.onnx"], "missing.onnx: no such file"),
    (["--preset", "stdc9-seg50"], "unknown preset"),
    (["--arch", "stdc1", "--size", "64x128", "--mode", "fastest"], "unknown mode"),
    (["--arch", "stdc1", "--size", "64x128", "--cuda-graph", "--iters", "1"], "CUDA graphs"),
])
def test_cli_bench_errors(args, message):
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 1 and message in result.stderr


def test_plot_needs_matplotlib_or_writes_png(tiny_report, tmp_path):
    from stdc_deploy.bench.report import write_plot

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(StdcError, match=r"pip install 'stdc-deploy\[plot\]'"):
            write_plot(tiny_report, tmp_path / "p.png")
        return
    write_plot(tiny_report, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"




def test_table_fits_80_columns(tiny_report):
    from io import StringIO

    from rich.console import Console

    from stdc_deploy.cli.bench import bench_table

    table, setup = bench_table(tiny_report.rows)
    assert setup == "model tiny, input 64x128, device cpu, prec fp32, batch 2"
    buffer = StringIO()
    Console(file=buffer, width=80).print(table)
    text = buffer.getvalue()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    for row in tiny_report.rows:
        assert f"{row.latency.p99_ms:.2f}" in text and f"{row.fps:.1f}" in text


def test_preset_table_fits_80_columns():
    """The default run (four presets, one backend) on a GPU: every cell whole on one line."""
    from io import StringIO

    from rich.console import Console

    from stdc_deploy.bench import BenchRow
    from stdc_deploy.cli.bench import bench_table

    stats = LatencyStats.from_seconds([0.0123, 0.0125, 0.0131])
    rows = [BenchRow(model=p.name, arch=p.arch, height=p.height, width=p.width, batch=1, backend="tensorrt",
                     device="cuda:0", precision="fp16", mode="model-only", latency=stats, fps=1e3 / stats.mean_ms,
                     peak_rss_mb=1234.0, gpu_peak_mb=2345.0, paper_fps=p.paper_fps) for p in (PRESETS[n] for n in DEFAULT_PRESETS)]
    table, setup = bench_table(rows)
    assert setup == "backend tensorrt, device cuda:0, prec fp16, batch 1, mode model-only, peak MB = RSS/GPU"
    buffer = StringIO()
    Console(file=buffer, width=80).print(table)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2 + len(rows) and max(map(len, lines)) <= 80, buffer.getvalue()
    for row, line in zip(rows, lines[2:]):
        assert line.split() == [row.model, f"{row.height}x{row.width}", f"{stats.mean_ms:.2f}", f"{stats.p50_ms:.2f}",
                                f"{stats.p99_ms:.2f}", f"{row.fps:.1f}", f"{row.paper_fps:.1f}", "1234/2345"]


@pytest.mark.parametrize("args", [["--batch", "0"], ["--warmup", "-1"], ["--iters", "0"], ["--seconds", "0"],
                                  ["--seconds", "-2"], ["--seconds", "inf"]])
def test_cli_numeric_options_are_range_checked(args):
    result = CliRunner().invoke(app, ["bench", "--arch", "stdc1", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and args[0] in result.output, result.output
    assert "than or equal to" in result.output or "x>0" in result.output


def test_cli_outputs_are_checked_before_timing(tmp_path):
    existing = tmp_path / "r.json"
    existing.write_text("{}")
    args = ["bench", "--arch", "stdc1", "--size", "64x128", "--iters", "1"]
    result = CliRunner().invoke(app, [*args, "--json", str(existing)])
    assert result.exit_code == 1 and "r.json: exists (pass --overwrite" in result.stderr
    assert "timing" not in result.stdout and existing.read_text() == "{}"
    result = CliRunner().invoke(app, [*args, "--csv", str(tmp_path)])
    assert result.exit_code == 1 and "is a folder" in result.stderr
    result = CliRunner().invoke(app, [*args, "--csv", str(existing / "r.csv")])
    assert result.exit_code == 1 and "timing" not in result.stdout


def test_cli_plot_needs_matplotlib_up_front(tmp_path):
    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed: the message is for machines without it")
    plot = tmp_path / "p.png"
    result = CliRunner().invoke(app, ["bench", "--arch", "stdc1", "--size", "64x128", "--plot", str(plot)])
    assert result.exit_code == 1 and "timing" not in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert "--plot needs matplotlib: pip install 'stdc-deploy[plot]'" in line


def test_time_interleaved_runs_round_robin():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    samples = time_interleaved(steps, warmup=2, iters=3, seconds=None, settle_s=0)
    assert calls == ["a", "a", "b", "b", "c", "c"] + ["a", "b", "c"] * 3
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    calls.clear()
    samples = time_interleaved(steps, warmup=0, iters=None, seconds=0.0, min_iters=2, settle_s=0)
    assert calls == ["a", "b", "c"] * 2


def test_cpu_paths_against_a_hand_export(models_by_arch, tmp_path):
    """Every available path runs on one tiny model, with ratios against the hand export; the
    INT8 files are calibrated on a folder of images (--calib)."""
    import cv2

    from stdc_deploy.bench.cpu_paths import PATHS, REFERENCE, available_paths, run_cpu_paths

    model = models_by_arch["stdc1"].eval()
    for i, image in enumerate(synthetic_images(10, 48, 96, seed=5)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
    report, skipped = run_cpu_paths(model, name="tiny", size=(64, 128), settings=BenchSettings(iters=2, warmup=1),
                                    threads=1, calib=tmp_path)
    paths, _ = available_paths()
    assert [r.path for r in report.rows] == [p.label for p in paths] and len(paths) + len(skipped) == len(PATHS)
    reference = report.rows[0]
    assert reference.path == next(p.label for p in PATHS if p.key == REFERENCE) and reference.vs_reference == 1.0
    for row in report.rows:
        assert row.latency.iters == 2 and row.vs_reference > 0 and 0.5 < row.label_agreement <= 1.0
        assert row.vs_reference == pytest.approx(reference.latency.p50_ms / row.latency.p50_ms)
    by_key = {p.key: r for p, r in zip(paths, report.rows)}
    assert by_key["ort-fp32"].label_agreement == 1.0 and by_key["ort-int8"].precision == "int8"
    # the final resize left to post-processing: the same labels at the input size
    assert by_key["ort-fp32-post"].label_agreement == 1.0 and by_key["ort-fp32-post"].path.endswith("1/8 logits")
    assert all(r.mode == "to labels" for r in report.rows)
    assert sum(r.default for r in report.rows) <= 1 and report.choices[0].startswith("CPU path: ")
    assert report.settings["threads"] == 1 and report.settings["interleaved"]
    from rich.console import Console

    from stdc_deploy.cli.bench import cpu_paths_table

    console = Console(width=200, record=True)
    console.print(cpu_paths_table(report.rows))
    lines = console.export_text().splitlines()
    assert len(lines) == 2 + len(report.rows) and max(len(line.rstrip()) for line in lines) <= 80


def test_cpu_paths_need_pytorch_weights(tmp_path):
    from stdc_deploy.bench.cpu_paths import target_network

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    with pytest.raises(StdcError, match="m.onnx: the hand export is made from PyTorch weights"):
        target_network(Target("m", (64, 128), artifact=onnx_file))
    result = CliRunner().invoke(app, ["bench", "--cpu-paths", "--backend", "openvino"])
    assert result.exit_code == 1 and "--cpu-paths times every CPU backend" in result.output
    result = CliRunner().invoke(app, ["bench", "--cpu-paths", "--calib", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "nope: no such folder" in result.output
    result = CliRunner().invoke(app, ["bench", "--calib", str(tmp_path)])
    assert result.exit_code == 1 and "--calib is for --cpu-paths" in result.output


def test_end_to_end_at_another_frame_size(tmp_path):
    out = tmp_path / "e.json"
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--arch", "stdc1", "--size", "64x128", "--iters", "2", "--warmup", "1",
                                 "--backend", "onnxruntime", "--mode", "end-to-end", "--frame", "128x256",
                                 "--precision", "fp32", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["settings"]["frame"] == [128, 256] and "end-to-end frames 128x256" in result.stdout
    assert [r["height"] for r in data["rows"]] == [64]  # the network input stays 64x128
    bad = runner.invoke(app, ["bench", "--arch", "stdc1", "--size", "64x128", "--frame", "128x256"])
    assert bad.exit_code == 1 and "add --mode end-to-end" in bad.output
