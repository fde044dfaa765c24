from __future__ import annotations

import json
import os
import re
import time

import matplotlib.image as mpimg
import pytest
import yaml

from torchshrink.cli import main
from torchshrink.errors import ConfigError, TorchshrinkError
from torchshrink.study import StudyConfig, StudyInterrupted, load_config, run_study
from torchshrink.study.cache import StageCache
from torchshrink.study.run import LOCK, StudyBusy, study_lock

TINY = {
    "data": {"train_subset": 600, "test_subset": 300, "val_subset": 300, "calibration_images": 128},
    "baseline": {"model": "cnn_tiny", "epochs": 1, "lr": 0.05},
    "oneshot": {"sparsities": [0.5, 0.9]},
    "sensitivity": {"sparsities": [0.5]},
    "iterative": {"targets": [0.4, 0.8], "steps_per_target": 1, "epochs_per_step": 1},
    "gradual": {"sparsity": 0.7, "epochs": 1, "distill": 0.5, "temperature": 3.0, "frequency": 2},
    "continued": {"sparsity": 0.85, "epochs": 1},
    "quantization": {"bits": [8, 2], "edge8_bits": [2], "qat_epochs": 1},
    "combined": {
        "points": [
            {"sparsity": 0.4, "bits": 8, "act_bits": 8, "label": "student point"},
            {"sparsity": 0.8, "bits": 2, "act_bits": 8, "codebook": True, "label": "codebook"},
            {
                "sparsity": 0.7,
                "bits": 3,
                "act_bits": 8,
                "codebook": True,
                "label": "mixed",
                "source": "gradual",
                "budget_bytes": 10000,
            },
            {"sparsity": 0.85, "bits": 4, "act_bits": 8, "codebook": True, "label": "more", "source": "continued"},
            {
                "sparsity": 0.7,
                "bits": 3,
                "act_bits": 8,
                "label": "mixed uniform",
                "source": "gradual",
                "budget_bytes": 6000,
            },
        ],
        "qat_epochs": 1,
    },
    "structured": {"amount": 0.5, "finetune_epochs": 1},
}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return load_config(path)


def _measurements(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("meta",)}


def _strip_seconds(obj):
    if isinstance(obj, dict):
        return {
            k: _strip_seconds(v)
            for k, v in obj.items()
            if "seconds" not in k and k not in ("latency", "images_per_second")
        }
    if isinstance(obj, list):
        return [_strip_seconds(v) for v in obj]
    return obj


