"""The ``quantize`` command."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchshrink._optional import require
from torchshrink.cli.args import (
    add_data_dir,
    add_device,
    add_full_range,
    add_precision,
    bits,
    positive_float,
    positive_int,
)
from torchshrink.cli.outputs import QUANTIZED, add_force, check_output
from torchshrink.quant.apply import QuantConfig
from torchshrink.quant.fake_quant import CALIBRATIONS
from torchshrink.recipes.quantize import FINETUNE

__all__ = ["add_quant_commands"]


def add_quant_commands(sub: Any) -> None:

    p = sub.add_parser(
        "quantize",
        help="quantize weights and activations of a checkpoint",
        description="Quantize a checkpoint (PTQ or QAT) and write integer codes plus a JSON report.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--bits", type=bits, required=True, help="weight code width, 2..8")
    p.add_argument("--act-bits", type=bits, help="activation code width, 2..8 (default: --bits)")
    p.add_argument(
        "--mode",
        choices=("ptq", "qat"),
        default="ptq",
        help="post-training calibration only, or quantization-aware fine-tuning (default: %(default)s)",
    )
    p.add_argument("--qat-epochs", type=positive_int, default=FINETUNE.epochs,
                   help="QAT epochs (default: %(default)s)")  # fmt: skip
    p.add_argument("--lr", type=positive_float, default=FINETUNE.lr,
                   help="QAT peak learning rate (default: %(default)s)")  # fmt: skip
    add_precision(p, "QAT")
    p.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default=QuantConfig.act_calibration,
        help="how activation ranges are chosen (default: %(default)s)",
    )
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    add_full_range(p)
    p.add_argument("--onnx", action="store_true",
                   help="also write model.onnx (a QDQ graph of the integer codes) and measure onnxruntime's agreement "
                        "with torchshrink on the whole test set")  # fmt: skip
    p.add_argument("--keep-first-last-8bit", action="store_true", help="first and last layers at 8 bits")
    add_device(p, "run QAT and evaluate")
    p.add_argument(
        "--out", metavar="DIR", help="output folder, replaced whole once done (default: CHECKPOINT-wBaA-MODE)"
    )
    add_force(p)
    add_data_dir(p)
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(args: argparse.Namespace) -> int:
    import safetensors.torch
    import torch

    from torchshrink._io import atomic_folder, atomic_write, atomic_write_json
    from torchshrink.checkpoint import load_checkpoint
    from torchshrink.cli.inputs import CHECK_IMAGES, check_fits_fashion_mnist, check_quantizable
    from torchshrink.cli.ranks import main_writes
    from torchshrink.data import load_fashion_mnist
    from torchshrink.models import fp32_bytes
    from torchshrink.quant import QuantConfig, storage_report
    from torchshrink.quant.export import codes_state_dict, export_layers
    from torchshrink.recipes.quantize import ptq, qat
    from torchshrink.recipes.train import evaluate, pick_device

    if args.onnx:  # before any work
        require("onnx", "quantize --onnx")
        require("onnxruntime", "quantize --onnx")
    device = pick_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device="cpu")
    config = QuantConfig(
        bits=args.bits, act_bits=args.act_bits, per_channel=not args.per_tensor, act_calibration=args.calibration,
        keep_first_last_8bit=args.keep_first_last_8bit, full_range_weights=args.full_range,
    )  # fmt: skip
    # the default folder names the range too: a full-range run must not replace the narrow one's
    tag = f"w{config.bits}a{config.activation_bits}-{args.mode}" + ("-full" if args.full_range else "")
    out = Path(args.out) if args.out else Path(f"{ckpt.path}-{tag}")
    out = check_output(out, QUANTIZED, force=args.force, inputs=[ckpt.path])
    check_fits_fashion_mnist(ckpt.model, ckpt.path)
    train = replace(FINETUNE, epochs=args.qat_epochs, lr=args.lr, precision=args.precision)
    data = load_fashion_mnist(args.data_dir)
    check_quantizable(ckpt.model, ckpt.path, data.calibration_batches(CHECK_IMAGES)[0])
    float_acc, _ = evaluate(ckpt.model, data.test_batches())
    torch.manual_seed(0)  # no --seed here: every random draw of calibration or QAT repeats from run to run
    start = time.perf_counter()
    if args.mode == "qat":
        model = qat(ckpt.model.to(device), data, config, train=train).model
    else:
        model = ptq(ckpt.model, data, config).model
    seconds = time.perf_counter() - start
    acc, loss = evaluate(model.to(device), data.test_batches(), device=device)
    rows = storage_report(model)
    weight_bytes = sum(r.total_bytes for r in rows)
    record = {
        "config": config.to_dict(), "mode": args.mode, "source": str(ckpt.path), "test_accuracy_float": float_acc,
        "test_accuracy": acc, "test_loss": loss, "seconds": seconds, "fp32_bytes": fp32_bytes(ckpt.model),
        "quantized_bytes": weight_bytes, "layers": [r.__dict__ | {"total_bytes": r.total_bytes} for r in rows],
    }  # fmt: skip
    if not main_writes():
        return 0
    state = {k: v.contiguous() for k, v in codes_state_dict(export_layers(model.cpu())).items()}
    onnx_bytes = _onnx_with_agreement(model.cpu().eval(), data, record) if args.onnx else None
    with atomic_folder(out) as folder:  # codes and report appear together, or not at all
        atomic_write(folder / "codes.safetensors", lambda tmp: safetensors.torch.save_file(state, str(tmp)))
        if onnx_bytes is not None:
            atomic_write(folder / "model.onnx", lambda tmp: tmp.write_bytes(onnx_bytes))
        atomic_write_json(folder / "quantization.json", record)
    print(f"{'layer':<16} {'bits':>4} {'params':>9} {'bytes':>9}")
    for r in rows:
        print(f"{r.name:<16} {r.bits:>4} {r.params:>9,} {r.total_bytes:>9,.0f}")
    print(
        f"W{config.bits}A{config.activation_bits} {args.mode}: test accuracy {100 * float_acc:.2f}% -> {100 * acc:.2f}%  "
        f"weights {weight_bytes:,.0f} bytes (fp32 {record['fp32_bytes']:,}, "
        f"{record['fp32_bytes'] / weight_bytes:.1f}x)  {seconds:.0f}s  -> {out}"
    )
    if "onnx" in record:
        o = record["onnx"]
        print(f"model.onnx (QDQ, {o['bytes']:,} bytes): onnxruntime agrees with torchshrink on "
              f"{100 * o['top1_agreement']:.2f}% of the {o['images']:,} test images, test accuracy "
              f"{100 * o['test_accuracy']:.2f}%, max logit difference {o['max_logit_difference']:.2e}")  # fmt: skip
    return 0


def _onnx_with_agreement(model: Any, data: Any, record: dict[str, Any]) -> bytes:
    """The QDQ ONNX model's bytes; records onnxruntime's agreement with ``model`` on the whole test set."""
    from torchshrink.export import onnx_agreement, to_onnx

    blob = to_onnx(model, next(iter(data.test_batches()))[0][:1]).SerializeToString()
    record["onnx"] = {"bytes": len(blob), **onnx_agreement(model, blob, data.test_batches(batch_size=1000))}
    return blob
