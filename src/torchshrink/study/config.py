"""The study's configuration: typed sections with documented defaults, read from YAML and validated before
any work starts. ``--quick`` swaps in small data and few epochs, keeping every stage."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from torchshrink.data.task import DEFAULT_CALIBRATION_SAMPLES
from torchshrink.errors import ConfigError, first_line, show_value
from torchshrink.quant.apply import QuantConfig
from torchshrink.quant.fake_quant import CALIBRATIONS
from torchshrink.recipes.gradual import GRADUAL_TRAIN, GradualConfig
from torchshrink.recipes.quantize import FINETUNE
from torchshrink.recipes.train import PRECISIONS, TrainConfig

__all__ = ["StudyConfig", "load_config", "quick_config", "point_name"]

# Bounds on what a YAML file may hold: far above any real config, far below anything costly.
MAX_CONFIG_BYTES = 1 << 20  # docs/study.yaml is 4 KB
MAX_DEPTH = 16  # nesting levels; a config needs 5 (combined -> points -> [i] -> key -> value)
MAX_LIST = 64  # values in one list (sparsities, bits, points)
MAX_STR = 200  # characters of a string setting (labels)
MAX_DIGITS = 30  # digits of a YAML integer (Python itself refuses beyond 4300, with a ValueError)
MAX_INT = 2**63 - 1  # |integer setting|: what torch's seeds and sizes can hold


@dataclass(frozen=True)
class DataSection:
    train_subset: int | None = None  # train on the first N training images (None: all 55,000)
    test_subset: int | None = None  # evaluate on the first N test images (None: all 10,000)
    val_subset: int | None = None  # validate on the first N validation images (None: all 5,000)
    calibration_images: int = DEFAULT_CALIBRATION_SAMPLES  # training images used to calibrate activation ranges


@dataclass(frozen=True)
class BaselineSection:
    model: str = "cnn"  # registered model name
    epochs: int = TrainConfig.epochs  # training epochs
    lr: float = TrainConfig.lr  # peak learning rate (one-cycle, SGD Nesterov)
    batch_size: int = 256  # images per step
    crop_padding: int = 0  # random-crop padding in pixels (0: horizontal flip only)
    ema: float = 0.0  # decay of the moving average of the weights kept at the end (0: the last weights)
    erase: float = 0.25  # share of training images with a random rectangle erased (chosen on validation)


@dataclass(frozen=True)
class OneshotSection:
    sparsities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # no retraining


@dataclass(frozen=True)
class SensitivitySection:
    sparsities: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9, 0.95)  # per layer, alone, no retraining


@dataclass(frozen=True)
class IterativeSection:
    targets: tuple[float, ...] = (0.4, 0.8, 0.9, 0.95)  # sparsities reached in turn, each measured
    steps_per_target: int = 1  # AGP steps from one target to the next
    epochs_per_step: int = 1  # retraining epochs after each step
    lr: float = 0.02  # peak learning rate of the retraining


@dataclass(frozen=True)
class GradualSection:  # the library's gradual recipe (GradualConfig and its GRADUAL_TRAIN) and a target
    sparsity: float = 0.9  # target, reached during one training run from the dense baseline
    epochs: int = GRADUAL_TRAIN.epochs  # epochs of the run
    lr: float = GRADUAL_TRAIN.lr  # peak learning rate
    distill: float = GRADUAL_TRAIN.distill  # weight of the dense model's soft predictions in the loss
    temperature: float = GRADUAL_TRAIN.temperature  # softmax temperature of those predictions
    start: float = GradualConfig.start  # pruning starts at this fraction of the run ...
    end: float = GradualConfig.end  # ... and reaches the target here; the rest of the run recovers
    frequency: int = GradualConfig.frequency  # optimizer steps between mask updates

    def __post_init__(self) -> None:
        self.recipe()  # the library's checks fire when the section is built

    def recipe(self, seed: int = 0, precision: str = "fp32") -> GradualConfig:
        """The library's :class:`GradualConfig` this section runs."""
        train = TrainConfig(epochs=self.epochs, lr=self.lr, distill=self.distill, temperature=self.temperature,
                            seed=seed, precision=precision)  # fmt: skip
        return GradualConfig(self.sparsity, train, self.start, self.end, self.frequency)


