"""Make a resource's children match a plan, touching only what the resource owns.

An object is the resource's own when its controller ownerReference carries the resource's UID: a
pre-existing object that merely shares a name (or a label) is never adopted, updated or deleted.
Children are created with POST (a taken name answers 409, never a takeover) and re-applied with
server-side apply only when they drifted from the plan; pods are never re-applied (their spec is
immutable), only created and deleted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from lepton.controller.kube import KubeClient, KubeError
from lepton.status.plan import ChildKey, Plan

# A child just created is taken to exist this long before its watch shows it: a pass that runs before
# the watch catches up must not POST it again (a 409 and a GET per child, at scale).
TRUST_CREATED_SECONDS = 30.0


class NameConflictError(Exception):
    """A child's name is taken by an object the resource does not control."""

    def __init__(self, kind: str, name: str, holder: str) -> None:
        self.kind, self.name, self.holder = kind, name, holder
        super().__init__(
            f"{kind} {name!r} already exists and is not owned by this resource ({holder}); "
            f"rename or delete that {kind}, or rename this resource"
        )


class ChildRejectedError(Exception):
    """The apiserver refuses a child the spec renders (invalid, forbidden): retrying the same won't help."""

    def __init__(self, kind: str, name: str, error: KubeError) -> None:
        self.kind, self.name, self.error = kind, name, error
        super().__init__(f"the apiserver rejected {kind} {name!r}: {error.message}")


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller"):
            uid = ref.get("uid")
            return str(uid) if uid else None
    return None


def owned(objects: Iterable[Mapping[str, Any]], uid: str) -> list[Mapping[str, Any]]:
    """The objects whose controller is the resource with this UID."""
    return [o for o in objects if uid and controller_uid(o) == uid]


def _holder(obj: Mapping[str, Any]) -> str:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller"):
            return f"controlled by {ref.get('kind')} {ref.get('name')!r}"
    return "not created by Lepton"


def drifted(desired: Any, actual: Any) -> bool:
    """Whether `actual` lacks or changed anything `desired` states (fields the server adds are fine)."""
    if isinstance(desired, Mapping):
        return not isinstance(actual, Mapping) or any(drifted(v, actual.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return (not isinstance(actual, list) or len(actual) != len(desired)
                or any(drifted(d, a) for d, a in zip(desired, actual, strict=True)))  # fmt: skip
    return bool(desired != actual)


def nulls(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The paths of `obj` whose value is None, as a merge patch that removes them ({} when none)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if value is None:
            out[key] = None
        elif isinstance(value, Mapping) and (inner := nulls(value)):
            out[key] = inner
    return out


def without_nulls(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: without_nulls(v) if isinstance(v, Mapping) else v for k, v in obj.items() if v is not None}


def trimmed(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """What the kernel keeps of a watched object: all a plan, a drift check or a fingerprint reads, without
    `managedFields` (often half an object); a pod keeps of its spec only `nodeName` (status reads nothing
    else of it, and pods are never compared for drift). At thousands of pods this is most of the memory."""
    kept = {k: v for k, v in obj.items() if k != "metadata"}
    kept["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    if kind == "Pod":
        node = (obj.get("spec") or {}).get("nodeName")
        kept["spec"] = {"nodeName": node} if node else {}
    return kept


def _key(obj: Mapping[str, Any]) -> ChildKey:
    return str(obj["kind"]), str(obj["metadata"]["name"])


async def converge(
    client: KubeClient,
    uid: str,
    plan: Plan,
    observed: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    pruned: Iterable[str],
    created: MutableMapping[ChildKey, float],
) -> int:
    """Delete owned children of the `pruned` kinds that the plan no longer wants, then create what is
    missing and correct what drifted. `observed` holds owned children by kind (kinds the operator
    watches); `created` remembers when children were made (monotonic time): one of an unwatched kind is
    not made again, one of a watched kind not until its watch has had TRUST_CREATED_SECONDS to show it.
    Returns the writes sent."""
    writes = 0
    wanted = plan.wanted()
    for kind in pruned:
        for obj in observed.get(kind, []):
            meta = obj["metadata"]
            if (kind, meta["name"]) not in wanted and not meta.get("deletionTimestamp"):
                await client.delete(str(obj["apiVersion"]), kind, meta["namespace"], meta["name"])
                writes += 1
    present = {_key({"kind": kind, **o}): o for kind, objs in observed.items() for o in objs}
    for key in present:
        created.pop(key, None)  # seen: from now on its index tells whether it exists
    now = time.monotonic()
    for child in plan.children:
        key = _key(child)
        actual, watched = present.get(key), key[0] in observed
        made = created.get(key)
        trusted = made is not None and (not watched or now - made < TRUST_CREATED_SECONDS)
        try:
            if actual is None and not trusted:
                actual = await _create(client, child, uid)
                writes += actual is None
                created[key] = now
            if actual is not None and key[0] != "Pod" and drifted(_spec_part(child), actual):
                await client.apply(without_nulls(child))
                writes += 1
                if removed := nulls(child):
                    # A field the render sets to None must be absent. An apply leaves alone what it does not
                    # state (another manager, or our own create, may own it): a merge patch removes it.
                    await client.merge_patch(child, removed)
                    writes += 1
        except KubeError as exc:
            if exc.rejected:
                raise ChildRejectedError(key[0], key[1], exc) from exc
            raise
    return writes


def recheck_after(created: Mapping[ChildKey, float], watched: Iterable[str]) -> float | None:
    """Seconds until the first child of a watched kind, created but not seen since, stops being trusted
    (its pass must run then, whether or not anything else happens), or None."""
    kinds = set(watched)
    times = [made for (kind, _), made in created.items() if kind in kinds]
    return max(0.0, min(times) + TRUST_CREATED_SECONDS - time.monotonic()) if times else None


def _spec_part(child: Mapping[str, Any]) -> dict[str, Any]:
    meta = child["metadata"]
    return {k: v for k, v in child.items() if k not in ("metadata", "apiVersion", "kind")} | {
        "metadata": {"labels": meta.get("labels", {}), "ownerReferences": meta.get("ownerReferences", [])}
    }


async def _create(client: KubeClient, child: Mapping[str, Any], uid: str) -> Mapping[str, Any] | None:
    """Create the child; None when it was created now, the existing object when it was already ours."""
    try:
        await client.create(without_nulls(child))
        return None
    except KubeError as exc:
        if exc.status != 409:
            raise
    meta = child["metadata"]
    existing = await client.get(str(child["apiVersion"]), str(child["kind"]), meta["namespace"], meta["name"])
    if existing is None:  # deleted in between: the next pass creates it
        raise KubeError(409, f"{child['kind']} {meta['name']!r} is being deleted; creating it again")
    if controller_uid(existing) != uid:
        raise NameConflictError(str(child["kind"]), str(meta["name"]), _holder(existing))
    return existing
