#!/usr/bin/env python3
"""Run the whole lab on one machine: web server, Celery worker and Celery beat.

Started by ``make run`` after migrations and the demo data. Each child runs in its own process
group, so Ctrl-C reaches only this supervisor, which then stops the children in order: a
polite signal first (Celery's warm shutdown), then SIGKILL after ``--grace`` seconds. If one
child dies, the others are stopped and the exit status says which one it was. An interrupted
training run is left "running" and the reaper requeues it (from its checkpoint) once its
heartbeat is stale.

Once everything is started it prints a short summary: the URL (with the port the web server
really listens on), every demo user with role and password, and where mail goes.

Environment: HOST (127.0.0.1), PORT (8000), plus everything h3lab.settings reads.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None


def commands(python: str, host: str, port: str) -> list[Child]:
    celery = [python, "-m", "celery", "-A", "h3lab.celery"]
    return [
        Child("web", [python, "manage.py", "runserver", f"{host}:{port}", "--noreload"]),
        Child(
            "worker",
            [
                *celery,
                "worker",
                "--queues=cpu,gpu,default",
                "--prefetch-multiplier=1",
                "--pool=threads",
                "--concurrency=1",
                "--loglevel=INFO",
                "--hostname=worker@%h",
            ],
        ),
        # The reaper's queue, on a worker of its own so that training never delays it.
        Child(
            "control",
            [
                *celery,
                "worker",
                "--queues=control",
                "--pool=threads",
                "--concurrency=1",
                "--loglevel=INFO",
                "--hostname=control@%h",
            ],
        ),
        Child("beat", [*celery, "beat", "--loglevel=INFO"]),
    ]


def browse_url(host: str, port: str) -> str:
    """The address to open in a browser: a wildcard bind is reached through localhost."""
    wildcards = {"0.0.0.0": "127.0.0.1", "::": "localhost", "": "127.0.0.1"}  # noqa: S104 (read, not bound)
    shown = wildcards.get(host, host)
    if ":" in shown:  # an IPv6 literal
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def startup_summary(
    url: str, users: Sequence[tuple[str, str, str]], mail: str, *, width: int = 79
) -> str:
    """The lines ``make run`` prints once the lab is up: ``users`` are (username, password,
    role) rows, ``mail`` says where mail goes."""
    rule = "-" * width
    lines = [rule, f"h3lab is up: {url}", ""]
    if users:
        name_w = max(len(u[0]) for u in users)
        pass_w = max(len(u[1]) for u in users)
        lines.append("Sign in as (demo users; never load the demo on a public server):")
        lines += [
            f"  {name:<{name_w}}  {password:<{pass_w}}  {role}" for name, password, role in users
        ]
        lines.append("")
    lines += [
        f"Mail: {mail}",
        "Web, worker, control worker and beat are running; Ctrl-C stops them.",
        rule,
    ]
    return "\n".join(lines)


def lab_facts() -> tuple[list[tuple[str, str, str]], str]:
    """The demo users and where mail goes, from the lab's own settings (Django is set up for
    this; the children are separate processes)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "h3lab.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    from disclosure.demo import SECOND_REVIEWER
    from experiments.demo import PERSONAS

    users = [(p.username, p.password, p.role) for p in PERSONAS]
    # The disclosure demo adds a second reviewer, after the first.
    after = next((i + 1 for i, u in enumerate(users) if "reviewer" in u[2]), len(users))
    users.insert(after, (*SECOND_REVIEWER, "second reviewer (review board)"))
    return users, mail_destination(settings.EMAIL_BACKEND, _short(settings.EMAIL_FILE_PATH))


def _short(path: str) -> str:
    """``path`` relative to the checkout when it lies inside it (var/mail.log)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def mail_destination(backend: str, file_path: str) -> str:
    if backend.endswith("MailLogBackend"):
        return f"appended to {file_path} (tail -f it); notifications are also in each inbox"
    if backend.endswith("console.EmailBackend"):
        return "printed here, among the workers' output; notifications are also in each inbox"
    via = backend.rsplit(".", 2)[-2]
    return f"sent through the {via} backend (EMAIL_URL); notifications are also in each inbox"


def stop_all(children: list[Child], grace: float) -> None:
    """SIGTERM every live child (Celery then stops its own pool), wait up to ``grace`` s, then
    SIGKILL the child's whole process group."""
    for child in children:
        if child.proc and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        if not child.proc:
            continue
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[run] {child.name} did not stop within {grace:.0f}s; killing it", flush=True)
            _signal_group(child.proc, signal.SIGKILL)
            child.proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", default=os.environ.get("PORT", "8000"))
    parser.add_argument("--grace", type=float, default=15.0, help="seconds before SIGKILL")
    args = parser.parse_args(argv)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Training on one torch thread unless the operator chose: web, workers and beat share the
    # machine, and on the 2-core CPU under load one thread trained the quick-start preset at
    # ~4 steps/s, two at under 1 (docs/quickstart.md, Threads).
    env.setdefault("OMP_NUM_THREADS", "1")
    users, mail = lab_facts()
    children = commands(sys.executable, args.host, args.port)
    stopping: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping:  # second Ctrl-C: no more waiting
            for child in children:
                if child.proc and child.proc.poll() is None:
                    _signal_group(child.proc, signal.SIGKILL)
        stopping.append(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    for child in children:
        # start_new_session: the terminal's Ctrl-C goes to us only; we decide how to stop.
        child.proc = subprocess.Popen(child.argv, cwd=ROOT, env=env, start_new_session=True)
    print("\n" + startup_summary(browse_url(args.host, args.port), users, mail) + "\n", flush=True)

    dead: Child | None = None
    while not stopping and dead is None:
        for child in children:
            if child.proc is None:  # every child was started before this loop
                raise RuntimeError(f"{child.name} was never started")
            if child.proc.poll() is not None:
                dead = child
                break
        else:
            time.sleep(0.3)

    if dead is not None and dead.proc is not None:
        print(
            f"[run] {dead.name} exited with status {dead.proc.returncode}; stopping the rest",
            flush=True,
        )
    else:
        print(f"[run] {stopping[0]} received; stopping web, workers and beat", flush=True)
    stop_all(children, args.grace)
    print("[run] stopped", flush=True)
    return 1 if dead is not None else 0


if __name__ == "__main__":
    sys.exit(main())
