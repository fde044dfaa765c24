"""Run the study: every stage through the cache, then ``results.json``, ``report.md`` and the plots."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from torchshrink._io import atomic_copy, atomic_write_bytes, atomic_write_json
from torchshrink._optional import require
from torchshrink.data import load_fashion_mnist
from torchshrink.errors import ConfigError, TorchshrinkError
from torchshrink.provenance import machine, versions
from torchshrink.recipes.train import native_bf16, pick_device
from torchshrink.study import stages
from torchshrink.study.cache import StageCache
from torchshrink.study.config import StudyConfig, point_name

__all__ = ["run_study", "StudyInterrupted", "StudyBusy", "LOCK"]

LOCK = ".lock"  # in the output folder; held (flock) for the whole run, never deleted while in use


class StudyInterrupted(Exception):
    """Raised by the ``stop_after`` test hook once the named stage is stored."""


class StudyBusy(TorchshrinkError):
    """Another study is running in the same output folder."""


@contextlib.contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder ``out`` (created if needed) while the body runs.

    Two studies on one folder would both compute every stage and delete each other's temporary stage folders;
    the second one fails at once instead. The lock is ``flock`` on ``out/.lock``: the kernel releases it when
    the process ends, however it ends, so a killed study never leaves the folder locked. A folder this call
    created is removed again if the body fails before anything was stored in it.

    Raises:
        StudyBusy: another process holds the lock.
    """
    import fcntl

    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StudyBusy(f"{out}: another study is running in this folder (it holds {out / LOCK}); wait for it "
                        "to finish or choose another --out") from None  # fmt: skip
    try:
        yield
    except BaseException:
        if fresh:  # nothing to resume from: leave no trace of the attempt
            with contextlib.suppress(OSError):
                (out / "cache").rmdir()
            if [p.name for p in out.iterdir()] == [LOCK]:
                (out / LOCK).unlink()
                out.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock


def resolve_precision(cfg: StudyConfig, device: torch.device) -> StudyConfig:
    """``precision: auto`` made concrete: bf16 where ``device`` computes it natively, else fp32 (emulated bf16
    trains 14x slower than fp32 on an AVX2 CPU)."""
    if cfg.precision != "auto":
        return cfg
    return dataclasses.replace(cfg, precision="bf16" if native_bf16(device) else "fp32")


def _precision(cfg: StudyConfig) -> dict[str, str]:
    """The precision in a stage's settings: fp32 was the only one before the setting existed, so fp32 stages
    keep the keys they had and caches made then stay valid."""
    return {} if cfg.precision == "fp32" else {"precision": cfg.precision}


def _data_key(cfg: StudyConfig) -> dict[str, Any]:
    """The data section in a stage's settings: all validation images was the only choice before ``val_subset``
    existed, so a study on them keeps the keys it had."""
    data = asdict(cfg.data)
    if data["val_subset"] is None:
        del data["val_subset"]
    return data


def _settings(point: Any) -> dict[str, Any]:
    # what the point computes: its role and label only name it in the report, so they stay out of the cache key
    # (a combined point's label has always been in its key: kept there, so caches made before stay valid)
    drop = ("role",) if hasattr(point, "role") else ("label",)
    return {k: v for k, v in asdict(point).items() if k not in drop}


