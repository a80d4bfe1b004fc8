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
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from .bundle import load_bundle
from .errors import RemoteClipError
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
_OOM_MARKERS = ("out of memory", "failed to allocate", "cudaerrormemoryallocation")


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RemoteClipError(f"onnxruntime is not installed ({e}).",
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
        raise RemoteClipError(f"Unknown device {device!r}.", "Use auto, cpu or cuda.")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if cuda_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RemoteClipError(
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
                    raise RemoteClipError(
                        "The device ran out of memory even with batch size 1.",
                        "Use --device cpu, a smaller model, or --precision fp16.") from e
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


def _new_session(path, providers: list[str], threads: int | None):
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers)
    except Exception as e:
        raise RemoteClipError(f"onnxruntime could not load {path} ({str(e).splitlines()[0]}).",
                              "Re-export the bundle with `python -m training.export`, or update "
                              "onnxruntime.") from e


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


class Encoder:
    """Image and text encoders of one bundle. Thread-safe for one caller at a time per graph."""

    def __init__(self, bundle, device: str = "auto", precision: str = "fp32", batch_size: int = 32,
                 threads: int | None = None):
        self.bundle = load_bundle(bundle)
        if precision not in ("fp32", "fp16"):
            raise RemoteClipError(f"Unknown precision {precision!r}.", "Use fp32 or fp16.")
        self.bundle.graph_path("image", precision)  # raises when the bundle lacks it
        if int(batch_size) < 1:
            raise RemoteClipError(f"Batch size must be at least 1, not {batch_size}.", "Use e.g. --batch-size 32.")
        self.device = device
        self.precision = precision
        self.batch_size = int(batch_size)
        self.providers = choose_providers(device)
        self.threads = threads
        self._sessions: dict = {}
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_bundle(self.bundle)
        return self._tokenizer

    def session(self, kind: str):
        if kind not in self._sessions:
            self._sessions[kind] = cached_session(self.bundle.graph_path(kind, self.precision), self.providers,
                                                  self.threads)
        return self._sessions[kind]

    @property
    def provider(self) -> str:
        """The provider onnxruntime really uses (loads the image graph if needed)."""
        return self.session("image").get_providers()[0]

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, D) float32 L2-normalised."""
        x = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.bundle.embed_dim), dtype=np.float32)
        sess = self.session("image")
        name = sess.get_inputs()[0].name

        def shrink(bs):
            self.batch_size = bs  # remember: the next batches start small too

        return run_batched(lambda b: sess.run(None, {name: b})[0], x, self.batch_size, shrink).astype(np.float32)

    def encode_ids(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros((0, self.bundle.embed_dim), dtype=np.float32)
        sess = self.session("text")
        name = sess.get_inputs()[0].name
        return run_batched(lambda b: sess.run(None, {name: b})[0], np.asarray(ids, dtype=np.int64),
                           max(self.batch_size, 64)).astype(np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Prompts -> (N, D) float32 L2-normalised (prompts over the context length are cut)."""
        return self.encode_ids(self.tokenizer(list(texts)))

    def encode_texts_with_info(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        ids, cut = self.tokenizer.encode_with_info(list(texts))
        return self.encode_ids(ids), cut
