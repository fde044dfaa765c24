"""A structure-aware fuzzer of the ``.tshrink`` reader: mutated files either load into a model that runs and
gives finite outputs, or are refused with a ``FormatError`` that names the field; nothing else, fast, in
bounded memory. ``benchmarks/fuzz.py`` runs the same cases 100,000 at a time.

A mutation decodes a valid seed file's header, changes one thing (a field deleted, given the wrong type, made
negative, huge, NaN or off by one; two tensors' sections swapped; an entry duplicated), encodes it again
(plain JSON or zlib) and keeps the payload checksum right, so the change reaches the checks behind it.
Others flip a payload byte and reseal it (new checksum and sizes), or flip, cut and extend raw bytes.
Everything is seeded: a case is ``(seed file, case number)``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import lzma
import math
import random
import signal
import struct
import time
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from torchshrink.models import build_model
from torchshrink.pack import FormatError, encode_compressed, inspect_compressed, load_compressed
from torchshrink.pack.decode import UNCHECKED
from torchshrink.pruning import make_permanent, prune_
from torchshrink.pruning.config import PruneConfig
from torchshrink.quant import QuantConfig, quantize_, snap_floats_
from torchshrink.recipes import codebook, ptq
from torchshrink.recipes.quantize import CodebookConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore:quantize_ left:UserWarning"),  # the tied model's float embedding
    pytest.mark.filterwarnings("ignore:prune_ left:UserWarning"),  # a layer pruned empty: an all-zero tensor
]
SLOW_SECONDS = 2.0  # a case over this fails the test
HANG_SECONDS = 20.0  # a case over this is interrupted and counted as a hang
PEAK_BYTES = 32 << 20  # traced (Python and numpy) memory of one case; the seeds' models are ~30 kB of weights
DELETE = object()


class TiedLM(nn.Module):
    """An unregistered model whose output layer shares the embedding (a file with ``aliases``)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.embed(tokens))))  # (B, T) -> (B, T, 20)


@dataclass(frozen=True)
class Seed:
    """A valid file, split into the parts a mutation changes, and what loading it needs."""

    name: str
    header: dict
    payload: bytes  # as stored
    raw: bytes  # decompressed
    registered: bool  # False: load into a fresh TiedLM
    file: bytes  # as the writer wrote it


def assemble(header: dict, payload: bytes, plain: bool) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()  # NaN / Infinity are written as such
    head = head if plain else zlib.compress(head, 6)
    return b"TSHRINK\x00" + struct.pack("<Q", len(head)) + head + payload


def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[8:16])
    head = blob[16 : 16 + n]
    return json.loads(head if head[:1] == b"{" else zlib.decompress(head)), blob[16 + n :]


