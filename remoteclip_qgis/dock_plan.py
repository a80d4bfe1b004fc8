"""The plan line above Run: what Run would do (core.pipeline.plan_job: tiles and time, no pixel read, no model
run), worked out in a worker thread and handed back to the dock's thread."""

from __future__ import annotations

import contextlib
import html

from qgis.PyQt.QtCore import QObject, QRunnable, pyqtSignal

from .core.errors import RemoteClipError


def plan_html(plan) -> str:
    """The plan line for a core.pipeline.Plan: tiles, and the time once this model has run here."""
    from .core.pipeline import MAX_TILES, duration_text

    text = f"Plan: {plan.n_tiles:,} tiles of {plan.tile_px[0]} × {plan.tile_px[1]} px"
    if plan.seconds is not None:
        text += f", {duration_text(plan.seconds)} ({plan.rate:.1f} tiles/s measured here)"
    else:
        text += " (the time is known after a first run of this model here)"
    if plan.n_tiles > MAX_TILES:
        text += ". That is many: Run asks first"
    return html.escape(text, quote=False) + "."


class PlanRun(QRunnable):
    def __init__(self, relay, generation: int, job):
        super().__init__()
        self.relay, self.generation, self.job = relay, generation, job

    def run(self) -> None:
        self.relay.work(self.generation, self.job)


class PlanRelay(QObject):
    """Works a plan out in a worker thread and hands it to the dock's thread (a queued signal)."""

    planned = pyqtSignal(int, object, str)   # generation, core.pipeline.Plan or None, the problem

    def work(self, generation: int, job) -> None:
        from .core.pipeline import plan_job

        try:
            plan, problem = plan_job(job), ""
        except RemoteClipError as e:
            plan, problem = None, e.problem
        except Exception as e:  # a bug: the plan line says so; Run reports it in full
            plan, problem = None, f"could not be worked out ({type(e).__name__}: {e})"
        with contextlib.suppress(RuntimeError):   # the dock was closed meanwhile
            self.planned.emit(generation, plan, problem)
