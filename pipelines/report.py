"""The human view of a run: one self-contained HTML page (thumbnails inlined, no external assets)."""

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
<h2>Steps run</h2>{_bars(s.steps_histogram, "generated images")}
<h2>Predicted steps</h2>{_bars(s.predicted_steps_histogram, _no_predictions(s))}
{"<h2>Failures</h2><ul>" + reasons + "</ul>" if reasons else ""}
<h2>Contact sheet by step count{" (a sample of each count)" if sum(map(len, thumbs.values())) < s.ok else ""}</h2>{"".join(sheet) or "<p>No images.</p>"}
</body></html>"""


def write_report(storage: Storage, s: RunSummary, thumbs: dict[str, list[tuple[str, str, bytes]]]) -> str:
    """Render the report of a finished run and write it beside its summary, ``runs/<run_id>.html``; returns the key."""
    key = f"runs/{s.run_id}.html"
    storage.put_bytes(key, render_report(s, thumbs).encode(), "text/html")
    return key
