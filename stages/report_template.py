"""Build ``plots/template.html``: the offline page template for ``dvc plots show`` / ``diff``.

DVC fills an HTML template by plain text replacement of ``{plot_divs}``, ``{refresh_tag}`` and
``{scripts}``; its vega renderer only ever adds ``<script src="https://cdn...">`` tags through
``{scripts}``. This template therefore has no ``{scripts}`` placeholder and inlines the vendored
``vega``, ``vega-lite`` and ``vega-embed`` builds from ``plots/vendor/`` (BSD-3-Clause; their
license texts are copied into the page), so the rendered page makes no outside request.
A Content-Security-Policy meta tag additionally blocks any network fetch.

Regenerate after changing the vendored files::

    python -m stages.report_template plots/vendor plots/template.html
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from stages.atomic import write_text

__all__ = ["VENDORED", "PAGE_CSP", "build_plots_template", "write_plots_template"]

#: (script file, license file, package label), in load order: vega-embed needs the other two.
VENDORED: tuple[tuple[str, str, str], ...] = (
    ("vega.min.js", "LICENSE.vega", "vega 5.20.2"),
    ("vega-lite.min.js", "LICENSE.vega-lite", "vega-lite 5.2.0"),
    ("vega-embed.min.js", "LICENSE.vega-embed", "vega-embed 6.18.2"),
)

#: Vega compiles expressions with ``Function`` (needs 'unsafe-eval'); DVC image plots are files
#: next to the page or data URIs. Nothing may be fetched over the network.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data: blob: file:; font-src data:"
)

_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)

_HEAD = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
{{refresh_tag}}
<title>gmg plots</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-spacing: 15px; }}
.vega-embed {{ margin: 0.5em 1em 1.5em 0; }}
</style>
"""

_TAIL = """</head>
<body>
<h1>gmg plots</h1>
{plot_divs}
</body>
</html>
"""


def _script(js: str) -> str:
    body = _SOURCE_MAP.sub("", js).rstrip()
    if re.search(r"</script|<!--", body, re.IGNORECASE):
        raise ValueError("vendored script contains '</script' or '<!--' and cannot be inlined")
    return f"<script>\n{body}\n</script>\n"


def build_plots_template(vendor_dir: Path | str) -> str:
    """The template text: inlined vendored scripts, their licenses, ``{plot_divs}``."""
    vendor_dir = Path(vendor_dir)
    parts = [_HEAD.format(csp=PAGE_CSP)]
    for script, license_file, label in VENDORED:
        for name in (script, license_file):
            if not (vendor_dir / name).is_file():
                raise FileNotFoundError(f"{vendor_dir / name}: vendored file missing")
        notice = (vendor_dir / license_file).read_text(encoding="utf-8").strip()
        if "--" in notice:
            raise ValueError(f"{vendor_dir / license_file}: '--' cannot go in an HTML comment")
        parts.append(f"<!-- {label}, BSD-3-Clause:\n{notice}\n-->\n")
        parts.append(_script((vendor_dir / script).read_text(encoding="utf-8")))
    parts.append(_TAIL)
    return "".join(parts)


def write_plots_template(vendor_dir: Path | str, out: Path | str) -> None:
    write_text(out, build_plots_template(vendor_dir))


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m stages.report_template VENDOR_DIR OUT_HTML")
    write_plots_template(sys.argv[1], sys.argv[2])
