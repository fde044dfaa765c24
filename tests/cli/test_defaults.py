"""Every default of the command line is the library's: it is read from the configs, never typed twice."""

from __future__ import annotations

import pytest

from torchshrink.cli import build_parser
from torchshrink.cli.prune import FINETUNE_DEFAULTS
from torchshrink.pruning import PruneConfig, StructuredConfig
from torchshrink.quant import QuantConfig
from torchshrink.recipes import FINETUNE, GRADUAL_TRAIN, STRUCTURED_FINETUNE, IterativeConfig, TrainConfig
from torchshrink.study.config import BaselineSection


def _defaults(*argv: str) -> dict:
    return vars(build_parser().parse_args(list(argv)))


def test_prune_defaults_are_the_recipes():
    args = _defaults("prune", "ckpt", "--sparsity", "0.5")
    assert args["scope"] == PruneConfig.scope and args["steps"] == IterativeConfig.steps
    assert args["schedule"] == IterativeConfig.schedule and args["multiple_of"] == StructuredConfig.multiple_of
    assert args["temperature"] == TrainConfig.temperature and args["precision"] == TrainConfig.precision
    assert {"iterative": IterativeConfig(0.5).finetune, "gradual": GRADUAL_TRAIN,
                                 "structured": STRUCTURED_FINETUNE, "oneshot": None} == FINETUNE_DEFAULTS  # fmt: skip


def test_quantize_and_compress_defaults_are_the_recipes():
    args = _defaults("quantize", "ckpt", "--bits", "4")
    assert (args["qat_epochs"], args["lr"]) == (FINETUNE.epochs, FINETUNE.lr)
    assert args["calibration"] == QuantConfig.act_calibration and args["precision"] == TrainConfig.precision
    args = _defaults("compress", "ckpt", "--sparsity", "0.5", "--bits", "4")
    assert args["steps"] == IterativeConfig.steps and args["qat_epochs"] == FINETUNE.epochs
    assert args["temperature"] == TrainConfig.temperature and args["precision"] == TrainConfig.precision


@pytest.mark.parametrize("option, field", [("epochs", "epochs"), ("lr", "lr"), ("seed", "seed"),
                                           ("optimizer", "optimizer"), ("schedule", "schedule")])  # fmt: skip
def test_train_defaults_are_the_baseline_recipe(option, field):
    assert _defaults("train")[option] == getattr(TrainConfig(), field)


def test_train_augmentation_defaults_are_the_studys_baseline():
    args, baseline = _defaults("train"), BaselineSection()
    assert (args["erase"], args["ema"], args["batch_size"]) == (baseline.erase, baseline.ema, baseline.batch_size)


def test_compress_options_build_the_library_configs():
    from torchshrink.cli.compress import _config

    args = build_parser().parse_args(["compress", "ckpt", "--sparsity", "0.5", "--bits", "4", "--qat-epochs", "0"])
    cfg = _config(args)
    assert cfg.prune == IterativeConfig(0.5) and cfg.finetune is None and cfg.quant == QuantConfig(bits=4)
    args = build_parser().parse_args(["compress", "ckpt", "--sparsity", "0.9", "--bits", "4",
                                      "--prune-method", "gradual", "--distill", "0.5"])  # fmt: skip
    cfg = _config(args)
    assert cfg.prune.train.epochs == GRADUAL_TRAIN.epochs and cfg.prune.train.distill == 0.5
    assert cfg.finetune.distill == 0.5 and cfg.finetune.epochs == FINETUNE.epochs
