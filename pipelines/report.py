"""The human view of a run: for images one self-contained HTML page (thumbnails inlined, no external assets); for
the LLM job a Markdown page (prompt, route and answer per row)."""

from __future__ import annotations

import base64
import html

from dynagen.core.records import RunSummary
from dynagen.core.storage import Storage


def _bars(hist: dict[str, int], label: str) -> str:
    if not hist:
        return f"<p>No {label}.</p>"
    top = max(hist.values())
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td><div class=bar style='width:{300 * v / top:.0f}px'></div></td><td>{v}</td></tr>"
        for k, v in hist.items()
    )
    return f"<table class=hist><tr><th>steps</th><th></th><th>prompts</th></tr>{rows}</table>"


def _no_predictions(s: RunSummary) -> str:
    """Why the predicted-steps histogram is empty, in this run's terms."""
    if str((s.settings or {}).get("images", {}).get("steps", "auto")) != "auto":
        return "predictions (fixed steps run)"
    if s.ok + s.failed == 0:
        return "predictions: nothing new to generate in this run"
    return "predictions (every prompt had its own steps value)"


def _by_steps(s: RunSummary) -> str:
    if not s.steps_breakdown:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['images']}</td><td>{v['mean_ms_per_image']:.1f}</td>"
        f"<td>{100 * v['unet_share']:.1f}%</td></tr>"
        for k, v in s.steps_breakdown.items()
    )
    return ("<h2>Per step count</h2><table class=hist><tr><th>steps</th><th>images</th><th>mean ms / image</th>"
            f"<th>share of UNet evaluations</th></tr>{rows}</table>")


def _failures(s: RunSummary) -> str:
    if not s.failures:
        return ""
    items = "".join(f"<li><code>{html.escape(f['id'])}</code> ({html.escape(f['status'])}): {html.escape(f['error'])}</li>"
                    for f in s.failures)
    more = f"<p>First {len(s.failures)} of {s.failed} failed rows.</p>" if s.failed > len(s.failures) else ""
    return f"<h3>Failed rows</h3><ol>{items}</ol>{more}"


def _made_from(s: RunSummary) -> str:
    model = html.escape(str(s.settings.get("images", {}).get("model", "")).rstrip("/").rsplit("/", 1)[-1])
    parts = [f"model {model} (UNet sha256 {html.escape(s.model_fingerprint or 'n/a')})"]
    parts.append(f"StepSaver sha256 {html.escape(s.stepsaver_fingerprint)}" if s.stepsaver_fingerprint
                 else "fixed steps (no StepSaver)")
    return "<p>Made from: " + "; ".join(parts) + ".</p>"


def render_report(s: RunSummary, thumbs: dict[str, list[tuple[str, str, bytes]]]) -> str:
    """HTML page: headline counts, steps histograms, a contact sheet grouped by step count."""
    sheet = []
    for steps, items in thumbs.items():
        total = s.steps_histogram.get(steps, len(items))
        cells = "".join(
            f"<figure><img src='data:image/png;base64,{base64.b64encode(png).decode()}' title='{html.escape(rid)}'>"
            f"<figcaption>{html.escape(prompt)}</figcaption></figure>"
            for rid, prompt, png in items
        )
        sample = f" (a sample: {len(items)} of {total} images)" if total > len(items) else ""
        sheet.append(f"<h3>{html.escape(steps)} steps{sample}</h3><div class=sheet>{cells}</div>")
    reasons = "".join(f"<li>{html.escape(k)}: {v}</li>" for k, v in s.failure_reasons.items())
    return f"""<!doctype html><html><head><meta charset=utf-8><title>dynagen run {html.escape(s.run_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}} .bar{{background:#4a7;height:12px}} .sheet{{display:flex;flex-wrap:wrap}}
figure{{width:110px;margin:4px}} figcaption{{font-size:10px}} img{{width:96px;image-rendering:pixelated}}
td{{padding:0 6px}}</style></head><body>
<h1>dynagen run {html.escape(s.run_id)}</h1>
<p>{html.escape(s.source)} → {html.escape(s.dest)}</p>
<p><b>{s.ok}</b> ok, <b>{s.failed}</b> failed, <b>{s.skipped}</b> skipped (done earlier), {s.duplicates} duplicate ids.
{s.wall_s:.1f} s, {s.images_per_s:.2f} images/s, {s.denoising_steps} denoising steps, {s.unet_evals} UNet evaluations,
{s.batches} batches, mean fill {100 * s.mean_batch_fill:.0f}%.</p>
{_made_from(s)}
<h2>Steps run</h2>{_bars(s.steps_histogram, "generated images")}
{_by_steps(s)}
<h2>Predicted steps</h2>{_bars(s.predicted_steps_histogram, _no_predictions(s))}
{"<h2>Failures</h2><ul>" + reasons + "</ul>" + _failures(s) if reasons else ""}
<h2>Contact sheet by step count{" (a sample of each count)" if sum(map(len, thumbs.values())) < s.ok else ""}</h2>{"".join(sheet) or "<p>No images.</p>"}
</body></html>"""


