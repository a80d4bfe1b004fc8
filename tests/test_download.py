"""core.runtime.download against a loopback HTTP server (Range, redirects, ETag, drops) and a loopback proxy."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from loopback import FileServer, Proxy

from core.errors import Cancelled, DownloadFailed, VerificationFailed
from core.runtime.download import download, sha256_of_headers, urllib_transport, verify_file

PAYLOAD = os.urandom(1_000_003)          # not a multiple of the chunk size
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def no_proxy_env(monkeypatch):
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("NO_PROXY", "")


@pytest.fixture
def server(no_proxy_env):
    with FileServer({"ckpt.pt": PAYLOAD}, chunk=50_000) as srv:
        yield srv


def test_download_verifies_the_etag_sha256_and_renames_only_when_complete(server, tmp_path):
    seen = []
    out = download(server.url("ckpt.pt"), tmp_path / "ckpt.pt", progress=lambda f, m: seen.append(f),
                   record={"tool": "test"})
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "ckpt.pt.part").exists()
    info = json.loads((tmp_path / "ckpt.pt.json").read_text())
    assert info["sha256"] == SHA and info["sha256_verified"] is True and info["size"] == len(PAYLOAD)
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 0.1


def test_hugging_face_redirect_carries_the_sha256_in_x_linked_etag(no_proxy_env, tmp_path):
    # the store serves a damaged copy; its own ETag is no sha256, the redirect's X-Linked-Etag is the truth
    with FileServer({"ckpt.pt": PAYLOAD[:-1] + b"\0"}) as srv:
        srv.linked_etag["ckpt.pt"] = SHA
        with pytest.raises(VerificationFailed) as err:
            download(srv.url("ckpt.pt", "resolve"), tmp_path / "ckpt.pt")
        assert err.value.path == str(tmp_path / "ckpt.pt") and SHA in err.value.problem   # the sha expected
        assert [r["path"] for r in srv.requests] == ["/resolve/ckpt.pt", "/cdn/ckpt.pt"]
    assert list(tmp_path.iterdir()) == []


def test_redirect_headers_reach_the_caller(server):
    resp = urllib_transport(server.url("ckpt.pt", "resolve"), 0, {})
    resp.close()
    assert resp.status == 200
    assert sha256_of_headers(resp.headers) == SHA           # from X-Linked-Etag, not the store's ETag
    assert resp.headers["x-linked-size"] == str(len(PAYLOAD))


def test_a_dropped_connection_resumes_with_a_range_request_from_the_part_size(server, tmp_path):
    server.drops = [300_000]
    out = download(server.url("ckpt.pt"), tmp_path / "ckpt.pt", retry_wait=0)
    assert out.read_bytes() == PAYLOAD
    assert server.dropped == [300_000]
    assert server.range_starts() == [300_000]


def test_cancel_keeps_the_part_and_the_next_call_resumes_it(server, tmp_path):
    dest = tmp_path / "ckpt.pt"
    server.latency = 0.02      # 50 kB every 20 ms: the client sees many chunks
    calls = {"n": 0}

    def cancel_after_some():
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(Cancelled):
        download(server.url("ckpt.pt"), dest, is_cancelled=cancel_after_some)
    part = tmp_path / "ckpt.pt.part"
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and not dest.exists()
    assert PAYLOAD.startswith(part.read_bytes())
    download(server.url("ckpt.pt"), dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.range_starts() == [kept]


def test_a_server_without_range_support_restarts_from_zero(no_proxy_env, tmp_path):
    with FileServer({"ckpt.pt": PAYLOAD}, ranges=False) as srv:
        (tmp_path / "ckpt.pt.part").write_bytes(b"garbage that is not a prefix")
        download(srv.url("ckpt.pt"), tmp_path / "ckpt.pt")
    assert (tmp_path / "ckpt.pt").read_bytes() == PAYLOAD


def test_a_complete_part_is_verified_without_downloading_again(server, tmp_path):
    (tmp_path / "ckpt.pt.part").write_bytes(PAYLOAD)
    download(server.url("ckpt.pt"), tmp_path / "ckpt.pt", sha256=SHA, size=len(PAYLOAD))
    assert server.requests == []
    (tmp_path / "b.pt.part").write_bytes(PAYLOAD)     # no expected sha: one request, answered 416
    download(server.url("ckpt.pt"), tmp_path / "b.pt")
    assert (tmp_path / "b.pt").read_bytes() == PAYLOAD
    assert server.range_starts() == [len(PAYLOAD)]


def test_wrong_sha256_is_refused_and_the_file_removed(server, tmp_path):
    with pytest.raises(VerificationFailed) as err:
        download(server.url("ckpt.pt"), tmp_path / "ckpt.pt", sha256="0" * 64)
    assert err.value.path == str(tmp_path / "ckpt.pt") and SHA in err.value.problem
    assert "0" * 64 in err.value.problem
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_etag_is_refused_too(server, tmp_path):
    server.etag_override["ckpt.pt"] = "f" * 64
    with pytest.raises(VerificationFailed) as err:
        download(server.url("ckpt.pt"), tmp_path / "ckpt.pt")
    assert err.value.path == str(tmp_path / "ckpt.pt") and "f" * 64 in err.value.problem
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_another_size_is_refused_before_downloading(server, tmp_path):
    with pytest.raises(VerificationFailed) as err:
        download(server.url("ckpt.pt"), tmp_path / "ckpt.pt", size=len(PAYLOAD) + 10)
    assert f"{len(PAYLOAD)} " in err.value.problem and f"{len(PAYLOAD) + 10}" in err.value.problem
    assert list(tmp_path.iterdir()) == []


def test_repeated_drops_end_with_an_error_that_says_how_to_resume(server, tmp_path):
    server.drops = [100_000, 200_000, 300_000]
    with pytest.raises(DownloadFailed) as err:
        download(server.url("ckpt.pt"), tmp_path / "ckpt.pt", retries=2, retry_wait=0)
    assert type(err.value) is DownloadFailed and err.value.path == str(tmp_path / "ckpt.pt")
    assert "0.3 MiB" in err.value.problem and "1.0 MiB" in err.value.problem   # where it stopped, of what
    assert str(tmp_path / "ckpt.pt.part") in err.value.fix   # the partial file a rerun resumes from
    assert (tmp_path / "ckpt.pt.part").stat().st_size == 300_000
    assert server.range_starts() == [100_000, 200_000]


def test_http_errors_are_one_line_with_a_fix(server, tmp_path):
    with pytest.raises(DownloadFailed) as err:
        download(server.url("missing.pt"), tmp_path / "x.pt")
    assert type(err.value) is DownloadFailed and "404" in err.value.problem and "--url" in err.value.fix


def test_the_environment_proxy_carries_the_download(no_proxy_env, monkeypatch, tmp_path):
    with FileServer({"ckpt.pt": PAYLOAD}) as srv, Proxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        download(srv.url("ckpt.pt", "resolve"), tmp_path / "ckpt.pt")
        assert (tmp_path / "ckpt.pt").read_bytes() == PAYLOAD
        assert [r["url"] for r in proxy.requests] == [srv.url("ckpt.pt", "resolve"), srv.url("ckpt.pt", "cdn")]
        assert all(r["headers"].get("Via") == "1.1 test-proxy" for r in srv.requests)
        # no_proxy is honoured as well
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        download(srv.url("ckpt.pt"), tmp_path / "direct.pt")
        assert len(proxy.requests) == 2 and "Via" not in srv.requests[-1]["headers"]


def test_local_copies_are_checked_in_place_and_never_removed(tmp_path):
    f = tmp_path / "copy.pt"
    f.write_bytes(PAYLOAD)
    assert verify_file(f, sha256=SHA, size=len(PAYLOAD)) == SHA
    with pytest.raises(VerificationFailed) as err:
        verify_file(f, size=len(PAYLOAD) + 7)
    assert err.value.path == str(f) and f"{len(PAYLOAD)} " in err.value.problem
    assert f"{len(PAYLOAD) + 7}" in err.value.problem
    with pytest.raises(VerificationFailed) as err:
        verify_file(f, sha256="1" * 64)
    assert err.value.path == str(f) and SHA in err.value.problem and "1" * 64 in err.value.problem
    assert f.read_bytes() == PAYLOAD
    out = download(f.as_uri(), tmp_path / "dl" / "copy.pt", sha256=SHA)   # file:// through the downloader
    assert out.read_bytes() == PAYLOAD


# ------------------------------------------------------------------- a .part is verified before the rename

def _wrong_bytes() -> bytes:
    return PAYLOAD[:-7] + b"garbage"         # the right size, not the right file


def test_a_complete_part_with_wrong_bytes_is_refused_and_removed(server, tmp_path):
    (tmp_path / "ckpt.pt.part").write_bytes(_wrong_bytes())
    with pytest.raises(VerificationFailed) as err:
        download(server.url("ckpt.pt"), tmp_path / "ckpt.pt", sha256=SHA, size=len(PAYLOAD), record={"tool": "t"})
    assert err.value.path == str(tmp_path / "ckpt.pt")
    assert server.requests == [] and list(tmp_path.iterdir()) == []


def test_a_complete_part_is_checked_against_the_servers_sha256_too(server, tmp_path):
    # no sha256 from the caller: the server's 416 ("you have it all") comes after Hugging Face's redirect,
    # whose X-Linked-Etag still names the file's sha256
    (tmp_path / "ckpt.pt.part").write_bytes(_wrong_bytes())
    with pytest.raises(VerificationFailed):
        download(server.url("ckpt.pt", "resolve"), tmp_path / "ckpt.pt", record={"tool": "t"})
    assert server.range_starts() == [len(PAYLOAD), len(PAYLOAD)]      # the redirect, then the store's 416
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_part_whose_start_is_wrong_is_refused_and_removed(server, tmp_path):
    (tmp_path / "ckpt.pt.part").write_bytes(_wrong_bytes()[:-500_000] + b"x")   # a prefix that is not one
    with pytest.raises(VerificationFailed):
        download(server.url("ckpt.pt"), tmp_path / "ckpt.pt", size=len(PAYLOAD))
    assert server.range_starts() == [len(PAYLOAD) - 500_000 + 1]
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_loop_is_named_as_one(server, tmp_path):
    with pytest.raises(DownloadFailed) as err:
        download(server.url("ckpt.pt", "loop"), tmp_path / "ckpt.pt", retry_wait=0)
    assert "redirects in a loop" in err.value.problem and "mirror" in err.value.fix
    assert "try again later" not in str(err.value).lower()
    assert not (tmp_path / "ckpt.pt").exists()


def test_a_stalled_download_stops_after_the_read_timeout_and_keeps_the_part(server, tmp_path):
    import time

    server.latency = 3.0          # one 50 kB chunk, then nothing for 3 s
    t0 = time.perf_counter()
    with pytest.raises(DownloadFailed) as err:
        download(server.url("ckpt.pt"), tmp_path / "ckpt.pt", read_timeout=0.4, retry_wait=0)
    took = time.perf_counter() - t0
    assert took < 2.0, took                          # not retried: a stall is not a dropped connection
    assert "no data for 0.4 s" in err.value.problem and err.value.path == str(tmp_path / "ckpt.pt.part")
    assert (tmp_path / "ckpt.pt.part").read_bytes() == PAYLOAD[:50_000]
    assert len(server.requests) == 1 and not (tmp_path / "ckpt.pt").exists()


def test_one_sha256_of_a_file_reads_its_last_block(tmp_path):
    """core.runtime.digest is the one file digest (downloads, conversions, bundles, training): a file one byte longer
    than two blocks hashes as a whole, progress reaches the end on that last byte, and the other places
    (core.runtime.download, core.runtime.convert, training.checkpoints; core.runtime.bundle feeds hash_file) take this one."""
    import training.checkpoints
    from core.runtime import convert
    from core.runtime import download as dl
    from core.runtime.digest import CHUNK, file_sha256, hash_file

    data = os.urandom(2 * CHUNK + 1)
    path = tmp_path / "ckpt.bin"
    path.write_bytes(data)
    seen = []
    assert file_sha256(path, progress=lambda f, _m: seen.append(f), total=len(data)) == \
        hashlib.sha256(data).hexdigest()
    assert seen[-1] == 1.0 and len(seen) == 3
    h = hashlib.sha256()
    assert hash_file(h, path, done=5) == len(data) + 5
    assert dl.file_sha256 is file_sha256 and training.checkpoints.sha256_file is file_sha256
    assert convert.file_sha256 is file_sha256
    with pytest.raises(Cancelled):
        file_sha256(path, is_cancelled=lambda: True)


def test_a_full_disk_is_a_write_failure_at_once_not_a_dropped_connection(server, tmp_path):
    """Writing the .part fails (files limited to 200 000 bytes in a subprocess: RLIMIT_FSIZE, as in
    tests/test_full_disk.py): one WriteFailed naming the part, no retry, the bytes written kept to resume."""
    from test_full_disk import limited

    code = "from core.runtime.download import download\ndownload(args[0], args[1], retry_wait=0)"
    rc, _, err_text, err = limited(200_000, "-c", code, server.url("ckpt.pt"), tmp_path / "ckpt.pt")
    assert rc == 2 and err is not None, err_text
    assert err["kind"] == "WriteFailed" and err["path"] == str(tmp_path / "ckpt.pt.part"), err
    assert len(server.requests) == 1                          # not retried as a dropped connection
    assert (tmp_path / "ckpt.pt.part").read_bytes() == PAYLOAD[:200_000]
    assert not (tmp_path / "ckpt.pt").exists()
