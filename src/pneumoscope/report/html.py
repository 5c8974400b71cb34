"""The single self-contained HTML evaluation report.

:func:`write_report` assembles metrics, plots, gallery and run information into one
``report.html`` with every image embedded as a base64 data URI, so the report can be
e-mailed or archived as a single file and opened without a server or JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscope.evaluation.metrics import DEFAULT_CLASS_NAMES

from ..fileio import atomic_write_text
from .gallery import group_display_names

#: Shown prominently at the top of every report.
DISCLAIMER = (
    "Research tool only. This is not a diagnosis and not a medical device: its output must "
    "not be used for clinical decisions. Results on this test set do not guarantee performance "
    "on other hospitals, scanners or patient populations, and heat maps show what influenced the "
    "model, not where disease is."
)

_IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

_PLOT_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "roc": "ROC curve",
    "pr": "Precision-recall curve",
    "reliability": "Reliability diagram (calibration)",
}

_CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.3em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.disclaimer { background: #fff3cd; border: 2px solid #d39e00; border-radius: 6px; padding: 0.8em 1em;
              font-weight: bold; }
.warnings { background: #fdecea; border-left: 4px solid #c00000; padding: 0.5em 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-family: "DejaVu Sans Mono", monospace; }
.plots { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
.credit { margin-top: 2em; font-size: 0.9em; color: #555; }
"""

_HEADLINE = (
    ("accuracy", "Accuracy"),
    ("sensitivity", "Sensitivity (recall, {pos})"),
    ("specificity", "Specificity"),
    ("precision", "Precision (PPV, {pos})"),
    ("f1", "F1 ({pos})"),
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC (average precision)"),
    ("threshold", "Decision threshold (P ≥ threshold → {pos})"),
    ("n", "Cases (n)"),
)


def _esc(value: Any) -> str:
    """HTML-escape any value (quotes included, so it is safe inside attributes too)."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """Format a metric value for display: floats to 4 decimals, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def _data_uri(path: Path) -> str:
    """Read an image file and return it as a base64 ``data:`` URI."""
    mime = _IMAGE_MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: unsupported image type for the report (expected one of {sorted(_IMAGE_MIME)})")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path}: image file is empty")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure(path: str | os.PathLike[str], caption: str) -> str:
    """An embedded ``<figure>`` for an image file, captioned (escaped) with ``caption``."""
    p = Path(path)
    return (
        f'<figure><img src="{_data_uri(p)}" alt="{_esc(caption)}">'
        f"<figcaption>{_esc(caption)} <small>({_esc(p.name)})</small></figcaption></figure>"
    )


def figure_html(path: str | os.PathLike[str], caption: str) -> str:
    """An embedded ``<figure>`` for a trusted section fragment (image as a data URI, caption escaped)."""
    return _figure(path, caption)


def _class_names_from(metrics: Mapping[str, Any]) -> tuple[str, str]:
    """Class names as used in ``metrics['per_class']``, falling back to the defaults."""
    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and len(per_class) == 2:
        neg, pos = (str(k) for k in per_class)
        return neg, pos
    return DEFAULT_CLASS_NAMES


