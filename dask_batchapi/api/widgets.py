"""Job progress displays: a tqdm text bar, a live ipywidgets display, static HTML.

:class:`TextProgress` and :class:`WidgetProgress` only draw; the update loop is
:class:`~dask_batchapi.progress.ProgressBase` (as distributed's ``TextProgressBar`` and
``ProgressWidget`` draw for its ``ProgressBar``). ipywidgets is imported when a widget is built,
never at import time, so the CLI and the workers do not pay for it.

The live widget and :func:`status_html` render the same HTML fragments, with stable CSS classes
for tests and browsers: ``batchapi-progress`` (the root), ``batchapi-status`` (``✓ succeeded``,
``✗ worker_error``, or the live status), ``batchapi-bar`` (``aria-valuenow`` = percent) with
its ``batchapi-bar-succeeded`` (green) and ``batchapi-bar-dead-lettered`` (red) parts,
``batchapi-percent``, ``batchapi-counts``, ``batchapi-items`` (per-item outcomes),
``batchapi-details``, ``batchapi-error``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from html import escape
from typing import IO
from urllib.parse import urlsplit

from tqdm import tqdm

from dask_batchapi.api.progress import (
    ProgressBase,
    ProgressSnapshot,
    count_noun,
    format_duration,
    format_items,
    format_summary,
    status_label,
)

__all__ = [
    "ProgressBase",
    "ProgressSnapshot",
    "TextProgress",
    "WidgetProgress",
    "format_summary",
    "progress_widget_or_text",
    "status_html",
]

logger = logging.getLogger(__name__)

_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} batches{postfix}"


class TextProgress(ProgressBase):
    """A tqdm bar on ``file`` (default ``sys.stderr``), then the summary line.

    On a terminal the bar redraws in place. Elsewhere (CI logs, subprocess pipes), where every
    redraw would be a new line, it writes at most one line every ``line_interval`` seconds,
    and only when something changed.
    """

    def __init__(
        self,
        poll: Callable[[], dict],
        interval: float = 0.25,
        file: IO[str] | None = None,
        line_interval: float = 5.0,
        desc: str | None = None,
    ):
        super().__init__(poll, interval)
        self.file = sys.stderr if file is None else file
        self.line_interval = line_interval
        self.desc = desc
        self._tty = _isatty(self.file)
        self._bar = None  # tqdm prints as soon as it is built: build it at the first draw
        self._last_line: tuple[float, tuple] | None = None

    def _draw(self, s: ProgressSnapshot) -> None:
        if self._tty:
            self._draw_tty(s)
        elif not s.terminal:  # the summary line says the final state
            self._draw_line(s)

    def _draw_stop(self, s: ProgressSnapshot) -> None:
        self._close()
        _write_line(self.file, format_summary(s))

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()  # ends the bar's line; a second close does nothing

    def _draw_tty(self, s: ProgressSnapshot) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=s.total,
                initial=s.done,
                file=self.file,
                desc=self._desc(s),
                bar_format=_BAR_FORMAT,
                postfix=_postfix(s),
            )
        if self._bar.total != s.total:
            self._bar.total = s.total
        self._bar.n = s.done
        self._bar.set_postfix_str(_postfix(s), refresh=False)
        self._bar.refresh()

    def _draw_line(self, s: ProgressSnapshot) -> None:
        now = time.monotonic()
        key = (s.status, s.done, s.total, s.failed_attempts)
        if self._last_line is not None:
            last_time, last_key = self._last_line
            if now - last_time < self.line_interval or key == last_key:
                return
        self._last_line = (now, key)
        meter = tqdm.format_meter
        line = meter(
            s.done,
            s.total,
            s.elapsed,
            prefix=self._desc(s),
            ascii=True,
            bar_format=_BAR_FORMAT,
            postfix=_postfix(s),
        )
        _write_line(self.file, line)

    def _desc(self, s: ProgressSnapshot) -> str:
        return self.desc if self.desc is not None else (s.api_name or "")


def _postfix(s: ProgressSnapshot) -> str:
    parts = [count_noun(s.failed_attempts, "failed attempt")]
    if s.dead_lettered:
        parts.append(f"{s.dead_lettered} dead-lettered")
    if s.item_failures:
        parts.append(f"{s.items_dead_lettered} item(s) dead-lettered")
    if s.rate is not None:
        parts.append(f"{s.rate:.1f} batches/s")
    parts.append(f"elapsed {format_duration(s.elapsed)}")
    if s.eta is not None:
        parts.append(f"ETA {format_duration(s.eta)}")
    parts.append(s.status)
    return ", ".join(parts)


def _isatty(file: IO[str]) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _write_line(file: IO[str], text: str) -> None:
    try:
        file.write(text + "\n")
    except UnicodeEncodeError:  # e.g. an ASCII-only pipe: ✓ becomes ?, the words stay
        encoding = getattr(file, "encoding", None) or "ascii"
        file.write(text.encode(encoding, "replace").decode(encoding) + "\n")
    file.flush()


# JupyterLab theme colours, with fallbacks for classic Notebook and exported HTML.
_GREEN = "var(--jp-success-color1, #4caf50)"
_RED = "var(--jp-error-color1, #f44336)"
_TRACK = "var(--jp-layout-color3, #e0e0e0)"
_ROW = "display:flex;align-items:center;gap:12px;flex-wrap:wrap"


def _status_fragment(s: ProgressSnapshot | None) -> str:
    if s is None:
        return '<span class="batchapi-status">waiting for status…</span>'
    colour = _GREEN if s.ok else _RED if s.terminal else "inherit"
    return (
        f'<span class="batchapi-status" style="font-weight:bold;color:{colour}">'
        f"{escape(status_label(s))}</span>"
    )


def _bar_fragment(s: ProgressSnapshot | None) -> str:
    total = s.total if s is not None else None
    if s is None or not total:  # unknown yet, or an empty job
        green, red = (100.0 if s is not None and s.ok else 0.0), 0.0
    else:
        green = min(100.0, 100 * s.succeeded / total)
        red = min(100.0 - green, 100 * s.dead_lettered / total)
    percent = s.percent if s is not None else None
    value = "" if percent is None else f' aria-valuenow="{percent}"'
    return (
        '<div style="display:flex;align-items:center;gap:6px">'
        f'<div class="batchapi-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100"'
        f'{value} style="display:flex;width:300px;height:14px;background:{_TRACK};'
        'border-radius:2px;overflow:hidden">'
        f'<div class="batchapi-bar-succeeded" style="width:{green:.2f}%;background:{_GREEN}"></div>'
        f'<div class="batchapi-bar-dead-lettered" style="width:{red:.2f}%;background:{_RED}"></div>'
        "</div>"
        f'<span class="batchapi-percent">{"?" if percent is None else f"{percent}%"}</span>'
        "</div>"
    )


def _counts_fragment(s: ProgressSnapshot | None) -> str:
    if s is None:
        return ""
    total = "?" if s.total is None else s.total
    parts = [f"{s.succeeded} succeeded"]
    if s.dead_lettered:
        parts.append(f"{s.dead_lettered} dead-lettered")
    parts += [count_noun(s.failed_attempts, "failed attempt"), f"{total} batches"]
    items = f' <span class="batchapi-items">{escape(format_items(s))}</span>'
    return f'<span class="batchapi-counts">{" / ".join(parts)}</span>{items}'


def _details_fragment(s: ProgressSnapshot | None) -> str:
    if s is None:
        return ""
    parts = [] if s.rate is None else [f"{s.rate:.1f} batches/s"]
    if s.eta is not None:
        parts.append(f"ETA {format_duration(s.eta)}")
    parts += [f"elapsed {format_duration(s.elapsed)}", count_noun(s.workers, "worker")]
    link = _dashboard_fragment(s.dashboard_link)
    html = f'<div class="batchapi-details">{" · ".join(parts + ([link] if link else []))}</div>'
    if s.error:
        html += f'<div class="batchapi-error" style="color:{_RED}">{escape(s.error)}</div>'
    html += _triggers_fragment(s)
    if s.interrupted and s.resume_command:
        html += (
            '<div class="batchapi-resume">driver interrupted; resume with '
            f"<code>{escape(s.resume_command)}</code></div>"
        )
    return html


def _triggers_fragment(s: ProgressSnapshot) -> str:
    """The job that submitted this one, and the jobs this one's handler submitted: each a
    ``batchapi-job-link`` naming the job, with the command that shows it."""
    parts = [f"triggered by {_job_link(s.triggered_by)}"] if s.triggered_by else []
    if s.triggered:
        parts.append("triggered " + ", ".join(_job_link(ref) for ref in s.triggered))
    if not parts:
        return ""
    return f'<div class="batchapi-triggers">{" · ".join(parts)}</div>'


def _job_link(ref: dict) -> str:
    api, job = escape(ref["api_name"]), escape(ref["job_id"])
    command = f"dask-batchapi get {api} {job}"
    return (
        f'<code class="batchapi-job-link" data-api="{api}" data-job="{job}" '
        f'title="{command}">{api}/{job}</code>'
    )


def _dashboard_fragment(link: str | None) -> str:
    if not link:
        return ""
    if urlsplit(link).scheme not in ("http", "https"):  # never a javascript: href from a store
        return f"dashboard {escape(link)}"
    return f'<a href="{escape(link)}" target="_blank" rel="noopener">dashboard</a>'


def _title_fragment(s: ProgressSnapshot | None) -> str:
    if s is None or not (s.api_name or s.job_id):
        return ""
    return f"<b>{escape(s.api_name or '')}</b> <code>{escape(s.job_id or '')}</code>"


def status_html(doc: dict) -> str:
    """Static HTML summary of a status document, for ``_repr_html_`` without a live widget.

    Every value from the document is escaped.

    >>> html = status_html({"job_status": {"status": "succeeded", "total_batch_count": 2,
    ...                     "batch_metrics": {"succeeded": 2}}})
    >>> "✓ succeeded" in html and "100%" in html
    True
    """
    s = ProgressSnapshot.from_status(doc)
    row = "".join([_title_fragment(s), _status_fragment(s), _bar_fragment(s), _counts_fragment(s)])
    return (
        f'<div class="batchapi-progress"><div style="{_ROW}">{row}</div>'
        f"{_details_fragment(s)}</div>"
    )


class WidgetProgress(ProgressBase):
    """Live notebook display of a job: status, a green/red bar, counts, rate, ETA, dashboard.

    ``widget`` is the root ipywidgets ``VBox``; ``values`` mirrors what is drawn (for tests).
    Displaying the object shows the widget and starts the update loop in a thread, so the
    kernel stays free while the job runs.

    >>> progress = WidgetProgress(job_status_poll)  # doctest: +SKIP
    >>> progress                                    # doctest: +SKIP
    """

    def __init__(self, poll: Callable[[], dict], interval: float = 0.25):
        super().__init__(poll, interval)
        import ipywidgets  # lazily: only notebooks need it

        # texts keep their natural width (an HBox would squeeze them onto two lines); the bar
        # takes the room that is left
        fixed = {"width": "auto", "flex": "0 0 auto"}
        self.title = ipywidgets.HTML(_title_fragment(None), layout=ipywidgets.Layout(**fixed))
        self.status = ipywidgets.HTML(_status_fragment(None), layout=ipywidgets.Layout(**fixed))
        self.bar = ipywidgets.HTML(_bar_fragment(None), layout=ipywidgets.Layout(flex="1 1 auto"))
        self.counts = ipywidgets.HTML(_counts_fragment(None), layout=ipywidgets.Layout(**fixed))
        self.details = ipywidgets.HTML(_details_fragment(None))
        row = ipywidgets.HBox(
            [self.title, self.status, self.bar, self.counts],
            layout=ipywidgets.Layout(align_items="center", grid_gap="12px", flex_flow="row wrap"),
        )
        self.widget = ipywidgets.VBox([row, self.details])
        self.widget.add_class("batchapi-progress")
        self.values: dict = {}

    def _draw(self, s: ProgressSnapshot) -> None:
        self.values = {
            "status": s.status,
            "label": status_label(s),
            "succeeded": s.succeeded,
            "failed_attempts": s.failed_attempts,
            "dead_lettered": s.dead_lettered,
            "items_succeeded": s.items_succeeded,
            "items_dead_lettered": s.items_dead_lettered,
            "items_not_attempted": s.items_not_attempted,
            "done": s.done,
            "total": s.total,
            "percent": s.percent,
            "terminal": s.terminal,
            "ok": s.ok,
            "error": s.error,
        }
        self.title.value = _title_fragment(s)
        self.status.value = _status_fragment(s)
        self.bar.value = _bar_fragment(s)
        self.counts.value = _counts_fragment(s)
        self.details.value = _details_fragment(s)

    def _ipython_display_(self, **kwargs) -> None:
        from IPython.display import display

        if self._update(self._poll()).terminal:  # an ended job: draw it final, no thread
            self.run()
            display(self.widget, **kwargs)
            return
        display(self.widget, **kwargs)
        self.start()


def _in_ipython_kernel() -> bool:
    if "IPython" not in sys.modules:  # IPython was never loaded: certainly no kernel
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def progress_widget_or_text(poll: Callable[[], dict], interval: float = 0.25) -> ProgressBase:
    """A :class:`WidgetProgress` inside a Jupyter kernel with ipywidgets, else a :class:`TextProgress`.

    >>> progress_widget_or_text(lambda: {}).__class__.__name__  # outside a kernel
    'TextProgress'
    """
    if _in_ipython_kernel():
        try:
            return WidgetProgress(poll, interval)
        except ImportError:
            logger.debug("ipywidgets not importable; showing text progress")
    return TextProgress(poll, interval)
