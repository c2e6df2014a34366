"""The network's final upsampling left to post-processing (backends.tail, precision auto)."""

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from stdc_deploy.backends import available_backends, open_backend
from stdc_deploy.backends.tail import final_resize, without_final_resize
from stdc_deploy.checkpoint import load_model
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.export.quantize import QuantizeOptions, quantize_onnx
from stdc_deploy.postprocess import argmax_classes, labels_official, to_labels
from stdc_deploy.preprocess import normalize
from stdc_deploy.segmenter import Segmenter
from stdc_deploy.synthetic import synthetic_images

BACKENDS = [b for b in ("onnxruntime", "openvino") if b in available_backends("onnx")]


@pytest.fixture(scope="module")
def files(official_checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tail")
    model, info = load_model(official_checkpoints["stdc1"])
    out = {}
    for name, options in {"fp32": OnnxExportOptions(height=64, width=128),
                          "fp16": OnnxExportOptions(height=64, width=128, precision="fp16"),
                          "dynamic": OnnxExportOptions(height=64, width=128, dynamic=True)}.items():
        out[name] = export_onnx(model, folder / f"{name}.onnx", options, checkpoint=info).path
    calib = tmp_path_factory.mktemp("tail-calib")
    for i, image in enumerate(synthetic_images(8, 64, 128, seed=4)):
        cv2.imwrite(str(calib / f"{i}.png"), image)
    out["int8"] = folder / "int8.onnx"
    quantize_onnx(out["fp32"], calib, out["int8"], QuantizeOptions(target="cpu", num_images=6, holdout=2))
    return out


@pytest.fixture(scope="module")
def frames():
    return synthetic_images(3, 64, 128, seed=9)


def test_the_cut_graph_ends_at_the_classifier(files):
    for name in ("fp32", "fp16", "int8", "dynamic"):
        proto = onnx.load(str(files[name]))
        resize, after = final_resize(proto.graph)
        assert resize.op_type == "Resize" and [n.op_type for n in after] == {
            "fp32": [], "dynamic": [], "fp16": ["Cast"], "int8": ["QuantizeLinear", "DequantizeLinear"][::-1]}[name]
        cut = without_final_resize(proto)
        onnx.checker.check_model(cut)
        resizes = [sum(n.op_type == "Resize" for n in g.node) for g in (proto.graph, cut.graph)]
        assert resizes[1] == resizes[0] - 1 and cut.graph.output[0].name == resize.input[0]
        assert len(cut.graph.node) < len(proto.graph.node)  # the dynamic file's size computation goes too


def _graph(node, output_shape=(1, 2, 8, 8)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 2, 8, 8])
    return helper.make_model(helper.make_graph([node], "g", [x], [y], [sizes]))


def test_graphs_not_ending_in_the_upsampling_are_left_alone():
    half_pixel = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                                  coordinate_transformation_mode="half_pixel")
    nearest = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                               coordinate_transformation_mode="align_corners")
    relu = helper.make_node("Relu", ["x"], ["y"])
    for node in (half_pixel, nearest):
        assert without_final_resize(_graph(node)) is None
    assert without_final_resize(_graph(relu, (1, 2, 4, 4))) is None
    upsample = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                                coordinate_transformation_mode="align_corners")
    assert without_final_resize(_graph(upsample)).graph.output[0].name == "x"


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_at_the_input_size_are_the_same(files, frames, backend):
    batch = normalize(frames)
    with open_backend(files["fp32"], backend) as fp32:
        reference = [argmax_classes(x) for x in fp32.infer(batch)]
    for name in ("fp32", "fp16", "int8"):
        with open_backend(files[name], backend) as full, open_backend(files[name], backend, native_logits=True) as low:
            assert low.final_resize_dropped and not full.final_resize_dropped and "1/8 logits" in low.describe()
            logits, small = full.infer(batch), low.infer(batch)
            assert small.shape == (3, 19, 8, 16) and small.dtype == np.float32
            before = np.mean([(argmax_classes(logits[i]) == reference[i]).mean() for i in range(3)])
            after = np.mean([(labels_official(small[i], (64, 128)) == reference[i]).mean() for i in range(3)])
            if name == "fp32":
                assert before == after == 1.0
            else:  # as close to FP32 (an INT8 file no longer requantizes the resized logits)
                assert abs(after - before) < 0.01, (name, before, after)


