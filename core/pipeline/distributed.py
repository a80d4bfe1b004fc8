"""A collection job on a Dask cluster (``remoteclip ... --dask ADDRESS`` or ``--dask local:N``).

Dask is optional (requirements/distributed.txt): this module imports it when a job has ``dask`` set, and
the QGIS plugin never does.

* Tasks are whole rasters; a raster of more than ``BLOCK_TILES`` tiles is cut into blocks of its grid (runs
  of whole batches, so every batch is the one a single process would encode, and the embeddings are the
  same), so one 100k x 100k mosaic spreads over the cluster too.
* A worker opens the raster itself (a path every worker can read: a shared file system or a URL), makes
  the grid from the same parameters and encodes its tiles with the bundle it loaded once per process
  (:func:`_worker_encoder`; the onnxruntime session is never pickled). Only (kept indices, embeddings) go
  back: 8 + 4 x D bytes a tile, no pixels.
* The client plans, checks the cache (rasters done before are not sent again), gathers, saves the cache,
  computes the task's results and writes once, atomically (core.pipeline.run).
* Ctrl+C or a cancel cancels the futures. A worker that dies is replaced by its nanny and its tasks are
  run again by the scheduler; a task that kills workers again and again (``distributed.scheduler.
  allowed-failures``) stops the job with the raster named.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass

import numpy as np

from ..errors import Cancelled, InvalidInput, MissingDependency, ModelError, RemoteClipError, SourceUnreadable

log = logging.getLogger(__name__)

BLOCK_TILES = 4096   # a raster with more tiles is cut into blocks of about this many (whole batches)

__all__ = ["connect", "encode_on_cluster", "encode_piece", "plain_tcp_warning", "Piece", "BLOCK_TILES"]

PLAIN_SCHEMES = ("tcp", "ws", "ucx")   # Dask's comms without encryption or authentication
TLS_SCHEMES = ("tls", "wss")


@dataclass(frozen=True)
class Piece:
    """What a worker needs to encode one raster or one block of it (small, picklable)."""
    index: int
    path: str
    bands: tuple[int, ...]
    stretch: object              # core.geodata.raster.Stretch, computed once on the client
    spec: object                 # core.geodata.tiles.TileSpec
    n_grid: int                  # the client's tile count: the worker's grid must be the same
    start: int
    stop: int
    model: str                   # bundle path or URL every worker can read
    model_sha256: str
    device: str
    precision: str
    batch_size: int
    threads: int | None = None   # onnxruntime threads on the worker (None: its cores)
    readers: int | None = None


def _import():
    try:
        import distributed
    except ImportError:
        raise MissingDependency("--dask needs Dask distributed, which is not installed.",
                              "Install it: pip install -r requirements/distributed.txt (or scripts/setup.sh "
                              "distributed).") from None
    return distributed


def _scheme_host(address: str) -> tuple[str, str]:
    """(scheme, host) of a Dask address; no scheme is Dask's default, tcp."""
    from urllib.parse import urlsplit

    address = address.strip()
    scheme, sep, _ = address.partition("://")
    if not sep:
        scheme, address = "tcp", "tcp://" + address
    try:
        host = urlsplit(address).hostname or ""
    except ValueError:   # a malformed address: Dask names it when it connects
        host = ""
    return scheme.lower(), host.lower()


def plain_tcp_warning(address: str | None) -> str | None:
    """The warning to give before sending work to ``address``, or None.

    A Dask scheduler runs whatever any client that reaches its port submits, and plain tcp:// carries the job
    (tiles' embeddings, paths) unencrypted: an address off this machine (not loopback, ``localhost`` or this
    host's own name) over a plain comm gets a warning. ``local:N``, ``inproc://`` and ``tls://`` (Dask's
    certificates, mutual TLS) get none."""
    if not address or address.strip() == "local" or address.strip().startswith("local:"):
        return None
    scheme, host = _scheme_host(address)
    if scheme not in PLAIN_SCHEMES or _on_this_machine(host):
        return None
    return (f"{address.strip()} is a plain {scheme}:// address: the Dask scheduler there runs whatever any client "
            "that reaches its port sends, and the job crosses the network unencrypted. Use it only on a trusted "
            "private network; elsewhere give the cluster certificates and a tls:// address (docs/distributed.md).")