def test_study_produces_every_artifact_and_resumes(tiny_config, tmp_path, data_dir):
    full = run_study(tiny_config, tmp_path / "full", data_dir, "cpu", progress=False, log=lambda _: None)
    out = tmp_path / "full"
    for name in (
        "results.json",
        "report.md",
        "config.yaml",
        "accuracy_vs_sparsity.png",
        "accuracy_vs_bits.png",
        "accuracy_vs_size.png",
        "sensitivity.png",
    ):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert mpimg.imread(png).shape[0] > 100  # decodes to a real image
    mask = os.umask(0)
    os.umask(mask)
    for path in [*out.glob("*.*"), *(out / "compressed").iterdir()]:  # written through temporary files
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    assert not [p for p in out.rglob("*.tmp")]
    results = json.loads((out / "results.json").read_text())
    assert [r["target"] for r in results["iterative"]] == [0.4, 0.8]
    assert results["iterative"][1]["sparsity"] > results["iterative"][0]["sparsity"]
    assert {(r["bits"], r["first_last_8bit"]) for r in results["quantization"]} == {(8, False), (2, False), (2, True)}
    assert results["gradual"]["sparsity"] > 0.7 - 1e-3 and 0 < results["gradual"]["test_accuracy"] <= 1
    assert results["gradual"]["train_config"]["temperature"] == 3.0  # the configured distillation is the one used
    # the continued stage starts from the gradual model: sparser, and every weight pruned there stays pruned
    assert results["continued"]["sparsity"] > 0.85 - 1e-3
    for before, after in zip(results["gradual"]["layers"], results["continued"]["layers"], strict=True):
        assert after["nonzeros"] <= before["nonzeros"]
    assert results["combined"][3]["sparsity"] > 0.85 - 1e-3 and results["combined"][3]["source"] == "continued"
    assert set(results["combined"][2]["mixed_precision"]["bits"].values()) <= {2, 3}
    uniform = results["combined"][4]  # mixed precision of uniform codes: planned, and the file within budget
    assert set(uniform["mixed_precision"]["bits"].values()) <= {2, 3} and uniform["file_bytes"] <= 6000
    assert "mixed uniform" in (out / "report.md").read_text()
    # choices are audited on validation: every trained point keeps its validation figure beside the test one
    assert all(0 < r["qat_val_accuracy"] <= 1 for r in results["quantization"])
    assert all(0 < p["val_accuracy"] <= 1 for p in results["combined"])
    assert 0 < results["structured"]["val_accuracy"] <= 1 and "| Validation accuracy (%) |" in (out / "report.md").read_text()
    for point in results["combined"]:
        assert (out / "compressed" / point["file"]).is_file()
        assert point["file_bytes"] == (out / "compressed" / point["file"]).stat().st_size
        assert point["ratio"] > 1
    report = (out / "report.md").read_text()
    for section in (
        "Model Compression Results",
        "## Memory",
        "## Pruning",
        "## Quantization",
        "## Structured",
        "Gradual pruning during training",
        "93.14",
        "90.95",
    ):
        assert section in report

    # interrupt after the quantization stages, then resume: nothing finished is recomputed, same results
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(StudyInterrupted):
        run_study(
            tiny_config, resumed_dir, data_dir, "cpu", progress=False, log=lambda _: None, stop_after="quant-w2-edge8"
        )
    computed_before = {p.name for p in (resumed_dir / "cache").iterdir() if not p.name.startswith(".")}
    resumed = run_study(tiny_config, resumed_dir, data_dir, "cpu", progress=False, log=lambda _: None)
    assert set(resumed["meta"]["cached_stages"]) == computed_before
    assert not set(resumed["meta"]["computed_stages"]) & computed_before
    assert _strip_seconds(_measurements(resumed)) == _strip_seconds(_measurements(full))

    # a settings change recomputes only that stage and what depends on it
    changed = StudyConfig(
        **{**tiny_config.__dict__, "structured": tiny_config.structured.__class__(amount=0.25, finetune_epochs=1)}
    )
    again = run_study(changed, resumed_dir, data_dir, "cpu", progress=False, log=lambda _: None)
    assert [k.split("-")[0] for k in again["meta"]["computed_stages"]] == ["structured"]

    # the frontier's additions: a further continued run, a longer low-bit point stepped from 4 bits, and a
    # point compressing the sparsest model. Only they are computed: every stage before keeps its key
    more = {**TINY, "continued": {**TINY["continued"], "more": [{"sparsity": 0.92, "epochs": 1}]},
            "quantization": {**TINY["quantization"], "points": [
                {"bits": 2, "first_last_8bit": True, "steps": [4], "step_epochs": 1, "epochs": 1, "label": "long"}]},
            "combined": {**TINY["combined"], "points": [*TINY["combined"]["points"], {
                "sparsity": 0.92, "bits": 3, "act_bits": 8, "codebook": True, "source": "continued",
                "label": "sparsest"}]},
            "structured": {"amount": 0.25, "finetune_epochs": 1}}  # fmt: skip
    path = tmp_path / "more.yaml"
    path.write_text(yaml.safe_dump(more))
    further = run_study(load_config(path), resumed_dir, data_dir, "cpu", progress=False, log=lambda _: None)
    computed = [k.rsplit("-", 1)[0] for k in further["meta"]["computed_stages"]]
    assert computed == ["continued-0.92", "quant-w2-edge8-from4x1-e1", "combined-continued-s0.92-w3a8-codebook"]
    (chained,) = further["continued_more"]
    assert chained["sparsity"] > 0.92 - 1e-3
    for before, after in zip(further["continued"]["layers"], chained["layers"], strict=True):
        assert after["nonzeros"] <= before["nonzeros"]  # it starts from the continued model, not the gradual one
    assert further["combined"][-1]["sparsity"] > 0.92 - 1e-3
    (point,) = further["quant_points"]
    assert [h["bits"] for h in point["history"]] == [4, 2] and point["first_last_8bit"]
    assert 0 < point["test_accuracy"] <= 1 and 0 < point["val_accuracy"] <= 1
    report = (resumed_dir / "report.md").read_text()
    assert "Longer low-bit runs" in report and "| 92% |" in report

    # a budget the pruned model cannot meet is refused naming the point, before its stage does any work
    more["combined"]["points"].append({"sparsity": 0.92, "bits": 3, "act_bits": 8, "codebook": True,
                                       "source": "continued", "budget_bytes": 1200, "label": "too small"})  # fmt: skip
    path.write_text(yaml.safe_dump(more))
    with pytest.raises(ConfigError, match="combined point 'too small': budget"):
        run_study(load_config(path), resumed_dir, data_dir, "cpu", progress=False, log=lambda _: None)


