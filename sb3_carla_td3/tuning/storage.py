"""Where a study lives and how workers share it: storages, heartbeats, and failing the trials of dead workers."""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from sb3_carla_td3.errors import ConfigError
from sb3_carla_td3.tuning.space import FailureSettings

if TYPE_CHECKING:
    import optuna


def _mask(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _retrying(make: Callable[[], Any], attempts: int = 6) -> Any:
    """Call ``make`` again after a short pause when it fails (workers racing to create the same tables or study).

    A missing database driver (``ImportError``) is not a race: it is raised at once.
    """
    for attempt in range(attempts):
        try:
            return make()
        except ImportError:
            raise
        except Exception:  # sqlalchemy's errors differ by driver; the last attempt raises
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + 0.5 * attempt + (os.getpid() % 7) / 10)
    raise AssertionError("unreachable")


def storage_url(storage: str | None, study_dir: Path) -> str:
    """:return: ``storage``, or the default SQLite file in ``study_dir``"""
    return storage if storage else f"sqlite:///{(study_dir / 'study.db').resolve()}"


#: PostgreSQL drivers SQLAlchemy knows, in order of preference: the ``[tune]`` extra installs psycopg2-binary.
POSTGRES_DRIVERS = ("psycopg2", "psycopg")


def with_driver(url: str) -> str:
    """``url`` with its PostgreSQL driver named, e.g. ``postgresql+psycopg2://...`` for ``postgresql://...``.

    SQLAlchemy picks the driver of a bare ``postgresql://`` URL itself, and 2.1 changed that choice from psycopg2 to
    psycopg (3): the same URL then fails on a machine with only the other one installed. This names an installed
    driver instead. ``postgres://`` (Heroku's spelling, refused by SQLAlchemy) is read as ``postgresql://``; URLs
    that already name a driver, and every other scheme, are returned unchanged.

    :param url: a storage URL
    :return: the URL SQLAlchemy is given
    :raises ConfigError: a PostgreSQL URL on a machine with no PostgreSQL driver
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for driver in POSTGRES_DRIVERS:
        if importlib.util.find_spec(driver) is not None:
            return f"postgresql+{driver}://{rest}"
    raise ConfigError(
        f"--storage {_mask(url)}: no PostgreSQL driver is installed ({' or '.join(POSTGRES_DRIVERS)}); "
        "pip install -e '.[tune]' installs psycopg2-binary"
    )


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL.

    :param url: ``journal:PATH`` (or a path ending in ``.log``/``.journal``): a journal file, for a shared
        filesystem; ``sqlite:///PATH``; ``postgresql://USER@HOST:PORT/DB`` (the driver: see :func:`with_driver`) or
        any SQLAlchemy URL Optuna accepts
    :return: the storage
    :raises ConfigError: when the URL's database driver is not installed
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:") or ("://" not in url and url.endswith((".log", ".journal"))):
        path = url.removeprefix("journal:")
        path = path[2:] if path.startswith("//") else path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    engine_url = with_driver(url)
    try:
        return _retrying(lambda: optuna.storages.RDBStorage(engine_url, engine_kwargs=kwargs))
    except ImportError as error:  # optuna's message names no URL and no package
        cause = f"{error.__cause__}" if error.__cause__ else f"{error}"
        raise ConfigError(f"--storage {_mask(url)}: its database driver is not installed ({cause})") from error


def _open_study(
    url: str, name: str, sampler: optuna.samplers.BaseSampler | None = None, pruner: optuna.pruners.BasePruner | None = None
) -> optuna.Study:
    import optuna

    storage = make_storage(url)
    return _retrying(
        lambda: optuna.create_study(
            storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True
        )
    )


def worker_name() -> str:
    """:return: ``host:pid`` of this process"""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def heartbeat(study: optuna.Study, trial_id: int, interval: float) -> Iterator[None]:
    """Write the trial's ``heartbeat`` user attribute (epoch seconds) every ``interval`` s while the block runs.

    :param study: the study
    :param trial_id: the trial's storage id
    :param interval: seconds between beats
    """
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
            except Exception:  # a finished trial or a storage hiccup: the next beat retries
                pass
            if stop.wait(interval):
                return

    study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def fail_stale_trials(study: optuna.Study, failures: FailureSettings) -> list[int]:
    """Mark FAIL every RUNNING trial whose heartbeat is older than the grace period, and re-queue its parameters.

    :param study: the study
    :param failures: grace period and retries
    :return: numbers of the trials this call failed
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage, now, failed = study._storage, time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        start = trial.datetime_start.timestamp() if trial.datetime_start else now
        last = float(trial.user_attrs.get("heartbeat", start))
        if now - last <= failures.grace:
            continue
        worker = trial.user_attrs.get("worker", "?")
        silence = f"no heartbeat for {now - last:.0f} s (grace {failures.grace:g} s)"
        reason = f"{silence}: worker {worker} died (killed, out of memory, machine lost)"
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker failed it first, or it just finished
        failed.append(trial.number)
        requeue(study, trial.number, trial.params, trial.user_attrs, failures)
    return failed


def requeue(
    study: optuna.Study, number: int, params: dict[str, Any], user_attrs: dict[str, Any], failures: FailureSettings
) -> bool:
    """Queue a failed trial's parameters again (attributes ``retry``, ``retry_of``, ``retry_root``), at most
    ``failures.max_retry`` times per original trial.

    :param study: the study
    :param number: the failed trial's number
    :param params: its parameters
    :param user_attrs: its user attributes (a retry's count and root carry over)
    :param failures: the retry limit
    :return: whether the parameters were queued
    """
    retry = int(user_attrs.get("retry", 0)) + 1
    if retry > failures.max_retry:
        return False
    root = int(user_attrs.get("retry_root", number))
    study.enqueue_trial(dict(params), user_attrs={"retry": retry, "retry_of": number, "retry_root": root})
    return True


def _finished(study: optuna.Study) -> tuple[int, int, int]:
    """:return: (COMPLETE + PRUNED, RUNNING, WAITING) trial counts"""
    from optuna.trial import TrialState

    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED], counts[TrialState.RUNNING], counts[TrialState.WAITING]
