"""A collection job on Dask (core.pipeline.distributed): a LocalCluster of 2 worker processes on loopback gives the
single process's output feature for feature (whole rasters and blocks of one), a worker killed mid-job
still gives the complete output, a COG over HTTP runs on the cluster, and a cancel cancels the futures.
Real GeoTIFFs, the demo bundle on onnxruntime in every worker."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import require
from gdal_file_server import FileServer
from test_collection import DEMO, LABELS, _run, _truncated, cut_sheets, features

try:
    import distributed
except ImportError:   # a clean machine without requirements/distributed.txt: CI installs it (setup.sh)
    distributed = None


@pytest.fixture(scope="module")
def sheets(data_dir, tmp_path_factory) -> list[Path]:
    return cut_sheets(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif",
                      tmp_path_factory.mktemp("dsheets") / "sheets")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes on loopback, one task at a time each (as --dask local:2 starts)."""
    require(distributed is not None, "dask distributed is not installed (pip install -r requirements/distributed.txt)")
    import logging

    lc = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=logging.ERROR)
    client = distributed.Client(lc)
    yield client, lc.scheduler_address
    client.close()
    lc.close()


def _label(capsys, rasters, out, *extra):
    rc, stdout, err = _run(capsys, "label", *rasters, "--model", DEMO, "--labels", LABELS, "--tile-size", 64,
                           "-o", out, "-q", "--no-cache", *extra)
    assert rc == 0, err
    return stdout


def test_local_cluster_gives_the_single_process_output(sheets, data_dir, tmp_path, capsys):
    """The issue's "done when": `label 'sheets/*.tif' --dask local:2` and the same without --dask write identical
    layers (a UTM scene and a truncated sheet among them: the same tiles, the same skip)."""
    require(distributed is not None, "dask distributed is not installed")
    landsat = data_dir / "geotiff" / "rasterio_RGB.byte.tif"
    broken = _truncated(sheets[1], tmp_path / "broken.tif")
    glob = str(sheets[0].parent / "*.tif")
    one = _label(capsys, [glob, landsat, broken], tmp_path / "one.gpkg")
    two = _label(capsys, [glob, landsat, broken], tmp_path / "two.gpkg", "--dask", "local:2")
    a, b = features(tmp_path / "one.gpkg"), features(tmp_path / "two.gpkg")
    assert len(a) == 8 * 48 + 123 and a == b
    assert f"skipped: {broken}:" in one and f"skipped: {broken}:" in two