@pytest.mark.parametrize(
    "text, message",
    [
        ("baseline: {epochz: 3}", "baseline.epochz: unknown key"),
        ("baseline: {epochs: three}", "baseline.epochs: expected an integer"),
        ("iterative: {targets: [0.5, 1.5]}", "iterative.targets: 1.5 must be a sparsity"),
        ("quantization: {bits: [9]}", "quantization.bits: 9 must be from 2 to 8"),
        ("gradual: {temperature: 0}", "gradual.temperature: 0.0 must be positive"),
        ("continued: {sparsity: 0.8}", "continued.sparsity: 0.8 must be above gradual.sparsity"),
        (
            "combined: {points: [{sparsity: 0.9, bits: 4, act_bits: 8, source: continued}]}",
            "must be the sparsity of a continued run",
        ),
        ("[1, 2", "not valid YAML"),
        ("seed: 1\nbaseline: {epochs: 3}\nseed: 2", "line 3: 'seed' is given twice; keep one"),
        ("baseline:\n  epochs: 3\n  lr: 0.1\n  epochs: 4", "line 4: 'epochs' is given twice"),
    ],
)
def test_invalid_config_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_cli_rejects_a_bad_config_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1]\n")
    assert main(["study", "--config", str(bad), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "seed: expected an integer" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_second_study_on_the_same_folder_fails_at_once(tiny_config, tmp_path, data_dir, capsys):
    """Two studies on one --out would both compute everything and delete each other's live temporaries. (flock
    locks belong to open files, so a second open in the same process is refused as another process's is.)"""
    out = tmp_path / "study"
    with study_lock(out):
        start = time.perf_counter()
        with pytest.raises(StudyBusy, match=re.escape(f"{out}: another study is running in this folder")):
            run_study(tiny_config, out, data_dir, "cpu", progress=False, log=lambda _: None)
        assert time.perf_counter() - start < 5  # before loading the data, let alone training
        assert main(["study", "--quick", "--data-dir", data_dir, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert "another study is running" in err and str(out) in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == [LOCK]  # the lock file stays; the kernel's lock went with the fd


def test_a_study_that_fails_at_once_leaves_no_folder(tiny_config, tmp_path):
    (tmp_path / "no-data").mkdir()
    with pytest.raises(TorchshrinkError, match="missing"):
        run_study(tiny_config, tmp_path / "study", str(tmp_path / "no-data"), "cpu", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["no-data"]  # the folder it made for the lock is gone


def test_the_stage_cache_leaves_no_temporaries(tmp_path):
    """A stage interrupted by an error leaves nothing; ones a killed run left are removed on the next start."""
    root = tmp_path / "cache"
    (root / ".tmp-gradual-abc123").mkdir(parents=True)  # the naming of earlier versions
    (root / ".gradual-0123456789ab.999999.0123abcd.tmp").mkdir()
    cache = StageCache(root)
    assert list(root.iterdir()) == []

    def fails(folder):
        (folder / "model.safetensors").write_text("half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cache.run("gradual", {"epochs": 1}, [], fails)
    assert list(root.iterdir()) == []
    key, result = cache.run("gradual", {"epochs": 1}, [], lambda folder: {"sparsity": 0.5})
    assert [p.name for p in root.iterdir()] == [key] and result["sparsity"] == 0.5
    assert cache.run("gradual", {"epochs": 1}, [], fails) == (key, result)  # from the cache: not recomputed
