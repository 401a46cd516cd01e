"""The HTML evaluation report ML leads read: one self-contained file per DAG run, written by the promote stage to
runs/<dag>/<run>/promote/evaluation_report.html and logged to MLflow (artifact `evaluation_report.html` on the DAG
run and on the promote run). Not a command: `python -m pipeline promote ...` writes it. The console summary of
recent DAG runs is pipeline/run_summary.py.

Sections: the promotion decision and each gate check; overall and per-language metric tables with candidate,
champion and base side by side; a chart of the last N champions' metrics next to tonight's candidate; sample
generations (prompt / reference / candidate / champion / base).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import pandas as pd

CHART_METRICS = ("bleu", "rougeL", "chrf1")
HEADLINE = ("bleu", "chrf1", "chrf", "rouge1", "rouge2", "rougeL", "perplexity", "reply_tokens")
SAMPLES = 40


def write(path: Path, evaluation_dir: Path, decision, candidate_version, history: list, ctx) -> Path:
    evaluation = json.loads((evaluation_dir / "evaluation.json").read_text())
    samples = pd.read_parquet(evaluation_dir / "samples.parquet")
    scores = evaluation["scores"]
    body = [
        f"<h1>Evaluation: {html.escape(ctx.dag_id)} / {html.escape(ctx.run_date)}</h1>",
        f"<p>Run <code>{html.escape(ctx.run_id)}</code> ({html.escape(ctx.run_type)}), data digest "
        f"<code>{evaluation['data_digest'][:12]}</code>, {evaluation['examples']} held-out replies, "
        f"candidate = version {candidate_version.version}.</p>",
        f"<h2>Decision: {'PROMOTED' if decision.promote else 'NOT PROMOTED'}</h2>",
        f"<p>{html.escape(decision.reason)}</p>",
        "<ul>" + "".join(f"<li><code>{html.escape(c)}</code></li>" for c in decision.checks) + "</ul>",
        "<h2>Overall</h2>", metric_table(scores, ""),
    ]
    for language in languages(scores):
        body += [f"<h2>Language: {html.escape(language)}</h2>", metric_table(scores, f"_{language}")]
    body += ["<h2>Last champions and tonight's candidate</h2>", history_chart(history, candidate_version, scores)]
    body += [f"<h2>Sample generations (first {SAMPLES})</h2>", samples.head(SAMPLES).to_html(index=False, escape=True)]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def languages(scores: dict) -> list[str]:
    return sorted({key.rsplit("_", 1)[1] for key in scores["candidate"] if key.startswith("bleu_")})


def metric_table(scores: dict, suffix: str) -> str:
    rows = {metric: {model: values.get(metric + suffix) for model, values in scores.items()} for metric in HEADLINE}
    frame = pd.DataFrame(rows).T.dropna(how="all")
    return frame.to_html(float_format=lambda v: f"{v:.2f}", na_rep="-")


def history_chart(history: list, candidate_version, scores: dict) -> str:
    """Line chart of past champions' recorded metrics plus tonight's candidate, as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on the workers
    import matplotlib.pyplot as plt

    points = [(f"v{v.version}", {m: float(v.tags[f"metric.{m}"]) for m in CHART_METRICS if f"metric.{m}" in v.tags})
              for v in history if str(v.version) != str(candidate_version.version)]
    points.append((f"v{candidate_version.version} (candidate)", {m: scores["candidate"].get(m) for m in CHART_METRICS}))
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for metric in CHART_METRICS:
        axis.plot([label for label, _ in points], [values.get(metric) for _, values in points], marker="o", label=metric)
    axis.set_ylabel("score (0-100)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"<img alt='metrics of the last champions' src='data:image/png;base64,{encoded}'>"
