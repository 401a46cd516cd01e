"""A person's yes before `champion` moves (`promote.require_approval`).

With the switch on, a candidate that passes the gate stays `challenger`, its version tagged `approval.status =
awaiting` and `approval.compared` = the champion the gate compared it with. A person answers:

    make models                                  # the versions; one awaiting approval says so
    make approve VERSION=4                       # = python -m ops.model_registry approve --version 4
    make reject VERSION=4 REASON="answers in English to Chinese"

Only an approval moves `champion`, and only from the version the gate compared with: when another run (or a
rollback) moved it meanwhile, that comparison no longer holds, and the approval is recorded as a rejection saying
so, never a silent overwrite. Recording is idempotent, so an interrupted answer is recorded again safely: the
answer, who gave it and when are written first, then the alias, then `approval.status` last (approved / rejected /
timed out). A different answer to an answered version is refused.
"""

from __future__ import annotations

import datetime
import getpass

from mlflow.tracking import MlflowClient

from pipeline.tracking import registry

STATUS, COMPARED, ANSWER, BY, AT = "approval.status", "approval.compared", "approval.answer", "approval.by", "approval.at"
AWAITING = "awaiting"
ANSWERS = {"approve": "approved", "reject": "rejected", "timeout": "timed out"}  # answer -> final status
DECISION, REASON = "promotion.decision", "promotion.reason"
APPROVAL_HEAD, APPROVAL_LINE_END = "**Approval:", ")\n\n"  # the description's first line, above promote's own


class ApprovalError(RuntimeError):
    """An answer that cannot be recorded: no version awaits approval, or another answer was recorded already."""


def awaiting_tags(compared) -> dict[str, str]:
    """The tags promote writes on a version that passed the gate and now waits for a person."""
    return {STATUS: AWAITING, COMPARED: str(compared.version) if compared else "none"}


def status(client: MlflowClient, name: str, version, timeout_hours: float) -> dict:
    """What a version (None: none registered) waits for. `awaiting`: a question to ask, with its subject and body;
    `answered`: an answer recorded (maybe not fully applied: recording it again finishes it); neither: nothing to
    ask (approval not required, or the gate said no)."""
    tags = version.tags if version else {}
    answered = tags.get(ANSWER) if tags.get(STATUS) else None
    state = {"version": str(version.version) if version else None, "awaiting": tags.get(STATUS) == AWAITING and not answered,
             "answered": answered, "status": tags.get(STATUS), "timeout_hours": timeout_hours}
    if state["awaiting"]:
        state["subject"] = f"Promote {name} v{version.version} to champion?"
        state["body"] = (f"The gate passed against {_named(tags[COMPARED])}: {tags.get(REASON, '')}.\n\n"
                         f"Checks:\n\n{_bullets(tags.get('promotion.checks', ''))}\n\nApprove moves `champion` to "
                         f"v{version.version}; Reject, or no answer within {timeout_hours:g} h, leaves it `challenger`.")
    return state


def record(client: MlflowClient, name: str, version_number: str, answer: str, by: str | None = None,
           now: datetime.datetime | None = None) -> dict:
    """Record the answer for a version awaiting approval and apply it; the final status and reason."""
    if answer not in ANSWERS:
        raise ApprovalError(f"answer {answer!r}: expected one of {sorted(ANSWERS)}")
    version = client.get_model_version(name, str(version_number))  # raises when the version does not exist
    tags = version.tags
    if not tags.get(STATUS):
        raise ApprovalError(f"{name} v{version.version} does not await approval "
                            f"({tags.get(DECISION, 'no decision')}: {tags.get(REASON, '-')})")
    if tags.get(ANSWER, answer) != answer:
        raise ApprovalError(f"{name} v{version.version} was answered {tags[ANSWER]!r} by {tags.get(BY)} at "
                            f"{tags.get(AT)}; {answer!r} is not recorded")
    by = tags.get(BY) or by or getpass.getuser()
    stamp = tags.get(AT) or (now or datetime.datetime.now(datetime.UTC)).isoformat(timespec="seconds")
    for key, value in {ANSWER: answer, BY: by, AT: stamp}.items():
        client.set_model_version_tag(name, version.version, key, value)
    final, reason = _apply(client, name, version, answer, by)
    client.set_model_version_tag(name, version.version, DECISION, "promoted" if final == "approved" else "rejected")
    client.set_model_version_tag(name, version.version, REASON, reason)
    description = version.description or ""
    if description.startswith(APPROVAL_HEAD):  # recorded again: one approval line, not two
        description = description.split(APPROVAL_LINE_END, 1)[-1]
    client.update_model_version(name, version.version, description=f"{APPROVAL_HEAD} {final}**: "
                                f"{reason.split('; approval: ')[-1]} ({stamp}){APPROVAL_LINE_END}{description}")
    client.set_model_version_tag(name, version.version, STATUS, final)  # last: the answer is now fully applied
    return {"version": str(version.version), "status": final, "reason": reason, "by": by, "at": stamp}


def _apply(client: MlflowClient, name: str, version, answer: str, by: str) -> tuple[str, str]:
    gate = version.tags.get(REASON, "").split("; approval:")[0]
    if answer != "approve":
        said = f"rejected by {by}" if answer == "reject" else "no answer before the timeout"
        return ANSWERS[answer], f"{gate}; approval: {said}, stays challenger"
    compared = version.tags.get(COMPARED, "none")
    now = registry.champion(client, name)  # raises when the registry fails: never "no champion"
    current = str(now.version) if now else "none"
    if current == str(version.version):  # a retry after the alias moved
        return "approved", f"{gate}; approval: approved by {by}"
    if current != compared:
        return "rejected", (f"{gate}; approval: approved by {by}, but champion moved to {_named(current)} since the "
                            f"gate compared with {_named(compared)}: not moved (a new run compares again)")
    client.set_registered_model_alias(name, registry.CHAMPION, version.version)
    return "approved", f"{gate}; approval: approved by {by}"


def _named(version: str) -> str:
    return "the base model (no champion)" if version == "none" else f"v{version}"


def _bullets(checks: str) -> str:
    return "\n".join(f"- {line}" for line in checks.splitlines() if line.strip()) or "- (none)"
