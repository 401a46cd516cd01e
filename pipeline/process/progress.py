"""Progress a person can follow: stage start / end, training steps with ETA, generation batches.

Stages call the plain functions below. Where an event goes depends on who is watching:

    PIPELINE_PROGRESS=/path/events.jsonl   one JSON line per event, appended (`make run` follows this file,
                                           ops/dag_run.py); several stage processes may write to it
    unset                                  rendered on the stage's own stderr: tqdm bars on a terminal, plain
                                           throttled lines otherwise (Airflow task logs)

    python -m pipeline.process.progress events.jsonl     # render a progress file after the fact

Only the first process of a distributed job reports (RANK 0), so N training ranks print one bar, not N.
"""

from __future__ import annotations

import json
import os
import sys
import time

ENV = "PIPELINE_PROGRESS"
_stage = "pipeline"  # the stage this process runs; set by stage_started (one stage per process)
_renderer = None  # created on first use, only when events are rendered locally
TRAINING_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"  # tqdm puts ", " before postfix


def stage_started(stage: str) -> None:
    global _stage
    _stage = stage
    emit("stage_start")


def stage_finished(seconds: float, error: str | None = None) -> None:
    emit("stage_end", status="failed" if error else "ok", seconds=round(seconds, 1), error=error)


def training_step(step: int, total: int, eta_s: float | None, loss: float | None) -> None:
    emit("step", step=step, total=total, eta_s=None if eta_s is None else round(eta_s, 1),
         loss=None if loss is None else round(loss, 4))


def generation(model: str, batch: int, batches: int, replies: int, total: int) -> None:
    emit("generate", model=model, batch=batch, batches=batches, replies=replies, total=total)


def emit(event: str, **fields) -> None:
    if os.environ.get("RANK", "0") != "0":
        return
    record = {"time": round(time.time(), 3), "stage": _stage, "event": event, **fields}
    path = os.environ.get(ENV)
    if not path:
        global _renderer
        _renderer = _renderer or Renderer(sys.stderr, tty=sys.stderr.isatty())
        _renderer.render(record)
        return
    # One os.write on an O_APPEND descriptor per event: lines from concurrent stage processes never interleave.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return  # progress is for the console only: a missing or read-only file never fails a stage
    try:
        os.write(descriptor, (json.dumps(record) + "\n").encode())
    finally:
        os.close(descriptor)


def duration(seconds: float) -> str:
    """4m02s, 12s, 1h03m: short enough for a progress line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def line(record: dict) -> str:
    """One event as the line a person reads: `[train] step 12/60  loss 2.31  ETA 3m10s`."""
    stage, event = f"[{record.get('stage', '?')}]", record.get("event")
    if event == "stage_start":
        return f"{stage} started"
    if event == "stage_end":
        if record.get("status") == "failed":
            return f"{stage} FAILED after {duration(record.get('seconds', 0))}: {record.get('error') or ''}".rstrip()
        return f"{stage} done in {duration(record.get('seconds', 0))}"
    if event == "step":
        text = f"{stage} step {record['step']}/{record['total']}"
        if record.get("loss") is not None:
            text += f"  loss {record['loss']:.2f}"
        if record.get("eta_s") is not None:
            text += f"  ETA {duration(record['eta_s'])}"
        return text
    if event == "generate":
        return (f"{stage} {record['model']} {record['replies']}/{record['total']} replies "
                f"(batch {record['batch']}/{record['batches']})")
    return f"{stage} {event}"


class Renderer:
    """Turns events into console output: tqdm bars on a terminal, throttled plain lines elsewhere."""

    PLAIN_LINES_PER_BAR = 10  # a plain log gets ~10 lines per bar (every 10%), plus the first and the last

    def __init__(self, stream, tty: bool):
        self.stream, self.tty = stream, tty
        self.bars = {}  # (stage, bar) -> tqdm bar, terminal only
        self.printed = {}  # (stage, bar) -> last count printed, plain lines only

    def render(self, record: dict) -> None:
        key, done, total = _bar(record)
        if key is None:  # a stage start / end: always shown, and it closes the stage's bars
            for bar_key in [k for k in self.bars if k[0] == record.get("stage")]:
                self.bars.pop(bar_key).close()
            self._write(line(record))
        elif self.tty:
            self._update_bar(key, done, total, record)
        elif self._due(key, done, total):
            self._write(line(record))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def _due(self, key, done: int, total: int) -> bool:
        last = self.printed.get(key)
        if last is not None and done < last:  # a new pass (e.g. a resumed or retried stage): start over
            last = None
        if last is None or done >= total or done - last >= max(1, total // self.PLAIN_LINES_PER_BAR):
            self.printed[key] = done
            return True
        return False

    def _update_bar(self, key, done: int, total: int, record: dict) -> None:
        from tqdm import tqdm

        training = record["event"] == "step"
        bar = self.bars.get(key)
        if bar is None or bar.total != total:
            # Training shows the stage's own ETA (its pace since the first step), not tqdm's guess from events.
            bar = self.bars[key] = tqdm(total=total, desc=f"[{key[0]}] {key[1]}", file=self.stream,
                                        unit="step" if training else "reply", leave=True, dynamic_ncols=True,
                                        bar_format=TRAINING_BAR if training else None)
        bar.n = done  # absolute counts: events may be skipped (throttled at the source), never replayed
        if training:
            bar.set_postfix_str(line(record).split(f"{done}/{total}", 1)[1].strip(), refresh=False)
        bar.refresh()
        if done >= total:
            self.bars.pop(key).close()

    def _write(self, text: str) -> None:
        if self.tty and self.bars:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)  # above the bars instead of through them
        else:
            print(text, file=self.stream, flush=True)


def _bar(record: dict) -> tuple[tuple[str, str] | None, int, int]:
    if record.get("event") == "step":
        return (record["stage"], "training"), record["step"], record["total"]
    if record.get("event") == "generate":
        return (record["stage"], record["model"]), record["replies"], record["total"]
    return None, 0, 0


def follow(path: str, renderer: Renderer, position: int = 0) -> int:
    """Render the complete lines written to `path` since byte `position`; return the new position."""
    try:
        with open(path, "rb") as handle:
            handle.seek(position)
            chunk = handle.read()
    except FileNotFoundError:
        return position
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next call
    for raw in complete.splitlines():
        try:
            renderer.render(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            continue  # not ours or damaged: progress is best-effort, never a reason to fail the run
    return position + len(complete)


if __name__ == "__main__":
    follow(sys.argv[1], Renderer(sys.stdout, tty=False))