def _cnn(sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    if sparsity:
        prune_(model, PruneConfig(sparsity))
        make_permanent(model)
    return model


def snapped(model: nn.Module) -> nn.Module:
    snap_floats_(model)  # biases and centroids that float16 holds exactly: float16 sections
    return model


def make_seeds() -> list[Seed]:
    """Small files covering every encoding: dense / sparse (delta and bitmask), packed / Huffman, uniform and
    codebook, float16 and float32, input quantizers, aliases, and each payload compression."""
    torch.manual_seed(0)
    images = [torch.randn(32, 1, 28, 28)]
    weight_only = QuantConfig(bits=4, quantize_inputs=False)
    lm = quantize_(TiedLM(), QuantConfig(bits=4, quantize_inputs=False), lambda m, name: name == "mix")
    made = {
        "dense4-none": (ptq(_cnn(0), None, weight_only).model, "none", True),
        "delta-zlib": (ptq(_cnn(0.9), None, weight_only).model, "zlib", True),
        "bitmask-lzma": (ptq(_cnn(0.4), None, weight_only).model, "lzma", True),
        "codebook-none": (snapped(codebook(_cnn(0.6), None, CodebookConfig(3), log=None, train=None).model), "none", True),
        "inputs-packed": (ptq(_cnn(0.7), images, QuantConfig(bits=4)).model, "none", True),
        "tied-lzma": (lm, "lzma", False),
    }
    seeds = []
    for name, (model, compression, registered) in made.items():
        entropy = name not in ("inputs-packed", "bitmask-lzma")  # packed gaps never beat a bitmask at 60%
        blob, _ = encode_compressed(model, "cnn_tiny" if registered else None, None, compression, entropy)
        header, payload = split(blob)
        raw = {"none": lambda b: b, "zlib": zlib.decompress, "lzma": lzma.decompress}[compression](payload)
        seeds.append(Seed(name, header, payload, raw, registered, blob))
    return seeds


def _leaves(value: object, path: tuple = ()) -> list[tuple]:
    """Every path into the header (objects, arrays and scalars alike), root excluded."""
    out = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _leaves(item, (*path, i))
    return out


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


BIG = [_nested(400), [1] * 5000, "x" * 100_000, {f"k{i}": i for i in range(2000)}]  # deep, long, wide


def _replacement(rng: random.Random, old: object) -> object:
    choices: list[object] = [*BIG, DELETE, None, True, False, "x", "", [], {}, [old], -1, 0, 1, 2**31, 2**33, 2**63,
                             -(2**63), 10**19, 1e300, -0.5, 0.5, 1e-45, float("nan"), float("inf")]  # fmt: skip
    if isinstance(old, bool):
        choices += [not old, int(old)]
    elif isinstance(old, int):
        choices += [old + 1, old - 1, -old, float(old), str(old), old * 2**20, old + 2**32]
    elif isinstance(old, float):
        choices += [old + 1.0, -old, old * 1e30, round(old) + 0.5, str(old)]
    elif isinstance(old, str):
        choices += [old + "x", old.upper(), old[:-1]]
    return rng.choice(choices)


def _set(header: dict, path: tuple, value: object) -> None:
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


def _structural(rng: random.Random, header: dict) -> str:
    """Change the tensor list as a whole; returns what it did."""
    tensors = header["tensors"]
    i, j = rng.randrange(len(tensors)), rng.randrange(len(tensors))
    kind = rng.choice(["swap sections", "swap one section", "duplicate", "drop", "reorder", "rename", "alias"])
    if kind == "swap sections":
        tensors[i]["sections"], tensors[j]["sections"] = tensors[j]["sections"], tensors[i]["sections"]
    elif kind == "swap one section":
        a, b = tensors[i]["sections"], tensors[j]["sections"]
        ka, kb = rng.choice(list(a)), rng.choice(list(b))
        a[ka], b[kb] = b[kb], a[ka]
    elif kind == "duplicate":
        tensors.insert(j, copy.deepcopy(tensors[i]))
    elif kind == "drop":
        del tensors[i]
    elif kind == "reorder":
        tensors[i], tensors[j] = tensors[j], tensors[i]
    elif kind == "rename":
        tensors[i]["name"] = tensors[j]["name"]
    else:
        header.setdefault("aliases", {})[rng.choice([tensors[i]["name"], "x.weight"])] = tensors[j]["name"]
    return kind


def _reseal(header: dict, raw: bytes, compression: str) -> bytes:
    """Compress ``raw`` again and make the header's sizes and checksum describe it."""
    stored = {"none": raw, "zlib": zlib.compress(raw, 1), "lzma": lzma.compress(raw, preset=0)}[compression]
    header.update(
        payload_bytes=len(stored), raw_payload_bytes=len(raw), payload_sha256=hashlib.sha256(stored).hexdigest()
    )
    return stored


def mutate(seed: Seed, case: int) -> tuple[str, bytes, bool]:
    """Case number ``case`` of ``seed``: what was done, the file bytes, and whether only the payload's
    contents changed (a valid file of another model then: its outputs need not be finite)."""
    rng = random.Random(f"{seed.name}/{case}")
    header, payload = copy.deepcopy(seed.header), seed.payload
    plain = rng.random() < 0.5
    roll = rng.random()
    if roll < 0.5:
        path = rng.choice(_leaves(header))
        value = _replacement(rng, _get(header, path))
        _set(header, path, value)
        return (
            f"set {'.'.join(map(str, path))} = {value if value is not DELETE else 'deleted'!r:.40}",
            assemble(header, payload, plain),
            False,
        )
    if roll < 0.65:
        return _structural(rng, header), assemble(header, payload, plain), False
    if roll < 0.8:
        raw = bytearray(seed.raw)
        what = rng.choice(["flip", "cut", "extend"])
        if what == "flip" and raw:
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        elif what == "cut" and raw:
            del raw[rng.randrange(len(raw)) :]
        else:
            raw += bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
        payload = _reseal(header, bytes(raw), header["compression"])
        return f"payload {what}, resealed", assemble(header, payload, plain), what == "flip"
    blob = bytearray(assemble(header, payload, plain))
    what = rng.choice(["flip", "cut", "extend", "insert"])
    if what == "flip":
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] ^= rng.randint(1, 255)
    elif what == "cut":
        del blob[rng.randrange(len(blob)) :]
    elif what == "extend":
        blob += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        at = rng.randrange(len(blob))
        blob[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return f"bytes {what}", bytes(blob), False


def _get(header: dict, path: tuple) -> object:
    value: object = header
    for key in path:
        value = value[key]  # type: ignore[index]
    return value


@dataclass
class Outcome:
    kind: str  # "refused", "loaded", or a failure: "crash", "nonfinite", "disagree", "generic message"
    seconds: float
    peak: int  # traced bytes
    detail: str = ""


def _load(path: Path, seed: Seed) -> nn.Module:
    return load_compressed(path) if seed.registered else load_compressed(path, model=TiedLM())


def _forward(model: nn.Module, seed: Seed) -> torch.Tensor:
    x = torch.randn(2, 1, 28, 28) if seed.registered else torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        return model(x)


def _run(path: Path, seed: Seed) -> torch.Tensor:
    return _forward(_load(path, seed), seed)


def _xz_dictionary(blob: bytes) -> int | None:
    """The dictionary size an xz payload's LZMA2 filter declares (``None`` if there is no xz stream)."""
    at = blob.find(b"\xfd7zXZ\x00") + 12  # after the stream header: the block header
    if at < 12 or blob[at + 2 : at + 4] != b"\x21\x01" or blob[at + 4] > 39:
        return None
    # block header: size, flags, filter id 0x21 (LZMA2), properties size 1, the dictionary size's code
    code = blob[at + 4]
    return (2 | (code & 1)) << (code // 2 + 11)


class _Hang(BaseException):
    """Raised by the alarm in the case that runs too long (a BaseException: no ``except Exception`` eats it)."""


def _alarm(signum: int, frame: object) -> None:
    raise _Hang


def run_case(path: Path, seed: Seed, blob: bytes, contents_only: bool, trace: bool = True) -> Outcome:
    """Inspect and load one file; classify what happened. Both must agree on refusing it.

    Python and numpy allocations of the reading are traced (numpy reports its buffers to ``tracemalloc``),
    less an xz stream's dictionary (liblzma allocates the size the stream declares, at most the reader's
    ``LZMA_MEMLIMIT``; the writer's preset 9e declares 64 MiB, of which only what the payload fills is ever
    touched). Torch's allocations are not traced; they are bounded by the model, whose shapes the reader
    checks before it decodes (``benchmarks/fuzz.py`` reports the process's peak RSS). A case still running
    after ``HANG_SECONDS`` is interrupted and counted as a hang.
    """
    path.write_bytes(blob)
    if trace:
        tracemalloc.start()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    start = time.perf_counter()
    refused: dict[str, str] = {}  # step -> message
    peak, model = 0, None
    try:
        try:
            inspect_compressed(path)
        except FormatError as exc:
            refused["inspect"] = str(exc)
        try:
            model = _load(path, seed)
        except FormatError as exc:
            refused["load"] = str(exc)
        if trace:  # the reading is done: the forward pass below is torch's, not the reader's
            peak = tracemalloc.get_traced_memory()[1] - (_xz_dictionary(blob) or 0)
            tracemalloc.stop()
        out = None if refused else _forward(model, seed)
    except _Hang:
        return Outcome("hang", time.perf_counter() - start, 0)
    except Exception as exc:  # noqa: BLE001 - any other type is the failure this fuzzer looks for
        return Outcome("crash", time.perf_counter() - start, 0, repr(exc)[:300])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        seconds = time.perf_counter() - start
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    # inspect checks a registered architecture as load does; a model it cannot build (saved unregistered, or
    # under a name this process has not registered) only load can check, and must then refuse
    if len(refused) == 1:
        message = refused.get("load", "")
        unknown = message.startswith(f"{path}: header field model.name is ")
        unfit = not seed.registered and message.startswith(f"{path}: does not fit")
        if not (unknown or unfit):
            step, text = next(iter(refused.items()))
            return Outcome("disagree", seconds, peak, f"only {step} refused: {text}")
    if refused:
        message = next(iter(refused.values()))
        good = message.startswith(f"{path}: ") and "\n" not in message and UNCHECKED not in message
        return Outcome("refused" if good else "generic message", seconds, peak, message)
    finite = bool(torch.isfinite(out).all())  # type: ignore[arg-type]
    return Outcome("loaded" if finite or contents_only else "nonfinite", seconds, peak)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # models of a few thousand weights: a second thread only adds contention (on a busy 2-core machine it
    # made each forward pass 30x slower)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def warm_up(seeds: list[Seed], folder: Path) -> None:
    """Inspect and load every seed once: first calls pay for imports and torch's one-time setup (seconds on a
    busy machine), which is no property of the file a timed case reads."""
    for seed in seeds:
        path = folder / f"{seed.name}.tshrink"
        path.write_bytes(seed.file)
        inspect_compressed(path)
        _run(path, seed)


@pytest.fixture(scope="module")
def seeds(one_thread, tmp_path_factory) -> list[Seed]:
    made = make_seeds()
    warm_up(made, tmp_path_factory.mktemp("seeds"))
    return made


def test_seeds_cover_every_encoding(seeds, tmp_path):
    """The seed files are valid and together use every storage, coding, compression and optional field."""
    used = set()
    for seed in seeds:
        assert run_case(tmp_path / "s.tshrink", seed, seed.file, False).kind == "loaded", seed.name
        used |= {seed.header["compression"], *(["aliases"] if "aliases" in seed.header else [])}
        used |= {a["signed"] and "signed input" or "unsigned input" for a in seed.header["activations"]}
        for t in seed.header["tensors"]:
            used |= {t["encoding"], t.get("storage"), t.get("positions"), t.get("codes_coding"),
                     t.get("positions_coding") if t.get("positions") == "delta" else None,
                     t.get("dtype"), t.get("scale_dtype"), t.get("codebook_dtype")}  # fmt: skip
    assert used >= {"none", "zlib", "lzma", "aliases", "signed input", "unsigned input", "float", "uniform",
                    "codebook", "dense", "sparse", "bitmask", "delta", "packed", "huffman", "float16", "float32"}  # fmt: skip


CASES = 200  # per seed: 1,200 in all (benchmarks/fuzz.py runs the volume)
TRACE_EVERY = 3  # tracing allocations triples a case's cost; benchmarks/fuzz.py traces 10,000 cases


def test_mutated_files_load_or_are_refused_by_name(seeds, tmp_path):
    """Every mutation either loads a model with finite outputs or is refused, by inspect and load alike, with a
    one-line FormatError naming the file; no other exception, no case over 2 s, traced peak under 32 MiB."""
    failures, counts = [], {}
    for seed in seeds:
        for case in range(CASES):
            what, blob, contents_only = mutate(seed, case)
            trace = case % TRACE_EVERY == 0
            outcome = run_case(tmp_path / "m.tshrink", seed, blob, contents_only, trace)
            counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
            if outcome.kind not in ("refused", "loaded"):
                failures.append(f"{seed.name}/{case} {what}: {outcome.kind} {outcome.detail}")
            elif outcome.seconds > SLOW_SECONDS or outcome.peak > PEAK_BYTES:
                failures.append(f"{seed.name}/{case} {what}: {outcome.seconds:.2f} s, {outcome.peak} bytes")
    assert not failures, f"{len(failures)} failures, e.g. {failures[:5]}"
    assert counts["loaded"] > 0.05 * len(seeds) * CASES  # the mutations reach past the header checks
    assert counts["refused"] > 0.5 * len(seeds) * CASES
    assert math.isclose(sum(counts.values()), len(seeds) * CASES)


# The findings a review made before the fuzzer existed, each pinned with the message it now gets.


def _variant(seed: Seed, change=None, raw_change=None) -> bytes:
    header = copy.deepcopy(seed.header)
    payload = seed.payload
    if change is not None:
        change(header)
    if raw_change is not None:
        payload = _reseal(header, raw_change(header, bytearray(seed.raw)), header["compression"])
    return assemble(header, payload, plain=True)


def _first(header: dict, **fields) -> dict:
    return next(t for t in header["tensors"] if all(t.get(k) == v for k, v in fields.items()))


def _scale(value: float):
    def change(header: dict, raw: bytearray) -> bytes:
        span = _first(header, encoding="uniform")["sections"]["scales"]
        raw[span["offset"] : span["offset"] + 4] = struct.pack("<f", value)  # float32 scales in these seeds
        return bytes(raw)

    return change


def _gap(header: dict, raw: bytearray) -> bytes:
    span = header["tensors"][-1]["sections"]["values"]
    raw.insert(span["offset"], 0)  # one byte no section owns
    span["offset"] += 1
    return bytes(raw)


FINDINGS = {  # name: (seed, header change, payload change, words the one-line message must hold)
    "no model": ("dense4-none", lambda h: h.pop("model"), None, "model is missing, expected a JSON object"),
    "model a string": ("dense4-none", lambda h: h.update(model="cnn_tiny"), None, "model is 'cnn_tiny', expected a JSON"),
    "model a number": ("dense4-none", lambda h: h.update(model=3), None, "model is 3, expected a JSON object"),
    "raw size 0": ("delta-zlib", lambda h: h.update(raw_payload_bytes=0), None, "raw_payload_bytes (0)"),
    "version 2.0": ("dense4-none", lambda h: h.update(version=2.0), None, "version is 2.0, expected an integer"),
    "code_offset -256": ("codebook-none", lambda h: _first(h, encoding="codebook").update(code_offset=-256), None,
                         "code_offset is -256, expected 0"),
    "uniform code_offset": ("dense4-none", lambda h: _first(h, encoding="uniform").update(code_offset=-256), None,
                            "code_offset is -256, expected -7 (narrow range) or -8 (full range)"),
    "negative scale": ("dense4-none", None, _scale(-0.5), "scale 0 is -0.5, expected a positive finite number"),
    "NaN scale": ("dense4-none", None, _scale(float("nan")), "scale 0 is nan, expected a positive finite"),
    "NaN zero point": ("inputs-packed", lambda h: h["activations"][0].update(zero_point=float("nan")), None,
                       "header holds NaN, which is not JSON"),
    "fractional zero point": ("inputs-packed", lambda h: h["activations"][0].update(zero_point=2.5), None,
                              "zero_point is 2.5, expected an integer in [-128, 127]"),
    "overlap": ("dense4-none", lambda h: h["tensors"][1]["sections"]["values"].update(offset=0), None,
                "'features.conv1.bias'.sections.values"),
    "gap": ("dense4-none", None, _gap, "leaves a gap"),
    "same tensor twice": ("dense4-none", lambda h: h["tensors"].append(h["tensors"][0]), None,
                          "expected a name no other entry has"),
    "nonzeros off by one": ("delta-zlib", lambda h: _first(h, storage="sparse", codes_coding="huffman").update(
        nonzeros=_first(h, storage="sparse", codes_coding="huffman")["nonzeros"] - 1), None, "but nonzeros is"),
    "2**33 gaps": ("delta-zlib", lambda h: _first(h, positions="delta").update(gap_count=2**33), None,
                   "gap_count is 8589934592, expected an integer in"),
    "2 GiB raw payload": ("bitmask-lzma", lambda h: h.update(raw_payload_bytes=2**31), None,
                          "raw_payload_bytes is 2147483648, expected an integer in [0, 1073741824]"),
    "1300-stage args": ("dense4-none", lambda h: h["model"].update(args={"channels": [1] * 1300}), None,
                        "constructor arguments of at most 64 values"),  # took 21 s to build on the meta device
    "extra section": ("dense4-none", lambda h: h["tensors"][0]["sections"].update(x={"offset": 0, "length": 0}),
                      None, "expected exactly the sections"),
}  # fmt: skip


@pytest.mark.parametrize("finding", list(FINDINGS))
def test_each_finding_is_refused_naming_the_field(seeds, tmp_path, finding):
    """inspect and load refuse at once, in one line naming the file, the field and what was expected."""
    seed_name, change, raw_change, words = FINDINGS[finding]
    seed = next(s for s in seeds if s.name == seed_name)
    path = tmp_path / "bad.tshrink"
    path.write_bytes(_variant(seed, change, raw_change))
    for read in (inspect_compressed, lambda p: _run(p, seed)):
        start = time.perf_counter()
        with pytest.raises(FormatError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and words in message and "\n" not in message, message
        assert time.perf_counter() - start < SLOW_SECONDS


def _zlib_of_zeros(size: int) -> bytes:
    z, chunk = zlib.compressobj(1), bytes(1 << 20)
    return b"".join(z.compress(chunk) for _ in range(size >> 20)) + z.flush()


@pytest.mark.parametrize("bomb", ["header length", "header", "zlib payload", "lzma payload"])
def test_size_bombs_are_refused_before_they_cost(seeds, tmp_path, bomb):
    """Declared and actual sizes past what the file and model allow cost neither time nor memory."""
    seed = next(s for s in seeds if s.name == "delta-zlib")
    header = copy.deepcopy(seed.header)
    if bomb == "header length":  # 16 MiB declared over a short file
        blob = b"TSHRINK\x00" + struct.pack("<Q", 16 << 20) + b"{}"
    elif bomb == "header":  # a zlib header that inflates to 256 MiB
        head = _zlib_of_zeros(256 << 20)
        blob = b"TSHRINK\x00" + struct.pack("<Q", len(head)) + head
    else:  # a payload that inflates far past the raw_payload_bytes the model allows
        stored = _zlib_of_zeros(256 << 20) if bomb == "zlib payload" else lzma.compress(bytes(64 << 20), preset=0)
        header.update(compression=bomb.split()[0], payload_bytes=len(stored),
                      payload_sha256=hashlib.sha256(stored).hexdigest())  # fmt: skip
        blob = assemble(header, stored, plain=False)
    path = tmp_path / "bomb.tshrink"
    path.write_bytes(blob)
    outcome = run_case(path, seed, blob, False)
    assert outcome.kind == "refused", outcome
    assert outcome.seconds < SLOW_SECONDS and outcome.peak < PEAK_BYTES, outcome
    assert any(w in outcome.detail for w in ("truncated", "inflates past", "neither JSON")), outcome.detail


def test_old_float_zero_points_still_load_and_new_files_write_integers(seeds, tmp_path):
    seed = next(s for s in seeds if s.name == "inputs-packed")
    assert all(type(a["zero_point"]) is int for a in seed.header["activations"])
    assert any(a["zero_point"] != 0 for a in seed.header["activations"])  # the first layer's signed input
    new, old = tmp_path / "new.tshrink", tmp_path / "old.tshrink"
    new.write_bytes(seed.file)
    old.write_bytes(_variant(seed, lambda h: [a.update(zero_point=float(a["zero_point"])) for a in h["activations"]]))
    outputs = []
    for path in (new, old):
        torch.manual_seed(1)  # the same sample input
        outputs.append(_run(path, seed))
    assert torch.equal(*outputs)


def test_bitmask_positions_need_no_gap_fields(seeds, tmp_path):
    """Fields only delta positions use (gap_bits, gap_count) may be left out of a bitmask entry."""
    seed = next(s for s in seeds if s.name == "bitmask-lzma")

    def strip(header: dict) -> None:
        for t in header["tensors"]:
            if t.get("positions") == "bitmask":
                del t["gap_bits"], t["gap_count"], t["positions_coding"]

    assert any(t.get("positions") == "bitmask" for t in seed.header["tensors"])
    full, bare = tmp_path / "full.tshrink", tmp_path / "bare.tshrink"
    full.write_bytes(seed.file)
    bare.write_bytes(_variant(seed, strip))
    a, b = load_compressed(full).state_dict(), load_compressed(bare).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