def _metrics_html(metrics: Mapping[str, Any], class_names: tuple[str, str]) -> str:
    """Headline metric table, warnings, per-class table and confusion matrix table."""
    neg, pos = class_names
    ci = metrics.get("ci95") if isinstance(metrics.get("ci95"), Mapping) else {}
    rows = []
    for key, label in _HEADLINE:
        value = _fmt(metrics.get(key))
        if key == "n" and "n_positive" in metrics and "n_negative" in metrics:
            value += f" ({_fmt(metrics['n_positive'])} {pos} / {_fmt(metrics['n_negative'])} {neg})"
        interval = ci.get(key) if ci else None
        if interval and metrics.get(key) is not None:
            value += f"  (95% CI {_fmt(interval[0])} to {_fmt(interval[1])})"
        if key == "threshold" and metrics.get("threshold_source"):
            value += f"  [{metrics['threshold_source']}]"
        rows.append(f'<tr><th>{_esc(label.format(pos=pos))}</th><td class="num">{_esc(value)}</td></tr>')
    parts = ['<h2>Headline metrics</h2>', f"<table>{''.join(rows)}</table>"]
    parts.append(_uncertainty_html(metrics, pos))

    warnings = metrics.get("warnings") or []
    if warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
        parts.append(f'<div class="warnings"><strong>Warnings</strong><ul>{items}</ul></div>')

    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and per_class:
        body = "".join(
            f"<tr><th>{_esc(name)}</th>"
            + "".join(f'<td class="num">{_esc(_fmt(vals.get(k)))}</td>' for k in ("precision", "recall", "f1", "support"))
            + "</tr>"
            for name, vals in per_class.items()
            if isinstance(vals, Mapping)
        )
        for avg in ("macro", "weighted"):
            vals = metrics.get(avg)
            if isinstance(vals, Mapping):
                body += (
                    f"<tr><th>{avg} average</th>"
                    + "".join(f'<td class="num">{_esc(_fmt(vals.get(k)))}</td>' for k in ("precision", "recall", "f1"))
                    + "<td></td></tr>"
                )
        parts.append(
            "<h3>Per class</h3><table><tr><th>class</th><th>precision</th><th>recall</th>"
            f"<th>F1</th><th>support</th></tr>{body}</table>"
        )
    return "\n".join(parts)


def _uncertainty_html(metrics: Mapping[str, Any], pos: str) -> str:
    """How to read the intervals, the operating point and the calibration figures."""
    notes = []
    how = metrics.get("ci_method")
    if isinstance(how, Mapping):
        notes.append(
            f"Intervals are {_esc(how.get('kind'))} 95% intervals from {_esc(how.get('n_resamples'))} resamples of the "
            f"{_esc(how.get('n_units'))} test {_esc(how.get('unit'))}s: another test set of this size from the same "
            "source would give figures in about this range. They do not cover a different hospital or scanner."
        )
    op = metrics.get("operating_point")
    if isinstance(op, Mapping):
        target = f" (target sensitivity {_fmt(op.get('target_sensitivity'))})" if op.get("method") == "sensitivity" else ""
        notes.append(
            f"The threshold was chosen by <b>{_esc(op.get('method'))}</b>{_esc(target)} on {_esc(op.get('n'))} "
            f"validation images ({_esc(op.get('val_source', 'validation'))}), where it gave sensitivity "
            f"{_esc(_fmt(op.get('sensitivity')))} and specificity {_esc(_fmt(op.get('specificity')))}; the test set "
            "played no part in choosing it."
        )
    cal = metrics.get("calibration")
    if isinstance(cal, Mapping):
        notes.append(
            f"Calibration of P({_esc(pos)}) at temperature {_esc(_fmt(metrics.get('temperature')))}: expected "
            f"calibration error {_esc(_fmt(cal.get('ece')))}, maximum {_esc(_fmt(cal.get('mce')))} over "
            f"{_esc(cal.get('n_bins'))} bins, Brier score {_esc(_fmt(cal.get('brier')))}. An ECE of 0.05 means "
            "the stated probabilities are off by 5 points on average."
        )
    return "".join(f"<p>{n}</p>" for n in notes)


def _confusion_table(metrics: Mapping[str, Any], class_names: tuple[str, str]) -> str:
    """The confusion matrix as a text table (readable without images, copyable)."""
    cm = metrics.get("confusion_matrix")
    try:
        (tn, fp), (fn, tp) = cm  # type: ignore[misc]
    except (TypeError, ValueError):
        return ""
    neg, pos = (_esc(c) for c in class_names)
    return (
        f"<table><tr><th>true \\ predicted</th><th>{neg}</th><th>{pos}</th></tr>"
        f'<tr><th>{neg}</th><td class="num">{_esc(tn)}</td><td class="num">{_esc(fp)}</td></tr>'
        f'<tr><th>{pos}</th><td class="num">{_esc(fn)}</td><td class="num">{_esc(tp)}</td></tr></table>'
    )


