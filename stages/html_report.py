"""Render a :class:`~stages.report_content.ReportContent` as one self-contained HTML page.

Every figure is embedded as a ``data:image/png;base64`` URI, the page has no script, and a
Content-Security-Policy meta tag forbids any fetch other than ``data:`` images, so the page can
be mailed, archived or opened offline and makes no outside request.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from stages.report_content import (
    LatentRow,
    Provenance,
    ReportContent,
    flatten,
    format_value,
)

__all__ = ["PAGE_CSP", "data_uri", "render_html"]

PAGE_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 1em 2em;
       color: #1b1b1b; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
nav a { margin-right: 1em; } figure { margin: 0 0 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; margin-top: 0.4em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; font-size: 0.95em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.inactive td { color: #999; } code { font-size: 0.95em; }
.notes li { color: #8a4b00; }
"""


def data_uri(png: bytes) -> str:
    """PNG bytes → ``data:image/png;base64,...``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: Sequence[int] = (),
    row_class: Sequence[str] | None = None,
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{escape(c)}</td>' if j in numeric else f"<td>{escape(c)}</td>"
            for j, c in enumerate(row)
        )
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n"


def _metrics(metrics) -> str:
    if not metrics:
        return "<p><em>No metrics available.</em></p>\n"
    rows = [(name, format_value(metrics[name])) for name in sorted(metrics)]
    return _table(("metric", "value"), rows, numeric=(1,))


def _latents(latents: Sequence[LatentRow]) -> str:
    rows = [
        (f"z{r.latent}", f"{r.kl:.3f}", f"{r.mu_std:.3f}", "yes" if r.active else "no")
        for r in latents
    ]
    classes = ["" if r.active else "inactive" for r in latents]
    return _table(("latent", "KL (nats)", "std of μ", "active"), rows, (1, 2), classes)


def _provenance(prov: Provenance) -> str:
    commit = f"<code>{escape(prov.commit)}</code>" if prov.commit else "unknown (no git repository)"
    out = [f"<p>git commit: {commit}</p>\n"]
    if prov.lock_entries:
        rows = [
            (e.path, e.md5, "" if e.size is None else str(e.size), e.stage)
            for e in prov.lock_entries
        ]
        source = escape(prov.lock_file or "dvc.lock")
        out.append(f"<p>Input hashes recorded in <code>{source}</code>:</p>\n")
        out.append(_table(("input", "md5", "bytes", "stage"), rows, numeric=(2,)))
    else:
        out.append("<p>dvc.lock: no entries for the inputs.</p>\n")
    return "".join(out)


def render_html(content: ReportContent) -> str:
    """The report page: summary, metrics, figures, latents, notes, params, provenance."""
    sections: list[tuple[str, str, str]] = [("metrics", "Metrics", _metrics(content.metrics))]
    for i, fig in enumerate(content.figures):
        body = (
            f'<figure><img src="{data_uri(fig.png)}" alt="{escape(fig.title)}">'
            f"<figcaption>{escape(fig.caption)}</figcaption></figure>\n"
        )
        sections.append((f"figure-{i}", fig.title, body))
    if content.latents:
        sections.append(("latents", "Latents (sorted by KL)", _latents(content.latents)))
    if content.notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in content.notes)
        sections.append(("notes", "Notes", f'<ul class="notes">{items}</ul>\n'))
    if content.params is not None:
        rows = [(k, format_value(v)) for k, v in flatten(content.params).items()]
        sections.append(("params", "Params", _table(("param", "value"), rows)))
    sections.append(("provenance", "Provenance", _provenance(content.provenance)))

    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    summary = "".join(f"<li>{escape(line)}</li>" for line in content.summary)
    body = "".join(
        f'<section id="{sid}"><h2>{escape(t)}</h2>\n{b}</section>\n' for sid, t, b in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{PAGE_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(content.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{escape(content.title)}</h1>\n<ul>{summary}</ul>\n<nav>{nav}</nav>\n{body}"
        "</body>\n</html>\n"
    )
