"""Getting a catalogue model inside QGIS: core's downloader over QGIS's network stack, in a QgsTask.

``qgis_transport`` is the transport ``core.runtime.download`` calls (url, start offset, headers -> status,
headers, chunks): the request goes through ``QgsNetworkAccessManager``, so the proxy, SSL and
authentication settings of QGIS (Settings > Options > Network) apply; an authentication
configuration id saved as ``RemoteCLIP/model_authcfg`` is added to each request. The body is
streamed (a 1.7 GB checkpoint never sits in memory). Redirects are followed here rather than by Qt
so that Hugging Face's ``X-Linked-Etag`` (the file's sha256, sent on the redirect) reaches core.

``PullTask`` runs ``core.runtime.models.pull`` (download + conversion) in the background with progress and
cancel; a cancelled download keeps its ``.part`` and the next Get resumes it.
"""

from __future__ import annotations

import time
import traceback

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsNetworkAccessManager, QgsSettings, QgsTask
from qgis.PyQt.QtCore import QEventLoop, QTimer, QUrl, pyqtSignal
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

LOG_TAG = "RemoteCLIP"
CHUNK = 1 << 20
REDIRECTS = (301, 302, 303, 307, 308)


def _spin(reply, ms: int = 200) -> None:
    """Run this thread's event loop until the reply has news, or ``ms`` passed."""
    loop = QEventLoop()
    reply.readyRead.connect(loop.quit)
    reply.finished.connect(loop.quit)
    reply.metaDataChanged.connect(loop.quit)
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(loop.quit)
    timer.start(ms)
    loop.exec()
    timer.stop()


def _headers(reply) -> dict[str, str]:
    return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in reply.rawHeaderPairs()}


def qgis_transport(url: str, start: int, headers: dict, timeout: float | None = None):
    """core.runtime.download transport through QGIS's network access manager (this thread's instance), on core's
    rules: ``timeout`` (default core.runtime.download.READ_TIMEOUT) seconds without an answer or without a byte is
    a stall (a TimeoutError in the body: core stops with "no data for N s", it does not retry), the
    redirects' X-Linked-* headers (the sha256) reach core whatever the final answer (a 416 included)."""
    from .core.errors import DownloadFailed
    from .core.runtime import download as core_download
    from .core.runtime.download import USER_AGENT, Response

    if timeout is None:
        timeout = core_download.READ_TIMEOUT

    authcfg = QgsSettings().value("RemoteCLIP/model_authcfg", "", type=str)
    linked: dict[str, str] = {}
    for _hop in range(10):
        req = QNetworkRequest(QUrl(url))
        req.setAttribute(QNetworkRequest.Attribute.RedirectPolicyAttribute, QNetworkRequest.RedirectPolicy.ManualRedirectPolicy)
        req.setRawHeader(b"User-Agent", USER_AGENT.encode())
        for k, v in headers.items():
            req.setRawHeader(k.encode("latin-1"), str(v).encode("latin-1"))
        if authcfg:
            QgsApplication.authManager().updateNetworkRequest(req, authcfg)
        reply = QgsNetworkAccessManager.instance().get(req)
        asked = time.monotonic()
        while reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute) is None and not reply.isFinished():
            _spin(reply)
            if time.monotonic() - asked > timeout:
                reply.abort()
                raise DownloadFailed(f"No answer from {url} in {timeout:g} s.",
                                      "Check the network and QGIS's proxy settings (Settings > Options > Network).")
        status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        hdrs = _headers(reply)
        if status is None:
            message = reply.errorString()
            reply.deleteLater()
            raise DownloadFailed(f"Cannot reach {url} ({message}).",
                                  "Check the network and QGIS's proxy settings (Settings > Options > Network), "
                                  "or copy the file from elsewhere into the models folder's downloads/ folder and "
                                  "click Get again (or use … > Convert a checkpoint file…).")
        if status in REDIRECTS and "location" in hdrs:
            linked.update({k: v for k, v in hdrs.items() if k.startswith("x-linked-")})
            url = reply.url().resolved(QUrl(hdrs["location"])).toString()
            reply.abort()
            reply.deleteLater()
            continue
        for k, v in linked.items():
            hdrs.setdefault(k, v)
        return Response(int(status), hdrs, _chunks(reply, timeout), lambda r=reply: (r.abort(), r.deleteLater()))
    raise DownloadFailed(f"{url}: too many redirects.", "Check the URL.")


