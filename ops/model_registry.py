"""The model registry by hand: list versions with their aliases and decisions; move `champion` back to a version;
answer a version awaiting approval (promote.require_approval, pipeline/promotion/approval.py).

    python -m ops.model_registry list     --config configs/embedded.yaml                    # make models
    python -m ops.model_registry rollback --config configs/embedded.yaml --version 3 --reason "v4 answers in English to Chinese"
    python -m ops.model_registry approve  --config configs/embedded.yaml --version 4        # make approve VERSION=4
    python -m ops.model_registry reject   --config configs/embedded.yaml --version 4        # make reject VERSION=4

Rolling back moves `champion` to a named version and records who asked and why on that version (`rollback.note`),
and on the version it replaced (`rollback.replaced_by`), so the history stays readable in the UI.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig, load_project
from pipeline.promotion import approval
from pipeline.tracking import runs
from pipeline.tracking.registry import CHALLENGER, CHAMPION, RegistryError, champion, is_missing, versions


def rollback(project: ProjectConfig, version: int, reason: str) -> None:
    runs.connect(project)
    client = MlflowClient()
    target = client.get_model_version(project.registered_model, str(version))  # raises if it does not exist
    previous = champion(client, project.registered_model)
    client.set_registered_model_alias(project.registered_model, CHAMPION, target.version)
    note = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} by {getpass.getuser()}: {reason}"
    client.set_model_version_tag(project.registered_model, target.version, "rollback.note", note)
    if previous is not None:
        client.set_model_version_tag(project.registered_model, previous.version, "rollback.replaced_by",
                                     f"v{target.version} ({note})")
    print(f"champion: v{previous.version if previous else '-'} -> v{target.version}")


def answer(project: ProjectConfig, version: int, verdict: str) -> None:
    runs.connect(project)
    result = approval.record(MlflowClient(), project.registered_model, str(version), verdict, getpass.getuser())
    print(f"v{result['version']}: {result['status']} ({result['reason'].split('; approval: ')[-1]})")


def list_versions(project: ProjectConfig) -> None:
    runs.connect(project)
    client = MlflowClient()
    name = project.registered_model
    aliases = {}
    for alias in (CHAMPION, CHALLENGER):
        try:
            aliases.setdefault(int(client.get_model_version_by_alias(name, alias).version), []).append(alias)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
    for v in versions(client, name):
        print(f"v{v.version:<4} {','.join(aliases.get(int(v.version), [])):20s} "
              f"{v.tags.get('airflow.logical_date', '-'):11s} bleu={v.tags.get('metric.bleu', '-'):8s} "
              f"{v.tags.get('promotion.decision', '-')}: {v.tags.get('promotion.reason', '')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.model_registry", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "rollback", "approve", "reject"):
        sub = commands.add_parser(name)
        sub.add_argument("--config", required=True)
        if name != "list":
            sub.add_argument("--version", type=int, required=True, help="the version")
        if name == "rollback":
            sub.add_argument("--reason", required=True, help="why; recorded on the model version")
    args = parser.parse_args(argv)
    project = load_project(args.config)
    try:
        if args.command == "rollback":
            rollback(project, args.version, args.reason)
        elif args.command in ("approve", "reject"):
            answer(project, args.version, args.command)
        else:
            list_versions(project)
    except approval.ApprovalError as exc:
        print(f"not recorded: {exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:
        print(f"registry error: {exc.message}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"registry error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