@dataclass(frozen=True)
class ContinuedStep:  # one more run of the chain, from the model of the run before it
    sparsity: float  # target of the run: above the one before
    epochs: int = 8  # epochs of the run
    lr: float = 0.03  # peak learning rate
    end: float = 0.5  # the target is reached at this fraction of the run; the rest recovers


@dataclass(frozen=True)
class ContinuedSection:  # the gradual model pruned further in a second, shorter run (same distillation)
    sparsity: float | None = 0.93  # target of that run (null: skip the stage)
    epochs: int = 6  # epochs of the run
    lr: float = 0.03  # peak learning rate
    end: float = 0.5  # the target is reached at this fraction of the run; the rest recovers
    # further runs, each from the model of the one before (e.g. 0.96, then 0.97): the sparsest models
    more: tuple[ContinuedStep, ...] = ()

    def targets(self) -> tuple[float, ...]:
        """The sparsity of every run of the chain, in order (empty when the stage is skipped)."""
        return () if self.sparsity is None else (self.sparsity, *(m.sparsity for m in self.more))


@dataclass(frozen=True)
class QuantPoint:  # one longer quantization-aware run at a low width, beside the quick one of every width
    bits: int  # weight and activation width
    first_last_8bit: bool = False  # the first and last layers at 8 bits (weights and inputs)
    epochs: int = 8  # QAT epochs at ``bits``
    lr: float = FINETUNE.lr  # QAT peak learning rate (every run of the point)
    distill: float = 0.7  # weight of the baseline's soft predictions in the loss (0: labels only)
    temperature: float = 2.0  # softmax temperature of those predictions
    # wider widths trained first (e.g. [4]: 4-bit QAT, then 2-bit QAT from its weights), ``step_epochs`` each
    steps: tuple[int, ...] = ()
    step_epochs: int = 1
    label: str = ""  # name in the report


@dataclass(frozen=True)
class QuantSection:
    bits: tuple[int, ...] = (8, 6, 4, 2)  # W/A widths (weights and activations alike)
    edge8_bits: tuple[int, ...] = ()  # widths also run with the first and last layers at 8 bits
    # widths whose weights use every signed code (4 levels at 2 bits, not ternary): chosen on validation by
    # benchmarks/low_bit.py at 2 bits
    full_range_bits: tuple[int, ...] = (2,)
    qat_epochs: int = 1  # QAT epochs per width (the library's default is 2: one fits the study's time budget)
    lr: float = FINETUNE.lr  # QAT peak learning rate
    calibration: str = QuantConfig.act_calibration  # activation ranges: minmax, percentile or mse
    points: tuple[QuantPoint, ...] = ()  # longer low-bit runs (more epochs, distilled, stepped from wider widths)


@dataclass(frozen=True)
class CombinedPoint:
    sparsity: float  # the pruned model reused: a target of the iterative section, or the gradual sparsity
    bits: int  # weight bits (the widest, with a budget)
    act_bits: int  # activation bits
    codebook: bool = False  # k-means weight sharing instead of uniform levels
    label: str = ""  # name in the report
    source: str = "iterative"  # which pruned model: "iterative" (prune -> retrain rounds), "gradual", "continued"
    budget_bytes: int | None = None  # file size to fit with a weight width per layer, 2..bits (mixed precision)
    role: str = ""  # "student": the point the report sets beside the student project's pruned + quantized row


ROLES = ("", "student")  # at most one point is the student's; without one the report takes the first point


