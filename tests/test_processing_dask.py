"""The Processing algorithms on a Dask cluster (the advanced DASK parameter). Apart from test_processing.py
because the QGIS 3.40/3.44 legs (scripts/test.sh) run that file on QGIS's own Python, which does not carry
the optional Dask group (requirements/distributed.txt); the host leg runs this one."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import require
from qgis.core import QgsProcessingException, QgsProcessingFeedback
from test_processing import LABELS, base_params, open_output, plugin, rgb_byte, run  # noqa: F401 (fixtures)


def test_a_dask_scheduler_gives_the_one_process_output(plugin, rgb_byte, tiny_bundle, tmp_path):  # noqa: F811
    """DASK (advanced): the same job on a local cluster of one worker process writes what one process
    writes; a layer QGIS reads through its provider (here: resampled) is refused with the way out."""
    require(importlib.util.find_spec("distributed") is not None,
            "dask distributed is not installed (pip install -r requirements/distributed.txt)")

    class Said(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.texts = []

        def setProgressText(self, text):  # noqa: N802 (QGIS's name)
            self.texts.append(text)
            super().setProgressText(text)

        def pushWarning(self, text):  # noqa: N802 (QGIS's name)
            self.texts.append(text)
            super().pushWarning(text)

    def labels(out, **extra):
        said = Said()
        run("labeltiles", base_params(rgb_byte, tiny_bundle, out, LABELS=LABELS, TILE_SIZE=128, **extra), said)
        on_cluster = any("on the cluster" in t for t in said.texts)
        assert not any("plain tcp://" in t for t in said.texts)   # local:N and no cluster: no warning
        return sorted((f["row"], f["col"], f["label"], round(f["score"], 5))
                      for f in open_output(out).getFeatures()), on_cluster

    alone, clustered = labels(tmp_path / "alone.gpkg")
    assert len(alone) > 10 and not clustered
    assert labels(tmp_path / "dask.gpkg", DASK="local:1") == (alone, True)   # encoded by the worker, same output
    with pytest.raises(QgsProcessingException) as err:   # QGIS's type: only the message comes through
        run("labeltiles", base_params(rgb_byte, tiny_bundle, tmp_path / "no.gpkg", LABELS=LABELS, DASK="local:1",
                                      PIXEL_SIZE=60.0))
    assert "rasterio_RGB" in str(err.value) and "GeoTIFF" in str(err.value)   # the layer, and what to save it as
    assert not (tmp_path / "no.gpkg").exists()


def test_a_plain_tcp_scheduler_off_this_machine_is_warned_about(plugin, rgb_byte, tiny_bundle, tmp_path):  # noqa: F811
    """A scheduler at a network address over plain tcp://: the algorithm warns (feedback.pushWarning) that the
    cluster runs whatever reaches its port and the job travels unencrypted, then runs; local:N is not warned
    about (test above)."""
    require(importlib.util.find_spec("distributed") is not None,
            "dask distributed is not installed (pip install -r requirements/distributed.txt)")
    import logging
    import socket

    import distributed
    import psutil

    ips = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family == socket.AF_INET and not a.address.startswith("127.")]
    if not ips:
        pytest.skip("this machine has no network address to start a scheduler on")

    class Warned(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.warnings = []

        def pushWarning(self, text):  # noqa: N802 (QGIS's name)
            self.warnings.append(text)
            super().pushWarning(text)

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host=ips[0],
                                  dashboard_address=None, silence_logs=logging.ERROR) as lc:
        said = Warned()
        out = tmp_path / "remote.gpkg"
        run("labeltiles", base_params(rgb_byte, tiny_bundle, out, LABELS=LABELS, TILE_SIZE=128,
                                      DASK=lc.scheduler_address), said)
    warned = [w for w in said.warnings if "plain tcp://" in w]
    assert len(warned) == 1 and lc.scheduler_address in warned[0] and "tls://" in warned[0]
    assert open_output(out).featureCount() > 10
