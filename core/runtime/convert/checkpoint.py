"""Read OpenCLIP-format checkpoints into numpy, without PyTorch and without running pickle code.

Formats (recognised by content, not by file name):

- PyTorch zip archives (``torch.save`` since 1.6; ``.pt``, ``.pth``, ``.bin``): ``ARCHIVE/data.pkl``
  describes the objects, ``ARCHIVE/data/<key>`` holds each storage's raw bytes;
- the legacy PyTorch format (``_use_new_zipfile_serialization=False``): a magic number, the pickled
  objects, then every storage's bytes, one after the other;
- safetensors: 8-byte header length, a JSON header, raw data.

The pickles are read by ``StateDictUnpickler``: it resolves only the few globals a state dict needs
(the tensor and parameter rebuilders, ``collections.OrderedDict`` and the storage types) and refuses
every other one (``os.system``, ``builtins.exec``...) before anything runs, naming it. Rebuilt
tensors are plain records checked against their storage's bounds; the bytes are then viewed through
a read-only memory map, so a 1.7 GB checkpoint is not copied into memory first. Floating point
tensors (fp32, fp16, bf16, fp64) come out as float32, integer tensors keep their type.
"""

from __future__ import annotations

import _compat_pickle
import json
import mmap
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...errors import ModelError, RemoteClipError, SourceUnreadable

# PyTorch storage class name -> (numpy dtype of the raw bytes (little-endian), element size)
STORAGE_TYPES = {
    "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16", "DoubleStorage": "f8",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "b1",
}
SAFETENSORS_TYPES = {"F32": "f4", "F16": "f2", "BF16": "bf16", "F64": "f8", "I64": "i8", "I32": "i4",
                     "I16": "i2", "I8": "i1", "U8": "u1", "BOOL": "b1"}
LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")

_FIX_FORMAT = ("Pass an OpenCLIP-format checkpoint: a state dict saved with torch.save (.pt/.bin) or a "
               ".safetensors file, e.g. RemoteCLIP-ViT-B-32.pt from Hugging Face chendelong/RemoteCLIP.")


def _raw_dtype(code: str, big_endian: bool = False) -> np.dtype:
    if code == "bf16":
        code = "u2"  # bfloat16 is the top half of a float32: read the bits, widen later
    if code in ("b1", "i1", "u1"):
        return np.dtype({"b1": "?", "i1": "i1", "u1": "u1"}[code])
    return np.dtype((">" if big_endian else "<") + code)


def to_numpy(raw: np.ndarray, code: str) -> np.ndarray:
    """Raw storage elements -> the array handed out: float32 for every float type, integers as they are."""
    if code == "bf16":
        bits = raw.astype(np.uint32).reshape(-1) << 16  # 1-d: a 0-d array cannot change its item size
        return bits.view(np.float32).reshape(raw.shape)
    if raw.dtype.kind == "f":
        if raw.dtype == np.float32 and raw.dtype.isnative and raw.flags.c_contiguous:
            return raw  # a read-only view into the memory map: no copy
        return raw.astype(np.float32, order="C")
    return raw.astype(raw.dtype.newbyteorder("="), order="C")


# --- the restricted unpickler -----------------------------------------------------------------------------

class _StorageType:
    """Stands for ``torch.FloatStorage`` and friends inside a pickle; not callable, carries no code."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class Storage:
    """One storage of a checkpoint: its key, element type and length; ``array`` is filled after the pickle."""

    __slots__ = ("key", "code", "numel", "array")

    def __init__(self, key: str, code: str, numel: int):
        self.key, self.code, self.numel, self.array = key, code, numel, None


class TensorRef:
    """A tensor as the pickle describes it: a strided window into a Storage (checked, not yet read)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size

    def materialise(self) -> np.ndarray:
        base = self.storage.array
        itemsize = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size,
                                               strides=[s * itemsize for s in self.stride], writeable=False)
        return to_numpy(view, self.storage.code)


def _is_int(v) -> bool:
    return type(v) is int