def run_study(
    cfg: StudyConfig,
    out: str | os.PathLike[str],
    data_dir: str | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
    stop_after: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the whole study into ``out``; return what ``results.json`` holds.

    One study at a time per folder: a second one raises :class:`StudyBusy` before any work.
    """
    out = Path(out)
    require("matplotlib", "the study's plots")  # before any work: a study without its plots is not finished
    with study_lock(out):
        return _run(cfg, out, data_dir, device, log, stop_after, progress)


def _run(
    cfg: StudyConfig,
    out: Path,
    data_dir: str | None,
    device: str | None,
    log: Callable[[str], None],
    stop_after: str | None,
    progress: bool,
) -> dict[str, Any]:
    """The study itself, under the lock of :func:`run_study`."""
    from torchshrink.study.report import write_report

    started = time.perf_counter()
    stages.check_structured(cfg)
    d = cfg.data
    data = load_fashion_mnist(data_dir).subset(train=d.train_subset, val=d.val_subset, test=d.test_subset)
    device = pick_device(device)
    cfg = resolve_precision(cfg, device)  # before any cache key: a bf16 and an fp32 stage are different stages
    ctx = stages.Context(cfg, data, device, lambda line: tqdm.write(line) if progress else log(line))
    cache = StageCache(out / "cache")
    it, qc = cfg.iterative, cfg.quantization
    total = 6 + len(it.targets) + len(qc.bits) + len(qc.edge8_bits) + len(cfg.combined.points)
    total += len(cfg.continued.targets()) + len(qc.points)
    bar = tqdm(total=total, desc="study", unit="stage", disable=None if progress else True)
    timings: dict[str, float] = {}
    results: dict[str, Any] = {}

    def stage(
        name: str, config: Any, upstream: list[str], compute: Callable[[Path], dict[str, Any]]
    ) -> tuple[str, dict]:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        key, result = cache.run(name, config, upstream, compute)
        timings[name] = time.perf_counter() - t0
        bar.update()
        if stop_after == name:
            raise StudyInterrupted(name)
        return key, result

    common = {"seed": cfg.seed, "data": _data_key(cfg)}
    base_key, results["baseline"] = stage("baseline", {**common, **asdict(cfg.baseline), **_precision(cfg)}, [],
                                          lambda folder: stages.baseline(ctx, folder))  # fmt: skip
    base = stages.load_model(cache.folder(base_key), ctx.device)
    _, results["oneshot"] = stage("oneshot", asdict(cfg.oneshot), [base_key], lambda _: stages.oneshot(ctx, base))
    _, results["sensitivity"] = stage("sensitivity", asdict(cfg.sensitivity), [base_key],
                                      lambda _: stages.sensitivity(ctx, base))  # fmt: skip

    results["iterative"], pruned_keys = [], {}
    previous_key, previous_sparsity = base_key, 0.0
    for target in it.targets:
        start_key, start_sparsity = previous_key, previous_sparsity

        def step(
            folder: Path, start_key: str = start_key, start: float = start_sparsity, target: float = target
        ) -> dict:
            model = stages.load_model(cache.folder(start_key), ctx.device)
            if start > 0:
                from torchshrink.pruning import prune_from_zeros_

                prune_from_zeros_(model)
            return stages.iterative_step(ctx, model, start, target, folder)

        settings = {"target": target, "steps": it.steps_per_target, "epochs": it.epochs_per_step, "lr": it.lr,
                    **_precision(cfg)}
        previous_key, result = stage(f"iterative-{target:g}", settings, [start_key], step)
        previous_sparsity = result["sparsity"]
        pruned_keys[target] = previous_key
        results["iterative"].append(result)

    gradual_key, results["gradual"] = stage("gradual", {**asdict(cfg.gradual), "seed": cfg.seed,
                                                        **_precision(cfg)}, [base_key],
                                            lambda folder: stages.gradual(ctx, base, folder))  # fmt: skip
    chain: dict[float, str] = {}  # the continued runs' keys by sparsity
    if cfg.continued.sparsity is not None:

        def more(folder: Path) -> dict:
            return stages.continued(ctx, base, stages.load_model(cache.folder(gradual_key), ctx.device), folder)

        # the later runs of the chain are stages of their own: they stay out of this one's key
        first = {k: v for k, v in asdict(cfg.continued).items() if k != "more"}
        key, results["continued"] = stage("continued", {**first, "seed": cfg.seed, **_precision(cfg)},
                                          [gradual_key], more)  # fmt: skip
        chain[cfg.continued.sparsity] = key
        if cfg.continued.more:
            results["continued_more"] = []
        for step in cfg.continued.more:

            def further(folder: Path, start: str = key, step: Any = step) -> dict:
                model = stages.load_model(cache.folder(start), ctx.device)
                return stages.continued(ctx, base, model, folder, step)

            key, result = stage(f"continued-{step.sparsity:g}", {**asdict(step), "seed": cfg.seed,
                                                                  **_precision(cfg)}, [key], further)  # fmt: skip
            chain[step.sparsity] = key
            results["continued_more"].append(result)

    results["quantization"] = []
    quick = {k: v for k, v in asdict(qc).items() if k != "points"}  # the longer points are stages of their own
    for bits in qc.bits:
        for edge in (False, True):
            if edge and bits not in qc.edge8_bits:
                continue
            _, result = stage(f"quant-w{bits}{'-edge8' if edge else ''}", {**quick, "bits": bits, "edge": edge,
                              "calibration_images": cfg.data.calibration_images, **_precision(cfg)}, [base_key],
                              lambda _, bits=bits, edge=edge: stages.quantize_width(ctx, base, bits, edge))  # fmt: skip
            results["quantization"].append(result)

    if qc.points:
        results["quant_points"] = []
    for point in qc.points:
        full = point.bits in qc.full_range_bits
        # a step's width on every signed code too: in the key only then (the frontier's steps are at 4 bits)
        steps_full = {"full_range_steps": [b in qc.full_range_bits for b in point.steps]} if any(
            b in qc.full_range_bits for b in point.steps) else {}  # fmt: skip
        _, result = stage(f"quant-{point_name(point)}", {**_settings(point), "full_range": full, **steps_full,
                          "calibration": qc.calibration, "calibration_images": cfg.data.calibration_images,
                          **_precision(cfg)}, [base_key],
                          lambda _, point=point: stages.quant_point(ctx, base, point))  # fmt: skip
        results["quant_points"].append(result)

    results["combined"] = []
    # every setting of the section but the list of points: a setting added later is in the key by itself
    shared = {k: v for k, v in asdict(cfg.combined).items() if k != "points"}
    for point in cfg.combined.points:
        sources = {"gradual": gradual_key, "continued": chain.get(point.sparsity)}
        pkey = sources.get(point.source) or pruned_keys[point.sparsity]

        def compress(folder: Path, pkey: str = pkey, point: Any = point) -> dict:
            pruned = stages.load_model(cache.folder(pkey), ctx.device)
            try:
                return stages.combined_point(ctx, base, pruned, point, folder)
            except ConfigError as exc:  # e.g. a budget this pruned model cannot meet: say which point
                raise ConfigError(f"combined point {point.label or stages.point_file(point)!r}: {exc}") from None

        key, result = stage(f"combined-{stages.point_file(point).removesuffix('.tshrink')}",
                            {**_settings(point), **shared, "calibration_images": cfg.data.calibration_images,
                             **_precision(cfg)}, [base_key, pkey],
                            compress)  # fmt: skip
        atomic_copy(cache.folder(key) / result["file"], out / "compressed" / result["file"])
        results["combined"].append(result)

    _, results["structured"] = stage("structured", {**asdict(cfg.structured), **_precision(cfg)}, [base_key],
                                     lambda _: stages.structured(ctx, base))  # fmt: skip
    bar.close()
    results["meta"] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "versions": versions(),
        "device": str(ctx.device), "wall_seconds_this_run": time.perf_counter() - started,
        "stage_seconds_this_run": timings, "cached_stages": list(cache.hits), "computed_stages": list(cache.misses),
        "test_images": len(data.test_y), "train_images": len(data.train_y),
    }  # fmt: skip
    results["config"] = cfg.to_dict()
    plain = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, for safe_dump
    atomic_write_bytes(out / "config.yaml", yaml.safe_dump(plain, sort_keys=False).encode())
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    return results