def test_blocks_of_one_raster_and_the_bundle_loaded_once(cluster, sheets, data_dir, tmp_path, capsys, monkeypatch):
    """A raster above BLOCK_TILES is cut into blocks of whole batches, spread over the workers and put back in
    order: the same output as one process. Each worker loads the bundle once, whatever its number of tasks."""
    import core.pipeline.distributed as cd

    client, address = cluster
    mosaic = data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"
    monkeypatch.setattr(cd, "BLOCK_TILES", 40)    # 384 tiles of 64 px: 12 blocks of 32 (batches of 16)
    one = tmp_path / "one.gpkg"
    _label(capsys, [mosaic, sheets[0]], one, "--batch-size", 16)
    submitted = []
    real_submit = distributed.Client.submit

    def spy(self, fn, *args, **kw):
        submitted.append(args[0])
        return real_submit(self, fn, *args, **kw)

    monkeypatch.setattr(distributed.Client, "submit", spy)
    two = tmp_path / "two.gpkg"
    _label(capsys, [mosaic, sheets[0]], two, "--batch-size", 16, "--dask", address)
    blocks = [(p.start, p.stop) for p in submitted if p.index == 0]
    assert blocks == [(a, min(a + 32, 384)) for a in range(0, 384, 32)]
    assert features(one) == features(two)
    _label(capsys, [sheets[2], sheets[3]], tmp_path / "three.gpkg", "--batch-size", 16, "--dask", address)
    loads = client.run(lambda: __import__("core.pipeline.distributed", fromlist=["_LOADS"])._LOADS)
    assert sorted(loads.values()) == [1, 1]          # 16 tasks, 2 workers, one load each
    # two workers on one machine share its cores: onnxruntime threads = cores / 2 each
    threads = client.run(lambda: __import__("core.pipeline.distributed", fromlist=["_THREADS"])._THREADS)
    assert list(threads.values()) == [max(1, (os.cpu_count() or 1) // 2)] * 2


def test_cog_over_http_on_the_cluster(cluster, sheets, tmp_path, capsys):
    """A cloud-optimised GeoTIFF by URL (GDAL's /vsicurl/ range reads from a loopback server) runs on the
    workers; the client keys its cache by the server's validators, so a rerun sends no task."""
    _, address = cluster
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["gdal_translate", "-q", "-of", "COG", "-co", "BLOCKSIZE=256", str(sheets[4]),
                    str(served / "sheet.cog.tif")], check=True)
    with FileServer(served) as srv:
        url = srv.url("sheet.cog.tif")
        one = tmp_path / "one.gpkg"
        _label(capsys, [url, sheets[5]], one)
        two = tmp_path / "two.gpkg"
        text = _label(capsys, [url, sheets[5]], two, "--dask", address)
        got = features(two)
        assert got == features(one)
        assert {f["source"] for f in got} == {"/vsicurl/" + url, str(sheets[5])}
        assert "rasters: 2 in the output" in text
        cache = tmp_path / "cache"
        rc, _, err = _run(capsys, "label", url, "--model", DEMO, "--labels", LABELS, "--tile-size", 64, "-q",
                          "--cache-dir", cache, "--dask", address, "-o", tmp_path / "c1.gpkg")
        assert rc == 0, err
        assert len(list(cache.glob("*.npz"))) == 1
        rc, stdout, err = _run(capsys, "label", url, "--model", DEMO, "--labels", LABELS, "--tile-size", 64,
                               "--cache-dir", cache, "--dask", address, "-o", tmp_path / "c2.gpkg")
        assert rc == 0, err
        assert "(embeddings from the cache)" in stdout
        assert features(tmp_path / "c1.gpkg") == features(tmp_path / "c2.gpkg")


def test_cancel_cancels_the_futures(cluster, sheets, tmp_path):
    from core.errors import Cancelled
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job

    client, address = cluster
    calls = []
    job = Job(raster=[str(p) for p in sheets], task=LabelTask(LABELS.split(",")),
              run=RunOptions(model=str(DEMO), cache_dir="", batch_size=8), tiles=TileSpec(size=32),
              output=str(tmp_path / "x.gpkg"), dask=address)
    with pytest.raises(Cancelled):
        run_job(job, progress=lambda f, m: calls.append(m), is_cancelled=lambda: any("cluster" in m for m in calls))
    assert not (tmp_path / "x.gpkg").exists()
    deadline = time.time() + 20
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and time.time() < deadline:
        time.sleep(0.2)
    assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_worker_killed_mid_job_gives_the_complete_output(cluster, sheets, tmp_path, capsys):
    """SIGKILL to a worker while it encodes: its nanny starts a new one, the scheduler runs its tasks again, and
    the output is complete and identical to the single process's."""
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job

    client, address = cluster
    one = tmp_path / "one.gpkg"
    _label(capsys, sheets, one, "--tile-size", 32, "--batch-size", 8)
    pids = client.run(os.getpid)
    killed = []

    def progress(fraction, message):
        if killed or "on the cluster" not in message:
            return
        busy = [w for w, keys in client.processing().items() if keys]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(pids[busy[0]])

    job = Job(raster=[str(p) for p in sheets], task=LabelTask(LABELS.split(",")),
              run=RunOptions(model=str(DEMO), cache_dir="", batch_size=8), tiles=TileSpec(size=32),
              output=str(tmp_path / "two.gpkg"), dask=address)
    res = run_job(job, progress=progress)
    assert killed, "no worker was busy when the first piece came back"
    assert _gone(killed[0])
    assert len(res.sources) == 8 and not res.skipped
    assert features(tmp_path / "two.gpkg") == features(one)


@pytest.mark.parametrize("address, words", [("local:0", "not a whole number 1..256"),
                                            ("local:two", "Write --dask local:2")])
def test_bad_local_cluster_is_one_line(sheets, tmp_path, capsys, address, words):
    require(distributed is not None, "dask distributed is not installed")
    rc, _, err = _run(capsys, "label", sheets[0], "--model", DEMO, "--labels", LABELS, "-q", "--no-cache",
                      "--dask", address, "-o", tmp_path / "x.gpkg")
    assert rc == 2 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.gpkg").exists()


@pytest.mark.parametrize("address, warned", [
    ("tcp://127.0.0.1:8786", False), ("tcp://localhost:8786", False), ("tcp://[::1]:8786", False),
    ("tcp://10.1.2.3:8786", True), ("10.1.2.3:8786", True),              # no scheme: Dask's tcp
    ("ws://10.1.2.3:8786", True), ("tcp://localbox.example.org:8786", True),   # not local:N
    ("tls://10.1.2.3:8786", False), ("local:2", False), ("local", False), ("", False)])
def test_a_plain_address_off_this_machine_gets_a_warning(address, warned):
    from core.pipeline.distributed import plain_tcp_warning

    warning = plain_tcp_warning(address)
    assert (warning is not None) == warned
    if warned:
        assert address in warning and "tls://" in warning


def test_this_hosts_own_name_gets_no_warning():
    import socket

    from core.pipeline.distributed import plain_tcp_warning

    assert plain_tcp_warning(f"tcp://{socket.gethostname()}:8786") is None


def test_the_cli_warns_before_it_sends_anything(tmp_path, capsys):
    """The warning comes first, even with -q: here the raster is missing, so nothing reaches the address."""
    rc, _, err = _run(capsys, "label", tmp_path / "missing.tif", "--model", DEMO, "--labels", LABELS, "-q",
                      "--dask", "tcp://10.1.2.3:8786", "-o", tmp_path / "x.gpkg")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 2
    assert lines[0].startswith("remoteclip: warning: tcp://10.1.2.3:8786 is a plain tcp:// address")
    assert lines[1].startswith("remoteclip: error:")


def make_certificates(folder: Path) -> dict:
    """docs/distributed.md's recipe: a CA, and one key and certificate signed by it for the whole cluster."""
    import shutil

    require(shutil.which("openssl") is not None, "the openssl command is not installed")
    folder.mkdir()

    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=remoteclip-dask-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.pem")
    (folder / "node.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                                     "extendedKeyUsage=serverAuth,clientAuth\n")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=remoteclip-dask", "-keyout", "node.key",
        "-out", "node.csr")
    ssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "node.ext", "-out", "node.pem")
    return {k: str(folder / f) for k, f in (("ca", "ca.pem"), ("cert", "node.pem"), ("key", "node.key"))}


