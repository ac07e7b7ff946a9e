"""ReportContext (what a run report shows) -> report.html / report.md. Every value from the
run (prompts, responses, config) is escaped: samples are model output and may contain anything."""

from __future__ import annotations

import base64
import json
import mimetypes
import re
from dataclasses import dataclass, field
from html import escape, unescape
from pathlib import Path
from typing import Any

from tether.diagnostics.findings import Finding
from tether.diagnostics.trace import fmt


@dataclass
class ReportContext:
    """Everything the HTML and Markdown renderers show; paths are relative to the report."""

    title: str
    run_dir: Path
    n_iterations: int
    findings: list[Finding]
    summary: list[tuple[str, float, float, float, float]]  # key, first, last, min, max
    plots: list[tuple[str, str]]  # (caption, relative path)
    samples: list[tuple[int, list[dict[str, Any]]]]  # (iteration, rows best first)
    config_text: str = ""
    eval: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    sections: list["Section"] = field(default_factory=list)  # shown first, before the doctor


@dataclass(frozen=True)
class Section:
    """An extra section a caller puts at the top (``tether demo``: its evaluation); the caller
    escapes what it shows."""

    title: str
    html: str
    markdown: str


SEVERITY_COLORS = {"critical": "#b3261e", "warning": "#a15c00", "info": "#1f5fa8"}
RESPONSE_CHARS = 600  # longer responses are cut in the tables (samples.jsonl has them whole)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.meta { color: #666; } .ok { color: #1b7f3b; font-weight: 600; }
.finding { border-left: 6px solid; padding: 0.5rem 1rem; margin: 0.8rem 0; background: #fafafa; }
.finding h3 { margin: 0 0 0.3rem 0; font-size: 1.05rem; } .finding p { margin: 0.2rem 0; }
.sev { font-size: 0.75rem; font-weight: 700; text-transform: uppercase; color: white; padding: 1px 6px;
       border-radius: 3px; margin-right: 0.4rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 600px; white-space: pre-wrap; word-break: break-word; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; } pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; }
