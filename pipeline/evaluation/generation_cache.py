"""Replies and perplexities evaluate already computed, found again by what determines them. Not a command.

Every night evaluate scores the candidate, the champion and the base model on the held-out split and the anchor
set. The base model never changes, and the champion is an earlier night's candidate: their greedy replies to the
same examples are the same text every night. An entry holds what is expensive for one model on one example set
(its replies and the perplexity of the references) under the sha256 of three things:

  model     the bytes of the weights (weights_digest): a .gguf file, or every file of a Hugging Face directory
            (weights, config, tokenizer, generation config) except the pipeline's bookkeeping beside them
            (train_config.json, manifest.json; the system prompt it holds is in `settings`). Not a name or a
            registry version: last night's candidate and the champion it became, downloaded again, have the same
            bytes and share entries; a retrained or re-quantized model, even under an old name, does not. The
            candidate is new each night, so it misses unless its bytes are exactly those of a model scored before
            (a retried task, a bit-for-bit reproduction).
  examples  the exact examples, in order (ids, languages, whole prompt histories, references) and the dialogues
            whose reference perplexity is measured. The held-out split and the anchor set are separate entries:
            new data changes the first only.
  settings  the rest of what changes replies or perplexity: greedy decoding, max_new_tokens, batch_size (batched
            greedy equals one at a time in fp32, but padding moves perplexity sums in the last bits),
            max_seq_length (perplexity truncation), the system prompt the model is given, dtype and device, the
            versions of torch / transformers / tokenizers / gguf (kernels, GGUF dequantization, chat templates),
            and the source of the code that renders prompts, decodes and measures perplexity (generation.py,
            model/chat_format.py, model/loading.py, evaluation/perplexity.py): editing it is a miss, no version to bump.

Not in the key, on purpose: the metrics (BLEU, chrF, ROUGE and similarity are recomputed from the cached replies
every night, so a fix to metric code applies at once), and the CPU or thread count (they change the rounding of
the same fp32 computation, not the model; an entry keeps one answer per model).

Where: artifacts of a dedicated run of the project's MLflow experiment (run name `generation-cache`, tag
pipeline.level=generation_cache), so stages on other machines or pods reach it through the tracking server and
its artifact store (S3 with `make up`); or `evaluate.cache_uri` (s3://..., a directory): any store MLflow writes.
Deleting that run (or the directory) empties the cache. Each entry is one small JSON file,
`entries/<key digest>/entry.json`, carrying its full key and the sha256 of its outputs: a partial upload, a
truncated or edited file, or a file under another key's name is ignored with a warning and recomputed, never
trusted. Entries never change: the same key is only ever written again with the same outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from pipeline.model import loading
from pipeline.storage import outputs

log = logging.getLogger(__name__)

ENTRY_FORMAT = 1  # the layout of entry.json; another layout is not read
ENTRY_FILE = "entry.json"
BOOKKEEPING_FILES = frozenset({outputs.MANIFEST, outputs.TRAIN_CONFIG})  # beside the weights, never loaded as model
DECODING_LIBRARIES = ("torch", "transformers", "tokenizers", "gguf")
CACHE_RUN_NAME, CACHE_RUN_LEVEL = "generation-cache", "generation_cache"
CACHE_RUN_NOTE = ("Replies evaluate computed, reused when the same weights meet the same examples and settings "
                  "(pipeline/evaluation/generation_cache.py). Deleting this run empties the cache.")


class CacheEntryError(ValueError):
    """An entry that cannot be trusted; the message names the entry and the rule it breaks."""


@dataclass(frozen=True)
class Outputs:
    """What is expensive for one model on one example set: the greedy replies, in order, and the references'
    perplexity."""

    replies: list[str]
    perplexity: float


@dataclass(frozen=True)
class Key:
    model: str  # weights_digest
    examples: str  # examples_digest
    settings: dict

    def as_dict(self) -> dict:
        return {"model": self.model, "examples": self.examples, "settings": self.settings}

    def digest(self) -> str:
        return canonical_digest(self.as_dict())


def canonical_digest(value) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace, text as is)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_digest(reference: str) -> str:
    """sha256 of a model's bytes: the file of a .gguf reference; for a directory, every file's relative path,
    size and bytes, in path order, bookkeeping excepted (~1 s per GB)."""
    path = loading.resolve(reference)
    digest = hashlib.sha256()
    if path.is_file():
        files = [(path, "")]
    else:
        files = [(file, file.relative_to(path).as_posix()) for file in sorted(path.rglob("*")) if file.is_file()]
        files = [(file, name) for file, name in files if name not in BOOKKEEPING_FILES]
    for file, name in files:
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def examples_digest(examples, dialogues: list[list[dict]]) -> str:
    """The exact example set: EvalExamples in order plus the dialogues of the perplexity pass."""
    return canonical_digest({"examples": [dataclasses.asdict(e) for e in examples], "dialogues": dialogues})


def settings(*, max_new_tokens: int, batch_size: int, max_seq_length: int, system_prompt: str | None,
             dtype: str, device: str, code: tuple) -> dict:
    """Everything but the weights and the examples that changes replies or perplexity (see the module doc)."""
    return {"decoding": "greedy", "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "max_seq_length": max_seq_length, "system_prompt": system_prompt, "dtype": dtype, "device": device,
            "libraries": {name: _version(name) for name in DECODING_LIBRARIES},
            "code": canonical_digest([inspect.getsource(item) for item in code])}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class GenerationCache:
    """Entries in one artifact store; remembers what each lookup gave (hit / miss) and each model's digest.

    A store that fails a request (down, refusing, timing out after MLflow's retries) is not asked again by this
    run: each further request could wait out the same retries, minutes, for an answer the evaluation can do
    without. Its entries are then misses and nothing is stored; the reason is in `unavailable`."""

    def __init__(self, location: str):
        self.location = location
        self.repository = get_artifact_repository(location, tracking_uri=mlflow.get_tracking_uri())
        self.outcomes: dict[str, dict[str, str]] = {}  # model name -> example set -> hit | miss
        self.model_digests: dict[str, str] = {}
        self.unavailable: str | None = None

    def get(self, key: Key, replies: int, model: str, example_set: str) -> Outputs | None:
        """The entry's outputs for `key`, or None (a miss) when there is none or it cannot be trusted."""
        where = f"generation cache {self.location}: entry {key.digest()} ({model} on {example_set})"
        found = None
        try:
            with tempfile.TemporaryDirectory(prefix="generation-cache-") as scratch:
                if self.unavailable is None and self.repository.list_artifacts(f"entries/{key.digest()}"):
                    local = self.repository.download_artifacts(f"entries/{key.digest()}/{ENTRY_FILE}", scratch)
                    found = parse_entry(Path(local).read_bytes(), key, replies, where)
        except CacheEntryError as exc:
            log.warning("%s; computing it again", exc)
        except Exception as exc:  # any failure: an unreadable store costs a recomputation, never the evaluation
            self.unavailable = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("%s: could not be read (%s); computing it, and not asking this store again", where,
                        self.unavailable)
        self.outcomes.setdefault(model, {})[example_set] = "miss" if found is None else "hit"
        if found is not None:
            log.info("%s: %d replies from the cache", where, replies)
        return found

    def put(self, key: Key, outputs: Outputs) -> None:
        """Store an entry; a store that refuses it is logged and costs only tomorrow's recomputation."""
        if self.unavailable is not None:
            return
        try:
            with tempfile.TemporaryDirectory(prefix="generation-cache-") as scratch:
                file = Path(scratch) / ENTRY_FILE
                file.write_bytes(entry_bytes(key, outputs))
                self.repository.log_artifact(str(file), f"entries/{key.digest()}")
        except Exception as exc:  # any failure: the evaluation itself is complete and correct without the entry
            self.unavailable = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("generation cache %s: could not store entry %s (%s); not asking this store again",
                        self.location, key.digest(), self.unavailable)

    def report(self) -> dict:
        """For evaluation.json: where the entries are, each model's digest, and per model and set hit or miss."""
        return {"enabled": True, "location": self.location, "model_digests": dict(self.model_digests),
                "outcomes": {model: dict(sets) for model, sets in self.outcomes.items()},
                "unavailable": self.unavailable}

    def tags(self) -> dict[str, str]:
        """For the evaluate run: evaluate.cache.<model> = hit | miss | partial, and .<set> for each set."""
        tags = {"evaluate.cache": "on", "evaluate.cache.location": self.location,
                **({"evaluate.cache.unavailable": self.unavailable} if self.unavailable else {})}
        for model, sets in self.outcomes.items():
            kinds = set(sets.values())
            tags[f"evaluate.cache.{model}"] = kinds.pop() if len(kinds) == 1 else "partial"
            tags.update({f"evaluate.cache.{model}.{name}": outcome for name, outcome in sets.items()})
        return tags

    def counts(self) -> dict[str, int]:
        outcomes = [outcome for sets in self.outcomes.values() for outcome in sets.values()]
        return {"hits": outcomes.count("hit"), "misses": outcomes.count("miss")}


def entry_bytes(key: Key, outputs: Outputs) -> bytes:
    value = dataclasses.asdict(outputs)
    entry = {"format": ENTRY_FORMAT, "key": key.as_dict(), "outputs": value, "outputs_sha256": canonical_digest(value)}
    return (json.dumps(entry, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def parse_entry(raw: bytes, key: Key, replies: int, where: str) -> Outputs:
    """The entry's outputs, after every check that it is whole and is the entry of `key`."""
    try:
        entry = json.loads(raw.decode("utf-8"))
        value = entry["outputs"]
        outputs = Outputs(replies=list(value["replies"]), perplexity=float(value["perplexity"]))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CacheEntryError(f"{where} is not a whole entry ({type(exc).__name__}: {exc})") from exc
    if entry.get("format") != ENTRY_FORMAT:
        raise CacheEntryError(f"{where} has format {entry.get('format')!r}; this code reads {ENTRY_FORMAT}")
    if entry.get("key") != key.as_dict():
        raise CacheEntryError(f"{where} holds the key of another entry; rule: an entry is found by its own key")
    if entry.get("outputs_sha256") != canonical_digest(value):
        raise CacheEntryError(f"{where}: outputs do not match their sha256 (edited or partly written)")
    if len(outputs.replies) != replies or not all(isinstance(r, str) for r in outputs.replies):
        raise CacheEntryError(f"{where} holds {len(outputs.replies)} replies for {replies} examples")
    if not math.isfinite(outputs.perplexity):
        raise CacheEntryError(f"{where}: perplexity {outputs.perplexity} is not a finite number")
    return outputs


def open_cache(enabled: bool, uri: str | None, experiment_id: str) -> GenerationCache | None:
    """The cache evaluate reads and writes: `uri` if set (a directory or any artifact store URI), else the
    artifacts of the experiment's generation-cache run (created on first use). None when disabled."""
    if not enabled:
        return None
    if uri:
        return GenerationCache(uri if "://" in uri else Path(uri).resolve().as_uri())
    return GenerationCache(cache_run(MlflowClient(), experiment_id).info.artifact_uri)


def cache_run(client: MlflowClient, experiment_id: str):
    """The experiment's cache run. Two first nights at once may each create one: the oldest is used from then on,
    and what the other received is only recomputed once."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`pipeline.level` = '{CACHE_RUN_LEVEL}'",
                               order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        return found[0]
    run = client.create_run(experiment_id, run_name=CACHE_RUN_NAME,
                            tags={"pipeline.level": CACHE_RUN_LEVEL, "mlflow.note.content": CACHE_RUN_NOTE})
    client.set_terminated(run.info.run_id, "FINISHED")  # a store, not a job: never shown as running or failed
    return run
