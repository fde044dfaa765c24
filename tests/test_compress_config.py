import pytest

from torchshrink.errors import ConfigError
from torchshrink.recipes.compress import CompressConfig


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"temperature": 0.0}, "temperature=0.0: must be positive"),
        ({"budget_bytes": 30_000, "keep_first_last_8bit": True}, "keep_first_last_8bit with a size budget"),
        ({"codebook": True, "budget_bytes": 0}, "must be positive"),
        ({"budget_bytes": 0}, "budget_bytes=0: must be positive"),
        ({"act_budget_bytes": 0}, "act_budget_bytes=0: must be positive"),
        ({"codebook": True, "act_budget_bytes": 1000}, "act_budget_bytes chooses the input widths of uniform"),
        ({"steps": 0}, "steps=0"),
        ({"prune_method": "random"}, "choose 'iterative' or 'gradual'"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"bits": 9}, "9"),
        ({"precision": "fp16"}, "precision='fp16': choose one of fp32, bf16"),
    ],
)
def test_impossible_settings_are_refused_when_the_config_is_made(settings, message):
    with pytest.raises(ConfigError, match=message):
        CompressConfig(**settings)


def test_a_budget_works_without_codebooks():
    """Mixed precision under a file budget is for uniform codes too, and activations have their own budget."""
    cfg = CompressConfig(bits=8, budget_bytes=30_000, act_budget_bytes=5_000)
    assert cfg.budget_bytes == 30_000 and not cfg.codebook
    assert CompressConfig(bits=5, codebook=True, budget_bytes=30_000, keep_first_last_8bit=True).codebook


def test_the_fine_tuning_distils_at_the_configured_temperature_and_precision(monkeypatch):
    import torchshrink.recipes.compress as compress
    from torchshrink.models import build_model

    seen = {}

    class Captured(Exception):
        pass

    def fake_qat(model, data, qcfg, train, device, log=None, teacher=None, **_):
        seen.update(temperature=train.temperature, distill=train.distill, teacher=teacher, precision=train.precision)
        raise Captured

    monkeypatch.setattr(compress, "qat", fake_qat)
    base = build_model("cnn_tiny")
    cfg = CompressConfig(bits=4, qat_epochs=1, distill=0.7, temperature=2.0, precision="bf16")
    with pytest.raises(Captured):
        compress.compress_model(base, None, cfg, log=None, pruned=build_model("cnn_tiny"))
    assert seen["temperature"] == 2.0 and seen["distill"] == 0.7 and seen["teacher"] is base
    assert seen["precision"] == "bf16"