"""


def _num(value: Any) -> str:
    return fmt(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else escape(str(value))


def _clip(text: Any) -> str:
    text = str(text if text is not None else "")
    return text if len(text) <= RESPONSE_CHARS else text[:RESPONSE_CHARS] + " …"


def render_html(ctx: ReportContext) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(ctx.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(ctx.title)}</h1>",
        f'<p class="meta">{escape(str(ctx.run_dir))} · {ctx.n_iterations} iterations</p>',
    ]
    for section in ctx.sections:
        parts.append(f"<h2>{escape(section.title)}</h2>{section.html}")
    parts.append("<h2>Doctor</h2>")
    if not ctx.findings:
        parts.append('<p class="ok">No findings: every rule that had its metrics passed.</p>')
    for f in ctx.findings:
        color = SEVERITY_COLORS[f.severity]
        parts.append(
            f'<div class="finding" style="border-color:{color}">'
            f'<h3><span class="sev" style="background:{color}">{f.severity}</span>{escape(f.title)} '
            f"<code>{escape(f.rule)}</code></h3>"
            f"<p><b>Evidence:</b> {escape(f.evidence)}</p>"
            f"<p><b>Likely cause:</b> {escape(f.cause)}</p>"
            f"<p><b>Try:</b> {escape(f.fix)}</p></div>"
        )
    if ctx.summary:
        parts.append("<h2>At a glance</h2><table><tr><th>metric</th><th>first</th><th>last</th><th>min</th><th>max</th></tr>")
        for key, *values in ctx.summary:
            cells = "".join(f'<td class="num">{_num(v)}</td>' for v in values)
            parts.append(f"<tr><td><code>{escape(key)}</code></td>{cells}</tr>")
        parts.append("</table>")
    parts.append("<h2>Metrics</h2>")
    for caption, path in ctx.plots:
        parts.append(f'<figure><img src="{escape(path)}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>')
    if ctx.samples:
        parts.append("<h2>Samples</h2>")
        for iteration, rows in ctx.samples:
            parts.append(f"<h3>Iteration {iteration}</h3><table><tr><th>prompt</th><th>response</th><th>score</th><th>KL</th><th>length</th><th>EOS</th></tr>")
            for row in rows:
                parts.append(
                    f'<tr><td class="text">{escape(_clip(row.get("prompt")))}</td>'
                    f'<td class="text">{escape(_clip(row.get("response")))}</td>'
                    + "".join(f'<td class="num">{_num(row.get(k, ""))}</td>' for k in ("score", "kl", "length", "ended_with_eos"))
                    + "</tr>"
                )
            parts.append("</table>")
    if ctx.eval:
        parts.append(f"<h2>Evaluation (eval.json)</h2><pre>{escape(json.dumps(ctx.eval, indent=2))}</pre>")
    parts.append("<h2>Config (config.yaml)</h2>")
    parts.append(f"<pre>{escape(ctx.config_text)}</pre>" if ctx.config_text else "<p>No config.yaml in the run directory.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_IMG_SRC = re.compile(r'<img src="([^"]+)"')


def embed_images(html: str, base: Path) -> str:
    """Inline every ``<img src="relative/file.png">`` whose file exists under ``base`` as a
    data URI, so report.html alone carries its plots (mailed, uploaded as a CI artifact, or
    copied off a cluster); ``data-file`` keeps the name of the file beside it."""

    def inline(match: re.Match) -> str:
        name = unescape(match.group(1))
        path = Path(base) / name
        if name.startswith("data:") or "://" in name or not path.is_file():
            return match.group(0)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img src="data:{kind};base64,{data}" data-file="{escape(name)}"'

    return _IMG_SRC.sub(inline, html)


def _md_cell(value: Any) -> str:
    text = _num(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(ctx: ReportContext) -> str:
    lines = [f"# {ctx.title}", "", f"`{ctx.run_dir}` · {ctx.n_iterations} iterations", ""]
    for section in ctx.sections:
        lines += [f"## {section.title}", "", section.markdown.rstrip("\n"), ""]
    lines += ["## Doctor", ""]
    if not ctx.findings:
        lines += ["No findings: every rule that had its metrics passed.", ""]
    for f in ctx.findings:
        lines += [
            f"### {f.severity.upper()}: {f.title} (`{f.rule}`)",
            "",
            f"- **Evidence:** {f.evidence}",
            f"- **Likely cause:** {f.cause}",
            f"- **Try:** {f.fix}",
            "",
        ]
    if ctx.summary:
        lines += ["## At a glance", "", "| metric | first | last | min | max |", "|---|---:|---:|---:|---:|"]
        lines += [f"| `{key}` | " + " | ".join(_md_cell(v) for v in values) + " |" for key, *values in ctx.summary]
        lines.append("")
    lines += ["## Metrics", ""]
    lines += [f"![{caption}]({path})\n" for caption, path in ctx.plots]
    if ctx.samples:
        lines += ["## Samples", ""]
        for iteration, rows in ctx.samples:
            lines += [f"### Iteration {iteration}", "", "| prompt | response | score | KL | length | EOS |", "|---|---|---:|---:|---:|---|"]
            for row in rows:
                cells = [_clip(row.get("prompt")), _clip(row.get("response"))] + [row.get(k, "") for k in ("score", "kl", "length", "ended_with_eos")]
                lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
            lines.append("")
    if ctx.eval:
        lines += ["## Evaluation (eval.json)", "", "```json", json.dumps(ctx.eval, indent=2), "```", ""]
    lines += ["## Config (config.yaml)", ""]
    lines += ["```yaml", ctx.config_text.rstrip("\n"), "```"] if ctx.config_text else ["No config.yaml in the run directory."]
    return "\n".join(lines) + "\n"
