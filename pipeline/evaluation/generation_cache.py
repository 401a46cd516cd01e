"""Replies and perplexities evaluate already computed, found again by what determines them. Not a command.

Every night evaluate scores the candidate, the champion and the base model on the held-out window, the anchor set
and the memory set. The base model never changes, and the champion is an earlier night's candidate: their greedy
replies to a prompt they have met before are the same text every night, whichever set the prompt is in tonight (a
reply of the held-out window is in the memory set a few nights later; the window slides one day a night). So the
cache keeps, per model, one reply per prompt and the perplexity parts (summed NLL, scored tokens) per dialogue:

  model     the bytes of the weights (weights_digest): a .gguf file, or every file of a Hugging Face directory
            (weights, config, tokenizer, generation config) except the pipeline's bookkeeping beside them
            (train_config.json, manifest.json; the system prompt it holds is in `settings`). Not a name or a
            registry version: last night's candidate and the champion it became, downloaded again, have the same
            bytes and share entries; a retrained or re-quantized model, even under an old name, does not. The
            candidate is new each night, so it misses unless its bytes are exactly those of a model scored before
            (a retried task, a bit-for-bit reproduction).
  settings  the rest of what changes replies or perplexity: greedy decoding, max_new_tokens, batch_size,
            max_seq_length (perplexity truncation), the system prompt the model is given, dtype and device, the
            versions of torch / transformers / tokenizers / gguf (kernels, GGUF dequantization, chat templates),
            and the source of the code that renders prompts, decodes and measures perplexity (generation.py,
            model/chat_format.py, model/loading.py, evaluation/perplexity.py): editing it is a miss, no version to bump.
  prompt    a reply is found by the sha256 of its prompt (the history messages, as the model sees them), a
            perplexity part by the sha256 of its whole dialogue (history and reference). A reference edited in
            the data keeps its reply and misses its perplexity part.

Only what is missing is computed, in batches of the missing prompts: in fp32 batched greedy decoding equals one
prompt at a time, so the replies are those a full recomputation gives. A perplexity part computed in another batch
can differ from a full recomputation in the last bits (padding moves the sums), never more.

Not in the key, on purpose: the metrics (BLEU, chrF, ROUGE and similarity are recomputed from the cached replies
every night, so a fix to metric code applies at once), and the CPU or thread count (they change the rounding of
the same fp32 computation, not the model; the cache keeps one answer per prompt).

Where: artifacts of a dedicated run of the project's MLflow experiment (run name `generation-cache`, tag
pipeline.level=generation_cache), so stages on other machines or pods reach it through the tracking server and
its artifact store (S3 with `make up`); or `evaluate.cache_uri` (s3://..., a directory): any store MLflow writes.
Deleting that run (or the directory) empties the cache. Under `entries/<sha256 of model and settings>/` each
evaluation that computed something writes one file, named by the sha256 of its outputs (replies and perplexity
parts computed then), carrying the full key; a model's files are read once per evaluation (a few per night). A
partial upload, an edited file, or one under another key's folder is ignored with a warning and recomputed, never
trusted. Files never change: a name is only ever written again with the same bytes. (Format 1 kept whole example
sets under `entries/<digest>/entry.json`; those are not read.)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from pipeline.evaluation import perplexity
from pipeline.model import loading
from pipeline.storage import outputs

log = logging.getLogger(__name__)

ENTRY_FORMAT = 2  # the layout of an entry file; another layout is not read
BOOKKEEPING_FILES = frozenset({outputs.MANIFEST, outputs.TRAIN_CONFIG})  # beside the weights, never loaded as model
DECODING_LIBRARIES = ("torch", "transformers", "tokenizers", "gguf")
CACHE_RUN_NAME, CACHE_RUN_LEVEL = "generation-cache", "generation_cache"
CACHE_RUN_NOTE = ("Replies evaluate computed, reused when the same weights meet the same examples and settings "
                  "(pipeline/evaluation/generation_cache.py). Deleting this run empties the cache.")


class CacheEntryError(ValueError):
    """An entry that cannot be trusted; the message names the entry and the rule it breaks."""


@dataclass(frozen=True)
class Key:
    """One model with its settings: the folder holding its entries."""

    model: str  # weights_digest
    settings: dict

    def as_dict(self) -> dict:
        return {"model": self.model, "settings": self.settings}

    def digest(self) -> str:
        return canonical_digest(self.as_dict())


@dataclass
class Known:
    """What is known of one model: replies by prompt digest, perplexity parts [summed NLL, tokens] by dialogue
    digest."""

    replies: dict[str, str] = field(default_factory=dict)
    parts: dict[str, list] = field(default_factory=dict)

    def missing(self, examples, dialogues) -> tuple[list[int], list[int]]:
        """Indexes of the examples whose prompt has no reply here, and of the dialogues with no perplexity part."""
        return ([i for i, e in enumerate(examples) if prompt_digest(e.history) not in self.replies],
                [i for i, d in enumerate(dialogues) if canonical_digest(d) not in self.parts])

    def add(self, examples, replies: list[str], dialogues, parts: list[tuple[float, int]]) -> Known:
        """Record computed outputs; returns them alone (what a new entry holds)."""
        new = Known({prompt_digest(e.history): r for e, r in zip(examples, replies, strict=True)},
                    {canonical_digest(d): [nll, tokens] for d, (nll, tokens) in zip(dialogues, parts, strict=True)})
        self.replies.update(new.replies)
        self.parts.update(new.parts)
        return new

    def outputs(self, examples, dialogues) -> Outputs:
        """The set's replies in order and the perplexity of its dialogues; everything must be known."""
        parts = [self.parts[canonical_digest(d)] for d in dialogues]
        return Outputs([self.replies[prompt_digest(e.history)] for e in examples], perplexity.combine(parts))


