"""The HTML evaluation report ML leads read: one self-contained file per DAG run, written by the promote stage to
runs/<dag>/<run>/promote/evaluation_report.html and logged to MLflow (artifact `evaluation_report.html` on the DAG
run and on the promote run). Not a command: `python -m pipeline promote ...` writes it. The console summary of
recent DAG runs is ops/run_summary.py.

Sections: the promotion decision and each gate check; overall and per-language metric tables with candidate,
champion and base side by side, on the held-out split and on the fixed anchor set (pipeline/evaluation/anchor.py); a chart and
a trend table of the last N champions' metrics next to tonight's candidate; sample generations (prompt / reference
/ candidate / champion / base) of both sets.

History and trend come from the anchor set (`anchor_*` scores): the held-out split changes every night, so only
the anchor set compares one night's champion with another's. A champion's scores are its model version tags
`metric.anchor_<m>`; a version registered before those tags existed shows as a gap. Runs without an anchor set
chart the held-out metrics (`metric.<m>`) instead, and the chart's title says which set it shows.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import pandas as pd

from pipeline.storage import outputs

CHART_METRICS = ("bleu", "rougeL", "chrf1", "similarity")
HEADLINE = ("bleu", "chrf1", "chrf", "rouge1", "rouge2", "rougeL", "similarity", "perplexity", "reply_tokens")
ANCHOR = "anchor_"  # prefix of the anchor set's score keys (evaluate.py)
SAMPLES = 40


def write(path: Path, evaluation_dir: Path, decision, candidate_version, history: list, ctx) -> Path:
    evaluation = json.loads((evaluation_dir / outputs.EVALUATION).read_text())
    samples = pd.read_parquet(evaluation_dir / outputs.SAMPLES["held-out"])
    anchor_file = evaluation_dir / outputs.SAMPLES["anchor"]
    anchor_samples = pd.read_parquet(anchor_file) if anchor_file.is_file() else None
    scores, anchor = evaluation["scores"], evaluation.get("anchor")
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
    if anchor:
        body += [f"<h2>Anchor set: {html.escape(anchor['name'])}</h2>",
                 f"<p>{anchor['examples']} fixed replies from {html.escape(anchor['source'])}, digest "
                 f"<code>{anchor['digest'][:12]}</code>; the same every night, never trained on.</p>",
                 metric_table(scores, "", ANCHOR)]
    memory = evaluation.get("memory")
    if memory and memory.get("examples"):
        body += ["<h2>Memory set: earlier nights' held-out replies</h2>",
                 f"<p>{memory['examples']} replies from the test split of {len(memory['partitions'])} earlier "
                 f"partitions ({html.escape(', '.join(memory['partitions'][:5]))}"
                 f"{', ...' if len(memory['partitions']) > 5 else ''}): what the models knew before tonight.</p>",
                 metric_table(scores, "", "memory_")]
    prefix = ANCHOR if anchor else ""
    body += ["<h2>Last champions and tonight's candidate</h2>", history_chart(history, candidate_version, scores, prefix),
             trend_table(history, candidate_version, scores, prefix)]
    body += [f"<h2>Sample generations (first {SAMPLES})</h2>", samples.head(SAMPLES).to_html(index=False, escape=True)]
    if anchor_samples is not None:
        body += [f"<h2>Anchor set generations (first {SAMPLES})</h2>",
                 anchor_samples.head(SAMPLES).to_html(index=False, escape=True)]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def languages(scores: dict) -> list[str]:
    return sorted({key.rsplit("_", 1)[1] for key in scores["candidate"] if key.startswith("bleu_")})


def metric_table(scores: dict, suffix: str, prefix: str = "") -> str:
    rows = {metric: {model: values.get(prefix + metric + suffix) for model, values in scores.items()}
            for metric in HEADLINE}
    frame = pd.DataFrame(rows).T.dropna(how="all")
    return frame.to_html(float_format=lambda v: f"{v:.2f}", na_rep="-")


def history_points(history: list, candidate_version, scores: dict, prefix: str) -> list[tuple[str, dict]]:
    """(label, {metric: value or None}) for each past champion, oldest first, then tonight's candidate."""
    points = [(f"v{v.version}", {m: _recorded(v.tags, prefix + m) for m in CHART_METRICS})
              for v in history if str(v.version) != str(candidate_version.version)]
    points.append((f"v{candidate_version.version} (candidate)",
                   {m: scores["candidate"].get(prefix + m) for m in CHART_METRICS}))
    return points


def _recorded(tags: dict, key: str) -> float | None:
    return float(tags[f"metric.{key}"]) if f"metric.{key}" in tags else None


def history_chart(history: list, candidate_version, scores: dict, prefix: str = "") -> str:
    """Line chart of past champions' recorded metrics plus tonight's candidate, as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on the workers
    import matplotlib.pyplot as plt

    points = history_points(history, candidate_version, scores, prefix)
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for metric in CHART_METRICS:
        values = [float("nan") if values.get(metric) is None else values[metric] for _, values in points]
        axis.plot([label for label, _ in points], values, marker="o", label=prefix + metric)
    axis.set_ylabel("score (0-100)")
    axis.set_title("anchor set (fixed)" if prefix else "held-out split (changes nightly)", fontsize=10)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"<img alt='metrics of the last champions' src='data:image/png;base64,{encoded}'>"


def trend_table(history: list, candidate_version, scores: dict, prefix: str = "") -> str:
    """The charted values as numbers, plus the candidate's change vs the latest and the oldest champion that
    recorded each metric."""
    points = history_points(history, candidate_version, scores, prefix)
    frame = pd.DataFrame({label: values for label, values in points}).reindex(list(CHART_METRICS)).astype(float)
    frame.index = [prefix + metric for metric in CHART_METRICS]
    candidate = frame.iloc[:, -1]
    champions = frame.iloc[:, :-1]
    if champions.shape[1]:
        frame["vs latest champion"] = candidate - champions.ffill(axis=1).iloc[:, -1]
        frame["vs oldest charted"] = candidate - champions.bfill(axis=1).iloc[:, 0]
    return frame.to_html(float_format=lambda v: f"{v:.2f}", na_rep="-")
