"""Every master key carries a fingerprint the database records; a process holding a wrong key
stops before it takes a request or a job, ``check --deploy`` fails on it, DEBUG never replaces
a registered key with a fresh one, and a rotation goes add → register → re-wrap → retire."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.checks import run_checks
from django.core.management import CommandError, call_command

from disclosure.models import AuditEntry
from experiments.actions.runs import do_submit_run
from experiments.models import Artifact, RunStatus
from experiments.storage import open_artifact, store_file
from tests import factories
from tests.conftest import Lab
from tests.e2e.conftest import start_worker
from vault import keystore, registry
from vault.crypto import KeyError_, Keyring, MasterKey
from vault.fingerprints import KeyRecord, fingerprint, keyring_problems
from vault.models import MasterKeyRecord
from web.startup import KeysRefused, check_master_keys

SECRET = b"layer 1 head 3 copies the token after the match. " * 50


def spec(key_id: str, raw: bytes | None = None) -> str:
    return f"{key_id}:{base64.b64encode(raw or os.urandom(32)).decode()}"


def ring(*specs: str) -> Keyring:
    return Keyring.parse(",".join(specs))


def out(name: str, *args: str) -> str:
    buf = io.StringIO()
    call_command(name, *args, stdout=buf)
    return buf.getvalue()


def stored(lab: Lab, tmp_path: Path) -> Artifact:
    run = factories.make_run(lab.project, user=lab.alice)
    src = tmp_path / "probe.bin"
    src.write_bytes(SECRET)
    artifact = store_file(run, src, "probe.bin")
    artifact.save()
    return artifact


# --- the pure comparison ---------------------------------------------------------------------


def test_a_fingerprint_names_the_key_bytes_and_reveals_none_of_them() -> None:
    raw = os.urandom(32)
    a, same_bytes_other_id = MasterKey("k1", raw), MasterKey("k9", raw)
    other = MasterKey("k1", os.urandom(32))

    assert fingerprint(a) == fingerprint(same_bytes_other_id)
    assert fingerprint(a) != fingerprint(other)
    assert len(fingerprint(a)) == 16
    assert raw.hex()[:16] not in fingerprint(a)
    assert "key=" not in repr(a)  # the key never reaches a log line through repr


def test_a_wrong_key_under_a_known_id_is_named_with_both_fingerprints() -> None:
    right, wrong = ring(spec("k1")), ring(spec("k1"))
    records = [KeyRecord("k1", fingerprint(right.current), current=True)]

    problems = keyring_problems(wrong, records)

    assert problems == [
        f"master key 'k1' does not match the key this deployment's data was encrypted with "
        f"(fingerprint {fingerprint(right.current)} expected, {fingerprint(wrong.current)} given)"
    ]
    assert keyring_problems(right, records) == []


def test_a_process_must_hold_the_current_key_and_use_it_first() -> None:
    k1, k2 = spec("k1"), spec("k2")
    records = [
        KeyRecord("k1", fingerprint(ring(k1).current)),
        KeyRecord("k2", fingerprint(ring(k2).current), current=True),
    ]

    (missing,) = keyring_problems(ring(k1), records)
    (order,) = keyring_problems(ring(k1, k2), records)

    assert "does not hold master key 'k2'" in missing
    assert "put 'k2' first" in order
    assert keyring_problems(ring(k2, k1), records) == []
    assert keyring_problems(ring(k2), records) == []  # k1 retired from the configuration


def test_an_unregistered_first_key_is_refused_but_a_spare_second_key_is_not() -> None:
    k1, k3 = spec("k1"), spec("k3")
    records = [KeyRecord("k1", fingerprint(ring(k1).current), current=True)]

    assert keyring_problems(ring(k1, k3), records) == []
    (first,) = keyring_problems(ring(k3, k1), records)
    (unknown,) = keyring_problems(ring(k3), [KeyRecord("k1", "0" * 16)])  # none is current
    assert "lists 'k3' first" in first
    assert "'k3'" in unknown and "not registered" in unknown


def test_nothing_recorded_means_nothing_to_compare() -> None:
    assert keyring_problems(ring(spec("k1")), []) == []


# --- the database's records and the start-up check -------------------------------------------


@pytest.mark.django_db
def test_the_first_start_records_the_keys_and_audits_it(settings: object) -> None:
    settings.H3LAB_MASTER_KEYS = f"{spec('k1')},{spec('k0')}"  # type: ignore[attr-defined]

    check_master_keys("web")
    check_master_keys("worker")  # a second start changes nothing

    rows = {r.key_id: r for r in MasterKeyRecord.objects.all()}
    assert set(rows) == {"k1", "k0"}
    assert rows["k1"].current is True and rows["k0"].current is False
    assert rows["k1"].fingerprint == fingerprint(keystore.keyring().get("k1"))
    (entry,) = AuditEntry.objects.filter(action="masterkey.register")
    assert entry.new == {
        "keys": {"k1": rows["k1"].fingerprint, "k0": rows["k0"].fingerprint},
        "current": "k1",
        "by": "web",
    }


@pytest.mark.django_db
def test_a_process_with_a_wrong_key_refuses_to_start_with_a_clear_message(
    settings: object,
) -> None:
    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]
    check_master_keys("web")
    expected = fingerprint(keystore.current())
    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]  # same id, other bytes

    with pytest.raises(KeysRefused) as err:
        check_master_keys("worker")

    assert str(err.value).startswith("h3lab worker refuses to start: master key 'k1' does not")
    assert f"fingerprint {expected} expected, {fingerprint(keystore.current())} given" in str(
        err.value
    )


@pytest.mark.django_db
def test_the_first_registration_refuses_a_key_that_does_not_open_existing_data(
    settings: object, lab: Lab, tmp_path: Path
) -> None:
    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]
    artifact = stored(lab, tmp_path)  # data from before fingerprints were recorded
    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]

    with pytest.raises(KeysRefused, match=f"does not open artifact {artifact.pk}"):
        check_master_keys("web")
    assert MasterKeyRecord.objects.count() == 0


@pytest.mark.django_db
def test_a_replacement_key_is_not_registered_over_data_under_a_lost_one(
    settings: object, lab: Lab, tmp_path: Path
) -> None:
    settings.H3LAB_MASTER_KEYS = spec("mk-lost")  # type: ignore[attr-defined]
    stored(lab, tmp_path)  # data from before fingerprints were recorded
    settings.H3LAB_MASTER_KEYS = spec("mk-fresh")  # type: ignore[attr-defined]  # file lost

    with pytest.raises(KeysRefused, match="under master key\\(s\\) mk-lost, which this"):
        check_master_keys("web")
    found = run_checks(include_deployment_checks=True, databases=["default"])
    assert any(m.id == "h3lab.E012" and "mk-lost" in m.msg for m in found)
    assert MasterKeyRecord.objects.count() == 0


@pytest.mark.django_db
def test_check_deploy_fails_on_a_wrong_key(settings: object) -> None:
    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]
    check_master_keys("web")

    def e012() -> list[str]:
        found = run_checks(include_deployment_checks=True, databases=["default"])
        return [m.msg for m in found if m.id == "h3lab.E012"]

    assert e012() == []
    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]
    (msg,) = e012()
    assert "master key 'k1' does not match" in msg


@pytest.mark.django_db
def test_debug_never_generates_a_key_over_a_database_with_registered_keys(
    settings: object, tmp_path: Path
) -> None:
    settings.H3LAB_MASTER_KEYS = ""  # type: ignore[attr-defined]
    settings.H3LAB_MASTER_KEY_FILE = str(tmp_path / "master.key")  # type: ignore[attr-defined]
    settings.H3LAB_MASTER_KEY_AUTOCREATE = True  # type: ignore[attr-defined]
    keystore.keyring()  # a fresh development database: a key is generated
    check_master_keys("web")
    (tmp_path / "master.key").unlink()  # the key file is lost (a restore without it)

    with pytest.raises(KeyError_, match="restore the key file"):
        keystore.keyring()
    assert not (tmp_path / "master.key").exists()


# --- rotation ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_rotation_adds_registers_rewraps_and_retires_the_old_key(
    settings: object, lab: Lab, tmp_path: Path
) -> None:
    k1, k2 = spec("k1"), spec("k2")
    settings.H3LAB_MASTER_KEYS = k1  # type: ignore[attr-defined]
    check_master_keys("web")
    artifact = stored(lab, tmp_path)

    settings.H3LAB_MASTER_KEYS = f"{k1},{k2}"  # type: ignore[attr-defined]  # 1. add, second
    check_master_keys("worker")  # every process restarts with it, still on k1
    settings.H3LAB_MASTER_KEYS = f"{k2},{k1}"  # type: ignore[attr-defined]
    with pytest.raises(KeysRefused, match="put 'k1' first"):
        check_master_keys("worker")  # not first before it is registered
    assert "now run `manage.py rotate_master_key`" in out("keys", "register")  # 2. register
    with pytest.raises(KeysRefused, match="put 'k2' first"):
        check_master_keys("worker", keyring=ring(k1, k2))  # a process not yet restarted
    with pytest.raises(CommandError, match="still wraps 1 artifacts"):
        out("keys", "retire", "k1")
    out("rotate_master_key")  # 3. re-wrap
    assert "retired master key k1" in out("keys", "retire", "k1")  # 4. retire
    settings.H3LAB_MASTER_KEYS = k2  # type: ignore[attr-defined]  # 5. remove it

    check_master_keys("worker")
    artifact.refresh_from_db()
    assert artifact.key_id == "k2"
    assert b"".join(open_artifact(artifact)) == SECRET
    settings.H3LAB_MASTER_KEYS = k1  # type: ignore[attr-defined]
    with pytest.raises(KeysRefused, match="does not hold master key 'k2'"):
        check_master_keys("worker")  # a process left on the old key
    actions = list(
        AuditEntry.objects.filter(action__startswith="masterkey.").values_list("action", flat=True)
    )
    assert actions == [
        "masterkey.register",
        "masterkey.register",
        "masterkey.rotate",
        "masterkey.retire",
    ]


@pytest.mark.django_db
def test_a_wrong_key_cannot_register_itself(settings: object) -> None:
    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]
    check_master_keys("web")
    settings.H3LAB_MASTER_KEYS = spec("k2")  # type: ignore[attr-defined]  # without k1

    with pytest.raises(CommandError, match="does not hold master key 'k1'"):
        out("keys", "register")
    with pytest.raises(CommandError, match="does not hold"):
        out("keys", "status")
    assert registry.records()[0].key_id == "k1"
    assert MasterKeyRecord.objects.get(current=True).key_id == "k1"


@pytest.mark.django_db
def test_keys_status_lists_fingerprints_and_what_each_key_wraps(
    settings: object, lab: Lab, tmp_path: Path
) -> None:
    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]
    stored(lab, tmp_path)
    out("keys", "register")

    text = out("keys", "status")

    assert f"k1  {fingerprint(keystore.current())}  current  held  1 artifacts" in text
    assert "fit this deployment" in text


# --- the processes themselves --------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["start_worker"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_web_worker_and_beat_with_a_wrong_key_stop_before_taking_a_job(
    settings: object, tmp_path: Path, lab: Lab, test_broker: dict[str, str]
) -> None:
    from tests.e2e.conftest import database_url

    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]
    check_master_keys("web")
    run = do_submit_run(  # its job waits in the broker for the worker below
        project=lab.project,
        cfg=factories.tiny_config(),
        experiment_name="keys",
        acting_user=lab.alice,
    )
    env = {
        **os.environ,
        **test_broker,
        "DATABASE_URL": database_url(),
        "H3LAB_VAR_DIR": str(tmp_path),
        "H3LAB_DATA_DIR": str(django_settings.MEDIA_ROOT),
        "H3LAB_MASTER_KEYS": spec("k1"),  # the wrong bytes under the right id
        "H3LAB_CHECK_KEYS_AT_START": "1",
    }
    celery = [sys.executable, "-m", "celery", "-A", "h3lab.celery"]
    commands = {
        "web": [sys.executable, "-c", "import h3lab.wsgi"],
        "worker": [*celery, "worker", "--pool=solo", "--queues=cpu", "--without-mingle"],
        "beat": [*celery, "beat", f"--schedule={tmp_path / 'beat'}"],
    }
    for process, argv in commands.items():
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0, process
        assert f"h3lab {process} refuses to start: master key 'k1' does not match" in done.stderr
    run.refresh_from_db()
    assert run.celery_task_id  # the job was sent ...
    assert run.status == RunStatus.QUEUED and run.attempt == 0  # ... and no worker took it


@pytest.mark.e2e
def test_a_worker_with_the_right_key_checks_it_and_starts(
    settings: object, lab: Lab, start_worker: Any
) -> None:
    settings.H3LAB_MASTER_KEYS = spec("k1")  # type: ignore[attr-defined]
    check_master_keys("web")

    worker = start_worker(env={"H3LAB_CHECK_KEYS_AT_START": "1"})  # fails unless it is ready

    assert "worker: master key k1" in worker.log()  # compared before it took a job
    assert "refuses to start" not in worker.log()


def test_keystore_and_crypto_stay_importable_without_the_registry() -> None:
    # vault.crypto and vault.fingerprints are pure: importing them loads no Django model.
    done = subprocess.run(
        [sys.executable, "-c", "import vault.fingerprints, sys; print('django' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "False"


def test_a_worker_that_cannot_reach_the_database_stops_instead_of_working_unchecked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import OperationalError

    from web import startup

    calls: list[str] = []

    def down(process: str) -> None:
        calls.append(process)
        raise OperationalError("connection refused")

    monkeypatch.setenv(startup.ENV_SWITCH, "1")
    monkeypatch.setattr(startup, "check_master_keys", down)

    with pytest.raises(SystemExit, match="could not reach the database to compare its master"):
        startup._exit_unless_keys_fit("worker", wait_s=0)
    startup.check_web_start()  # the web answers 503 meanwhile: it starts, and logs why

    assert calls == ["worker", "web"]