@dataclass(frozen=True)
class Outputs:
    """What evaluate scores one model on one set with: the greedy replies, in order, and the references'
    perplexity."""

    replies: list[str]
    perplexity: float


def canonical_digest(value) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace, text as is)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_digest(history: list[dict]) -> str:
    return canonical_digest(history)


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


def settings(*, max_new_tokens: int, batch_size: int, max_seq_length: int, system_prompt: str | None,
             dtype: str, device: str, code: tuple) -> dict:
    """Everything but the weights and the prompts that changes replies or perplexity (see the module doc)."""
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
    """Entries in one artifact store; remembers, per model and set, how many replies it gave and each model's digest.

    A store that fails a request (down, refusing, timing out after MLflow's retries) is not asked again by this
    run: each further request could wait out the same retries, minutes, for an answer the evaluation can do
    without. Its entries are then misses and nothing is stored; the reason is in `unavailable`."""

    def __init__(self, location: str):
        self.location = location
        self.repository = get_artifact_repository(location, tracking_uri=mlflow.get_tracking_uri())
        self.reused: dict[str, dict[str, tuple[int, int, bool]]] = {}  # model -> set -> (replies reused, of, all?)
        self.model_digests: dict[str, str] = {}
        self.unavailable: str | None = None

    def known(self, key: Key, model: str) -> Known:
        """Everything the entries of `key` hold; an entry that cannot be trusted is skipped with a warning."""
        where, found = f"generation cache {self.location}: {model} ({key.digest()[:12]})", Known()
        if self.unavailable is not None:
            return found
        try:
            with tempfile.TemporaryDirectory(prefix="generation-cache-") as scratch:
                if self.repository.list_artifacts(f"entries/{key.digest()}"):
                    local = Path(self.repository.download_artifacts(f"entries/{key.digest()}", scratch))
                    for file in sorted(local.glob("*.json")):
                        try:
                            entry = parse_entry(file.read_bytes(), key, file.stem, f"{where}: entry {file.name}")
                        except CacheEntryError as exc:
                            log.warning("%s; what it holds is computed again", exc)
                            continue
                        found.replies.update(entry.replies)
                        found.parts.update(entry.parts)
        except Exception as exc:  # any failure: an unreadable store costs a recomputation, never the evaluation
            self.unavailable = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("%s: could not be read (%s); computing it, and not asking this store again", where,
                        self.unavailable)
        log.info("%s: %d replies, %d perplexity parts known", where, len(found.replies), len(found.parts))
        return found

    def record(self, model: str, example_set: str, reused: int, replies: int, computed_nothing: bool) -> None:
        self.reused.setdefault(model, {})[example_set] = (reused, replies, computed_nothing)

    def put(self, key: Key, new: Known) -> None:
        """Store what was computed; a store that refuses it is logged and costs only tomorrow's recomputation."""
        if self.unavailable is not None or not (new.replies or new.parts):
            return
        content = entry_bytes(key, new)
        try:
            with tempfile.TemporaryDirectory(prefix="generation-cache-") as scratch:
                file = Path(scratch) / f"{outputs_digest(new)}.json"
                file.write_bytes(content)
                self.repository.log_artifact(str(file), f"entries/{key.digest()}")
        except Exception as exc:  # any failure: the evaluation itself is complete and correct without the entry
            self.unavailable = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("generation cache %s: could not store an entry of %s (%s); not asking this store again",
                        self.location, key.digest(), self.unavailable)

    def outcomes(self) -> dict[str, dict[str, str]]:
        """Per model and set: hit (nothing computed), miss (no reply reused) or partial."""
        return {model: {name: "hit" if nothing else "miss" if reused == 0 else "partial"
                        for name, (reused, _, nothing) in sets.items()} for model, sets in self.reused.items()}

    def report(self) -> dict:
        """For evaluation.json: where the entries are, each model's digest, per model and set the outcome and the
        replies reused of those scored."""
        return {"enabled": True, "location": self.location, "model_digests": dict(self.model_digests),
                "outcomes": self.outcomes(),
                "replies_reused": {model: {name: list(counts[:2]) for name, counts in sets.items()}
                                   for model, sets in self.reused.items()},
                "unavailable": self.unavailable}

    def tags(self) -> dict[str, str]:
        """For the evaluate run: evaluate.cache.<model> = hit | miss | partial, and .<set> for each set."""
        tags = {"evaluate.cache": "on", "evaluate.cache.location": self.location,
                **({"evaluate.cache.unavailable": self.unavailable} if self.unavailable else {})}
        for model, sets in self.outcomes().items():
            kinds = set(sets.values())
            tags[f"evaluate.cache.{model}"] = kinds.pop() if len(kinds) == 1 else "partial"
            tags.update({f"evaluate.cache.{model}.{name}": outcome for name, outcome in sets.items()})
        return tags

    def counts(self) -> dict[str, int]:
        """Replies reused (hits) and generated (misses) tonight, over every model and set."""
        pairs = [counts[:2] for sets in self.reused.values() for counts in sets.values()]
        return {"hits": sum(reused for reused, _ in pairs), "misses": sum(total - reused for reused, total in pairs)}


