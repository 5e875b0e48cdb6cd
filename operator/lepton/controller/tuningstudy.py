"""TuningStudy on the skeleton: the trial TrainingJobs and the tuner pod it owns, the sync with the
tuner (the only I/O beyond the kernel's, done before the pure plan), and its plan (the pure `decide`
composed with the pure renders)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lepton.api import KINDS, TuningStudy
from lepton.api.constants import Phase
from lepton.api.kinds import API_VERSION
from lepton.api.tokens import progress_token
from lepton.api.tuner import TUNER_PORT, SyncReply
from lepton.api.validation import ManifestError, parse
from lepton.controller.reconciler import IDLE_SECONDS, Binding, ChildKind, Key
from lepton.controller.tuner import TunerError, sync
from lepton.render.networkpolicy import NetworkSettings
from lepton.render.trials import suspended, trial_job, trial_manifest
from lepton.render.tuningstudy import (
    TunerSettings,
    render_claim,
    render_network_policy,
    render_tuner,
    tuner_pod_name,
)
from lepton.status.events import tuningstudy_events
from lepton.status.plan import ChildKey, Observed, Plan
from lepton.status.pods import PodView
from lepton.status.references import Resolution
from lepton.status.tuningstudy import RunView, TunerView, decide, sync_request

log = logging.getLogger("lepton.tuningstudy")
RUNNING_LOOK_SECONDS = 15.0


class TuningStudyBinding(Binding[TuningStudy]):
    info = KINDS["TuningStudy"]
    children = (
        ChildKind(API_VERSION, "TrainingJob", "trainingjobs", pruned=True),
        ChildKind("v1", "Pod", "pods", pruned=True),
    )

    def __init__(self, settings: TunerSettings, *, progress_key: bytes, network: NetworkSettings | None = None) -> None:
        self.settings, self.progress_key, self.network = settings, progress_key, network
        self._replies: dict[Key, SyncReply] = {}

    def _token(self, uid: str) -> str:
        return progress_token(self.progress_key, uid or "-")

    async def observe_extra(self, key: Key, body: Mapping[str, Any], observed: Observed) -> TunerView:
        """The tuner pod as seen, and this pass's sync with it (when it is ready to answer)."""
        pod = next((p for p in observed.of("Pod") if p["metadata"]["name"] == f"{key[1]}-tuner"), None)
        if pod is None:
            return TunerView()
        view = PodView.of(pod)
        ip = (pod.get("status") or {}).get("podIP")
        tuner = TunerView(exists=True, ready=view.ready and bool(ip), waiting_reason=view.waiting_reason or "",
                          message=view.waiting_message or view.last_message,
                          unschedulable=view.unschedulable or "" if not view.scheduled else "")  # fmt: skip
        if not tuner.ready or view.deleting:
            return tuner
        try:
            study = parse(dict(body))
        except ManifestError:
            return tuner
        if not isinstance(study, TuningStudy) or study.status.phase in (Phase.SUCCEEDED, Phase.FAILED):
            return tuner
        runs = [v for t in observed.of("TrainingJob") if (v := RunView.of(t)) is not None]
        request = sync_request(study, runs, datetime.now(UTC), self._replies.get(key))
        try:
            reply = await sync(f"http://{ip}:{TUNER_PORT}/v1/sync", request, self._token(study.metadata.uid or ""))
        except TunerError as exc:
            log.info("TuningStudy %s/%s: sync with its tuner failed: %s", *key, exc)
            return TunerView(exists=True, ready=True, error=str(exc), refused=exc.status == 401)
        self._replies[key] = reply
        return TunerView(exists=True, ready=True, reply=reply)

    def plan(self, resource: TuningStudy, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        tuner = extra if isinstance(extra, TunerView) else TunerView()
        runs = [v for t in observed.of("TrainingJob") if (v := RunView.of(t)) is not None]
        decision = decide(resource, runs, tuner, waiting=resolution.waiting,
                          dataset_version=resolution.dataset_version, now=now)  # fmt: skip
        children: list[Mapping[str, Any]] = []
        if resource.spec.storage is None:
            children.append(render_claim(resource))  # the journal outlives the tuner pod: kept until the study goes
        keep: set[ChildKey] = {("TrainingJob", name) for name in decision.keep}
        pod = next((p for p in observed.of("Pod") if p["metadata"]["name"] == tuner_pod_name(resource)), None)
        dead = pod is not None and (pod.get("status") or {}).get("phase") in (Phase.SUCCEEDED, Phase.FAILED)
        if decision.tuner and not dead:  # a dead tuner pod (evicted) is deleted, and created again next pass
            children.append(render_tuner(resource, self.settings, self._token(resource.metadata.uid or ""),
                                         resolution.warm_start))  # fmt: skip
            if self.network is not None:
                children.append(render_network_policy(resource, self.network))
        version = decision.status.dataset_version
        children += [suspended(body, flag) for body, flag in decision.suspend]
        children += [trial_manifest(resource, trial_job(resource, t.number, t.parameters, retry=t.retry,
                                                        dataset_version=version)) for t in decision.start]  # fmt: skip
        return Plan(
            status=decision.status,
            children=children,
            keep=frozenset(keep),
            events=tuningstudy_events(resource.status, decision.status),
            requeue_after=decision.requeue_after,
        )

    def next_look(self, body: Mapping[str, Any]) -> tuple[float, bool]:
        phase = (body.get("status") or {}).get("phase")
        if phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.SUSPENDED):
            return IDLE_SECONDS, False
        return RUNNING_LOOK_SECONDS, True  # the tuner's state changes without an event of ours

    def forget(self, key: Key) -> None:
        self._replies.pop(key, None)