def _info_value(value: Any) -> str:
    """Render a run-info value as text: containers as JSON, everything else via str()."""
    if isinstance(value, (Mapping, list, tuple)):
        try:
            return json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    title: str,
    metrics: dict[str, Any],
    plots: dict[str, Path],
    gallery: Path | None = None,
    sections: list[tuple[str, str]] | None = None,
    run_info: dict[str, Any] | None = None,
    credit: str | None = None,
    training_curves: Path | None = None,
) -> Path:
    """Write ``out_dir/report.html``: one self-contained file with all images embedded.

    Layout: title, disclaimer (:data:`DISCLAIMER`), headline metrics, any metric
    warnings, per-class table, confusion matrix (table and image), ROC and PR curves
    (then any other entries of ``plots``), the training curves, the gallery, the extra
    ``sections`` in order, a run-information table and the credit line. Every string that comes from the
    caller or the data (title, names, keys, values, file names, credit) is
    HTML-escaped; only the bodies of ``sections`` are inserted as-is.

    Args:
        out_dir: Directory for ``report.html`` (created if missing).
        title: Report title.
        metrics: Dict from :func:`pneumoscope.evaluation.metrics.compute_metrics`;
            missing entries are shown as n/a.
        plots: ``{name: image path}``, typically from
            :func:`pneumoscope.evaluation.plots.save_evaluation_plots`.
        gallery: Optional gallery image from :func:`render_gallery`.
        sections: Extra ``(heading, HTML fragment)`` sections. The heading is escaped;
            the fragment is trusted HTML and must come from code, not from data.
        run_info: Key/value pairs (checkpoint, data folder, seed, versions, ...).
        credit: Optional credit/attribution line.
        training_curves: Optional ``curves.png`` of the run (loss, AUC and learning rate
            per epoch, from :func:`pneumoscope.training.curves.plot_training_curves`).

    Returns:
        Path of the written ``report.html``.

    Raises:
        FileNotFoundError: If a plot or gallery image does not exist.
        ValueError: If an image is empty or of an unsupported type.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = _class_names_from(metrics)

    body: list[str] = [
        f"<h1>{_esc(title)}</h1>",
        f'<div class="disclaimer" role="note">⚠ {_esc(DISCLAIMER)}</div>',
        _metrics_html(metrics, class_names),
    ]

    # Known plots first in a fixed order, then any extra ones in the caller's order.
    ordered = [k for k in _PLOT_TITLES if k in plots] + [k for k in plots if k not in _PLOT_TITLES]
    cm_table = _confusion_table(metrics, class_names)
    if cm_table or "confusion_matrix" in plots:
        body.append("<h2>Confusion matrix</h2>")
        body.append(cm_table)
        if "confusion_matrix" in plots:
            body.append(_figure(plots["confusion_matrix"], "Confusion matrix (rows: true class)"))
    curves = [k for k in ordered if k != "confusion_matrix"]
    if curves:
        body.append("<h2>Curves</h2>")
        figs = "".join(_figure(plots[k], _PLOT_TITLES.get(k, k)) for k in curves)
        body.append(f'<div class="plots">{figs}</div>')

    if training_curves is not None:
        body.append("<h2>Training</h2>")
        body.append(_figure(training_curves, "Loss, validation ROC AUC and learning rate per epoch (stages shaded, the kept epoch "
                                              "dashed; the validation pointing game where the run selected on it)"))

    if gallery is not None:
        names = ", ".join(group_display_names(class_names).values())
        body.append("<h2>Case gallery</h2>")
        body.append(
            f"<p>Selected test cases grouped as {_esc(names)}; the border colour shows the group "
            f"and the title the prediction, P({_esc(class_names[1])}) and confidence.</p>"
        )
        body.append(_figure(gallery, "Case gallery"))

    for heading, fragment in sections or []:
        body.append(f"<h2>{_esc(heading)}</h2>\n{fragment}")

    if run_info:
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_info_value(v))}</td></tr>" for k, v in run_info.items())
        body.append(f"<h2>Run information</h2><table>{rows}</table>")

    if credit:
        body.append(f'<p class="credit">{_esc(credit)}</p>')

    document = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )
    target = out / "report.html"
    atomic_write_text(target, document)
    return target