def outputs_digest(known: Known) -> str:
    return canonical_digest({"replies": known.replies, "parts": known.parts})


def entry_bytes(key: Key, new: Known) -> bytes:
    entry = {"format": ENTRY_FORMAT, "key": key.as_dict(), "replies": new.replies, "parts": new.parts}
    return (json.dumps(entry, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def parse_entry(raw: bytes, key: Key, name: str, where: str) -> Known:
    """The entry's outputs, after every check that it is whole, unedited (its name is their sha256) and of `key`."""
    try:
        entry = json.loads(raw.decode("utf-8"))
        found = Known(dict(entry["replies"]), {digest: [float(nll), int(tokens)]
                                                for digest, (nll, tokens) in entry["parts"].items()})
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CacheEntryError(f"{where} is not a whole entry ({type(exc).__name__}: {exc})") from exc
    if entry.get("format") != ENTRY_FORMAT:
        raise CacheEntryError(f"{where} has format {entry.get('format')!r}; this code reads {ENTRY_FORMAT}")
    if entry.get("key") != key.as_dict():
        raise CacheEntryError(f"{where} holds the key of another model or settings; rule: an entry is found by "
                              "its own key")
    if outputs_digest(found) != name:
        raise CacheEntryError(f"{where}: its outputs do not match the sha256 it is named by (edited or partly "
                              "written)")
    if not all(isinstance(reply, str) for reply in found.replies.values()):
        raise CacheEntryError(f"{where} holds a reply that is not text")
    if not all(math.isfinite(nll) and tokens >= 0 for nll, tokens in found.parts.values()):
        raise CacheEntryError(f"{where} holds a perplexity part that is not a finite sum over >= 0 tokens")
    return found


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