def test_a_tls_cluster_runs_the_job_with_dasks_configured_certificates(sheets, tmp_path, capsys):
    """A scheduler and a worker on tls:// with the cluster's certificates: the client connects through Dask's
    own configuration (distributed.comm.tls.*) and the worker encodes the tiles (no warning: it is TLS).
    Without a client certificate configured, the address is refused with the way out."""
    require(distributed is not None, "dask distributed is not installed")
    import logging

    import dask

    from core.errors import InvalidInput
    from core.pipeline.distributed import connect

    c = make_certificates(tmp_path / "certs")
    security = distributed.Security(tls_ca_file=c["ca"], require_encryption=True,
                                    **{f"tls_{r}_{k}": c[k] for r in ("scheduler", "worker", "client")
                                       for k in ("cert", "key")})
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  protocol="tls://", security=security, dashboard_address=None,
                                  silence_logs=logging.ERROR) as lc, distributed.Client(lc) as client:
        address = lc.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with pytest.raises(InvalidInput) as err:
            connect(address)
        assert err.value.param == "dask"
        one = tmp_path / "one.gpkg"
        _label(capsys, sheets[6:], one)
        with dask.config.set({"distributed.comm.tls.ca-file": c["ca"], "distributed.comm.tls.client.cert": c["cert"],
                              "distributed.comm.tls.client.key": c["key"]}):
            rc, _, err = _run(capsys, "label", *sheets[6:], "--model", DEMO, "--labels", LABELS, "--tile-size", 64,
                              "-o", tmp_path / "tls.gpkg", "-q", "--no-cache", "--dask", address)
        assert rc == 0 and "warning" not in err, err
        assert features(tmp_path / "tls.gpkg") == features(one)
        loads = client.run(lambda: __import__("core.pipeline.distributed", fromlist=["_LOADS"])._LOADS)
        assert list(loads.values()) == [1]   # the worker encoded the tiles
