"""onnxruntime sessions for a bundle's image and text graphs.

Sessions are created lazily (onnxruntime is imported inside functions, so QGIS
starts without it). With device ``auto`` or ``cuda`` and a CUDA-enabled
onnxruntime (the ``onnxruntime-gpu`` package), the CUDA provider is asked for
first; :attr:`Encoder.provider` reports what onnxruntime really runs. A GPU
out-of-memory error halves the batch and retries, down to one image.

Sessions are shared across Encoders in one process (:func:`cached_session`): in
QGIS every run builds a new Encoder, and loading a graph costs about a second for
ViT-B-32 and several for ViT-L-14. Only the last model's two graphs are kept; a
re-exported bundle (other file size or time) gets new sessions.

On a GPU (CUDA provider): the image graph runs through onnxruntime's I/O binding
(the batch is copied to the device once, the embeddings come back once), and
``batch_size=None`` ("auto") takes a batch from the device's free memory, measured
around a probe batch (:func:`batch_for_memory`). The same bound path runs on the
CPU provider (``io_binding=True``), which is how it is tested without a GPU.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..errors import InvalidInput, MissingDependency, ModelError
from .bundle import INT8_MIN_IMAGES, INT8_USABLE_TOP1, Bundle, check_graph_inputs, int8_agreement, load_bundle
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
_OOM_MARKERS = ("out of memory", "failed to allocate", "cudaerrormemoryallocation")
AUTO_BATCH_CPU = 32        # batch_size=0 on a CPU
AUTO_BATCH_MAX = 1024      # and at most this on a GPU
PROBE_BATCH = 8            # the batch whose memory the GPU's auto batch is measured on
MEMORY_SHARE = 0.6         # of the free device memory an auto batch may take


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependency(f"onnxruntime is not installed ({e}).",
                              "Install it: `pip install onnxruntime` (or onnxruntime-gpu for NVIDIA GPUs); "
                              "in QGIS use the plugin's 'Install dependencies' button.") from None
    return ort


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in available_providers()


def choose_providers(device: str = "auto") -> list[str]:
    """onnxruntime providers for ``device`` (auto: CUDA when this onnxruntime has it, else CPU)."""
    device = (device or "auto").lower()
    if device not in DEVICES:
        raise InvalidInput(f"Unknown device {device!r}.", "Use auto, cpu or cuda.", param="device")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if cuda_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise MissingDependency(
            "Device cuda was asked for, but this onnxruntime has no CUDA support "
            f"(providers: {', '.join(available_providers())}).",
            "Install onnxruntime-gpu (`pip uninstall onnxruntime && pip install onnxruntime-gpu`) with a "
            "matching CUDA/cuDNN, or use --device auto or cpu.")
    return ["CPUExecutionProvider"]


def is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return any(m in text for m in _OOM_MARKERS)


def run_batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int,
                on_shrink: Callable[[int], None] | None = None) -> np.ndarray:
    """``fn`` over ``x`` in batches; an out-of-memory error halves the batch and retries (down to 1).

    Returns the concatenated outputs. Any other error, or OOM at batch size 1, propagates.
    """
    n = len(x)
    bs = max(1, int(batch_size))
    outs = []
    i = 0
    while i < n:
        chunk = x[i:i + bs]
        try:
            outs.append(np.asarray(fn(chunk)))
        except Exception as e:  # onnxruntime raises its own Fail/RuntimeException types
            if not is_oom(e) or bs == 1:
                if is_oom(e):
                    raise InvalidInput(
                        "The device ran out of memory even with batch size 1.",
                        "Use --device cpu, a smaller model, or --precision fp16.", param="batch_size") from e
                raise
            bs = max(1, bs // 2)
            log.warning("out of memory; retrying with batch size %d", bs)
            if on_shrink is not None:
                on_shrink(bs)
            continue
        i += len(chunk)
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outs, axis=0)


_SESSIONS: OrderedDict = OrderedDict()
_SESSIONS_LOCK = threading.Lock()
KEEP_SESSIONS = 2   # one model's image and text graphs


def provider_options(providers: list[str], device_id: int = 0) -> list:
    """onnxruntime's (name, options) list: CUDA on ``device_id``, searching convolution algorithms by
    heuristics (exhaustive search would run again for every new batch shape of RN50's convolutions)."""
    out = []
    for p in providers:
        if p == "CUDAExecutionProvider":
            out.append((p, {"device_id": str(int(device_id)), "cudnn_conv_algo_search": "HEURISTIC"}))
        else:
            out.append((p, {}))
    return out


def session_options(threads: int | None = None):
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    return opts


_PRELOADED = []


def _preload_cuda(ort) -> None:
    """onnxruntime-gpu from PyPI finds CUDA and cuDNN in the nvidia-* wheels only once they are preloaded
    (torch does it when imported; QGIS has no torch). Once per process; harmless where they are absent."""
    if _PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _PRELOADED.append(True)
    try:
        ort.preload_dlls()
    except Exception as e:   # a system CUDA still works without it
        log.info("onnxruntime.preload_dlls: %s", e)


def _new_session(path, providers: list[str], threads: int | None):
    ort = _ort()
    if "CUDAExecutionProvider" in providers:
        _preload_cuda(ort)
    opts = session_options(threads)
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=provider_options(providers))
    except Exception as e:
        raise ModelError(f"onnxruntime could not load {path} ({str(e).splitlines()[0]}).",
                              "Re-export the bundle with `python -m training.export`, or update "
                              "onnxruntime.", path=path) from e