def _on_this_machine(host: str) -> bool:
    import ipaddress
    import socket

    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:   # a name: this host's own
        return host in {socket.gethostname().lower(), socket.getfqdn().lower()}
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def connect(address: str):
    """(client, cluster): a LocalCluster of N worker processes on loopback for ``local:N``, else a client of
    the scheduler at ``address`` (cluster None)."""
    distributed = _import()
    address = address.strip()
    if address.startswith("local:") or address == "local":
        n = address.partition(":")[2] or str(os.cpu_count() or 1)
        if not n.isdigit() or not 1 <= int(n) <= 256:
            raise InvalidInput(f"--dask {address}: the number of local workers is not a whole number 1..256.",
                                  "Write --dask local:2 for two worker processes.", param="dask")
        # two task threads a worker: one raster is read while another is encoded (the sessions are shared)
        cluster = distributed.LocalCluster(n_workers=int(n), threads_per_worker=2, processes=True,
                                           host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR)
        return distributed.Client(cluster), cluster
    tls = _scheme_host(address)[0] in TLS_SCHEMES
    if tls:
        import dask

        security = distributed.Security()   # Dask's configuration: distributed.comm.tls.*
        if not (security.tls_ca_file and security.tls_client_cert) \
                and not dask.config.get("distributed.client.security-loader", None):
            raise InvalidInput(f"--dask {address}: a TLS address, but Dask has no client certificate configured.",
                               "Set distributed.comm.tls.ca-file, .client.cert and .client.key in Dask's "
                               "configuration (e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE=ca.pem, "
                               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=node.pem, "
                               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=node.key; docs/distributed.md).",
                               param="dask")
    try:   # Client reads Dask's configured security (distributed.comm.tls.*, require-encryption) itself
        return distributed.Client(address, timeout="20s"), None
    except Exception as e:   # refused, timed out, a TLS handshake refused, or not a Dask scheduler at all
        fix = ("Start one (`dask scheduler`, then `dask worker ADDRESS` on each machine) and give its address, "
               "e.g. tls://10.0.0.5:8786 (tcp:// on a trusted private network only), or use --dask local:N.")
        if tls:
            fix = ("Check that the scheduler listens on tls:// and that the certificates in Dask's "
                   "distributed.comm.tls.* configuration are signed by the cluster's CA (docs/distributed.md).")
        raise SourceUnreadable(f"Cannot reach the Dask scheduler at {address} ({type(e).__name__}: {e}).",
                               fix) from None


# ------------------------------------------------------------------------------------------- worker

_WORKER_ENCODERS: dict = {}
_THREADS: int | None = None   # onnxruntime threads for this worker, set by the client (share_cores)
_LOADS = 0   # bundles loaded by this process (a worker loads one once, whatever the number of tasks)


def _worker_encoder(piece: Piece):
    """The encoder of this worker process for the piece's model, loaded on first use and kept."""
    from ..runtime.bundle import load_bundle
    from ..runtime.inference import Encoder

    threads = piece.threads or _THREADS
    key = (piece.model, piece.device, piece.precision, piece.batch_size, threads)
    enc = _WORKER_ENCODERS.get(key)
    if enc is None:
        bundle = load_bundle(piece.model)
        if bundle.sha256 != piece.model_sha256:
            raise ModelError(f"The bundle {piece.model} on this worker is not the client's (another sha256).",
                                  "Give every worker the same bundle (a shared folder or the same .rclip.zip).")
        enc = Encoder(bundle, device=piece.device, precision=piece.precision, batch_size=piece.batch_size,
                      threads=threads)
        _WORKER_ENCODERS[key] = enc
        global _LOADS
        _LOADS += 1
    return enc


def encode_piece(piece: Piece):
    """Run on a worker: the embeddings of tiles ``start:stop`` of the raster's grid, as core.pipeline.encode.Encoded.
    A raster that cannot be read comes back with its reason (the client skips it or stops, --strict)."""
    from ..geodata.tiles import make_grid
    from .encode import Encoded, encode_tiles
    from .sources import open_source

    try:
        encoder = _worker_encoder(piece)
        src, _ = open_source(piece.path)
        try:
            grid = make_grid(src, piece.spec)
            if len(grid) != piece.n_grid:
                raise SourceUnreadable(f"The worker sees {len(grid)} tiles in {piece.path}, the client "
                                      f"{piece.n_grid}.", "Give the workers the same raster (a shared path).", path=piece.path)
            kept, emb = encode_tiles(encoder, src, list(piece.bands), piece.stretch,
                                     sub_grid(grid, piece.start, piece.stop), None, None, piece.batch_size,
                                     piece.readers)
        finally:
            src.close()
    except RemoteClipError as e:
        return Encoded(piece.index, None, None, block=(piece.start, piece.stop), error=str(e))
    except Exception as e:   # a damaged block: GDAL/rasterio raise their own types
        return Encoded(piece.index, None, None, block=(piece.start, piece.stop), error=f"{type(e).__name__}: {e}")
    return Encoded(piece.index, kept + piece.start, emb, images_encoded=len(emb), block=(piece.start, piece.stop))