@dataclass(frozen=True)
class CombinedSection:
    points: tuple[CombinedPoint, ...] = (
        CombinedPoint(0.4, 8, 8, False, "40% pruned + 8-bit (the student point)", role="student"),
        CombinedPoint(0.9, 4, 8, True, "90% pruned (gradual) + 4-bit codebook", "gradual"),
        CombinedPoint(
            0.93,
            5,
            8,
            True,
            "93% pruned (gradual, continued) + mixed 2-5-bit codebook, 50x budget",
            "continued",
            31_286,
        ),
        CombinedPoint(
            0.93,
            8,
            8,
            False,
            "93% pruned (gradual, continued) + mixed 2-8-bit uniform, 50x budget",
            "continued",
            31_286,
        ),
        # the same pruned model at one uniform width for every layer: what the per-layer widths above buy
        CombinedPoint(0.93, 4, 8, False, "93% pruned (gradual, continued) + 4-bit uniform", "continued"),
    )
    qat_epochs: int = 1  # fine-tuning epochs with the masks kept
    lr: float = 0.01  # fine-tuning peak learning rate
    distill: float = 0.7  # weight of the dense model's soft predictions in the fine-tuning loss
    # softmax temperature of those predictions: 4.0 is what these points have always run at (the gradual and
    # structured stages' 2.0, TrainConfig's default, was chosen on validation for pruning runs)
    temperature: float = 4.0
    codebook_gradient: str = "mean"  # shared-gradient update of codebook centroids: mean over the cluster


@dataclass(frozen=True)
class StructuredSection:
    # the recipe chosen on validation by benchmarks/structured_recipes.py (3.66x at batch 256, -0.26 points)
    amount: float = 0.5  # fraction of conv channels removed in every conv layer not in layer_amounts
    # a fraction per channel group, named by its first conv: on a CPU the full-resolution conv costs the most
    # time per channel
    layer_amounts: dict[str, float] = field(default_factory=lambda: {"features.conv1": 0.75})
    finetune_epochs: int = 16  # epochs of fine-tuning after removal
    lr: float = 0.06  # fine-tuning peak learning rate
    distill: float = 0.7  # weight of the dense model's soft targets in the fine-tuning loss
    temperature: float = 2.0  # of those soft targets