def cached_session(path, providers: list[str], threads: int | None = None):
    """An onnxruntime session for a graph file, reused while the file is unchanged (run() is thread-safe)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, tuple(providers), threads)
    with _SESSIONS_LOCK:
        sess = _SESSIONS.pop(key, None)
        if sess is None:
            sess = _new_session(path, providers, threads)
        _SESSIONS[key] = sess
        while len(_SESSIONS) > KEEP_SESSIONS:
            _SESSIONS.popitem(last=False)
    return sess


def release_sessions() -> None:
    """Drop the shared sessions (frees the model's memory; the plugin calls this when it unloads)."""
    with _SESSIONS_LOCK:
        _SESSIONS.clear()


def gpu_memory(device_id: int = 0) -> tuple[int, int] | None:
    """(free, total) bytes of CUDA device ``device_id``, from the CUDA runtime that onnxruntime-gpu loaded
    (ctypes), else from nvidia-smi; None where neither answers (no GPU)."""
    import ctypes

    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so", "cudart64_13.dll",
                 "cudart64_12.dll", "cudart64_110.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if lib.cudaSetDevice(int(device_id)) == 0 and lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return int(free.value), int(total.value)
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits",
                              "-i", str(int(device_id))], capture_output=True, text=True, timeout=10)
        free_mib, total_mib = (int(v) for v in out.stdout.strip().splitlines()[0].split(","))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
    return free_mib << 20, total_mib << 20


def trim_ids(ids: np.ndarray, eot_id: int, dynamic: bool) -> np.ndarray:
    """Token ids cut after the batch's last end-of-text token, for text graphs whose token axis is dynamic.
    CLIP's text attention is causal and the text is pooled at its end-of-text token (the largest id), so the
    padding after it changes nothing but the work: 77 tokens become the prompts' own length (about 10)."""
    if not dynamic or ids.ndim != 2 or ids.shape[1] < 2:
        return ids
    is_eot = ids == eot_id
    if not is_eot.any(axis=1).all():   # a row without its end-of-text token: keep what the graph was given
        return ids
    last = int(is_eot.argmax(axis=1).max()) + 1
    return np.ascontiguousarray(ids[:, :max(last, 2)])


def batch_for_memory(free_after: int, probe_bytes: int, probe_batch: int, share: float = MEMORY_SHARE,
                     cap: int = AUTO_BATCH_MAX) -> int:
    """The batch that fits ``share`` of the device memory, from a probe: ``probe_bytes`` is what a batch of
    ``probe_batch`` took (free memory before minus after; onnxruntime's arena keeps it), ``free_after`` what
    is left. Rounded down to a multiple of 8 (tensor cores), at least the probe, at most ``cap``."""
    per_image = max(1, probe_bytes) / max(1, probe_batch)
    fits = int(share * (max(0, free_after) + max(0, probe_bytes)) / per_image)
    fits = fits // 8 * 8 if fits >= 8 else fits
    return int(max(min(probe_batch, cap), min(cap, fits)))


