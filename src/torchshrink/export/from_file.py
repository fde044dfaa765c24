"""A ``.tshrink`` file back to a model and the integer codes behind its weights, ready for the QDQ exporter.

:func:`~torchshrink.pack.load_compressed` gives a model on float weights (codes times scales) with its input
quantizers; the exporter needs the codes themselves to store integer weights. They come from the same read of the
file, so the graph holds exactly what the file holds. Codebook (weight-sharing) tensors have no uniform codes:
their layers export on float weights, named by :func:`load_for_export`.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.layers import prunable_layers
from torchshrink.pack.decode import open_compressed
from torchshrink.pack.records import codebook_codes, uniform_codes
from torchshrink.quant.export import QuantizedLayer
from torchshrink.quant.fake_quant import QuantSpec
from torchshrink.quant.sharing import Codebook

__all__ = ["load_for_export"]


def load_for_export(
    path: str | os.PathLike[str], model: nn.Module | None = None
) -> tuple[nn.Module, dict[str, QuantizedLayer], list[str]]:
    """The model a ``.tshrink`` file holds, the integer codes of its uniformly quantized weights by
    weight name, and the layers whose stored weights have no int8 codes (codebook tensors), which
    export on float weights.

    Args:
        path: a ``.tshrink`` file.
        model: an instance of its architecture when it was saved without a registered name (see
            :func:`~torchshrink.pack.load_compressed`).

    Raises:
        FormatError: the file is invalid or does not fit the model.
    """
    model, header, records = open_compressed(path, model)
    by_name = {rec.name: rec for rec in records}
    aliases = header.get("aliases", {})
    weights: dict[str, QuantizedLayer] = {}
    float_layers: list[str] = []
    for name, w in prunable_layers(model).items():  # every weight of a known kind, as the file stores them
        rec = by_name.get(aliases.get(w.key, w.key))
        if rec is None:
            continue
        if rec.meta["encoding"] == "codebook":  # its indices and table, which the exporter stores as such
            indices, centroids = codebook_codes(rec)
            parametrize.register_parametrization(w.module, w.attr, Codebook.from_table(centroids, indices), unsafe=True)
            continue
        found = uniform_codes(rec)
        if found is None:
            if rec.meta["encoding"] != "float":
                float_layers.append(name)
            continue
        codes, scales = found
        bias = getattr(w.module, "bias", None) if w.attr == "weight" else None
        bias = bias.detach().clone() if isinstance(bias, torch.Tensor) else None
        # signed: the codes go into an int8 container whatever their width (1-bit codes are counted as 2). The
        # range is the writer's: code_offset is its most negative code, -2^(b-1) for full-range codes
        bits = max(2, rec.meta["bits"])
        full = rec.meta["code_offset"] == -(1 << (bits - 1))
        spec = QuantSpec(bits=bits, signed=True, symmetric=True, per_channel=scales.numel() > 1,
                         narrow=False if full else None)  # fmt: skip
        weights[name] = QuantizedLayer(name, codes, scales, spec, bias, None, None, None, w.module_name, w.attr)
    return model, weights, float_layers