@dataclass(frozen=True)
class StudyConfig:
    seed: int = 0  # initialisation, shuffling and augmentation
    # every training stage in "fp32" or under bfloat16 autocast ("bf16": 1.6-1.9x faster epochs on CPUs with
    # AVX-512 BF16 or AMX; emulated elsewhere, 14x slower than fp32 on an AVX2 CPU). bf16 keeps the study under 20
    # minutes there; over four seeds its baselines scored 0.22 lower on validation and 0.11 higher on test
    # (benchmarks/baseline_recipes.py), both within the seeds' spread. "auto": bf16 where the device computes it
    # natively, else fp32; the run records which
    precision: str = "auto"
    data: DataSection = field(default_factory=DataSection)
    baseline: BaselineSection = field(default_factory=BaselineSection)
    oneshot: OneshotSection = field(default_factory=OneshotSection)
    sensitivity: SensitivitySection = field(default_factory=SensitivitySection)
    iterative: IterativeSection = field(default_factory=IterativeSection)
    gradual: GradualSection = field(default_factory=GradualSection)
    continued: ContinuedSection = field(default_factory=ContinuedSection)
    quantization: QuantSection = field(default_factory=QuantSection)
    combined: CombinedSection = field(default_factory=CombinedSection)
    structured: StructuredSection = field(default_factory=StructuredSection)

    def __post_init__(self) -> None:
        _check(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(cfg: StudyConfig) -> None:
    from torchshrink.models import MODELS

    def need(cond: bool, where: str, value: object, rule: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {show_value(value)} {rule}")

    for where, value in _floats(cfg, ""):  # first: every comparison below is meaningless for NaN and inf
        need(math.isfinite(value), where, value, "must be a finite number")
    need(0 <= cfg.seed <= MAX_INT, "seed", cfg.seed, f"must be from 0 to 2**63-1 ({MAX_INT}), as on the command line")
    need(cfg.precision in ("auto", *PRECISIONS), "precision", cfg.precision,
         f"is not one of auto, {', '.join(PRECISIONS)}")  # fmt: skip
    need(cfg.baseline.model in MODELS, "baseline.model", cfg.baseline.model, f"is not one of {', '.join(MODELS)}")
    for where, value in [("baseline.epochs", cfg.baseline.epochs), ("baseline.batch_size", cfg.baseline.batch_size),
                         ("iterative.steps_per_target", cfg.iterative.steps_per_target),
                         ("iterative.epochs_per_step", cfg.iterative.epochs_per_step),
                         ("gradual.epochs", cfg.gradual.epochs), ("gradual.frequency", cfg.gradual.frequency),
                         ("data.calibration_images", cfg.data.calibration_images)]:  # fmt: skip
        need(value >= 1, where, value, "must be at least 1")
    for where, value in [("quantization.qat_epochs", cfg.quantization.qat_epochs),
                         ("combined.qat_epochs", cfg.combined.qat_epochs),
                         ("structured.finetune_epochs", cfg.structured.finetune_epochs),
                         ("baseline.crop_padding", cfg.baseline.crop_padding)]:  # fmt: skip
        need(value >= 0, where, value, "must not be negative")
    need(0 <= cfg.baseline.ema < 1, "baseline.ema", cfg.baseline.ema, "must be in [0, 1) (0: no average)")
    need(0 <= cfg.baseline.erase <= 1, "baseline.erase", cfg.baseline.erase, "must be in [0, 1]")
    for where, value in [("baseline.lr", cfg.baseline.lr), ("iterative.lr", cfg.iterative.lr),
                         ("quantization.lr", cfg.quantization.lr), ("combined.lr", cfg.combined.lr),
                         ("structured.lr", cfg.structured.lr), ("gradual.lr", cfg.gradual.lr),
                         ("gradual.temperature", cfg.gradual.temperature),
                         ("combined.temperature", cfg.combined.temperature)]:  # fmt: skip
        need(value > 0, where, value, "must be positive")
    g = cfg.gradual
    need(0 < g.sparsity < 1, "gradual.sparsity", g.sparsity, "must be a sparsity in (0, 1)")
    need(0 <= g.start < g.end <= 1, "gradual", (g.start, g.end), "start and end must satisfy 0 <= start < end <= 1")
    for where, value in [("gradual.distill", g.distill), ("combined.distill", cfg.combined.distill)]:
        need(0 <= value <= 1, where, value, "must be in [0, 1]")
    for where, values in [("oneshot.sparsities", cfg.oneshot.sparsities),
                          ("sensitivity.sparsities", cfg.sensitivity.sparsities),
                          ("iterative.targets", cfg.iterative.targets)]:  # fmt: skip
        need(len(values) > 0, where, list(values), "must not be empty")
        for v in values:
            need(0 < v < 1, where, v, "must be a sparsity in (0, 1)")
    need(list(cfg.iterative.targets) == sorted(set(cfg.iterative.targets)), "iterative.targets",
         list(cfg.iterative.targets), "must be increasing")  # fmt: skip
    need(0 < cfg.structured.amount < 1, "structured.amount", cfg.structured.amount, "must be in (0, 1)")
    for name, value in cfg.structured.layer_amounts.items():
        need(0 <= value < 1, f"structured.layer_amounts.{name}", value, "must be in [0, 1)")
    need(0 <= cfg.structured.distill <= 1, "structured.distill", cfg.structured.distill, "must be in [0, 1]")
    need(cfg.structured.temperature > 0, "structured.temperature", cfg.structured.temperature, "must be positive")
    for b in cfg.quantization.bits:
        need(2 <= b <= 8, "quantization.bits", b, "must be from 2 to 8")
    for b in cfg.quantization.full_range_bits:
        need(b in cfg.quantization.bits, "quantization.full_range_bits", b, "must be one of bits")
    for b in cfg.quantization.edge8_bits:
        need(b in cfg.quantization.bits and b < 8, "quantization.edge8_bits", b, "must be one of bits, below 8")
    need(cfg.quantization.calibration in CALIBRATIONS, "quantization.calibration",
         cfg.quantization.calibration, f"must be one of {', '.join(CALIBRATIONS)}")  # fmt: skip
    c = cfg.continued
    if c.sparsity is not None:
        need(g.sparsity < c.sparsity < 1, "continued.sparsity", c.sparsity,
             f"must be above gradual.sparsity ({g.sparsity}) and below 1, or empty")  # fmt: skip
    need(not c.more or c.sparsity is not None, "continued.more", len(c.more), "runs need continued.sparsity")
    runs = [("continued", c), *((f"continued.more[{i}]", m) for i, m in enumerate(c.more))]
    for (where, run), before in zip(runs, (g.sparsity, *c.targets()), strict=False):  # one more target
        if run.sparsity is not None:
            need(before < run.sparsity < 1, f"{where}.sparsity", run.sparsity,
                 f"must be above the run before it ({before}) and below 1")  # fmt: skip
        need(run.epochs >= 1, f"{where}.epochs", run.epochs, "must be at least 1")
        need(run.lr > 0, f"{where}.lr", run.lr, "must be positive")
        need(0 < run.end <= 1, f"{where}.end", run.end, "must be in (0, 1]")
    for i, p in enumerate(cfg.quantization.points):
        where = f"quantization.points[{i}]"
        need(2 <= p.bits <= 8, f"{where}.bits", p.bits, "must be from 2 to 8")
        for b in p.steps:
            need(p.bits < b <= 8, f"{where}.steps", b, f"must be wider than bits ({p.bits}) and at most 8")
        need(list(p.steps) == sorted(set(p.steps), reverse=True), f"{where}.steps", list(p.steps),
             "must be decreasing")  # fmt: skip
        need(p.epochs >= 1 and p.step_epochs >= 1, f"{where}", (p.epochs, p.step_epochs),
             "epochs and step_epochs must be at least 1")  # fmt: skip
        need(p.lr > 0 and p.temperature > 0, f"{where}", (p.lr, p.temperature), "lr and temperature must be positive")
        need(0 <= p.distill <= 1, f"{where}.distill", p.distill, "must be in [0, 1]")
    seen_points = [point_name(p) for p in cfg.quantization.points]
    for i, name in enumerate(seen_points):
        need(name not in seen_points[:i], f"quantization.points[{i}]", name, "repeats an earlier point; remove one")
    points = cfg.combined.points
    need(len(points) > 0, "combined.points", [], "must hold at least one point: the report's pruned + quantized "
         "row is the point with role: student, or else the first one")  # fmt: skip
    students = [i for i, p in enumerate(points) if p.role == "student"]
    need(len(students) <= 1, "combined.points", [f"[{i}]" for i in students], "all have role: student; "
         "give it to one point only")  # fmt: skip
    seen: dict[tuple[Any, ...], int] = {}
    for i, p in enumerate(points):
        need(p.role in ROLES, f"combined.points[{i}].role", p.role, "must be 'student' or empty")
        same = (p.source, p.sparsity, p.bits, p.act_bits, p.codebook, p.budget_bytes)  # what names its file
        need(same not in seen, f"combined.points[{i}]", p.label or same, f"repeats combined.points[{seen.get(same)}] "
             "(both would write the same file); remove one")  # fmt: skip
        seen[same] = i
        need(p.source in ("iterative", "gradual", "continued"), f"combined.points[{i}].source", p.source,
             "must be 'iterative', 'gradual' or 'continued'")  # fmt: skip
        if p.source == "iterative":
            need(p.sparsity in cfg.iterative.targets, f"combined.points[{i}].sparsity", p.sparsity,
                 f"must be one of iterative.targets {list(cfg.iterative.targets)}")  # fmt: skip
        elif p.source == "continued":
            need(p.sparsity in c.targets(), f"combined.points[{i}].sparsity", p.sparsity,
                 f"must be the sparsity of a continued run {list(c.targets())} for a continued point")  # fmt: skip
        else:
            need(p.sparsity == g.sparsity, f"combined.points[{i}].sparsity", p.sparsity,
                 f"must be gradual.sparsity ({g.sparsity}) for a gradual point")  # fmt: skip
        need(p.budget_bytes is None or p.budget_bytes > 0, f"combined.points[{i}].budget_bytes", p.budget_bytes,
             "must be a positive size, or empty")  # fmt: skip
        need(2 <= p.bits <= 8 and 2 <= p.act_bits <= 8, f"combined.points[{i}]", (p.bits, p.act_bits),
             "bits must be from 2 to 8")  # fmt: skip
    need(cfg.combined.codebook_gradient == "mean", "combined.codebook_gradient", cfg.combined.codebook_gradient,
         "must be 'mean' (the only update implemented)")  # fmt: skip
    for where, value in [("data.train_subset", cfg.data.train_subset), ("data.test_subset", cfg.data.test_subset),
                         ("data.val_subset", cfg.data.val_subset)]:  # fmt: skip
        need(value is None or value >= 100, where, value, "must be empty or at least 100")


def point_name(p: QuantPoint) -> str:
    """A quantization point's stage name, e.g. ``w2-edge8-from4-e12``: what it computes, not its label."""
    steps = f"-from{'-'.join(map(str, p.steps))}x{p.step_epochs}" if p.steps else ""
    return f"w{p.bits}{'-edge8' if p.first_last_8bit else ''}{steps}-e{p.epochs}"


def _floats(obj: Any, where: str) -> list[tuple[str, float]]:
    """(key, value) of every float in a config, nested sections and lists included."""
    out: list[tuple[str, float]] = []
    for f in fields(obj):
        value, key = getattr(obj, f.name), f"{where}{f.name}"
        if isinstance(value, tuple):
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, dict):
            items = [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            items = [(key, value)]
        for name, item in items:
            if dataclasses.is_dataclass(item):
                out += _floats(item, f"{name}.")
            elif isinstance(item, float):
                out.append((name, item))
    return out


def _coerce(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a YAML mapping, rejecting unknown or missing keys and wrong types."""
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    names = [f.name for f in fields(cls)]
    for key in raw:
        if not isinstance(key, str) or key not in names:
            shown = key if isinstance(key, str) and key.isidentifier() and len(key) <= 40 else show_value(key, 40)
            raise ConfigError(f"{prefix}{shown}: unknown key; known: {', '.join(sorted(names))}")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    for key in required:
        if key not in raw:
            raise ConfigError(f"{prefix}{key}: missing; give {', '.join(required)}")
    hints = get_type_hints(cls)
    kwargs = {key: _value(hints[key], value, f"{prefix}{key}") for key, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a library config's own check ("lr=0: must be positive"): name the key
        if not where or str(exc).startswith(where):
            raise
        m = re.match(r"(\w+)=(.*?): (.*)$", str(exc))
        raise ConfigError(f"{where}.{m[1]}: {m[2]} {m[3]}" if m else f"{where}: {exc}") from None


def _value(hint: Any, value: Any, where: str) -> Any:
    text = str(hint)
    if dataclasses.is_dataclass(hint):
        return _coerce(hint, value, where)
    if text.startswith("dict[str, float]"):  # e.g. a fraction per layer name
        if not isinstance(value, dict) or len(value) > MAX_LIST:
            raise ConfigError(f"{where}: expected a mapping of at most {MAX_LIST} names to numbers, got "
                              f"{show_value(value)}")  # fmt: skip
        for key in value:
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{where}: {show_value(key, 40)} is not a layer name")
        return {key: _value(float, v, f"{where}.{key}") for key, v in value.items()}
    if text.startswith("tuple["):
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise ConfigError(f"{where}: expected a list of at most {MAX_LIST} values, got {show_value(value)}")
        for cls in (CombinedPoint, ContinuedStep, QuantPoint):
            if cls.__name__ in text:
                return tuple(_coerce(cls, v, f"{where}[{i}]") for i, v in enumerate(value))
        inner = int if "int" in text else float
        return tuple(_value(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if "None" in text and value is None:
        return None
    if hint is bool or text == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {show_value(value)}")
        return value
    if hint is int or text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {show_value(value)}")
        if not -MAX_INT <= value <= MAX_INT:
            raise ConfigError(f"{where}: {show_value(value)} is out of range (at most {MAX_INT} in size)")
        return value
    if hint is float or text in ("float", "float | None"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {show_value(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {show_value(value)}")
        return float(value)
    if hint is str or text == "str":
        if not isinstance(value, str) or len(value) > MAX_STR:
            raise ConfigError(f"{where}: expected a string of at most {MAX_STR} characters, got {show_value(value)}")
        return value
    raise ConfigError(f"{where}: unsupported setting")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases, duplicate keys or deep nesting, and with bounded integers.

    An alias repeats a value by reference: nine nested ones in 300 bytes ("billion laughs") make a value
    whose printout is gigabytes. Deep nesting exhausts the stack of the recursive composer, and a
    5000-digit integer trips Python's own limit with a ValueError. Each becomes a ConfigError here.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            raise ConfigError(f"line {mark.line + 1}: YAML aliases (*name) are not accepted; write the value out")
        if self.depth >= MAX_DEPTH:
            raise ConfigError(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # YAML itself lets the last of two equal keys win: a setting written twice would be half ignored
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if duplicate:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: {show_value(key)} is given twice; keep one")
        return super().construct_mapping(node, deep=deep)

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        digits = str(self.construct_scalar(node)).replace("_", "")
        if len(digits) > MAX_DIGITS:
            raise ConfigError(f"line {node.start_mark.line + 1}: an integer of {len(digits)} digits is out of range")
        return super().construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_bounded_int)


def load_config(path: str | os.PathLike[str] | None) -> StudyConfig:
    """Read and validate a YAML file (``None``: the defaults). Raises :class:`ConfigError` naming the key.

    Nothing in the file can make this hang, allocate much or raise anything else: its size, nesting and
    integers are bounded, aliases and duplicate keys are refused, and every value a message prints is cut short.
    """
    if path is None:
        return StudyConfig()
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES:,} bytes; a study config is a few KB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); save it as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python objects are ever built
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(str(exc))})") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. the date 2001-13-01
        raise ConfigError(f"{path}: not valid YAML ({first_line(str(exc))})") from None
    try:
        return _coerce(StudyConfig, {} if raw is None else raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def quick_config(cfg: StudyConfig) -> StudyConfig:
    """Small data and single epochs, every stage kept: for a smoke run in a few minutes."""
    r = dataclasses.replace
    return r(
        cfg,
        data=r(cfg.data, train_subset=4000, test_subset=2000, val_subset=1000, calibration_images=256),
        baseline=r(cfg.baseline, epochs=2),
        oneshot=r(cfg.oneshot, sparsities=(0.3, 0.6, 0.9)),
        sensitivity=r(cfg.sensitivity, sparsities=(0.5, 0.9)),
        iterative=r(cfg.iterative, steps_per_target=1, epochs_per_step=1),
        gradual=r(cfg.gradual, epochs=1),
        continued=r(cfg.continued, epochs=1, more=tuple(r(m, epochs=1) for m in cfg.continued.more)),
        quantization=r(cfg.quantization, qat_epochs=1,
                       points=tuple(r(p, epochs=1, step_epochs=1) for p in cfg.quantization.points)),
        combined=r(cfg.combined, qat_epochs=1),
        structured=r(cfg.structured, finetune_epochs=1),
    )
