"""Fuzzing the three loaders: a mutated checkpoint, data file or study config either loads correctly or is
refused with its area's error, one line naming the file; never another exception, a hang or a big allocation.

The cases are generated here from a seed, so a failure is reproduced by its seed and number;
``benchmarks/fuzz_inputs.py`` runs the same generators for ~100k cases and reports the figures.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import resource
import signal
import struct
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import yaml

from torchshrink.checkpoint import META, WEIGHTS, load_checkpoint, save_checkpoint
from torchshrink.data import FILES, read_idx
from torchshrink.data.fashion_mnist import idx_bytes
from torchshrink.errors import CheckpointError, ConfigError, DataError
from torchshrink.models import build_model
from torchshrink.study import StudyConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SLOW_S = 2.0  # a case slower than this fails
HANG_S = 10.0  # a case still running after this is interrupted and counted as a hang
MEMORY_MIB = 512  # a case may raise the peak RSS by this much (a valid 47 MB training-images file takes ~200)
ERRORS = {"checkpoint": CheckpointError, "data": DataError, "config": ConfigError}
BIG, DEEP = "\x00BIG", "\x00DEEP"  # placeholders for what json/yaml cannot write: 5000 digits, 5000 levels
NASTY: list[Any] = [
    None, True, False, 0, -1, 1, 3, 2**31, -(2**40), 2**63, 1.5, -0.0, float("nan"), float("inf"),
    float("-inf"), "", "cnn", "x" * 10_000, [], [1, 2], [[[[]]]], {}, {"a": 1}, BIG, DEEP,
]  # fmt: skip
ARGS: list[Any] = [
    0, -1, -(2**31), 2**31 - 1, 2**31, 10**9, 2**20, 3, 7, [4, 8, 16], [4, [8, 8], 16], [10**6, 10**6], [-4],
    [2**31 - 1] * 3, [4] * 64, [4] * 2000, [[4] * 300], "abc", None, 1.5, float("nan"), True, {}, BIG, DEEP,
]  # fmt: skip


@dataclass
class Case:
    """One input: the files to write (name -> bytes) and how to load them."""

    area: str  # "checkpoint", "data" or "config"
    op: str  # the mutation, for the tally
    files: dict[str, bytes]
    verify: bool = False  # data: check the SHA-256 (real files) or not (synthetic ones)


@dataclass
class Tally:
    """Outcomes of a fuzz run."""

    cases: int = 0
    loaded: int = 0
    refused: int = 0
    warned: int = 0
    crashes: list[str] = field(default_factory=list)  # any other exception, or a load that is not correct
    unclear: list[str] = field(default_factory=list)  # the right error type, but not one line naming the file
    slow: list[str] = field(default_factory=list)
    memory: list[str] = field(default_factory=list)  # cases that raised the peak RSS by over MEMORY_MIB
    hangs: list[str] = field(default_factory=list)
    ops: Counter[str] = field(default_factory=Counter)
    max_seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        return self.crashes + self.unclear + self.slow + self.hangs + self.memory


class _Hang(BaseException):  # a BaseException, so no `except Exception` in the code under test swallows it
    pass


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _text(obj: Any) -> str:
    """JSON, with the placeholders expanded into what json.dumps cannot write."""
    text = json.dumps(obj)
    return text.replace(json.dumps(BIG), "1" + "0" * 5000).replace(json.dumps(DEEP), "[" * 5000 + "]" * 5000)


def _yaml(obj: Any) -> str:
    text = yaml.safe_dump(obj, sort_keys=False, width=10**6)
    return text.replace(yaml.safe_dump(BIG).split("\n")[0], "1" + "0" * 5000).replace(
        yaml.safe_dump(DEEP).split("\n")[0], "[" * 5000 + "]" * 5000
    )


def _flip(rng: random.Random, data: bytes, count: int = 1) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=1, mtime=0)


def _bomb(size: int) -> bytes:
    """A gzip file that inflates to ``size`` zero bytes (about 1,000 times its own size), made in milliseconds.

    After a full flush the compressor starts afresh, so every further MiB of zeros compresses to the same
    bytes: those are repeated. The trailer's checksum covers two MiB only; a loader that stops at its size
    bound never reaches it, and one that inflates everything has already paid for the bomb when it does.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    first = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    return first + again * (size // len(chunk) - 1) + packer.flush()


# --- bases: valid inputs that the mutations start from --------------------------------------------------------


@dataclass
class Bases:
    checkpoints: list[dict[str, bytes]]  # META and WEIGHTS contents of valid checkpoints
    idx: dict[str, bytes]  # name -> valid-looking synthetic IDX content (decompressed)
    idx_gz: dict[str, bytes]  # the same, compressed
    real: dict[str, bytes]  # name -> the real .gz (the small test labels only: cheap to mutate)
    bombs: list[bytes]
    configs: list[dict[str, Any]]


def make_bases(folder: Path, data_dir: Path, bomb_bytes: int = 1 << 30) -> Bases:
    torch.manual_seed(0)
    checkpoints = []
    for i, args in enumerate([{}, {"channels": [4, 8, 16], "hidden": 32}, {"channels": [4, [8, 8]], "hidden": 0}]):
        ckpt = save_checkpoint(folder / f"ckpt{i}", build_model("cnn_tiny", **args), "cnn_tiny", args,
                               metrics={"test_accuracy": 0.5})  # fmt: skip
        checkpoints.append({META: (ckpt / META).read_bytes(), WEIGHTS: (ckpt / WEIGHTS).read_bytes()})
    rng = random.Random(0)
    idx = {}
    for name, (_, magic, count) in FILES.items():
        if magic == 2051:  # mostly zero pixels: compresses and decompresses in milliseconds
            body = bytes(rng.randrange(256) for _ in range(4096)) + bytes(28 * 28 * count - 4096)
            idx[name] = struct.pack(">IIII", magic, count, 28, 28) + body
        else:
            idx[name] = struct.pack(">II", magic, count) + bytes(rng.randrange(10) for _ in range(count))
    real = {"t10k-labels-idx1-ubyte.gz": (data_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()}
    docs = yaml.safe_load((ROOT / "docs" / "study.yaml").read_text())
    tiny = {"baseline": {"model": "cnn_tiny", "epochs": 1}, "iterative": {"targets": [0.4, 0.8]},
            "combined": {"points": [{"sparsity": 0.4, "bits": 8, "act_bits": 8, "role": "student"}]}}  # fmt: skip
    return Bases(checkpoints, idx, {k: _gz(v) for k, v in idx.items()}, real, [_bomb(bomb_bytes)], [docs, tiny])


# --- the mutations --------------------------------------------------------------------------------------------


def checkpoint_case(rng: random.Random, bases: Bases) -> Case:
    base = rng.choice(bases.checkpoints)
    meta, weights = json.loads(base[META]), base[WEIGHTS]
    op = rng.choice(["drop", "set", "arg", "model", "meta-text", "swap", "header-length", "header", "data", "bytes"])
    meta_text = _text(meta)
    if op == "drop":
        meta.pop(rng.choice(list(meta)))
        meta_text = _text(meta)
    elif op == "set":
        meta[rng.choice([*meta, "extra"])] = rng.choice(NASTY)
        meta_text = _text(meta)
    elif op == "arg":
        args = meta["model_args"] if isinstance(meta.get("model_args"), dict) else {}
        for _ in range(rng.randint(1, 3)):
            args[rng.choice(["channels", "hidden", "num_classes", "in_channels", "bogus"])] = rng.choice(ARGS)
        meta["model_args"] = args
        meta_text = _text(meta)
    elif op == "model":
        meta["model"] = rng.choice(["cnn", "mlp", "cnn_tiny", ["cnn"], {"a": 1}, 5, None, "x" * 5000, "CNN", BIG])
        meta_text = _text(meta)
    elif op == "meta-text":
        meta_text = _mutate_text(rng, meta_text)
    elif op == "swap":  # the JSON of one checkpoint with the weights of another
        weights = rng.choice(bases.checkpoints)[WEIGHTS]
    elif op == "header-length":
        (n,) = struct.unpack("<Q", weights[:8])
        new = rng.choice([0, 1, 7, n - 1, n + 1, len(weights), 2**63, 2**64 - 1, rng.randrange(2**64)])
        weights = struct.pack("<Q", new) + weights[8:]
    elif op == "header":
        weights = _mutate_header(rng, weights)
    elif op == "data":
        weights = _mutate_data(rng, weights)
    else:
        weights = (
            _flip(rng, weights, rng.randint(1, 8)) if rng.random() < 0.7 else weights[: rng.randrange(len(weights))]
        )
    data = meta_text.encode("utf-8", "surrogatepass") if isinstance(meta_text, str) else meta_text
    return Case("checkpoint", op, {META: data, WEIGHTS: weights})


def _mutate_text(rng: random.Random, text: str) -> bytes:
    data = text.encode()
    kind = rng.randrange(8)
    if kind == 0:
        return data[: rng.randrange(len(data))]
    if kind == 1:
        return _flip(rng, data, rng.randint(1, 4))
    if kind == 2:  # a number of 5000 digits in place of the first one
        i = next((i for i, c in enumerate(text) if c.isdigit()), 0)
        return (text[:i] + "9" * 5000 + text[i:]).encode()
    if kind == 3:
        return (("[" * 5000) + text + ("]" * 5000)).encode()
    if kind == 4:
        i = rng.randrange(len(data))
        return data[:i] + b"\xff\xfe" + data[i:]
    if kind == 5:  # a key twice
        return data[:-1] + b', "format": "torchshrink-checkpoint"}'
    if kind == 6:
        return data + b" " * rng.choice([10, 2 << 20])
    return text.replace("torchshrink-checkpoint", rng.choice(["", "torchshrink", "x" * 300])).encode()


def _split(weights: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", weights[:8])
    return json.loads(weights[8 : 8 + n]), weights[8 + n :]


def _join(header: Any, data: bytes) -> bytes:
    text = _text(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _mutate_header(rng: random.Random, weights: bytes) -> bytes:
    header, data = _split(weights)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    kind = rng.randrange(9)
    if kind == 0:
        entry["dtype"] = rng.choice(["F64", "F16", "BF16", "I32", "I64", "U8", "BOOL", "F8_E4M3", "U64", "XX", 3, None])
    elif kind == 1:
        entry["shape"] = rng.choice([[], [-1], [2**40, 2**40], [1.5], [0], [1] * 40, "x", None, BIG,
                                     [*entry["shape"], 1], entry["shape"][::-1]])  # fmt: skip
    elif kind == 2:
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[end, begin], [begin, end + 4], [begin - 4, end - 4], [-1, end],
                                            [0, 2**70], [begin], "x", [begin, end, 0], [0, end - begin]])  # fmt: skip
    elif kind == 3:
        del header[name]
    elif kind == 4:
        header["extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
        data += bytes(4)
    elif kind == 5:
        header[name + "x"] = header.pop(name)
    elif kind == 6:
        header["__metadata__"] = rng.choice([{"format": 3}, [], "x", {"a": "b"}, {"a": DEEP}])
    elif kind == 7:
        entry[rng.choice(["dtype", "shape", "data_offsets", "extra"])] = rng.choice(NASTY)
    else:
        return _join(rng.choice([[], "x", 3, None, {"a": DEEP}]), data)
    return _join(header, data)


def _mutate_data(rng: random.Random, weights: bytes) -> bytes:
    """Values, not structure: NaN, inf, zeros or random bits in one float tensor."""
    header, data = _split(weights)
    name = rng.choice([k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"])
    begin, end = header[name]["data_offsets"]
    out = bytearray(data)
    value = rng.choice(["nan", "inf", "-inf", "zeros", "bits"])
    if value == "zeros":
        out[begin:end] = bytes(end - begin)
    elif value == "bits":
        out[begin:end] = _flip(rng, bytes(out[begin:end]), 16)
    else:
        at = begin + 4 * rng.randrange((end - begin) // 4)
        out[at : at + 4] = struct.pack("<f", float(value))
    return weights[: len(weights) - len(data)] + bytes(out)


def data_case(rng: random.Random, bases: Bases) -> Case:
    # the small files most of the time: each image case inflates 7.8 MB (47 MB for the training images)
    names = list(FILES)
    name = rng.choices(names, weights=[1, 8, 3, 12])[0]
    raw, gz = bases.idx[name], bases.idx_gz[name]
    op = rng.choice(["truncate", "append", "magic", "count", "size", "label", "swap", "gz-truncate", "gz-flip",
                     "gz-append", "bomb", "members", "not-gzip", "empty", "real", "valid"])  # fmt: skip
    image = FILES[name][1] == 2051
    if op == "truncate":
        gz = _gz(raw[: rng.choice([0, 4, 8, 12, 15, 16, rng.randrange(len(raw))])])
    elif op == "append":
        gz = _gz(raw + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))))
    elif op == "magic":
        gz = _gz(struct.pack(">I", rng.choice([0, 2049, 2051, 2052, 2**32 - 1, rng.randrange(2**32)])) + raw[4:])
    elif op == "count":
        count = FILES[name][2]
        gz = _gz(
            raw[:4] + struct.pack(">I", rng.choice([0, 1, count - 1, count + 1, 60000, 10000, 2**32 - 1])) + raw[8:]
        )
    elif op == "size" and image:
        rows, cols = rng.choice([(0, 0), (28, 27), (2**31, 2), (1, 784), (2**32 - 1, 2**32 - 1)])
        gz = _gz(raw[:8] + struct.pack(">II", rows, cols) + raw[16:])
    elif op == "label" and not image:
        at = 8 + rng.randrange(len(raw) - 8)
        gz = _gz(raw[:at] + bytes([rng.randint(10, 255)]) + raw[at + 1 :])
    elif op == "swap":  # the other kind of content under this name
        other = [n for n in ("t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz") if FILES[n][1] != FILES[name][1]]
        gz = bases.idx_gz[other[0]]
    elif op == "gz-truncate":
        gz = gz[: rng.randrange(len(gz))]
    elif op == "gz-flip":
        gz = _flip(rng, gz, rng.randint(1, 4))
    elif op == "gz-append":
        gz += rng.choice([b"\0" * 16, b"garbage", _gz(b"x"), gz[:20]])
    elif op == "bomb":
        gz = rng.choice(bases.bombs)
    elif op == "members":  # many empty gzip members, or the file split in two
        gz = _gz(b"") * rng.choice([2, 100, 5000]) + gz if rng.random() < 0.5 else _gz(raw[:100]) + _gz(raw[100:])
    elif op == "not-gzip":
        gz = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
    elif op == "empty":
        gz = b""
    elif op == "real":
        real_name = "t10k-labels-idx1-ubyte.gz"
        real = bases.real[real_name]
        body = gzip.decompress(real)
        mutated = rng.choice([real, _gz(body), _gz(_flip(rng, body)), _gz(body[:-1]), _flip(rng, real)])
        return Case("data", op, {real_name: mutated}, verify=True)
    return Case("data", op, {name: gz})


def config_case(rng: random.Random, bases: Bases) -> Case:
    cfg = json.loads(json.dumps(rng.choice(bases.configs)))  # a deep copy
    op = rng.choice(["set", "drop", "add", "points", "text", "inject"])
    if op in ("set", "drop"):
        section = rng.choice(list(cfg))
        target, key = (cfg, section)
        if isinstance(cfg[section], dict) and cfg[section] and rng.random() < 0.8:
            target, key = cfg[section], rng.choice(list(cfg[section]))
            points = target.get("points") if key == "points" else None
            if points and rng.random() < 0.7:
                target = rng.choice(points)
                key = rng.choice([*target, "role", "label"])
        if op == "set":
            target[key] = rng.choice([*NASTY, "student", "teacher", [0.1] * 100, 1e308, -1e-308, 10**20])
        else:
            target.pop(key, None)
    elif op == "add":
        where = cfg if rng.random() < 0.5 else cfg[rng.choice(list(cfg))]
        if isinstance(where, dict):
            where[rng.choice(["unknown", 1, 2.5, True, None, "x" * 200])] = 1
    elif op == "points":
        combined = cfg.setdefault("combined", {})
        points = combined.get("points") or [{"sparsity": 0.4, "bits": 8, "act_bits": 8}]
        combined["points"] = rng.choice([[], points + points, [{**points[0], "role": "student"}] * 2,
                                         [{"bits": 8}], [{**points[0], "role": "teacher"}], points[:1], "x"])  # fmt: skip
    text = _yaml(cfg)
    if op == "text":
        data = text.encode()
        data = rng.choice([data[: rng.randrange(len(data) + 1)], _flip(rng, data, rng.randint(1, 4)),
                           data + b"\t\x00", b"\xef\xbb\xbf" + data, data + b" " * (2 << 20)])  # fmt: skip
        return Case("config", op, {"study.yaml": data})
    if op == "inject":
        text = rng.choice(_INJECTIONS)
    return Case("config", op, {"study.yaml": text.encode("utf-8", "surrogateescape")})


_LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)
_INJECTIONS = [
    _LAUGHS + "seed: *i\n",
    _LAUGHS,
    "seed: &s 3\nbaseline: {epochs: *s}\n",
    "base: &b {epochs: 1}\nbaseline:\n  <<: *b\n",
    "seed: 1" + "0" * 5000 + "\n",
    "seed: " + "[" * 5000 + "]" * 5000 + "\n",
    "seed:\n" + "".join("  " * i + "- \n" for i in range(1, 200)),
    "\udcff\udcfe: 1\n",
    "{1: 2, seed: 0}\n",
    "baseline: {1.5: 2}\n",
    "seed: 2001-13-01\n",
    "seed: !!python/object:os.system x\n",
    "seed: !!binary '***'\n",
    "baseline: {lr: .inf}\n",
    "gradual: {temperature: .nan}\n",
    "combined: {points: []}\n",
    "x" * 3000 + ": 1\n",
    "baseline: {model: " + "x" * 3000 + "}\n",
    "oneshot: {sparsities: [" + ", ".join(["0.5"] * 1000) + "]}\n",
    "- 1\n- 2\n",
    "seed: 0x" + "f" * 40 + "\n",
    "seed: 1_000_000_000_000_000_000_000_000_000_000_000\n",
]


GENERATORS: dict[str, Callable[[random.Random, Bases], Case]] = {
    "checkpoint": checkpoint_case,
    "data": data_case,
    "config": config_case,
}


# --- running a case -------------------------------------------------------------------------------------------


def _load(case: Case, folder: Path) -> str | None:
    """Load the case's files; return None when what came back is correct, else what is wrong with it."""
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    if case.area == "checkpoint":
        loaded = load_checkpoint(folder)
        on_disk = safetensors.torch.load_file(str(folder / WEIGHTS))
        state = loaded.model.state_dict()
        if set(state) != set(on_disk) or not all(torch.equal(state[k], on_disk[k]) for k in state):
            return "the loaded model differs from the file"
        return None
    if case.area == "data":
        (name,) = case.files
        data = read_idx(folder / name, verify=case.verify)
        magic, count = FILES[name][1:]
        shape = (count, 28, 28) if magic == 2051 else (count,)
        raw = gzip.decompress(case.files[name])
        if tuple(data.shape) != shape or len(raw) != idx_bytes(name) or raw[-1] != int(data.flatten()[-1]):
            return f"read_idx returned {tuple(data.shape)} from {len(raw)} bytes"
        return None
    cfg = load_config(folder / "study.yaml")
    return None if isinstance(cfg, StudyConfig) else f"load_config returned {type(cfg).__name__}"


def run_case(case: Case, folder: Path, tally: Tally, label: str) -> None:
    """Run one case and add its outcome to ``tally``; ``label`` names it in failure lists."""
    tally.cases += 1
    tally.ops[f"{case.area}:{case.op}"] += 1
    peak_before = peak_rss_mib()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught, _deadline(HANG_S):
            warnings.simplefilter("always")
            wrong = _load(case, folder)
        if wrong:
            tally.crashes.append(f"{label} [{case.op}]: {wrong}")
        else:
            tally.loaded += 1
            tally.warned += bool(caught)
    except _Hang:
        tally.hangs.append(f"{label} [{case.op}]: still running after {HANG_S:.0f} s")
    except ERRORS[case.area] as exc:
        tally.refused += 1
        message = str(exc)
        named = any(name in message for name in case.files) or str(folder) in message
        if not named or "\n" in message or len(message) > 1000:
            tally.unclear.append(f"{label} [{case.op}]: {message[:300]!r}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - anything else is exactly what the fuzzer looks for
        tally.crashes.append(f"{label} [{case.op}]: {type(exc).__name__}: {str(exc)[:300]}")
    seconds = time.perf_counter() - t0
    tally.max_seconds = max(tally.max_seconds, seconds)
    if seconds > SLOW_S:
        tally.slow.append(f"{label} [{case.op}]: {seconds:.1f} s")
    grown = peak_rss_mib() - peak_before
    if grown > MEMORY_MIB:
        tally.memory.append(f"{label} [{case.op}]: peak RSS rose by {grown:.0f} MiB")


def fuzz(area: str, cases: int, seed: int, bases: Bases, folder: Path) -> Tally:
    """Run ``cases`` generated cases of one area; case ``i`` is reproducible from ``(seed, i)``."""
    tally = Tally()
    for i in range(cases):
        rng = random.Random(f"{area}-{seed}-{i}")
        run_case(GENERATORS[area](rng, bases), folder, tally, f"{area} seed {seed} case {i}")
    return tally


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the tests ------------------------------------------------------------------------------------------------

OPS = {"checkpoint": 10, "data": 16, "config": 6}  # mutations each generator draws from


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory, data_dir: str) -> Bases:
    return make_bases(tmp_path_factory.mktemp("fuzz-bases"), Path(data_dir))


@pytest.mark.parametrize("area, cases", [("checkpoint", 400), ("data", 200), ("config", 400)])
def test_fuzzed_inputs_load_correctly_or_fail_with_one_clear_error(bases, tmp_path, area, cases):
    """Every mutated input loads correctly or raises its area's error naming the file: no other exception,
    no case over 2 s, and none that raises the peak memory by more than 512 MiB (the 1 GiB bomb would)."""
    tally = fuzz(area, cases, seed=0, bases=bases, folder=tmp_path)
    assert tally.failures == [], "\n".join(tally.failures[:20])
    assert tally.loaded > 0 and tally.refused > 0  # the mutations reach both outcomes
    assert len(tally.ops) == OPS[area], sorted(tally.ops)  # and every mutation was drawn