def _check_tensor_args(storage, offset, size, stride) -> None:
    ok = (isinstance(storage, Storage) and _is_int(offset) and offset >= 0
          and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
          and all(_is_int(s) and s >= 0 for s in size + stride))
    if not ok:
        raise ValueError("malformed tensor record")
    if all(size):  # an empty tensor reads nothing
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.numel:
            raise ValueError(f"tensor of size {size} at offset {offset} reaches past its storage "
                             f"of {storage.numel} elements")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    _check_tensor_args(storage, storage_offset, size, stride)
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, TensorRef):
        raise ValueError("malformed parameter record")
    return data


# module, name -> what the pickle gets instead; everything else is refused
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}


class StateDictUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that builds only what a state dict is made of.

    ``find_class`` is where every global a pickle names is looked up, whichever opcode names it
    (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*); unknown names raise before anything is called.
    ``storages(pid)`` turns a persistent id into a Storage (None: no persistent ids allowed)."""

    def __init__(self, file, source: str, storages=None):
        super().__init__(file)
        self._source = source
        self._storages = storages

    def find_class(self, module, name):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in STORAGE_TYPES:
            return _StorageType(name)
        # protocol 2 pickles spell some modules the Python 2 way (__builtin__): name the real one
        module, name = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        raise ModelError(
            f"Checkpoint {self._source} refused: loading it would call {module}.{name}, which a model state "
            "dict never needs (a checkpoint can run code when it is unpickled; nothing was run).",
            "Use the original checkpoint from its publisher (e.g. Hugging Face chendelong/RemoteCLIP), or "
            "re-save only the weights: torch.save(model.state_dict(), path) or a .safetensors file.", path=self._source)

    def persistent_load(self, pid):
        if self._storages is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        return self._storages(pid)


def _storage_from_pid(pid, cache: dict, legacy: bool) -> Storage:
    n = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == n and pid[0] == "storage"):
        kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
        raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
    storage_type, key, _location, numel = pid[1:5]
    if legacy and pid[5] is not None:
        raise ModelError("This legacy-format checkpoint stores tensor views of shared storages "
                              "(written by PyTorch before 1.0); that layout is not read here.",
                              "Re-save the state dict with a current PyTorch (torch.save) or as .safetensors.")
    if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
        raise pickle.UnpicklingError("malformed storage record")
    code = STORAGE_TYPES[storage_type.name]
    old = cache.get(key)
    if old is None:
        cache[key] = old = Storage(key, code, numel)
    elif old.code != code or old.numel != numel:
        raise pickle.UnpicklingError(f"storage {key} is described twice, differently")
    return old


def _unpickle(file, source: str, storages=None):
    try:
        return StateDictUnpickler(file, source, storages).load()
    except RemoteClipError:
        raise
    except Exception as e:  # any malformed pickle or record ends the same way for the user
        raise ModelError(f"Checkpoint {source} is damaged or not a PyTorch state dict "
                              f"({type(e).__name__}: {str(e)[:200]}).", _FIX_FORMAT, path=source) from e


# --- file formats -----------------------------------------------------------------------------------------

def _map(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _zip_member_offset(mm, info: zipfile.ZipInfo, source: str) -> int:
    """Where a stored (uncompressed) member's bytes start: after its local header."""
    head = mm[info.header_offset:info.header_offset + 30]
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise ModelError(f"Checkpoint {source} is damaged (bad zip entry {info.filename}).",
                              "Download the file again and compare its sha256.", path=source)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > len(mm):
        raise ModelError(f"Checkpoint {source} is truncated ({info.filename} ends past the file).",
                              "Download the file again and compare its sha256.", path=source)
    return start


