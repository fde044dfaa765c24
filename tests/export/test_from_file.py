"""ONNX export of ``.tshrink`` files, library and ``torchshrink export``: the graph holds the file's own codes,
onnxruntime agrees with the loaded model, and layers on float weights stay float in onnxruntime."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from onnx_checks import check_agreement, run_ort
from torchshrink.cli import main
from torchshrink.data import FashionMNIST, Task
from torchshrink.export import load_for_export, to_onnx
from torchshrink.pack import save_compressed
from torchshrink.pruning import make_permanent, prune_
from torchshrink.pruning.config import PruneConfig, StructuredConfig
from torchshrink.quant import QuantConfig, quantized_layers
from torchshrink.quant.export import export_layers
from torchshrink.recipes import codebook, ptq
from torchshrink.recipes.quantize import CodebookConfig
from torchshrink.recipes.train import TrainConfig


@pytest.fixture(scope="module")
def trained(trained_tiny: nn.Module) -> nn.Module:
    return trained_tiny


@pytest.fixture(scope="module")
def images(fmnist: FashionMNIST) -> torch.Tensor:
    return torch.cat([batch[0] for batch in fmnist.subset(test=512).test_batches()])[:512]


@pytest.fixture(scope="module")
def sparse_w8a8(
    trained: nn.Module, small_task: Task, tmp_path_factory: pytest.TempPathFactory
) -> tuple[nn.Module, Path]:
    """cnn_tiny, 60% pruned, W8A8 PTQ, saved: (the quantized model, its file)."""
    model = copy.deepcopy(trained)
    prune_(model, PruneConfig(0.6))
    make_permanent(model)
    q = ptq(model, small_task, QuantConfig(bits=8)).model
    path = tmp_path_factory.mktemp("file") / "m.tshrink"
    save_compressed(q, path, "cnn_tiny")
    return q, path


def test_export_from_a_file_stores_its_codes_and_agrees(
    sparse_w8a8: tuple[nn.Module, Path], images: torch.Tensor
) -> None:
    """The codes read from the file are the model's own (pruned zeros included), the graph's initializers are
    those codes (8-bit: UINT8 ``code + 128``), and onnxruntime on the loaded model agrees as for the in-memory
    model."""
    q, path = sparse_w8a8
    model, weights, float_layers = load_for_export(path)
    assert float_layers == [] and set(weights) == set(quantized_layers(q))
    for layer in export_layers(q):
        torch.testing.assert_close(weights[layer.name].codes, layer.codes, rtol=0, atol=0)
        torch.testing.assert_close(weights[layer.name].scale, layer.scale)
    zeros = sum(int((w.codes == 0).sum()) for w in weights.values())
    assert zeros / sum(w.codes.numel() for w in weights.values()) >= 0.59  # the zeros the (global) pruning left
    proto = to_onnx(model, images[:1], weights=weights)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name, layer in weights.items():
        np.testing.assert_array_equal(inits[f"{name}.weight_codes"], layer.codes.numpy().astype(np.int32) + 128)
        assert inits[f"{name}.weight_codes"].dtype == inits[f"{name}.weight_zero_point"].dtype == np.uint8
    check_agreement(q, proto, images, "enable_all")
    np.testing.assert_allclose(run_ort(proto, images), run_ort(to_onnx(q, images[:1]), images), atol=1e-5)


def test_codebook_file_exports_its_indices_and_tables_which_onnxruntime_keeps_as_floats(
    trained: nn.Module, small_task: Task, images: torch.Tensor, tmp_path: Path
) -> None:
    """Codebook weights have no int8 codes: they export as their indices (UINT8) and table, looked up by
    ``Gather``, on quantized inputs. onnxruntime must not requantize such a layer's weight to int8 (its outputs
    equal the loaded model's)."""
    q = codebook(copy.deepcopy(trained), small_task, CodebookConfig(3, act_bits=8), train=TrainConfig(epochs=1, lr=0.005), log=None).model
    path = tmp_path / "cb.tshrink"
    save_compressed(q, path, "cnn_tiny")
    model, weights, float_layers = load_for_export(path)
    assert weights == {} and float_layers == []
    proto = to_onnx(model, images[:1])
    layers = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    indices = {i.name.split(".parametrizations")[0]: i for i in proto.graph.initializer if i.name.endswith(".indices")}
    assert set(indices) == layers and all(i.data_type == onnx.TensorProto.UINT8 for i in indices.values())
    floats = sum(numpy_helper.to_array(i).size for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    assert floats < sum(p.numel() for p in model.parameters()) / 10, "no float copy of the weights"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "QLinearConv" not in ops and "Conv" in ops
    with torch.no_grad():
        want = model(images).numpy()
    got = run_ort(proto, images)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999
    # equal logits but where a rounding tie flipped one activation code (measured: 1 of 512 images)
    assert np.isclose(got, want, atol=1e-4, rtol=1e-4).all(axis=1).mean() >= 0.99


def test_export_command_writes_the_model_and_its_agreement(
    sparse_w8a8: tuple[nn.Module, Path], data_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``torchshrink export FILE``: an ONNX file and FILE.json with onnxruntime's agreement on the whole test set."""
    _, path = sparse_w8a8
    out = tmp_path / "out" / "m.onnx"
    assert main(["export", str(path), "--out", str(out), "--data-dir", data_dir]) == 0
    record = json.loads(out.with_name("m.onnx.json").read_text())
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert record["graph"] == "QDQ" and record["agreement"]["images"] == 10_000
    assert record["agreement"]["top1_agreement"] >= 0.999 and record["weight_type"] == "uint8"
    assert "same top-1 on" in capsys.readouterr().out
    weights = {t.name: t for t in onnx.load(out).graph.initializer if t.name.endswith(".weight_codes")}
    assert weights and all(t.data_type == onnx.TensorProto.UINT8 for t in weights.values())  # 8-bit codes + 128
    int8 = tmp_path / "out" / "int8.onnx"
    assert main(["export", str(path), "--out", str(int8), "--weight-type", "int8", "--no-check"]) == 0
    assert json.loads(int8.with_name("int8.onnx.json").read_text())["weight_type"] == "int8"
    assert all(t.data_type == onnx.TensorProto.INT8 for t in onnx.load(int8).graph.initializer
               if t.name.endswith(".weight_codes"))  # fmt: skip


def test_export_command_refuses_bad_outputs_and_inputs(
    sparse_w8a8: tuple[nn.Module, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file in the way that is not an ONNX model, a bad shape, a file that is not a .tshrink: refused, nothing
    written."""
    _, path = sparse_w8a8
    mine = tmp_path / "notes.onnx"
    mine.write_text("my notes")
    assert main(["export", str(path), "--out", str(mine), "--no-check"]) == 1
    assert mine.read_text() == "my notes" and "is not a ONNX file; pass --force" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(path), "--input-shape", "1,x,28"])
    assert exit_.value.code == 2
    capsys.readouterr()
    assert main(["export", str(path), "--input-shape", "1,28", "--out", str(tmp_path / "s.onnx"), "--no-check"]) == 1
    err = capsys.readouterr().err
    assert "does not run on an input of shape (1, 1, 28)" in err and "not supported" not in err  # the input, said so
    bogus = tmp_path / "bogus.tshrink"
    bogus.write_bytes(b"not a file of ours")
    assert main(["export", str(bogus), "--out", str(tmp_path / "b.onnx"), "--no-check"]) == 1
    assert not (tmp_path / "b.onnx").exists() and not (tmp_path / "b.onnx.json").exists()


def test_channels_removed_by_structured_pruning_are_absent_from_the_graph(
    trained: nn.Module, small_task: Task, images: torch.Tensor
) -> None:
    """A channel-pruned model exports with the smaller layers it now has (fp32 and W8A8), and still agrees."""
    from torchshrink.pruning import structured_prune_

    small = copy.deepcopy(trained)
    structured_prune_(small, StructuredConfig(0.5))
    widths = {name: m.out_channels for name, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    assert widths != {name: m.out_channels for name, m in trained.named_modules() if isinstance(m, nn.Conv2d)}
    fp32 = to_onnx(small.eval(), images[:1])
    with torch.no_grad():
        np.testing.assert_allclose(run_ort(fp32, images), small(images).numpy(), rtol=1e-4, atol=1e-4)
    q = ptq(small, small_task, QuantConfig(bits=8)).model
    proto = to_onnx(q, images[:1])
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name, out in widths.items():
        assert inits[f"{name}.weight_codes"].shape[0] == out
    check_agreement(q, proto, images, "enable_all")


def test_export_command_times_onnxruntime_beside_torch(sparse_w8a8: tuple[nn.Module, Path], tmp_path: Path) -> None:
    """``--speed``: images/s of onnxruntime and of the model in torch at batches 1 and 256, in the record."""
    _, path = sparse_w8a8
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--out", str(out), "--no-check", "--speed"]) == 0
    speed = json.loads(out.with_name("m.onnx.json").read_text())["images_per_second"]
    assert set(speed) == {"1", "256"}
    assert all(v[k] > 0 for v in speed.values() for k in ("onnxruntime", "torch"))