def sub_grid(grid, start: int, stop: int):
    """Tiles ``start:stop`` of a core.geodata.tiles.TileGrid as a TileGrid (the same rows, columns and windows)."""
    from ..geodata.tiles import TileGrid

    if start == 0 and stop == len(grid):
        return grid
    keep = grid._block_positions(np.arange(start, stop, dtype=np.int64))
    return TileGrid(grid.transform, grid.tile_px, grid.col_offsets, grid.row_offsets, grid.col_index,
                    grid.row_index, keep=keep)


# ------------------------------------------------------------------------------------------- client

def _set_threads(n: int) -> None:
    global _THREADS
    _THREADS = int(n)


def share_cores(client) -> dict[str, int]:
    """Give each worker process onnxruntime threads = its machine's cores / the worker processes there, so
    several workers on one machine (``dask worker --nworkers 4``, ``local:N``) do not each spin a thread
    per core (measured: two workers with all cores each ran at a quarter of one process's rate). A worker
    that restarts later keeps onnxruntime's default."""
    from collections import Counter

    cpus = client.run(os.cpu_count)
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    per_host = Counter(workers[a].get("host") for a in cpus if a in workers)
    out = {}
    for addr, n in cpus.items():
        out[addr] = max(1, (n or 1) // max(1, per_host.get(workers.get(addr, {}).get("host"), 1)))
        client.run(_set_threads, out[addr], workers=[addr])
    return out


def _blocks(n: int, batch_size: int) -> list[tuple[int, int]]:
    if n <= BLOCK_TILES:
        return [(0, n)]
    size = max(batch_size, BLOCK_TILES // batch_size * batch_size)
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def encode_on_cluster(job, plans, bundle, batch, cache, progress, is_cancelled, total):
    """Yield each raster's core.pipeline.encode.Encoded, computed on the cluster (or read from the cache)."""
    from .encode import Encoded, prepare_plan

    distributed = _import()
    client, cluster = connect(job.dask)
    futures = []
    try:
        waiting: dict[int, dict] = {}
        owner: dict[str, str] = {}
        token = uuid.uuid4().hex[:12]   # keys of this job only: another job on the cluster never shares results
        model = str(getattr(bundle, "source", None) or bundle.path)
        batch = int(batch)
        threads = job.run.threads          # None: each worker's share of its machine's cores
        if threads is None:
            share_cores(client)
        for p in plans:
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled")
            try:
                src, cached = prepare_plan(job, p, bundle, cache)
                src.close()
            except Exception as e:
                yield Encoded(p.index, None, None, error=str(e) if isinstance(e, RemoteClipError)
                              else f"{type(e).__name__}: {e}")
                continue
            if cached is not None:
                yield Encoded(p.index, cached[0], cached[1], cache_hit=True)
                continue
            blocks = _blocks(len(p.grid), batch)
            waiting[p.index] = {"left": len(blocks), "parts": []}
            for a, b in blocks:
                piece = Piece(p.index, p.path, tuple(p.bands), p.stretch, job.tiles, len(p.grid), a, b, model,
                              bundle.sha256, job.run.device, job.run.precision, batch, threads, job.run.readers)
                f = client.submit(encode_piece, piece, pure=False, key=f"remoteclip-{token}-{p.index}-{a}")
                futures.append(f)
                owner[f.key] = p.path
        done_tiles = 0
        failed: set[int] = set()
        pending = set(futures)
        while pending:
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled")
            try:
                finished = distributed.wait(pending, timeout=0.5, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                continue
            for f in finished:
                pending.discard(f)
                if f.status == "error":
                    exc = f.exception()
                    raise (type(exc) if isinstance(exc, RemoteClipError) else SourceUnreadable)(f"The cluster could not encode {owner.get(f.key, 'a raster')}: "
                                          f"{type(exc).__name__}: {exc}",
                                          "Check the workers' logs and memory (a worker killed again and again "
                                          "on one raster), or run without --dask.")
                enc = f.result()
                f.release()
                if enc.index in failed:
                    continue
                if enc.error is not None:
                    failed.add(enc.index)
                    waiting.pop(enc.index, None)
                    yield enc
                    continue
                w = waiting[enc.index]
                w["parts"].append(enc)
                w["left"] -= 1
                done_tiles += enc.block[1] - enc.block[0]
                if progress is not None:
                    progress(0.95 * done_tiles / max(total, 1), f"{done_tiles}/{total} tiles on the cluster")
                if w["left"] == 0:
                    parts = sorted(waiting.pop(enc.index)["parts"], key=lambda e: e.block[0])
                    kept = np.concatenate([e.kept for e in parts]).astype(np.int64)
                    emb = np.concatenate([e.emb for e in parts]).astype(np.float32)
                    yield Encoded(enc.index, kept, emb, images_encoded=len(emb))
    except BaseException:
        if futures:
            client.cancel(futures)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