def _read_torch_zip(path: Path, source: str):
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkls = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in infos):
            raise ModelError(
                f"Checkpoint {source} is a TorchScript model (like OpenAI's original CLIP files), not a state dict.",
                "Load it with PyTorch and save its weights: torch.save(model.state_dict(), path); RemoteCLIP's "
                "own files (chendelong/RemoteCLIP) are state dicts already.", path=source)
        if len(pkls) != 1:
            raise ModelError(f"{source} is a zip archive but not a PyTorch checkpoint (no data.pkl).",
                                  _FIX_FORMAT, path=source)
        prefix = pkls[0][: -len("data.pkl")]
        order = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in infos else "little"
        if order not in ("little", "big"):
            raise ModelError(f"Checkpoint {source} declares byte order {order!r}.", _FIX_FORMAT, path=source)
        cache: dict = {}
        with zf.open(pkls[0]) as f:
            obj = _unpickle(f, source, lambda pid: _storage_from_pid(pid, cache, legacy=False))

    mm = None
    for key, st in cache.items():
        info = infos.get(f"{prefix}data/{key}")
        dtype = _raw_dtype(st.code, big_endian=order == "big")
        if info is None or info.file_size < st.numel * dtype.itemsize:
            raise ModelError(f"Checkpoint {source} is damaged: storage {key} is missing or short.",
                                  "Download the file again and compare its sha256.", path=source)
        if info.compress_type == zipfile.ZIP_STORED:  # what torch.save writes: view the bytes in place
            mm = mm or _map(path)
            st.array = np.frombuffer(mm, dtype, st.numel, _zip_member_offset(mm, info, source))
        else:
            with zipfile.ZipFile(path) as zf:
                st.array = np.frombuffer(zf.read(info), dtype, st.numel)
    return obj


def _read_torch_legacy(path: Path, source: str):
    cache: dict = {}
    with open(path, "rb") as f:
        _unpickle(f, source)  # the magic number, checked by _sniff
        _unpickle(f, source)  # protocol version
        info = _unpickle(f, source)
        big = isinstance(info, dict) and info.get("little_endian") is False
        obj = _unpickle(f, source, lambda pid: _storage_from_pid(pid, cache, legacy=True))
        keys = _unpickle(f, source)
        offset = f.tell()
    if not isinstance(keys, list) or set(keys) != set(cache):
        raise ModelError(f"Checkpoint {source} is damaged (its storage list does not match its tensors).",
                              "Download the file again and compare its sha256.", path=source)
    mm = _map(path)
    for key in keys:
        st = cache[key]
        dtype = _raw_dtype(st.code, big_endian=big)
        head = mm[offset:offset + 8]
        n = struct.unpack(">q" if big else "<q", head)[0] if len(head) == 8 else -1
        end = offset + 8 + n * dtype.itemsize
        if n != st.numel or end > len(mm):
            raise ModelError(f"Checkpoint {source} is truncated or damaged (storage {key}).",
                                  "Download the file again and compare its sha256.", path=source)
        st.array = np.frombuffer(mm, dtype, n, offset + 8)
        offset = end
    return obj