def _chunks(reply, timeout: float):
    last = time.monotonic()   # of the last byte
    while True:
        n = reply.bytesAvailable()
        if n > 0:
            yield bytes(reply.read(min(n, CHUNK)))
            last = time.monotonic()
            continue
        if reply.isFinished():
            if reply.error() != QNetworkReply.NetworkError.NoError:
                raise OSError(reply.errorString())   # a dropped connection: core resumes it
            return
        _spin(reply)
        if time.monotonic() - last > timeout:   # a stall, not a dropped connection: core does not retry it
            raise TimeoutError(f"no data for {timeout:g} s")
        yield b""   # nothing yet: the downloader checks for cancel


class PullTask(QgsTask):
    """Download and convert a catalogue model (``core.runtime.models.pull``) in the background."""

    pulled = pyqtSignal(str)            # bundle folder
    failed = pyqtSignal(str, str)       # message, details
    cancelledByUser = pyqtSignal()
    statusChanged = pyqtSignal(str)

    def __init__(self, name: str, folder, url: str | None = None, transport=None):
        super().__init__(f"RemoteCLIP: get {name}", QgsTask.Flag.CanCancel)
        self.name = name
        self.folder = folder
        self.url = url
        self.transport = transport or qgis_transport
        self.bundle: str | None = None
        self.error: str | None = None
        self.details = ""
        self.was_cancelled = False
        self._last = 0.0

    def _progress(self, fraction: float, message: str) -> None:
        self.setProgress(max(0.0, min(100.0, 100.0 * fraction)))
        now = time.monotonic()
        if now - self._last > 0.25:      # the label need not repaint for every chunk
            self._last = now
            self.statusChanged.emit(message)

    def _work(self):
        from .core.runtime.models import pull

        return pull(self.name, self.folder, self.url, transport=self.transport, progress=self._progress,
                    is_cancelled=self.isCanceled)

    def run(self) -> bool:
        from .core.errors import Cancelled, RemoteClipError

        try:
            self.bundle = str(self._work())
            return True
        except Cancelled:
            self.was_cancelled = True
        except RemoteClipError as e:
            self.error = str(e)
        except Exception as e:   # a bug: the traceback goes to the log panel
            self.error = f"{type(e).__name__}: {e}"
            self.details = traceback.format_exc()
        return False

    def finished(self, ok: bool) -> None:
        if ok and self.bundle:
            self.pulled.emit(self.bundle)
        elif self.was_cancelled or (self.isCanceled() and self.error is None):
            self.cancelledByUser.emit()
        else:
            error = self.error or "The download stopped without a result."
            QgsMessageLog.logMessage(f"Getting {self.name} failed: {error}\n{self.details}", LOG_TAG, Qgis.MessageLevel.Critical)
            self.failed.emit(error, self.details)


class ConvertTask(PullTask):
    """Convert a checkpoint file the analyst has (``core.runtime.models.convert``, no torch) into the bundle ``out``."""

    def __init__(self, checkpoint, out, activation: str = "quick_gelu"):
        from pathlib import Path

        out = Path(out)
        super().__init__(out.name, out.parent)
        self.setDescription(f"RemoteCLIP: convert {Path(checkpoint).name}")
        self.checkpoint, self.out, self.activation = Path(checkpoint), out, activation

    def _work(self):
        from .core.runtime.models import convert

        return convert(self.checkpoint, self.out, activation=self.activation, name=self.out.name,
                       progress=self._progress, is_cancelled=self.isCanceled)