def write_report(storage: Storage, s: RunSummary, thumbs: dict[str, list[tuple[str, str, bytes]]]) -> str:
    """Render the report of a finished run and write it beside its summary, ``runs/<run_id>.html``; returns the key."""
    key = f"runs/{s.run_id}.html"
    storage.put_bytes(key, render_report(s, thumbs).encode(), "text/html")
    return key


# The LLM job's report: Markdown, readable in a terminal, an editor or a code host ----------------------------------

LLM_REPORT_ROWS = 200  # rows listed in full; a longer run lists its first rows by id (the Parquet has them all)


def _cell(text, limit: int = 400) -> str:
    """One Markdown table cell: one line, pipes escaped, long text cut with an ellipsis."""
    s = "" if text is None else " ".join(str(text).split())
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return s.replace("|", "\\|")


def render_llm_report(s, rows: list[dict]) -> str:
    """Markdown for one LLM run: the summary line, per-pool figures, then prompt · route · answer per row (by id)."""
    share = "n/a" if s.realised_large_share is None else f"{100 * s.realised_large_share:.1f}%"
    lines = [
        f"# LLM run {s.run_id}", "",
        f"{s.ok} ok, {s.failed} failed, {s.skipped} skipped · {s.wall_s:.1f} s · router {s.router} · share mode "
        f"{s.share_mode} · large share {share} (target {100 * s.target_large_share:.0f}%)", "",
        "| pool | model | prompts | completion tokens | tokens/s |", "| --- | --- | --- | --- | --- |",
    ]
    for route, p in sorted(s.pools.items()):
        lines.append(f"| {route} | {_cell(p.get('model'))} | {p.get('rows', '')} | {p.get('completion_tokens', 0)} | "
                     f"{p.get('tokens_per_s', 0)} |")
    rows = sorted(rows, key=lambda r: str(r["id"]))
    lines += ["", f"## Answers ({min(len(rows), LLM_REPORT_ROWS)} of {len(rows)})", "",
              "| id | route | score | prompt | answer | tokens | status |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows[:LLM_REPORT_ROWS]:
        score = r.get("router_score")
        score = "" if score is None or score != score else f"{score:.3f}"
        answer = r.get("response") if r.get("status") == "ok" else r.get("error")
        lines.append(f"| {_cell(r['id'], 40)} | {r.get('route') or '-'} | {score} | {_cell(r.get('prompt'), 200)} | "
                     f"{_cell(answer)} | {r.get('completion_tokens', 0)} | {r.get('status')} |")
    return "\n".join(lines) + "\n"


def write_llm_report(storage: Storage, s, rows: list[dict]) -> str:
    """``runs/<run_id>.md`` beside the run's summary; returns the key."""
    key = f"runs/{s.run_id}.md"
    storage.put_bytes(key, render_llm_report(s, rows).encode(), "text/markdown")
    return key