def _read_safetensors(path: Path, source: str) -> dict:
    mm = _map(path)
    bad = ModelError(f"{source} is not a valid safetensors file.", _FIX_FORMAT, path=source)
    if len(mm) < 8:
        raise bad
    n = struct.unpack("<Q", mm[:8])[0]
    if n > len(mm) - 8:
        raise bad
    try:
        header = json.loads(bytes(mm[8:8 + n]).decode("utf-8"))
    except ValueError as e:
        raise bad from e
    if not isinstance(header, dict):
        raise bad
    base = 8 + n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            code = SAFETENSORS_TYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(v) for v in entry["data_offsets"])
        except KeyError as e:
            kind = entry.get("dtype") if isinstance(entry, dict) else None
            raise ModelError(f"{source}: tensor {name} has an unsupported type {kind!r}.",
                                  "Save the weights as float32, float16 or bfloat16.", path=source) from e
        except (TypeError, ValueError) as e:
            raise bad from e
        dtype = _raw_dtype(code)
        count = int(np.prod(shape, dtype=np.int64))
        if min(shape, default=0) < 0 or begin < 0 or end - begin != count * dtype.itemsize or base + end > len(mm):
            raise ModelError(f"{source}: tensor {name} does not fit its declared place in the file.",
                                  "Download the file again; it is damaged or truncated.", path=source)
        out[name] = to_numpy(np.frombuffer(mm, dtype, count, base + begin).reshape(shape), code)
    return out


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04" or (head[:2] == b"PK" and zipfile.is_zipfile(path)):
        return "torch-zip"
    if head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= path.stat().st_size - 8:
        return "safetensors"
    # the legacy format opens with its magic number pickled: PROTO 2, LONG1 of 10 bytes
    if head[:14] == b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little"):
        return "torch-legacy"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def read_checkpoint(path):
    """The checkpoint's top-level object: dicts, lists and numbers as pickled, tensors as TensorRef
    (torch formats), or a dict of float32 / integer arrays (safetensors)."""
    path = Path(path).expanduser()
    source = str(path)
    if path.exists() and not path.is_file():
        raise SourceUnreadable(f"{source} is not a regular file (it leads to {path.resolve()}), so it is not a "
                               "checkpoint.", "Give the path of the checkpoint file itself.", path=path)
    if not path.is_file():
        raise SourceUnreadable(f"Checkpoint {source} not found.", "Check the path of the checkpoint file.", path=source)
    if path.stat().st_size < 16:
        raise ModelError(f"{source} is too small to be a checkpoint.", _FIX_FORMAT, path=source)
    kind = _sniff(path)
    try:
        if kind == "torch-zip":
            return _read_torch_zip(path, source)
        if kind == "torch-legacy":
            return _read_torch_legacy(path, source)
        if kind == "safetensors":
            return _read_safetensors(path, source)
    except zipfile.BadZipFile as e:
        raise ModelError(f"Checkpoint {source} is a damaged zip archive ({e}).",
                              "Download the file again and compare its sha256.", path=source) from e
    except OSError as e:
        raise SourceUnreadable(f"Cannot read checkpoint {source} ({e.strerror or e}).",
                              "Check that the file is readable.", path=source) from e
    if kind == "pickle":
        raise ModelError(f"{source} is a plain pickle, not a PyTorch checkpoint; it was not loaded "
                              "(unpickling can run code).", _FIX_FORMAT, path=source)
    import tarfile

    if tarfile.is_tarfile(path):
        raise ModelError(f"{source} is a tar archive (PyTorch's format before 0.4), not read here.",
                              "Re-save the state dict with a current PyTorch, or as .safetensors.", path=source)
    raise ModelError(f"{source} is not a PyTorch or safetensors checkpoint.", _FIX_FORMAT, path=source)


def _pick_state_dict(obj, source: str) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip training checkpoints (SkyCLIP)
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "epoch" in obj:
        obj = obj["model"]  # training.pretrain's checkpoint_last.pt
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"Checkpoint {source} holds no model state dict ({type(obj).__name__}).", _FIX_FORMAT, path=source)
    # OpenAI's own state dicts carry a few plain numbers besides the tensors; open_clip drops them too
    weights = {k: v for k, v in obj.items() if not (k in _NOT_WEIGHTS and _is_int(v))}
    odd = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, TensorRef | np.ndarray)]
    if odd:
        raise ModelError(f"Checkpoint {source} holds no model state dict: {odd[0]!r} is not a tensor.",
                              _FIX_FORMAT, path=source)
    # DataParallel / DistributedDataParallel training runs save every key under "module."
    if all(k.startswith("module.") for k in weights):
        weights = {k[len("module."):]: v for k, v in weights.items()}
    return weights


def load_state_dict(path) -> dict[str, np.ndarray]:
    """State dict of an OpenCLIP-format checkpoint as numpy arrays (float32 weights), read without PyTorch.

    Plain state dicts (RemoteCLIP, GeoRSCLIP), ``{"state_dict": ...}`` training checkpoints (SkyCLIP), the
    ``module.`` prefix of DataParallel runs, ``.safetensors``. Any pickled global outside the few a state dict
    needs is refused before it runs (RemoteClipError naming it)."""
    source = str(Path(path).expanduser())
    weights = _pick_state_dict(read_checkpoint(path), source)
    return {k: v.materialise() if isinstance(v, TensorRef) else v for k, v in weights.items()}
