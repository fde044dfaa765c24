"""The ``export`` command: a checkpoint or a ``.tshrink`` file to ONNX, checked against torchshrink's own model."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from torchshrink._optional import require
from torchshrink.cli.args import add_data_dir
from torchshrink.cli.outputs import ONNX, RECORD, add_force, check_output
from torchshrink.cli.train import factory_spec
from torchshrink.errors import ConfigError

__all__ = ["add_export_command"]


def _shape(text: str) -> tuple[int, ...]:
    """The argparse type of ``--input-shape``: ``"3,32,32"`` -> ``(3, 32, 32)``."""
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 or d > 65_536 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape of positive integers, e.g. 1,28,28")
    return dims


def _opset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 13 <= value <= 23:
        raise argparse.ArgumentTypeError(f"{text!r}: an ONNX opset from 13 to 23")
    return value


def add_export_command(sub: Any) -> None:
    try:
        from torchshrink.export import OPSET, WEIGHT_TYPES
    except ConfigError:  # the [onnx] extra is not installed: the command says so when it is run
        p = sub.add_parser("export", help="write an ONNX model (needs: pip install 'torchshrink[onnx]')",
                           add_help=False)  # fmt: skip
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_needs_onnx)
        return

    p = sub.add_parser(
        "export",
        help="write a checkpoint or a .tshrink file as an ONNX model",
        description="fp32 checkpoints export plainly; .tshrink files as a QDQ graph of their int8 codes, which "
        "onnxruntime runs on integer kernels. The ONNX model is then run in onnxruntime beside torchshrink's own "
        "on the whole Fashion-MNIST test set (or 256 random inputs of --input-shape) and the agreement is "
        "printed and written to FILE.json.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="checkpoint folder written by `torchshrink train`, or a .tshrink file"
    )
    p.add_argument("--out", metavar="FILE", help="the ONNX file (default: MODEL with the suffix .onnx); an existing "
                   "file is replaced only if it is an ONNX model")  # fmt: skip
    p.add_argument("--model-factory", type=factory_spec, metavar="MODULE:CALLABLE",
                   help="for a .tshrink file saved from a model that is not registered: your module and the class "
                        "or function in it that builds that model with no arguments, e.g. mypkg.nets:MyNet")  # fmt: skip
    p.add_argument("--input-shape", type=_shape, default=(1, 28, 28), metavar="C,H,W",
                   help="one input without its batch dimension (default: 1,28,28, a Fashion-MNIST image)")  # fmt: skip
    p.add_argument("--opset", type=_opset, default=OPSET, help="ONNX opset, 13..23 (default: %(default)s)")
    p.add_argument("--float-bias", action="store_true",
                   help="keep every bias in float: onnxruntime then computes exactly torchshrink's model, but runs "
                        "the 8-bit layers as float convs (by default their biases are int32 codes, which lets it "
                        "fuse them into integer kernels)")  # fmt: skip
    p.add_argument("--weight-type", choices=tuple(WEIGHT_TYPES), default="uint8",
                   help="container of 8-bit weight codes: uint8 (code + 128) is exact on every CPU; int8 is faster "
                        "where the CPU multiplies u8 x s8 exactly (AVX-512 VNNI, AVX-VNNI) and can saturate on AVX2 "
                        "(default: %(default)s)")  # fmt: skip
    p.add_argument("--no-check", action="store_true", help="skip running the ONNX model against torchshrink's")
    p.add_argument("--speed", action="store_true",
                   help="also time onnxruntime and torchshrink's model in torch on batches of 1 and 256 (images/s, "
                        "median of 5 interleaved rounds), into FILE.json")  # fmt: skip
    add_force(p)
    add_data_dir(p)
    p.set_defaults(func=_cmd_export)


def _needs_onnx(args: argparse.Namespace) -> int:
    require("onnx", "torchshrink export")  # raises, naming the extra to install
    return 1


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any], list[str]]:
    """The model, the integer codes of its weights (for a .tshrink file) and its layers left on float weights."""
    from torchshrink.checkpoint import load_checkpoint
    from torchshrink.cli.train import build_from_factory
    from torchshrink.export import load_for_export

    source = Path(args.model)
    if source.is_file() and source.name not in ("model.json", "model.safetensors"):
        instance = build_from_factory(args.model_factory) if args.model_factory is not None else None
        return load_for_export(source, model=instance)
    if args.model_factory is not None:
        raise ConfigError(f"--model-factory applies to a .tshrink file; {args.model} is a checkpoint, whose "
                          "model.json names its architecture: drop the option")  # fmt: skip
    return load_checkpoint(source, device="cpu").model.eval(), {}, []


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from torchshrink._io import atomic_file, atomic_write_json
    from torchshrink.cli.inputs import IMAGE_SHAPE, NUM_CLASSES
    from torchshrink.cli.ranks import main_writes
    from torchshrink.export import is_fake_quantized, onnx_agreement, to_onnx
    from torchshrink.quant.sharing import codebook_layers

    source = Path(args.model)
    default = source.with_suffix(".onnx") if source.is_file() else source.with_name(source.name + ".onnx")
    out = check_output(Path(args.out) if args.out else default, ONNX, force=args.force, inputs=[source])
    summary = check_output(out.with_name(out.name + ".json"), RECORD, force=args.force, option="--out (its record)")
    model, weights, float_layers = _load(args)
    example = torch.zeros(1, *args.input_shape)
    proto = to_onnx(model, example, args.opset, weights, integer_bias=False if args.float_bias else None,
                    weight_type=args.weight_type)  # fmt: skip
    blob = proto.SerializeToString()
    quantized = bool(weights) or is_fake_quantized(model)
    record: dict[str, Any] = {"source": str(source), "onnx_bytes": len(blob), "opset": args.opset,
                              "graph": "QDQ" if quantized else "fp32", "float_bias": args.float_bias,
                              "weight_type": args.weight_type,
                              "float_weight_layers": float_layers}  # fmt: skip
    if not args.no_check:
        with torch.no_grad():
            outputs = model(torch.zeros(2, *args.input_shape))
        if tuple(args.input_shape) == IMAGE_SHAPE and tuple(outputs.shape) == (2, NUM_CLASSES):
            from torchshrink.data import load_fashion_mnist

            batches: Any = load_fashion_mnist(args.data_dir).test_batches(batch_size=1000)
            record["check_inputs"] = "Fashion-MNIST test images"
        else:
            generator = torch.Generator().manual_seed(0)
            batches = [torch.randn(64, *args.input_shape, generator=generator) for _ in range(4)]
            record["check_inputs"] = "256 random normal inputs"
        record["agreement"] = onnx_agreement(model, blob, batches)
        _refuse_disagreement(out, record["agreement"])
        # inputs of the other sign and of other scales: a branch or a clamp the check inputs never reach
        probe = torch.randn(64, *args.input_shape, generator=torch.Generator().manual_seed(1))
        record["agreement_other_inputs"] = onnx_agreement(model, blob, [-probe, 0.1 * probe, 5 * probe])
        _refuse_disagreement(out, record["agreement_other_inputs"])
    if args.speed:
        from torchshrink.export import onnx_speed

        record["images_per_second"] = onnx_speed(model, blob, tuple(args.input_shape))
    if not main_writes():  # under torchrun every rank exported and checked the same model; rank 0 writes it
        return 0
    with atomic_file(out) as tmp:
        tmp.write_bytes(blob)
        atomic_write_json(summary, record)  # the record first: an ONNX file at --out always has its record
    kind = "QDQ graph of int8 weight codes" if weights or (quantized and not float_layers) else "fp32 graph"
    if quantized and float_layers and not weights:
        kind = "QDQ graph, quantized activations on float weights"
    if codebook_layers(model):
        kind += ", codebook weights as indices and tables"
    print(f"{out}: {len(blob):,} bytes, {kind}, opset {args.opset}")
    if float_layers:
        print(f"on float weights (their file stores codebooks, not int8 codes): {', '.join(float_layers)}")
    if "agreement" in record:
        a = record["agreement"]
        accuracy = "" if a["test_accuracy"] is None else f", accuracy {100 * a['test_accuracy']:.2f}%"
        print(f"onnxruntime {a['onnxruntime']} vs torchshrink on {a['images']:,} {record['check_inputs']}: same "
              f"top-1 on {100 * a['top1_agreement']:.2f}%{accuracy}, max logit difference "
              f"{a['max_logit_difference']:.2e}")  # fmt: skip
    for batch, speed in record.get("images_per_second", {}).items():
        print(f"batch {batch}: onnxruntime {speed['onnxruntime']:,.0f} images/s, torchshrink's model in torch "
              f"{speed['torch']:,.0f} ({speed['onnxruntime'] / speed['torch']:.2f}x)")  # fmt: skip
    return 0


MIN_AGREEMENT = 0.99  # below this the graph computes another model: measured 99.6-100% over eight families at W4A4


def _refuse_disagreement(out: Path, agreement: dict[str, Any]) -> None:
    """Refuse (nothing written) an ONNX graph whose predictions onnxruntime does not reproduce."""
    share, gap = agreement["top1_agreement"], agreement["max_logit_difference"]
    if share < MIN_AGREEMENT or not math.isfinite(gap):
        raise ConfigError(f"{out}: onnxruntime's graph agrees with torchshrink's model on {100 * share:.2f}% of the "
                          f"check inputs (max logit difference {gap:.3g}), below {100 * MIN_AGREEMENT:.0f}%: not "
                          "written, since it would compute another model; --no-check writes it unchecked")  # fmt: skip
