"""core.runtime.inference: real onnxruntime sessions on the tiny bundle (CPU here; CUDA where present)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidInput, MissingDependency, ModelError, RemoteClipError
from core.runtime.inference import Encoder, choose_providers, cuda_available, is_oom, run_batched
from core.runtime.preprocess import preprocess_batch


@pytest.fixture(scope="module")
def encoder(tiny_bundle):
    return Encoder(tiny_bundle, device="auto", batch_size=4)


@pytest.fixture(scope="module")
def pixels(data_dir, encoder):
    paths = sorted((data_dir / "scenes" / "rsscn7").glob("*/*.jpg"))[::10][:14]
    return preprocess_batch([np.asarray(Image.open(p).convert("RGB")) for p in paths], encoder.bundle.image)


def test_provider_is_reported(encoder):
    expected = "CUDAExecutionProvider" if cuda_available() else "CPUExecutionProvider"
    assert encoder.provider == expected
    assert Encoder(encoder.bundle, device="cpu").provider == "CPUExecutionProvider"


def test_images_are_unit_vectors_and_batch_size_does_not_matter(encoder, pixels):
    e4 = encoder.encode_images(pixels)
    assert e4.shape == (len(pixels), encoder.bundle.embed_dim) and e4.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e4, axis=1), 1.0, atol=1e-5)
    e1 = Encoder(encoder.bundle, device="cpu", batch_size=1).encode_images(pixels)
    np.testing.assert_allclose(e1, e4, atol=1e-5)
    assert encoder.encode_images(pixels[:0]).shape == (0, encoder.bundle.embed_dim)


def test_text_matches_open_clip(encoder):
    import open_clip
    import torch

    from training.export import tiny_model

    model, _, _ = tiny_model(0)
    texts = ["a satellite photo of a harbor.", "trees", "an aerial photo of a parking lot with many cars."]
    with torch.no_grad():
        ref = model.encode_text(open_clip.tokenize(texts))
        ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(encoder.encode_texts(texts), ref, atol=1e-4)
    _, cut = encoder.encode_texts_with_info(["short", "word " * 90])
    assert cut == [False, True]


def test_fp16_graphs_run_close_to_fp32(encoder, pixels):
    e16 = Encoder(encoder.bundle, device="cpu", precision="fp16").encode_images(pixels)
    cos = (e16 * encoder.encode_images(pixels)).sum(axis=1)
    assert cos.min() > 0.99


def test_out_of_memory_halves_the_batch(encoder, pixels):
    sess = encoder.session("image")
    seen = []

    def run(b):  # a device that holds at most 3 images at a time, failing the way onnxruntime's CUDA EP does
        seen.append(len(b))
        if len(b) > 3:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                               "running Conv node. CUDA failure 2: out of memory ; GPU=0")
        return sess.run(None, {"pixel_values": b})[0]

    shrunk = []
    out = run_batched(run, pixels, 16, shrunk.append)
    np.testing.assert_allclose(out, encoder.encode_images(pixels), atol=1e-5)
    assert shrunk == [8, 4, 2] and seen[:4] == [14, 8, 4, 2] and max(seen[4:]) == 2


def test_other_errors_and_oom_at_one_are_not_retried():
    def broken(b):
        raise RuntimeError("Invalid input name")

    with pytest.raises(RuntimeError) as err:
        run_batched(broken, np.zeros((4, 1)), 4)
    assert not isinstance(err.value, RemoteClipError) and str(err.value) == "Invalid input name"   # as raised

    def tiny_gpu(b):
        raise RuntimeError("Failed to allocate memory for requested buffer of size 123")

    with pytest.raises(InvalidInput) as err:
        run_batched(tiny_gpu, np.zeros((4, 1)), 4)
    assert err.value.param == "batch_size" and "1" in err.value.problem and err.value.fix
    assert is_oom(RuntimeError("CUDA error cudaErrorMemoryAllocation:out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_bad_device_precision_batch_and_bundle(tiny_bundle, tmp_path):
    with pytest.raises(InvalidInput) as err:
        choose_providers("tpu")
    assert err.value.param == "device" and "'tpu'" in err.value.problem
    if not cuda_available():
        with pytest.raises(MissingDependency) as err:
            Encoder(tiny_bundle, device="cuda")
        assert "onnxruntime-gpu" in err.value.fix   # the package to install
    with pytest.raises(InvalidInput) as err:
        Encoder(tiny_bundle, precision="int4")
    assert err.value.param == "precision" and "'int4'" in err.value.problem
    with pytest.raises(InvalidInput) as err:
        Encoder(tiny_bundle, batch_size=0)
    assert err.value.param == "batch_size" and "0" in err.value.problem
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError) as err:
        Encoder(tmp_path)
    assert err.value.path == str(tmp_path)


def test_sessions_are_reused_across_encoders_until_the_bundle_changes(tiny_bundle, tmp_path, pixels):
    import os
    import shutil

    from core.runtime.bundle import load_bundle
    from core.runtime.inference import release_sessions

    first = Encoder(tiny_bundle, device="cpu")
    again = Encoder(tiny_bundle, device="cpu", batch_size=2)
    assert again.session("image") is first.session("image")   # a second run loads no graph
    np.testing.assert_array_equal(again.encode_images(pixels), first.encode_images(pixels))

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    before = Encoder(copy, device="cpu").session("image")
    digest = load_bundle(copy).sha256
    graph = copy / "image_fp32.onnx"
    st = graph.stat()
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # the bundle was re-exported
    assert Encoder(copy, device="cpu").session("image") is not before
    assert load_bundle(copy).sha256 == digest   # same bytes, same digest (hashed again, not looked up)

    release_sessions()
    assert Encoder(tiny_bundle, device="cpu").session("image") is not first.session("image")


# --- the GPU paths, run on the CPU provider where they can be ------------------------------------------------

def test_io_binding_gives_the_plain_run(encoder, pixels):
    """The bound path (the GPU's: one copy in, one copy out) computes what the plain run does."""
    plain = Encoder(encoder.bundle, device="cpu", batch_size=5, io_binding=False).encode_images(pixels)
    bound = Encoder(encoder.bundle, device="cpu", batch_size=5, io_binding=True)
    assert bound.io_binding is True and bound.provider == "CPUExecutionProvider"
    np.testing.assert_array_equal(bound.encode_images(pixels), plain)
    np.testing.assert_array_equal(bound.encode_images(pixels[:1]), plain[:1])


def test_batch_for_memory():
    from core.runtime.inference import AUTO_BATCH_MAX, batch_for_memory

    mib = 1 << 20
    # 8 images took 800 MiB and 10 GiB are left: 100 MiB an image, 60% of 10.8 GiB -> 66, down to 64
    assert batch_for_memory(10240 * mib, 800 * mib, 8) == 64
    assert batch_for_memory(100 * mib, 800 * mib, 8) == 8                 # never below the probe that ran
    assert batch_for_memory(140 * 1024 * mib, 8 * mib, 8) == AUTO_BATCH_MAX  # an H200 and a small model
    assert batch_for_memory(10240 * mib, 0, 8) == AUTO_BATCH_MAX          # nothing measured: the cap
    assert batch_for_memory(50 * mib, 100 * mib, 4, cap=1024) == 4


def test_auto_batch(encoder, pixels, monkeypatch):
    from core.runtime import inference

    cpu = Encoder(encoder.bundle, device="cpu", batch_size=None)
    assert cpu.plan_batch() == inference.AUTO_BATCH_CPU and cpu.auto_batch   # a CPU keeps 32, measures nothing
    if not inference.cuda_available():
        assert inference.gpu_memory() is None or isinstance(inference.gpu_memory()[0], int)
    # what a GPU run does, with the device's memory given (no GPU here): 8 probe images take 400 MiB of 24 GiB
    free = iter([(24 << 30, 24 << 30), ((24 << 30) - (400 << 20), 24 << 30)])
    monkeypatch.setattr(inference, "gpu_memory", lambda device_id=0: next(free))
    monkeypatch.setattr(Encoder, "on_gpu", property(lambda self: True))
    gpu = Encoder(encoder.bundle, device="cpu", batch_size=None, io_binding=False)
    assert gpu.plan_batch(pixels) == 288 and not gpu.auto_batch   # 0.6 * 24 GiB / 50 MiB = 294, down to 8s
    assert gpu.batch_size == 288 and gpu.plan_batch() == 288        # settled once


def test_text_ids_are_cut_after_the_last_end_of_text_token(encoder):
    """Text graphs with a dynamic token axis run the prompts' own length, not 77 tokens: same embeddings."""
    from core.runtime.bundle import DEMO_BUNDLE
    from core.runtime.inference import trim_ids

    prompts = ["a satellite photo of a river.", "dense residential houses with red roofs along narrow streets", ""]
    ids = encoder.tokenizer(prompts)
    sess = encoder.session("text")
    assert sess.get_inputs()[0].shape[1] == "tokens"
    cut = trim_ids(ids, 49407, dynamic=True)
    assert cut.shape == (3, int((ids == 49407).argmax(axis=1).max()) + 1) and cut.shape[1] < 20
    full = sess.run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(encoder.encode_texts(prompts), full, atol=1e-6)
    long = encoder.tokenizer(["word " * 100])   # cut at the context length: its end-of-text token is the last
    assert trim_ids(long, 49407, dynamic=True).shape == (1, 77)
    assert trim_ids(ids, 49407, dynamic=False) is ids   # a graph made for 77 tokens gets 77
    assert trim_ids(np.zeros((2, 77), np.int64), 49407, dynamic=True).shape == (2, 77)   # no end-of-text: as given
    demo = Encoder(DEMO_BUNDLE, device="cpu")
    assert demo.session("text").get_inputs()[0].shape[1] == 77 and demo.encode_texts(prompts).shape == (3, 64)
