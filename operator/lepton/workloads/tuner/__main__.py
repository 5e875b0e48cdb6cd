"""`python -m lepton.workloads.tuner`: read the TunerConfig, open the study's storage, serve syncs
until SIGTERM. Exit codes: 0 after SIGTERM (or SIGINT), 2 for a configuration it cannot run, 1 for
anything else (storage unreachable: the pod restarts and tries again)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Mapping
from types import FrameType

from pydantic import ValidationError

from lepton.api.tokens import PROGRESS_TOKEN_ENV
from lepton.api.tuner import STORAGE_URL_ENV, TUNER_CONFIG_ENV, TunerConfig

log = logging.getLogger("lepton.tuner")


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[tuner] %(levelname)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    text = env.get(TUNER_CONFIG_ENV)
    if not text:
        log.error("no configuration: set %s to a TunerConfig JSON document", TUNER_CONFIG_ENV)
        return 2
    try:
        config = TunerConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors())
        log.error("invalid tuner configuration: %s", problems)
        return 2

    import optuna  # slow to import: only once the configuration is valid

    from lepton.workloads.tuner.dashboard import start_in_tuner
    from lepton.workloads.tuner.metrics import TunerMetrics
    from lepton.workloads.tuner.server import TunerServer
    from lepton.workloads.tuner.service import StudyService
    from lepton.workloads.tuner.storage import ConfigError, open_storage, open_study, redact, seed

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per decision instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = env.get(STORAGE_URL_ENV) if config.storage == "rdb" else None
    where = f"rdb ${STORAGE_URL_ENV}" if config.storage == "rdb" else f"journal {config.journal_dir}"
    try:
        study = open_study(config, storage := open_storage(config, env))
        warm, queued = seed(study, config)
        metrics = TunerMetrics()
        service = StudyService(study, config, metrics)
        summary = service.observe()
        token = env.get(PROGRESS_TOKEN_ENV) or None
        server = TunerServer(
            service, metrics, host=config.host, port=config.port, token=token, redact=lambda text: redact(text, url)
        )
    except ConfigError as exc:
        log.error("cannot run this configuration: %s", redact(str(exc), url))
        return 2
    except Exception as exc:
        log.error("cannot open the study in %s: %s", where, redact(f"{type(exc).__name__}: {exc}", url))
        return 1
    if warm or queued:
        log.info("warm start: %d finished trial(s) added, %d parameter set(s) enqueued", warm, queued)
    server.start()
    dashboard = start_in_tuner(storage, config.dashboard_port) if config.dashboard else None  # the same storage
    log.info(
        "study %s (%s, %s sampler, %s pruner) in %s: %d trials, %d running; serving on http://%s:%d",
        study.study_name, ", ".join(o.direction for o in config.objectives), config.sampler.type,
        config.pruner.type, where, summary.total, summary.running, config.host, server.port,
    )  # fmt: skip
    while not stop.wait(1.0):
        pass
    server.stop()
    if dashboard is not None:
        dashboard.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
