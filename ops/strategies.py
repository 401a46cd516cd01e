"""`make strategies N=14`: the nightly strategies docs/nights.md compares, each N nights of the feed through the real
DAG (`ops.nights`), kept apart from each other, then one table to choose the default by.

    python -m ops.strategies --nights 14 --config configs/nights.yaml --feed s3://chat-logs/openai
    python -m ops.strategies ... --only lineage --resume          # one strategy; after a kill, the nights not done
    python -m ops.strategies ... --table-only                     # the comparison again, running nothing

Each strategy is the config with its overrides (STRATEGIES) and places of its own: data and runs under
`<root>/strategies/<name>/`, experiment `<experiment>-<name>` and registered model `<model>-<name>` on the same
tracking server, so the strategies' champions, partitions (a 7-day window is another partition than one day) and
caches never meet, and the MLflow UI shows each strategy as an experiment. The strategies run one after the other
(each alone on the machine: their wall times are part of the comparison). The table, per strategy: promotions, the
gain of the model in force after the last night over the base model on the outside set (ROUGE-L and similarity, 95%
conversation-bootstrap intervals), the worst memory-set change at a promotion, the wall time of nights 1 / middle /
last; printed and written to `<runs_root>/strategies/<first>_<last>.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from pathlib import Path

from ops import dag_run, nights
from pipeline.config import load_project

# name -> overrides of the nights config; the first is the config as committed
STRATEGIES = {
    "champion-replay": [],
    "champion": ["train.replay=0"],
    "base-window": ["train.init=base", "train.replay=0", "ingest.window_days=7"],
    "lineage": ["train.init=lineage"],
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.only or list(STRATEGIES)
    dates = nights.night_dates(args.end, args.nights)
    codes = {}
    for name in ([] if args.table_only else chosen):
        print(f"\n== strategy {name}: {' '.join(STRATEGIES[name]) or 'the config as committed'}", flush=True)
        codes[name] = nights.main(["--nights", str(args.nights), "--config", args.config, "--end", args.end.isoformat(),
                                   "--feed", args.feed, *(["--feed-end", args.feed_end] if args.feed_end else []),
                                   *[part for item in overrides(args.config, name) for part in ("--set", item)],
                                   *(["--resume"] if args.resume else [])])
    table = comparison(args.config, chosen, dates)
    where = Path(load_project(args.config).runs_root) / "strategies" / f"{dates[0]}_{dates[-1]}.md"
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(table + "\n")
    print(f"\n{table}\n\n{where}")
    return 0 if all(code == 0 for code in codes.values()) else 1


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ops.strategies", description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=14)
    parser.add_argument("--config", required=True, help="the nights config the strategies override")
    parser.add_argument("--end", type=datetime.date.fromisoformat,
                        default=datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1))
    parser.add_argument("--feed", default="s3://chat-logs/openai")
    parser.add_argument("--feed-end", help="the feed's last day (default: --end)")
    parser.add_argument("--only", action="append", choices=list(STRATEGIES), help="run these strategies only")
    parser.add_argument("--resume", action="store_true", help="skip the nights each strategy has done")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the comparison of what ran")
    return parser.parse_args(argv)


def overrides(config: str, name: str) -> list[str]:
    """The strategy's overrides and its own places: data, runs, experiment and registered model."""
    project = load_project(config)
    apart = [f"project.data_root={Path(project.data_root) / 'strategies' / name}",
             f"project.runs_root={Path(project.runs_root) / 'strategies' / name}",
             f"project.experiment={project.experiment}-{name}",
             f"project.registered_model={project.registered_model}-{name}"]
    return [*STRATEGIES[name], *apart]


def comparison(config: str, names: list[str], dates: list[str]) -> str:
    """The markdown table of the strategies that have nights.json for these dates (the others say not run)."""
    lines = ["| strategy | overrides | nights | promotions | in force vs base, outside set: ROUGE-L | similarity | "
             "worst memory change at a promotion | wall s, nights 1 / mid / last |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        strategy_config = str(dag_run.config_with_overrides(config, overrides(config, name)))
        progress = nights.trajectory_dir(strategy_config, dates) / "nights.json"
        rows = json.loads(progress.read_text()) if progress.is_file() else []
        if not rows:
            lines.append(f"| {name} | {' '.join(STRATEGIES[name]) or '-'} | not run | | | | | |")
            continue
        summary = nights.strategy_summary(strategy_config, rows)
        gains = summary.get("anchor_gain_over_base", {})
        worst = summary.get("worst_memory_change", {}).get("rougeL")
        lines.append(" | ".join([
            f"| {name}", " ".join(STRATEGIES[name]) or "-", f"{len(rows)} of {len(dates)}",
            str(summary["promotions"]), _interval(gains.get("rougeL")), _interval(gains.get("similarity")),
            _interval(worst) if worst else "no promotion with a memory set",
            " / ".join("-" if math.isnan(s) else f"{s:.0f}" for s in summary["seconds"].values())]) + " |")
    return "\n".join(lines)


def _interval(gain: dict | None) -> str:
    return f"{gain['gain']:+.2f} [{gain['ci'][0]:+.2f}, {gain['ci'][1]:+.2f}]" if gain else "-"


if __name__ == "__main__":
    raise SystemExit(main())
