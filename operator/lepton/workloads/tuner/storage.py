"""The study's persistent storage: a journal file (Optuna JournalStorage) or an RDB (its URL from the
environment, never logged), the Optuna study in it, and the warm start added exactly once."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import LOCK_FILE_SUFFIX  # the symlink lock's name: <journal>.lock
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from lepton.api.tuner import JOURNAL_FILE, STORAGE_URL_ENV, TunerConfig, optuna_study_name
from lepton.workloads.tuner import space

log = logging.getLogger("lepton.tuner")
SEEDED_ATTR = "lepton.seeded"  # study user attribute: the warm start is in (never added again)
WARM_PREFIX = "warm-"  # SEED_ATTR of a trial added from another study (fromStudy)
SEED_ATTR = "lepton.seed"  # trial user attribute: the warm start item it came from (enqueue-<i>, warm-<i>)


class ConfigError(ValueError):
    """A configuration the tuner cannot run (exit code 2)."""


def redact(text: str, url: str | None) -> str:
    """`text` with the storage URL and its password taken out (SQLAlchemy quotes URLs in errors)."""
    if not url:
        return text
    text = text.replace(url, f"${STORAGE_URL_ENV}")
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def open_storage(config: TunerConfig, environ: Mapping[str, str]) -> BaseStorage:
    if config.storage == "rdb":
        url = environ.get(STORAGE_URL_ENV, "")
        if not url:
            raise ConfigError(f"storage rdb needs the database URL in ${STORAGE_URL_ENV}")
        # pool_pre_ping: a database restarted under a long-lived tuner costs one reconnect, not a sync.
        return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    if not config.journal_dir:
        raise ConfigError("storage journal needs journalDir")
    directory = Path(config.journal_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / JOURNAL_FILE
    clear_stale_lock(path)
    return JournalStorage(JournalFileBackend(str(path)))


def clear_stale_lock(journal: Path) -> None:
    """Remove the journal's lock (Optuna's symlink lock) left by a tuner killed while it appended.

    Optuna would wait 30 s before it breaks such a lock, and a killed tuner leaves one often: most of a
    sync's time is the fsync under that lock. At start nothing else writes: the tuner is the study's
    only writer (one pod with a fixed name), and a reader (optuna-dashboard) takes no lock to read."""
    lock = journal.with_name(journal.name + LOCK_FILE_SUFFIX)
    if lock.is_symlink():
        log.warning("removing %s: the lock of a tuner that died while it wrote", lock.name)
        lock.unlink(missing_ok=True)


def open_study(config: TunerConfig, storage: BaseStorage) -> optuna.Study:
    """Create the study, or load it after a restart; its directions must be the configured ones."""
    try:
        sampler = space.sampler(config.sampler, config.search_space)
        pruner = space.pruner(config.pruner)
    except ValueError as exc:  # SpaceError, and Optuna's own checks of a distribution or a pruner
        raise ConfigError(str(exc)) from exc
    directions = [o.direction for o in config.objectives]
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=optuna_study_name(config.study, config.uid),
        load_if_exists=True,
        directions=directions,
    )
    stored = ["minimize" if d == StudyDirection.MINIMIZE else "maximize" for d in study.directions]
    if stored != directions:
        raise ConfigError(f"study {study.study_name} exists with directions {stored}, not {directions}")
    return study


def seed(study: optuna.Study, config: TunerConfig) -> tuple[int, int]:
    """Add the warm start's finished trials and enqueue the `enqueue` sets, once in the study's life.

    Each added trial carries its item's key, so a crash halfway through adds only the rest after a
    restart; the study attribute then says it is all in. Returns (warm trials added, sets enqueued)."""
    if study.user_attrs.get(SEEDED_ATTR):
        return 0, 0
    try:  # every enqueue set is checked before anything is written
        enqueue = [space.values_of(config.search_space, texts) for texts in config.enqueue]
    except ValueError as exc:
        raise ConfigError(f"enqueue: {exc}") from exc
    done = {t.user_attrs.get(SEED_ATTR) for t in study.get_trials(deepcopy=False)}
    dists = space.distributions(config.search_space)
    warm = 0
    for i, item in enumerate(config.warm_start):
        key = f"{WARM_PREFIX}{i}"
        if key in done:
            continue
        try:
            params = space.values_of(config.search_space, item.parameters)
            if len(item.values) != len(study.directions):
                raise ValueError(f"{len(item.values)} values for {len(study.directions)} objectives")
        except ValueError as exc:  # another study's trial: left out, not fatal
            log.warning("warm start: trial %d left out: %s", i, exc)
            continue
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                params=params,
                distributions={name: dists[name] for name in params},
                values=item.values,
                user_attrs={SEED_ATTR: key},
            )
        )
        warm += 1
    queued = 0
    for i, params in enumerate(enqueue):
        key = f"enqueue-{i}"
        if key not in done:
            study.enqueue_trial(params, user_attrs={SEED_ATTR: key})
            queued += 1
    study.set_user_attr(SEEDED_ATTR, True)
    return warm, queued