def test_auto_segmenter_matches_fp32(files, frames):
    with Segmenter(files["fp32"], precision="fp32") as exact, \
            Segmenter(files["fp32"], backend="onnxruntime", precision="auto") as auto:
        assert auto.backend.final_resize_dropped and not exact.backend.final_resize_dropped
        batch = exact.preprocess(frames)
        # infer keeps the contract (logits at the input size); infer_native is what post-processing reads
        np.testing.assert_allclose(auto.infer(batch), exact.infer(batch), atol=1e-4)
        assert auto.infer_native(batch).shape[2:] == (8, 16)
        for image in frames:
            assert (auto.predict(image) == exact.predict(image)).all()
            assert (auto.predict(image, protocol="fast") == exact.predict(image, protocol="fast")).all()
            big = cv2.resize(image, (256, 128))  # frames larger than the input: one resize instead of two
            assert (auto.predict(big) == exact.predict(big)).mean() > 0.998
            assert (auto.predict(big, "fast") == exact.predict(big, "fast")).all()
        streamed = [p.labels for p in auto.stream(frames, batch=2)]
        assert all((a == exact.predict(f)).all() for a, f in zip(streamed, frames))


def test_dynamic_model_at_another_size(files):
    image = synthetic_images(1, 96, 160, seed=2)[0]
    with Segmenter(files["dynamic"], size=(96, 160)) as exact, \
            Segmenter(files["dynamic"], backend="onnxruntime", precision="auto", size=(96, 160)) as auto:
        assert auto.infer_native(auto.preprocess([image])).shape[2:] == (12, 20)
        assert (auto.predict(image) == exact.predict(image)).all()


def test_fast_protocol_from_small_logits_equals_from_full(files, frames):
    with open_backend(files["fp32"], "onnxruntime") as full, \
            open_backend(files["fp32"], "onnxruntime", native_logits=True) as low:
        batch = normalize(frames)
        logits, small = full.infer(batch), low.infer(batch)
    for i in range(3):
        for size in ((64, 128), (100, 300), (32, 40)):
            assert (to_labels(small[i], size, "fast", (64, 128)) == to_labels(logits[i], size, "fast")).all()


def test_serving_with_auto_keeps_the_net_contract(files, frames):
    """stdc_net answers logits at the input size; stdc answers the same labels as FP32."""
    import asyncio

    pytest.importorskip("starlette")
    from stdc_deploy.serve import InferRequest, ModelServer, Tensor

    with Segmenter(files["fp32"], backend="onnxruntime", precision="auto") as auto, \
            Segmenter(files["fp32"]) as exact:
        server = ModelServer(auto, max_batch=1, max_delay_ms=0, max_queue=4)
        try:
            batch = exact.preprocess(frames[:1])
            ok, png = cv2.imencode(".png", frames[0])

            async def main():
                net = await server.infer(InferRequest("stdc_net", [Tensor.of("input", batch)]))
                labels = await server.infer(InferRequest("stdc", [Tensor.of("image", np.array([[png.tobytes()]],
                                                                                            dtype=object))]))
                return net.outputs[0].data, labels.outputs[0].data

            logits, labels = asyncio.run(main())
        finally:
            server.close()
        assert logits.shape == (1, 19, 64, 128)
        np.testing.assert_allclose(logits, exact.infer(batch), atol=1e-4)
        assert (labels[0] == exact.predict(frames[0])).all()


def test_exports_are_verified_as_auto_runs_them(files, official_checkpoints, tmp_path, monkeypatch):
    from stdc_deploy import postprocess
    from stdc_deploy.errors import ExportError

    for name in ("fp32", "dynamic"):
        assert files[name].is_file()
    model, info = load_model(official_checkpoints["stdc1"])
    result = export_onnx(model, tmp_path / "ok.onnx", OnnxExportOptions(height=64, width=96), checkpoint=info)
    (tail,) = result.details["tail_parity"]
    assert tail.shape == (1, 19, 64, 96) and tail.label_agreement == 1.0 and tail.max_abs_error < 1e-3

    def nearest(logits, size):  # a wrong resize: the check must catch it
        ys = np.arange(size[0]) * logits.shape[2] // size[0]
        xs = np.arange(size[1]) * logits.shape[3] // size[1]
        return logits[:, :, ys][:, :, :, xs]

    monkeypatch.setattr(postprocess, "resize_logits", nearest)
    with pytest.raises(ExportError, match="bad.onnx not written: the graph without its final upsampling"):
        export_onnx(model, tmp_path / "bad.onnx", OnnxExportOptions(height=64, width=96), checkpoint=info)
    assert not (tmp_path / "bad.onnx").exists()