class Encoder:
    """Image and text encoders of one bundle. Thread-safe for one caller at a time per graph.

    ``batch_size=None`` is "auto": 32 on a CPU, on a GPU the batch that fits its free memory (measured on the
    first images). ``io_binding`` (default: on the CUDA provider) runs the image graph through onnxruntime's
    I/O binding."""

    def __init__(self, bundle, device: str = "auto", precision: str = "fp32", batch_size: int | None = 32,
                 threads: int | None = None, io_binding: bool | None = None):
        from .bundle import PRECISIONS

        self.bundle = load_bundle(bundle)
        if precision not in PRECISIONS:
            raise InvalidInput(f"Unknown precision {precision!r}.", f"Use {', '.join(PRECISIONS)}.", param="precision")
        self.bundle.graph_path("image", precision)  # raises when the bundle lacks it
        if batch_size is not None and int(batch_size) < 1:
            raise InvalidInput(f"Batch size must be at least 1, not {batch_size}.", "Use e.g. --batch-size 32.", param="batch_size")
        self.device = device
        self.precision = precision
        self.auto_batch = batch_size is None
        self.batch_size = AUTO_BATCH_CPU if batch_size is None else int(batch_size)
        self.providers = choose_providers(device)
        self.threads = threads
        self.io_binding = io_binding
        self._sessions: dict = {}
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_bundle(self.bundle)
        return self._tokenizer

    def session(self, kind: str):
        if kind not in self._sessions:
            sess = cached_session(self.bundle.graph_path(kind, self.precision), self.providers, self.threads)
            check_graph_inputs(self.bundle, kind, self.precision, sess)   # swapped graphs, a wrong size
            self._sessions[kind] = sess
        return self._sessions[kind]

    @property
    def provider(self) -> str:
        """The provider onnxruntime really uses (loads the image graph if needed)."""
        return self.session("image").get_providers()[0]

    @property
    def on_gpu(self) -> bool:
        return self.provider == "CUDAExecutionProvider"

    def _image_runner(self):
        sess = self.session("image")
        name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
        bound = self.on_gpu if self.io_binding is None else self.io_binding
        if not bound:
            return lambda b: sess.run(None, {name: b})[0]
        ort = _ort()
        where = "cuda" if self.on_gpu else "cpu"

        def run(b):
            # one copy in (to the device), one copy out; onnxruntime allocates the output on the device
            binding = sess.io_binding()
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(b, where, 0))
            binding.bind_output(out, where)
            sess.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]

        return run

    def plan_batch(self, pixel_values: np.ndarray | None = None) -> int:
        """Settle an auto batch size before the pipeline reads in batches: on a GPU, run a probe batch (of
        ``pixel_values`` when given, else zeros) and size the batch from the memory it took."""
        if not self.auto_batch or not self.on_gpu:
            return self.batch_size
        from .preprocess import output_size

        h, w = output_size(self.bundle.image)
        probe = np.zeros((PROBE_BATCH, 3, h, w), np.float32) if pixel_values is None \
            else np.ascontiguousarray(pixel_values[:PROBE_BATCH], dtype=np.float32)
        before = gpu_memory()
        self._image_runner()(probe)
        after = gpu_memory()
        if before is not None and after is not None:
            self.batch_size = batch_for_memory(after[0], before[0] - after[0], len(probe))
            log.info("auto batch size %d (free %d MiB)", self.batch_size, after[0] >> 20)
        self.auto_batch = False
        return self.batch_size

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, D) float32 L2-normalised."""
        x = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.bundle.embed_dim), dtype=np.float32)
        self.plan_batch(x)

        def shrink(bs):
            self.batch_size = bs  # remember: the next batches start small too

        return run_batched(self._image_runner(), x, self.batch_size, shrink).astype(np.float32)

    def encode_ids(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros((0, self.bundle.embed_dim), dtype=np.float32)
        sess = self.session("text")
        inp = sess.get_inputs()[0]
        ids = trim_ids(np.asarray(ids, dtype=np.int64), self.bundle.text.get("eot_token_id", 49407),
                       dynamic=not isinstance(inp.shape[1], int))
        return run_batched(lambda b: sess.run(None, {inp.name: b})[0], ids,
                           max(self.batch_size, 64)).astype(np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Prompts -> (N, D) float32 L2-normalised (prompts over the context length are cut)."""
        return self.encode_ids(self.tokenizer(list(texts)))

    def encode_texts_with_info(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        ids, cut = self.tokenizer.encode_with_info(list(texts))
        return self.encode_ids(ids), cut


def choose_precision(bundle: Bundle, requested: str = "auto", device: str = "auto") -> tuple[str, str]:
    """(the precision a job runs, why, in plain words). An explicit fp32, fp16 or int8 is kept. "auto": int8
    on a CPU when the bundle has int8 graphs whose recorded top-1 agreement with fp32 is at least
    INT8_USABLE_TOP1, measured on at least INT8_MIN_IMAGES images, else fp32; fp32 on a GPU. Raises MissingDependency for device cuda without CUDA."""
    if requested != "auto":
        return requested, "chosen in the run's settings"
    if choose_providers(device)[0] != "CPUExecutionProvider":
        return "fp32", "auto: fp32 on a GPU (int8 graphs are for CPUs)"
    if "int8" not in bundle.config.graphs:
        return "fp32", "auto: no int8 graphs in this bundle"
    agree = int8_agreement(bundle)
    top1 = agree.get("top1_agree")
    if top1 is None:
        return "fp32", "auto: this bundle records no agreement of its int8 graphs with fp32"
    if agree.get("n_images", 0) < INT8_MIN_IMAGES:
        return "fp32", (f"auto: the int8 agreement was measured on only {agree.get('n_images', 0)} images "
                        f"(needs {INT8_MIN_IMAGES}; --precision int8 runs them anyway)")
    if top1 < INT8_USABLE_TOP1:
        return "fp32", (f"auto: int8 agrees only {_percent(top1)} with fp32 on this bundle "
                        f"(needs {INT8_USABLE_TOP1:.0%})")
    return "int8", f"auto: int8 agrees {_percent(top1)} with fp32 on this bundle"


def _percent(x: float) -> str:
    """A share as a percentage with the digits that matter at the 99 % bar (0.9899: "98.99 %", not "99.0 %")."""
    return f"{math.floor(round(x * 10000, 6)) / 100:.2f} %"
