"""Terminal client for the h3lab API: ``python -m h3lab.client`` (or ``h3lab-client``).

Standard library only (urllib, argparse, json, csv, tarfile) — no Django, no torch — so it runs
on any machine with Python 3.11 and talks to a lab over HTTP. ``exports verify`` checks the
Ed25519 signatures with the ``cryptography`` package when it is importable, else with the
``openssl`` command (3.0, or 1.1.1 with ``-rawin``). Progress goes to stderr, results to stdout,
so output pipes cleanly (``… metrics 12 --csv > curve.csv``); ``--json`` prints the API's JSON.

Credentials: ``--url``/``--token``, else ``H3LAB_URL``/``H3LAB_TOKEN``, else the file ``login``
writes (``$XDG_CONFIG_HOME/h3lab/config.json``, by default ``~/.config/h3lab/config.json``,
mode 0600). Create a token on the lab's ``/api/tokens/`` page.

Exit codes (also in ``--help``): see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from h3lab import __version__  # the package's __init__ imports nothing: no torch, no Django

DEFAULT_URL = "http://127.0.0.1:8000"
CHUNK = 1 << 16

EXIT_OK = 0
EXIT_FAILURE = 1  # the run failed, a bundle does not verify, or anything else went wrong
EXIT_USAGE = 2  # bad arguments (argparse's own code), an unreadable --config file, …
EXIT_CANCELLED = 3  # the run was cancelled
EXIT_AUTH = 4
EXIT_NOT_FOUND = 5
EXIT_INVALID = 6  # the server refused the input (400)
EXIT_CONNECTION = 7
EXIT_SERVER = 8
FINAL = {"succeeded": EXIT_OK, "failed": EXIT_FAILURE, "cancelled": EXIT_CANCELLED}
EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success (watch, logs --follow, --watch: the run succeeded)
  {EXIT_FAILURE}  failure: the run failed, a bundle does not verify, or another error
  {EXIT_USAGE}  usage error: bad arguments or an unreadable local file
  {EXIT_CANCELLED}  the run was cancelled
  {EXIT_AUTH}  authentication failed or the token's scope is too small (run `login`)
  {EXIT_NOT_FOUND}  not found, or not visible to your account (the two look the same)
  {EXIT_INVALID}  the server refused the input (each bad field is named)
  {EXIT_CONNECTION}  cannot reach the server
  {EXIT_SERVER}  any other server answer (after retries, for watch and logs --follow)
"""
TRANSIENT_STATUS = (500, 502, 503, 504)

EPILOG = (
    """examples:
  python -m h3lab.client login                      # asks for the lab's URL and a token
  python -m h3lab.client submit --project induction --preset h3 --task induction_head \\
      --steps 2000 --lr 5e-4 --watch
  python -m h3lab.client submit --project induction --config sweep/run3.json --name lr-3e-4
  python -m h3lab.client runs --project induction --status running
  python -m h3lab.client watch 42            # exit code 0 succeeded, 1 failed, 3 cancelled
  python -m h3lab.client logs 42 --follow
  python -m h3lab.client cancel 42
  python -m h3lab.client rerun 42 --set train.lr=3e-4 --watch
  python -m h3lab.client analyse 42 --kind ablation --examples 64 --modes zero mean --watch
  python -m h3lab.client metrics 42 --csv > run42.csv
  python -m h3lab.client artifacts 42
  python -m h3lab.client download 317 -o model.safetensors
  python -m h3lab.client findings --tier 3
  python -m h3lab.client findings show 12 --json
  python -m h3lab.client findings vote 12 object -m "the probe code reveals the trick"
  python -m h3lab.client objections clear 5 -m "addressed in revision 2"
  python -m h3lab.client exports download 7 --verify
  python -m h3lab.client exports verify h3lab-public-20261126-101500.tar.gz

"""
    + EXIT_CODES
)


class ClientError(Exception):
    """A failure worth one clear line on stderr, and the exit code to leave with. ``status``
    is the server's HTTP status when it answered."""

    def __init__(self, message: str, exit_code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth retrying: the server could not be reached, or answered 500/502/503/504."""
        return self.exit_code == EXIT_CONNECTION or self.status in TRANSIENT_STATUS


# --- configuration --------------------------------------------------------------------------------


def config_path() -> Path:
    """Where ``login`` keeps the URL and token: ``$XDG_CONFIG_HOME/h3lab/config.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "h3lab" / "config.json"


@dataclass(frozen=True)
class Settings:
    url: str
    token: str


def read_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read {path}: {exc}", EXIT_USAGE) from None
    return stored if isinstance(stored, dict) else {}


def write_config(values: dict[str, Any], path: Path | None = None) -> Path:
    """Write the config file readable by its owner only (0600, in a 0700 folder), replacing
    any previous one atomically. SECURITY: the token is a password; the file is created with
    its final mode, so it is never readable by others, not even for an instant."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(values, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)  # whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_settings(url: str | None, token: str | None, config_file: Path | None = None) -> Settings:
    """Flags, then the environment, then the config file."""
    stored = read_config(config_file)
    base = url or os.environ.get("H3LAB_URL") or stored.get("url") or DEFAULT_URL
    secret = token or os.environ.get("H3LAB_TOKEN") or stored.get("token") or ""
    return Settings(url=str(base).rstrip("/"), token=str(secret))


# --- HTTP -----------------------------------------------------------------------------------------


class Api:
    """A thin JSON-over-HTTP wrapper that turns every failure into a :class:`ClientError`."""

    def __init__(self, settings: Settings, *, retries_on_429: int = 5) -> None:
        self.settings = settings
        self.retries_on_429 = retries_on_429

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            full = path
        else:
            prefix = "" if path.startswith(("/api/", "/.well-known/", "/keys/")) else "/api/v1"
            full = f"{self.settings.url}{prefix}/{path.lstrip('/')}"
        pairs = [(k, v) for k, v in (query or {}).items() if v is not None and v != []]
        flat = [(k, x) for k, v in pairs for x in (v if isinstance(v, list) else [v])]
        return full + ("?" + urllib.parse.urlencode(flat) if flat else "")

    def open(self, method: str, url: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json", "User-Agent": f"h3lab-client/{__version__}"}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        # SECURITY: the client talks HTTP(S) to the lab's API only; urllib would also open
        # file: and other schemes, so anything else is refused before a request is built.
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ClientError(f"not an http(s) URL: {url!r}", EXIT_USAGE)
        for attempt in range(self.retries_on_429 + 1):
            request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
            try:
                return urllib.request.urlopen(request, timeout=60)  # noqa: S310
            except urllib.error.HTTPError as exc:
                if exc.code == 429 and attempt < self.retries_on_429:
                    time.sleep(_retry_after(exc))
                    continue
                raise self._error(exc) from None
            except urllib.error.URLError as exc:
                raise ClientError(
                    f"cannot reach {self.settings.url}: {exc.reason}. "
                    "Check H3LAB_URL (or --url, or `login`) and that the server is running.",
                    EXIT_CONNECTION,
                ) from None
            except (TimeoutError, ConnectionError) as exc:
                msg = f"cannot reach {self.settings.url}: {exc}"
                raise ClientError(msg, EXIT_CONNECTION) from None
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        with self.open(method, self.url(path, query), body) as response:
            raw = response.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ClientError(
                f"{self.settings.url} did not answer with JSON: is it an h3lab server?",
                EXIT_SERVER,
            ) from None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, **query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def pages(self, path: str, *, limit: int | None = None, **query: Any) -> Iterator[Any]:
        """Every item of a paginated list, following ``next`` links."""
        url: str | None = self.url(path, query)
        seen = 0
        while url:
            with self.open("GET", url) as response:
                page = json.loads(response.read())
            for item in page["results"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            url = page.get("next")

    def _error(self, exc: urllib.error.HTTPError) -> ClientError:
        try:
            error = json.loads(exc.read()).get("error", {})
        except (ValueError, AttributeError, OSError):
            error = {}
        message = error.get("message") or exc.reason
        if exc.code == 401:
            hint = (
                "run `login` or set H3LAB_TOKEN (or --token)"
                if not self.settings.token
                else "create a new token and run `login` again"
            )
            return ClientError(
                f"authentication failed: {message} — {hint} ({self.settings.url}/api/tokens/)",
                EXIT_AUTH,
                401,
            )
        if exc.code == 403:
            return ClientError(f"not allowed: {message}", EXIT_AUTH, 403)
        if exc.code == 404:
            return ClientError(
                "not found — it does not exist, or your account may not see it",
                EXIT_NOT_FOUND,
                404,
            )
        if exc.code == 400:
            fields = error.get("fields") or {}
            lines = [f"  {name or 'input'}: {' '.join(msgs)}" for name, msgs in fields.items()]
            detail = "\n".join(lines) if lines else f"  {message}"
            return ClientError(f"invalid request:\n{detail}", EXIT_INVALID, 400)
        if exc.code == 410:
            return ClientError(str(message), EXIT_NOT_FOUND, 410)
        return ClientError(f"server answered {exc.code}: {message}", EXIT_SERVER, exc.code)


def _retry_after(exc: urllib.error.HTTPError) -> float:
    try:
        return min(60.0, max(1.0, float(exc.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


T = TypeVar("T")


@dataclass
class Retry:
    """Retry a poll through transient trouble — the server unreachable, or answering
    500/502/503/504 (a restart, a deploy, an overloaded proxy) — with exponential backoff
    (``delay``, doubling, at most 30 s), saying so on stderr; give up after ``attempts``
    failures in a row. A success resets the count."""

    attempts: int = 8
    delay: float = 1.0
    out: IO[str] = field(default_factory=lambda: sys.stderr)

    def __call__(self, poll: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return poll()
            except ClientError as exc:
                if not exc.transient or failures >= self.attempts:
                    if exc.transient:
                        exc.args = (f"{exc} (gave up after {failures} retries)",)
                    raise
                wait = min(30.0, self.delay * 2**failures)
                failures += 1
                what = f"server answered {exc.status}" if exc.status else "server unreachable"
                self.out.write(
                    f"h3lab: {what}; retrying in {wait:g} s (retry {failures} of {self.attempts})\n"
                )
                self.out.flush()
                time.sleep(wait)


# --- output ---------------------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


def table(rows: list[list[str]], headers: list[str], out: IO[str]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
        out.write("\n")


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# --- login ----------------------------------------------------------------------------------------


def _ask(prompt: str) -> str:
    """A line typed by the user; the prompt goes to stderr, so stdout stays the result."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline().strip()


def cmd_login(api: Api, args: argparse.Namespace) -> int:
    """Ask for (or take) the lab's URL and a token, check them against ``/api/v1/me/``, and
    store them in the config file (0600), as ``gh auth login`` does."""
    stored = read_config()
    interactive = sys.stdin.isatty()
    url = args.url or os.environ.get("H3LAB_URL") or stored.get("url") or ""
    if not url and interactive:
        url = _ask(f"Lab URL [{DEFAULT_URL}]: ")
    url = (url or DEFAULT_URL).rstrip("/")
    token = args.token or ""
    if args.with_token:
        token = sys.stdin.readline().strip()
    elif not token and interactive:
        print(f"Create a token at {url}/api/tokens/ and paste it here.", file=sys.stderr)
        token = getpass.getpass("Token: ").strip()
    if not token:
        raise ClientError(
            "no token: pass --token, pipe it with --with-token, or run login in a terminal",
            EXIT_USAGE,
        )
    me = Api(Settings(url=url, token=token)).get("me/")
    path = write_config({**stored, "url": url, "token": token})
    if args.json:
        emit_json(
            {"url": url, "username": me["username"], "scope": me["scope"], "config": str(path)}
        )
    else:
        expires = (me.get("token_expires_at") or "")[:10]
        print(
            f"Logged in to {url} as {me['username']} (token scope {me['scope']}"
            + (f", expires {expires}" if expires else "")
            + f"); saved to {path}",
            file=sys.stderr,
        )
    if os.environ.get("H3LAB_TOKEN") and os.environ["H3LAB_TOKEN"] != token:
        print("note: H3LAB_TOKEN is set and still takes precedence.", file=sys.stderr)
    return EXIT_OK


def cmd_logout(api: Api, args: argparse.Namespace) -> int:
    """Forget the stored token (the URL is kept). The token itself stays valid until it
    expires or is revoked on the lab's token page."""
    path = config_path()
    stored = read_config(path)
    if "token" not in stored:
        raise ClientError(f"not logged in (no token in {path})", EXIT_FAILURE)
    url = stored.get("url", DEFAULT_URL)
    del stored["token"]
    write_config(stored, path)
    if args.json:
        emit_json({"url": url, "logged_out": True, "config": str(path)})
    else:
        print(
            f"Logged out of {url}: the token was removed from {path}. It stays valid until it "
            f"expires; revoke it at {url}/api/tokens/ if it may have leaked.",
            file=sys.stderr,
        )
    return EXIT_OK


# --- runs -----------------------------------------------------------------------------------------


def _set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ClientError(f"--set {dotted}: {key} is not a section", EXIT_USAGE)
    node[leaf] = value


def apply_sets(config: dict[str, Any], items: list[str] | None) -> dict[str, Any]:
    for item in items or []:
        dotted, sep, raw = item.partition("=")
        if not sep:
            raise ClientError(f"--set {item}: use section.field=value", EXIT_USAGE)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare word is a string
        _set_path(config, dotted.strip(), value)
    return config


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config sent with ``submit``: the JSON file (if any), then the flags, then --set."""
    config: dict[str, Any] = {}
    if args.config:
        try:
            config = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read config {args.config}: {exc}", EXIT_USAGE) from None
        if not isinstance(config, dict):
            raise ClientError(f"{args.config} must hold a JSON object", EXIT_USAGE)
    flags = {
        "preset": args.preset,
        "task.name": args.task,
        "task.vocab_size": args.vocab_size,
        "task.seq_len": args.seq_len,
        "task.seed": args.seed,
        "train.steps": args.steps,
        "train.lr": args.lr,
        "train.batch_size": args.batch_size,
        "train.seed": args.seed,
        "train.device": args.device,
    }
    for dotted, value in flags.items():
        if value is not None:
            _set_path(config, dotted, value)
    return apply_sets(config, args.set)


def _submitted(api: Api, run: dict[str, Any], args: argparse.Namespace, verb: str) -> int:
    print(
        f"run #{run['id']} {verb} on {run['queue']} ({run['preset']}, {run['task']})",
        file=sys.stderr,
    )
    if run.get("queue_unreachable"):
        print(
            "the job queue is unreachable: the run stays queued and starts when it returns",
            file=sys.stderr,
        )
    if args.watch:
        return watch(api, run["id"], interval=args.interval, retry=_retry(args), as_json=args.json)
    if args.json:
        emit_json(run)
    else:
        print(run["id"])
    return EXIT_OK


def cmd_submit(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "project": args.project,
        "experiment": args.experiment,
        "name": args.name,
        "queue": args.queue,
        "config": build_config(args),
    }
    if args.n_layer is not None:
        body["n_layer"] = args.n_layer
    if args.d_model is not None:
        body["d_model"] = args.d_model
    return _submitted(api, api.post("runs/", body), args, "queued")


def cmd_rerun(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"config": apply_sets({}, args.set)}
    for key in ("name", "experiment", "queue"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    run = api.post(f"runs/{args.run}/rerun/", body)
    return _submitted(api, run, args, f"queued (a rerun of #{args.run})")


ANALYSIS_KINDS = ("evaluate", "probe", "ablation", "patching", "steering", "mechanism")


def cmd_analyse(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"kind": args.kind}
    for key in (
        "name",
        "queue",
        "probe",
        "examples",
        "seed",
        "modes",
        "corruption",
        "hook",
        "coefficients",
    ):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    run = api.post(f"runs/{args.run}/analyses/", body)
    return _submitted(api, run, args, f"queued ({args.kind} of #{args.run})")


def cmd_cancel(api: Api, args: argparse.Namespace) -> int:
    answer = api.post(f"runs/{args.run}/cancel/")
    if args.json:
        emit_json(answer)
    else:
        print(answer["detail"], file=sys.stderr)
    return EXIT_OK


def progress_line(run: dict[str, Any], width: int = 30) -> str:
    fraction = float(run.get("fraction") or 0.0)
    filled = round(fraction * width)
    bar = "█" * filled + "░" * (width - filled)
    parts = [
        f"#{run['id']} {run['status']:<9}",
        f"{bar} {fraction * 100:5.1f}%",
        f"step {run['step']}/{run['total_steps']}",
        f"loss {_fmt(run.get('loss'))}",
    ]
    if run.get("test_accuracy") is not None:
        parts.append(f"test acc {_fmt(run['test_accuracy'], '.3f')}")
    if run.get("active") and run.get("eta_s") is not None:
        parts.append(f"eta {_duration(run['eta_s'])}")
    return "  ".join(parts)


def _retry(args: argparse.Namespace) -> Retry:
    return Retry(attempts=args.retries, delay=args.retry_delay)


def watch(
    api: Api,
    run_id: int,
    *,
    interval: float = 1.0,
    out: IO[str] | None = None,
    retry: Retry | None = None,
    as_json: bool = False,
) -> int:
    """Follow a run until it ends; the exit code is its outcome (0 succeeded, 1 failed,
    3 cancelled). Transient server trouble is retried (:class:`Retry`)."""
    out = out or sys.stderr
    retry = retry or Retry()
    live = out.isatty()
    last_printed = ""
    while True:
        run = retry(lambda: api.get(f"runs/{run_id}/"))
        line = progress_line(run)
        if live:
            out.write("\r\x1b[2K" + line)
        elif line.split("  ")[:3] != last_printed.split("  ")[:3]:
            out.write(line + "\n")  # not a terminal: a line per change of status or step
        out.flush()
        last_printed = line
        if run["status"] in FINAL:
            if live:
                out.write("\n")
            if run["status"] == "failed" and run.get("error"):
                out.write(f"error: {run['error']}\n")
            out.write(f"run #{run_id} {run['status']}\n")
            out.flush()
            if as_json:
                emit_json(run)
            return FINAL[run["status"]]
        time.sleep(interval)


def cmd_watch(api: Api, args: argparse.Namespace) -> int:
    return watch(api, args.run, interval=args.interval, retry=_retry(args), as_json=args.json)


def new_lines(seen: list[str], lines: list[str]) -> list[str]:
    """The lines of a fresh tail ``lines`` not printed yet: what follows the longest overlap
    between the end of ``seen`` and the start of ``lines`` (all of them when none)."""
    for k in range(min(len(seen), len(lines)), 0, -1):
        if seen[-k:] == lines[:k]:
            return lines[k:]
    return lines


def cmd_logs(api: Api, args: argparse.Namespace) -> int:
    """The tail of a run's log; ``--follow`` prints new lines until the run ends and exits
    with its outcome, like ``watch``."""
    retry = _retry(args)
    seen: list[str] = []
    while True:
        logs = retry(lambda: api.get(f"runs/{args.run}/logs/", tail=args.tail))
        fresh = new_lines(seen, logs["lines"])
        seen = (seen + fresh)[-args.tail :]
        if args.json and not args.follow:
            emit_json(logs)
        else:
            for line in fresh:
                if args.json:
                    print(json.dumps({"run": args.run, "line": line}))
                else:
                    print(line)
            sys.stdout.flush()
        ended = logs["status"] in FINAL
        if not args.follow or ended:
            break
        time.sleep(args.interval)
    if logs.get("error") and not args.json:
        print(f"error: {logs['error']}", file=sys.stderr)
        if logs.get("traceback"):
            print(logs["traceback"].rstrip(), file=sys.stderr)
    if args.follow:
        print(f"run #{args.run} {logs['status']}", file=sys.stderr)
        return FINAL[logs["status"]]
    return EXIT_OK


def cmd_runs(api: Api, args: argparse.Namespace) -> int:
    runs = list(
        api.pages(
            "runs/", limit=args.limit, project=args.project, status=args.status, page_size=100
        )
    )
    if args.json:
        emit_json(runs)
        return EXIT_OK
    rows = [
        [
            str(r["id"]),
            r["status"],
            r["project"],
            r["experiment"],
            r["preset"],
            r["task"],
            f"{r['step']}/{r['total_steps']}",
            _fmt(r.get("test_accuracy"), ".3f"),
            r["created_at"][:16].replace("T", " "),
            r["name"],
        ]
        for r in runs
    ]
    headers = ["ID", "STATUS", "PROJECT", "EXPERIMENT", "PRESET", "TASK", "STEP", "TEST ACC"]
    table(rows, [*headers, "CREATED", "NAME"], sys.stdout)
    return EXIT_OK


def fetch_metrics(api: Api, run_id: int, names: list[str]) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page = api.get(f"runs/{run_id}/metrics/", name=names, after_step=after)
        points.extend(page["points"])
        after = page["next_after_step"]
        if after is None:
            return points


def cmd_metrics(api: Api, args: argparse.Namespace) -> int:
    points = fetch_metrics(api, args.run, args.name or [])
    out: IO[str] = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        if args.json:
            json.dump(points, out, indent=2)
            out.write("\n")
        elif args.csv:
            names = sorted({p["name"] for p in points})
            by_step: dict[int, dict[str, Any]] = {}
            for p in points:
                by_step.setdefault(p["step"], {})[p["name"]] = p["value"]
            writer = csv.writer(out)
            writer.writerow(["step", *names])
            for step in sorted(by_step):
                row = by_step[step]
                writer.writerow([step, *("" if row.get(n) is None else row[n] for n in names)])
        else:
            series: dict[str, list[dict[str, Any]]] = {}
            for p in points:
                series.setdefault(p["name"], []).append(p)
            rows = [
                [name, str(len(ps)), str(ps[-1]["step"]), _fmt(ps[-1]["value"])]
                for name, ps in sorted(series.items())
            ]
            table(rows, ["SERIES", "POINTS", "LAST STEP", "LAST VALUE"], out)
    finally:
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


def cmd_artifacts(api: Api, args: argparse.Namespace) -> int:
    items = list(api.pages("artifacts/", run=args.run, page_size=100))
    if args.json:
        emit_json(items)
        return EXIT_OK
    rows = [[str(a["id"]), a["kind"], _size(a["size"]), a["name"]] for a in items]
    table(rows, ["ID", "KIND", "SIZE", "NAME"], sys.stdout)
    return EXIT_OK


def download(api: Api, url: str, target: str, *, name: str, expected: str | None) -> str:
    """Stream ``url`` to ``target`` (``-``: stdout) through a ``.part`` file, checking the
    SHA-256 the server states (``X-Checksum-SHA256``, else ``expected``); returns it."""
    digest = hashlib.sha256()
    with api.open("GET", api.url(url)) as response:
        expected = response.headers.get("X-Checksum-SHA256") or expected
        if target == "-":
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        else:
            part = Path(f"{target}.part")
            with part.open("wb") as f:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    digest.update(chunk)
                    f.write(chunk)
            if expected and digest.hexdigest() != expected:
                part.unlink()
                raise ClientError(f"checksum mismatch downloading {name}", EXIT_FAILURE)
            part.replace(target)
    if expected and digest.hexdigest() != expected:
        raise ClientError(f"checksum mismatch downloading {name}", EXIT_FAILURE)
    return digest.hexdigest()


def cmd_download(api: Api, args: argparse.Namespace) -> int:
    meta = api.get(f"artifacts/{args.artifact}/")
    target = args.output or Path(meta["name"]).name
    sha = download(api, meta["download_url"], target, name=meta["name"], expected=meta["sha256"])
    where = "stdout" if target == "-" else target
    print(f"saved {meta['name']} to {where} ({_size(meta['size'])}, sha256 ok)", file=sys.stderr)
    if args.json and target != "-":
        emit_json({"artifact": meta["id"], "path": target, "sha256": sha, "size": meta["size"]})
    return EXIT_OK


# --- findings -------------------------------------------------------------------------------------


def cmd_findings(api: Api, args: argparse.Namespace) -> int:
    items = list(
        api.pages("findings/", limit=args.limit, project=args.project, tier=args.tier, q=args.q)
    )
    if args.json:
        emit_json(items)
        return EXIT_OK
    rows = [
        [str(f["id"]), f["tier_label"], f["status"], f["project"], f["title"][:70]] for f in items
    ]
    table(rows, ["ID", "TIER", "STATUS", "PROJECT", "TITLE"], sys.stdout)
    return EXIT_OK


def _optional(call: Callable[[], Any]) -> Any:
    """What the caller may see: the review of a finding is shown to its team, the board and
    release managers only; anyone else gets a 404, which just means "nothing to show"."""
    try:
        return call()
    except ClientError as exc:
        if exc.status == 404:
            return None
        raise


def cmd_finding_show(api: Api, args: argparse.Namespace) -> int:
    finding = api.get(f"findings/{args.finding}/")
    assessments = _optional(lambda: api.get(f"findings/{args.finding}/assessments/"))
    requests = _optional(lambda: api.get(f"findings/{args.finding}/release-requests/"))
    if args.json:
        emit_json({**finding, "assessments": assessments, "release_requests": requests})
        return EXIT_OK
    out = sys.stdout
    out.write(f"#{finding['id']}  {finding['title']}\n")
    out.write(
        f"tier {finding['tier_label']} · {finding['status']} · project {finding['project']} · "
        f"by {finding['created_by'] or '—'} · {finding['created_at'][:10]}\n"
    )
    if finding.get("retracted_at"):
        out.write(f"RETRACTED {finding['retracted_at'][:10]}: {finding['retraction_reason']}\n")
    out.write(f"\n{finding['body'].rstrip()}\n\n")
    runs = ", ".join(f"#{r}" for r in finding["runs"]) or "—"
    out.write(f"evidence: runs {runs}; artifacts {len(finding['artifacts'])}\n")
    for snap in finding.get("snapshots", []):
        out.write(
            f"  {snap['name']} = {_fmt(snap['value'])} @ step {snap['step']} (run #{snap['run']})\n"
        )
    if assessments is not None:
        out.write(f"assessments: {len(assessments)}\n")
        for a in assessments:
            out.write(
                f"  {a['reviewer']}: capability uplift {a['capability_uplift']}, "
                f"alignment value {a['alignment_value']} — {a['rationale'][:80]}\n"
            )
    for r in requests or []:
        if r["state"] not in ("open", "scheduled"):
            continue
        votes = ", ".join(f"{v['reviewer']} {v['kind']}" for v in r["votes"]) or "no votes yet"
        out.write(f"pending request #{r['id']} → tier {r['target_tier']} ({r['state']}): {votes}\n")
        for reason in r["gate"]:
            out.write(f"  waiting: {reason}\n")
    return EXIT_OK


def _posted(answer: Any, args: argparse.Namespace, message: str) -> int:
    if args.json:
        emit_json(answer)
    else:
        print(message, file=sys.stderr)
    return EXIT_OK


def cmd_request_review(api: Api, args: argparse.Namespace) -> int:
    step = "request-review" if args.command_name == "request-review" else "request-release"
    answer = api.post(f"findings/{args.finding}/{step}/", {"rationale": args.message or ""})
    return _posted(
        answer, args, f"requested: finding #{args.finding} → tier {answer['target_tier']}"
    )


def cmd_assess(api: Api, args: argparse.Namespace) -> int:
    body = {
        "capability_uplift": args.uplift,
        "alignment_value": args.alignment,
        "rationale": args.message,
        "categories": args.category or [],
    }
    answer = api.post(f"findings/{args.finding}/assessments/", body)
    return _posted(answer, args, f"assessment of finding #{args.finding} recorded")


def cmd_vote(api: Api, args: argparse.Namespace) -> int:
    body = {"kind": args.kind, "rationale": args.message or ""}
    answer = api.post(f"findings/{args.finding}/votes/", body)
    return _posted(answer, args, f"{args.kind} recorded on finding #{args.finding}")


def cmd_objection_show(api: Api, args: argparse.Namespace) -> int:
    vote = api.get(f"objections/{args.objection}/")
    if args.json:
        emit_json(vote)
        return EXIT_OK
    state = "open" if vote["open"] else f"resolved: {vote['resolution']}"
    print(f"objection #{vote['id']} by {vote['reviewer']} on finding #{vote['finding']} ({state})")
    print(f"  {vote['rationale']}")
    print(f"votes to clear: {len(vote['clearances'])} of {vote['quorum']} needed")
    for c in vote["clearances"]:
        print(f"  {c['reviewer']}: {c['rationale']}")
    return EXIT_OK


def cmd_objection_withdraw(api: Api, args: argparse.Namespace) -> int:
    answer = api.post(f"objections/{args.objection}/withdraw/", {"reason": args.message or ""})
    return _posted(answer, args, f"objection #{args.objection} withdrawn")


def cmd_objection_clear(api: Api, args: argparse.Namespace) -> int:
    answer = api.post(f"objections/{args.objection}/clear/", {"rationale": args.message})
    vote = answer["objection"]
    message = (
        f"objection #{args.objection} cleared"
        if answer["cleared"]
        else f"your vote to clear objection #{args.objection} counts "
        f"({len(vote['clearances'])} of {vote['quorum']})"
    )
    return _posted(answer, args, message)


def cmd_whoami(api: Api, args: argparse.Namespace) -> int:
    me = api.get("me/")
    if args.json:
        emit_json({**me, "url": api.settings.url})
        return EXIT_OK
    roles = [r for r in ("reviewer", "release_manager") if me.get(r)]
    print(f"{me['username']} at {api.settings.url} ({me['auth']}, scope {me['scope']})")
    print(f"projects: {', '.join(me['projects']) or '—'}; roles: {', '.join(roles) or '—'}")
    return EXIT_OK


# --- exports --------------------------------------------------------------------------------------


def cmd_exports(api: Api, args: argparse.Namespace) -> int:
    items = list(api.pages("exports/", limit=args.limit))
    if args.json:
        emit_json(items)
        return EXIT_OK
    rows = [
        [
            str(e["id"]),
            e["kind"],
            e["status"],
            e["recipient"] or "—",
            _size(e["size"] or 0),
            e["name"],
        ]
        for e in items
    ]
    table(rows, ["ID", "KIND", "STATUS", "RECIPIENT", "SIZE", "NAME"], sys.stdout)
    return EXIT_OK


def cmd_export_download(api: Api, args: argparse.Namespace) -> int:
    meta = api.get(f"exports/{args.export}/")
    if meta["status"] != "succeeded":
        raise ClientError(f"export #{args.export} is {meta['status']}, not ready", EXIT_FAILURE)
    target = args.output or f"{meta['name']}.tar.gz"
    sha = download(api, meta["download_url"], target, name=target, expected=meta.get("sha256"))
    print(f"saved {target} ({_size(meta['size'] or 0)}, sha256 ok)", file=sys.stderr)
    if not args.verify:
        if args.json:
            emit_json({"export": meta["id"], "path": target, "sha256": sha})
        return EXIT_OK
    report = verify_bundle(Path(target), api, key_file=args.key, use_openssl=args.openssl)
    return _report(report, args)


def cmd_export_verify(api: Api, args: argparse.Namespace) -> int:
    report = verify_bundle(Path(args.bundle), api, key_file=args.key, use_openssl=args.openssl)
    return _report(report, args)


def _report(report: VerifyReport, args: argparse.Namespace) -> int:
    if args.json:
        emit_json(report.as_dict())
    else:
        print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILURE


META_FILES = ("manifest.json", "manifest.json.sig", "SHA256SUMS", "SHA256SUMS.sig")
SIGNED_FILES = ("manifest.json", "SHA256SUMS")


@dataclass
class VerifyReport:
    ok: bool = False
    name: str = ""
    key_id: str = ""
    key_source: str = ""
    checked_with: str = ""
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.ok:
            return (
                f"OK: {self.name}: signatures by key {self.key_id} ({self.key_source}) valid "
                f"({self.checked_with}); {self.files_checked} files match SHA256SUMS and the "
                "manifest, and nothing else is in the bundle"
            )
        return "FAILED:\n" + "\n".join(f"  - {p}" for p in self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "name": self.name,
            "key_id": self.key_id,
            "key_source": self.key_source,
            "checked_with": self.checked_with,
            "files_checked": self.files_checked,
            "problems": self.problems,
        }


def _read_bundle(
    path: Path, report: VerifyReport
) -> tuple[dict[str, tuple[str, int]], dict[str, bytes]]:
    """(sha256, size) of every content file and the bytes of the signed metadata files, from a
    ``.tar.gz`` (read as a stream, never extracted) or an unpacked bundle folder."""
    contents: dict[str, tuple[str, int]] = {}
    meta: dict[str, bytes] = {}

    def take(rel: str, fh: IO[bytes]) -> None:
        if rel in META_FILES:
            meta[rel] = fh.read(1 << 24)
            return
        h, size = hashlib.sha256(), 0
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
        contents[rel] = (h.hexdigest(), size)

    if path.is_dir():
        report.name = path.name
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path).as_posix()
            if file.is_symlink() or not (file.is_file() or file.is_dir()):
                report.problems.append(f"{rel}: not a regular file")
            elif file.is_file():
                with file.open("rb") as fh:
                    take(rel, fh)
        return contents, meta
    top: str | None = None
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    report.problems.append(f"{member.name}: not a regular file")
                    continue
                head, _, rel = member.name.partition("/")
                top = top or head
                if head != top or not rel:
                    report.problems.append(f"{member.name}: outside the bundle folder")
                    continue
                stream = tar.extractfile(member)
                if stream is not None:
                    take(rel, stream)
    except (tarfile.TarError, OSError, EOFError) as exc:
        report.problems.append(f"archive unreadable: {exc}")
    report.name = top or path.name
    return contents, meta


def _lab_key(api: Api, key_id: str, report: VerifyReport) -> bytes | None:
    """The lab's public key ``key_id`` from its key list (``/.well-known/h3lab-keys.json``),
    if the lab lists it as current or retired. SECURITY: a revoked key, or one the lab does
    not list, signs nothing trustworthy."""
    listed = api.get("/.well-known/h3lab-keys.json")
    for key in listed.get("keys", []):
        if key.get("key_id") == key_id:
            if key.get("status") not in ("current", "retired"):
                report.problems.append(f"key {key_id} is {key.get('status')}: do not trust it")
                return None
            report.key_source = f"{key['status']} key of {api.settings.url}"
            return str(key["public_key_pem"]).encode()
    report.problems.append(f"key {key_id} is not listed by {api.settings.url}")
    return None


def _verify_signatures(
    pem: bytes, meta: dict[str, bytes], report: VerifyReport, *, use_openssl: bool
) -> None:
    """Ed25519 over each signed file, with ``cryptography`` when importable (and not
    ``use_openssl``), else ``openssl pkeyutl -verify -rawin`` as docs/verify.md does."""
    crypto: Any = None
    if not use_openssl:
        try:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            crypto = load_pem_public_key
        except ImportError:
            crypto = None
    report.checked_with = "cryptography" if crypto else "openssl"
    if crypto is None and shutil.which("openssl") is None:
        report.problems.append(
            "cannot check signatures: install the cryptography package or openssl"
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        key_path = Path(tmp, "key.pem")
        key_path.write_bytes(pem)
        for signed in SIGNED_FILES:
            sig = meta.get(f"{signed}.sig")
            if signed not in meta or sig is None:
                report.problems.append(f"{signed}.sig: missing")
                continue
            if crypto is not None:
                ok = _verify_with_cryptography(crypto, pem, sig, meta[signed])
            else:
                Path(tmp, signed).write_bytes(meta[signed])
                Path(tmp, f"{signed}.sig").write_bytes(sig)
                ok = _verify_with_openssl(key_path, Path(tmp, signed), Path(tmp, f"{signed}.sig"))
            if not ok:
                report.problems.append(f"{signed}: signature does not verify")


def _verify_with_cryptography(load: Any, pem: bytes, sig: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = load(pem)
    except ValueError:
        return False
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


def _verify_with_openssl(key: Path, data: Path, sig: Path) -> bool:
    command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(key), "-rawin"]
    command += ["-in", str(data), "-sigfile", str(sig)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    return done.returncode == 0 and "Signature Verified Successfully" in done.stdout


def _check_files(
    contents: dict[str, tuple[str, int]], meta: dict[str, bytes], report: VerifyReport
) -> None:
    """Every content file against SHA256SUMS and the manifest, and nothing unlisted."""
    try:
        manifest = json.loads(meta["manifest.json"])
        entries = {e["path"]: (e["sha256"], e["size"]) for e in manifest["files"]}
    except (ValueError, KeyError, TypeError):
        report.problems.append("manifest.json: not a valid h3lab manifest")
        return
    sums: dict[str, str] = {}
    for line in meta.get("SHA256SUMS", b"").decode("utf-8", "replace").splitlines():
        digest, _, rel = line.partition(" ")
        sums[rel.lstrip(" *")] = digest
    if "SHA256SUMS" in meta:
        raw = meta["SHA256SUMS"]
        contents = {**contents, "SHA256SUMS": (hashlib.sha256(raw).hexdigest(), len(raw))}
    for rel, (digest, size) in sorted(contents.items()):
        if rel != "SHA256SUMS" and sums.get(rel) != digest:
            why = "not listed in SHA256SUMS" if rel not in sums else "does not match SHA256SUMS"
            report.problems.append(f"{rel}: {why}")
        elif entries.get(rel) != (digest, size):
            why = (
                "not listed in the manifest"
                if rel not in entries
                else "does not match the manifest"
            )
            report.problems.append(f"{rel}: {why}")
        else:
            report.files_checked += 1
    for rel in sorted((set(sums) | set(entries)) - set(contents)):
        report.problems.append(f"{rel}: missing from the bundle")


def verify_bundle(
    path: Path, api: Api, *, key_file: str | None = None, use_openssl: bool = False
) -> VerifyReport:
    """Check a bundle the way docs/verify.md does by hand: the signing key (``--key``, or the
    lab's key list, refusing revoked and unknown keys), both Ed25519 signatures, every file
    against SHA256SUMS and the manifest, and no file that neither lists."""
    report = VerifyReport()
    if not path.exists():
        raise ClientError(f"no such file or folder: {path}", EXIT_USAGE)
    contents, meta = _read_bundle(path, report)
    if "manifest.json" not in meta:
        report.problems.append("manifest.json: missing")
        return report
    try:
        report.key_id = str(json.loads(meta["manifest.json"])["key_id"])
    except (ValueError, KeyError, TypeError):
        report.problems.append("manifest.json: not a valid h3lab manifest")
        return report
    if key_file:
        try:
            pem: bytes | None = Path(key_file).read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read --key {key_file}: {exc}", EXIT_USAGE) from None
        report.key_source = f"from {key_file}"
    else:
        pem = _lab_key(api, report.key_id, report)
    if pem is not None:
        _verify_signatures(pem, meta, report, use_openssl=use_openssl)
    _check_files(contents, meta, report)
    report.ok = not report.problems
    return report


# --- argument parsing -----------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _prog() -> str:
    """The name the user typed: the installed ``h3lab-client`` script, or the module."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "h3lab-client" if name.startswith("h3lab-client") else "python -m h3lab.client"


def parser() -> argparse.ArgumentParser:
    # Options every command takes, before or after its name (``--json runs`` or ``runs --json``).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument("--url", default=argparse.SUPPRESS, help="lab address")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token")
    polling = argparse.ArgumentParser(add_help=False)
    polling.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    polling.add_argument(
        "--retries",
        type=int,
        default=8,
        help="retries in a row on a transient server error before giving up (default 8)",
    )
    polling.add_argument(
        "--retry-delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="first retry's delay; it doubles each time, up to 30 s",
    )

    p = argparse.ArgumentParser(
        prog=_prog(),
        description="Submit, follow and fetch h3lab training runs, read and review findings, "
        "and download and verify publication bundles, from a terminal.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"h3lab-client {__version__}")
    p.add_argument("--url", help=f"lab address (H3LAB_URL, or `login`; default {DEFAULT_URL})")
    p.add_argument("--token", help="API token (H3LAB_TOKEN, or `login`)")
    p.add_argument("--json", action="store_true", help="print the API's JSON (every command)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        parents = [common, *kw.pop("parents", [])]
        return sub.add_parser(name, help=help, parents=parents, formatter_class=_Formatter, **kw)

    login = command(
        "login",
        "store the lab's URL and a token (checked first) in the config file",
        description="Ask for the lab's URL and an API token (or take --url / --token, or the "
        "token on stdin with --with-token), check them against /api/v1/me/, and save them to "
        f"{config_path()} (mode 0600). H3LAB_URL and H3LAB_TOKEN, when set, still win.",
        epilog="examples:\n  python -m h3lab.client login\n  echo $TOKEN | python -m "
        "h3lab.client --url https://lab.example.org login --with-token",
    )
    login.add_argument("--with-token", action="store_true", help="read the token from stdin")
    login.set_defaults(func=cmd_login)
    logout = command("logout", "remove the stored token")
    logout.set_defaults(func=cmd_logout)

    s = command(
        "submit",
        "submit a training run",
        parents=[polling],
        description="Submit a run. The config comes from --config (JSON in the shape of a "
        "run's config), then the flags, then --set overrides.",
        epilog="examples:\n  python -m h3lab.client submit --project induction --steps 500 "
        "--watch\n  python -m h3lab.client submit --project induction --config run.json "
        "--set train.lr=3e-4",
    )
    s.add_argument("--project", required=True, help="project slug")
    s.add_argument("--config", metavar="FILE", help="JSON config file")
    s.add_argument("--experiment", default="default")
    s.add_argument("--name", default="")
    s.add_argument("--queue", choices=["cpu", "gpu"], default="cpu")
    s.add_argument("--preset", help="h3, attention, hybrid, s4d, shift")
    s.add_argument("--task", help="induction_head, associative_recall, text, jsonl")
    s.add_argument("--vocab-size", type=int)
    s.add_argument("--seq-len", type=int)
    s.add_argument("--n-layer", type=int, help="depth (when the config has no model section)")
    s.add_argument("--d-model", type=int, help="width (when the config has no model section)")
    s.add_argument("--steps", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--device", help="auto, cpu, cuda")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. train.eval_every=50")
    s.add_argument("--watch", action="store_true", help="follow the run until it ends")
    s.set_defaults(func=cmd_submit)

    rr = command(
        "rerun", "submit a run again with its config (and --set overrides)", parents=[polling]
    )
    rr.add_argument("run", type=int, metavar="RUN")
    rr.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. train.lr=3e-4")
    rr.add_argument("--name")
    rr.add_argument("--experiment")
    rr.add_argument("--queue", choices=["cpu", "gpu"])
    rr.add_argument("--watch", action="store_true", help="follow the new run until it ends")
    rr.set_defaults(func=cmd_rerun)

    an = command(
        "analyse",
        "evaluate, probe, ablate, patch or steer a succeeded run's checkpoint (a run of its own)",
        parents=[polling],
    )
    an.add_argument("run", type=int, metavar="RUN", help="the succeeded training run")
    an.add_argument("--kind", choices=ANALYSIS_KINDS, required=True)
    an.add_argument("--probe", choices=["induction", "attention", "kernels", "recall"])
    an.add_argument(
        "--examples", type=int, help="ablation/patching/steering/mechanism: test examples"
    )
    an.add_argument("--seed", type=int)
    an.add_argument("--modes", nargs="+", choices=["zero", "mean", "resample"], help="ablation")
    an.add_argument(
        "--corruption", choices=("values", "keys"), help="patching: what to corrupt (values)"
    )
    an.add_argument("--hook", help="steering: hook name (default: the middle layer's residual)")
    an.add_argument("--coefficients", nargs="+", type=float, help="steering coefficients")
    an.add_argument("--name")
    an.add_argument("--queue", choices=["cpu", "gpu"])
    an.add_argument("--watch", action="store_true", help="follow the analysis until it ends")
    an.set_defaults(func=cmd_analyse)

    c = command("cancel", "cancel a queued or running run")
    c.add_argument("run", type=int, metavar="RUN")
    c.set_defaults(func=cmd_cancel)

    w = command(
        "watch",
        "follow a run with a progress bar until it ends",
        parents=[polling],
        description="Follow a run until it ends; the exit code is its outcome (0 succeeded, "
        "1 failed, 3 cancelled). A transient server error (unreachable, 500/502/503/504) is "
        "retried with backoff, said on stderr, up to --retries times in a row.",
    )
    w.add_argument("run", type=int, metavar="RUN")
    w.set_defaults(func=cmd_watch)

    lg = command("logs", "a run's log (--follow: until the run ends)", parents=[polling])
    lg.add_argument("run", type=int, metavar="RUN")
    lg.add_argument("-f", "--follow", action="store_true", help="print new lines until it ends")
    lg.add_argument("--tail", type=int, default=200, help="lines to show (at most 5000)")
    lg.set_defaults(func=cmd_logs)

    r = command("runs", "list runs")
    r.add_argument("--project")
    r.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    r.add_argument("--limit", type=int, default=20)
    r.set_defaults(func=cmd_runs)

    m = command("metrics", "a run's metric series (summary, or CSV)")
    m.add_argument("run", type=int, metavar="RUN")
    m.add_argument("--name", action="append", help="only this series (repeatable)")
    m.add_argument("--csv", action="store_true", help="one row per step, one column per series")
    m.add_argument("-o", "--output", metavar="FILE")
    m.set_defaults(func=cmd_metrics)

    a = command("artifacts", "list a run's artifacts (ids for download)")
    a.add_argument("run", type=int, metavar="RUN")
    a.set_defaults(func=cmd_artifacts)

    d = command("download", "download an artifact (checksum verified)")
    d.add_argument("artifact", type=int, metavar="ARTIFACT")
    d.add_argument(
        "-o", "--output", metavar="FILE", help="default: the artifact's name; - for stdout"
    )
    d.set_defaults(func=cmd_download)

    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--project")
    filters.add_argument("--tier", type=int, choices=[0, 1, 2, 3], help="0 team … 3 public")
    filters.add_argument("-q", help="words in the title")
    filters.add_argument("--limit", type=int, default=50)
    f = command(
        "findings",
        "list findings you can read; show one; take it through review",
        parents=[filters],
        description="Without an action: list the findings you can read (like `findings list`).",
    )
    f.set_defaults(func=cmd_findings)
    fsub = f.add_subparsers(dest="command_name", metavar="ACTION")

    def finding_action(name: str, help: str) -> argparse.ArgumentParser:
        fp = fsub.add_parser(name, help=help, parents=[common], formatter_class=_Formatter)
        fp.add_argument("finding", type=int, metavar="FINDING")
        return fp

    fl = fsub.add_parser("list", help="list findings you can read", parents=[common, filters])
    fl.set_defaults(func=cmd_findings)
    fs = finding_action("show", "a finding, its evidence and (if you may see it) its review")
    fs.set_defaults(func=cmd_finding_show)
    for step in ("request-review", "request-release"):
        fr = finding_action(step, f"{step.replace('-', ' ')} (the finding's team)")
        fr.add_argument("-m", "--message", help="rationale")
        fr.set_defaults(func=cmd_request_review)
    fa = finding_action("assess", "record your dual-use assessment (reviewers)")
    fa.add_argument(
        "--uplift", type=int, required=True, choices=range(5), help="capability uplift 0–4"
    )
    fa.add_argument(
        "--alignment", type=int, required=True, choices=range(4), help="alignment value 0–3"
    )
    fa.add_argument("-m", "--message", required=True, help="rationale")
    fa.add_argument("--category", action="append", help="e.g. interpretability (repeatable)")
    fa.set_defaults(func=cmd_assess)
    fv = finding_action("vote", "approve or object to the pending request (reviewers)")
    fv.add_argument("kind", choices=["approve", "object"])
    fv.add_argument("-m", "--message", help="rationale (an objection needs one)")
    fv.set_defaults(func=cmd_vote)

    o = command(
        "objections",
        "read, withdraw or vote to clear an objection (raise one with `findings vote … object`)",
    )
    osub = o.add_subparsers(dest="command_name", metavar="ACTION", required=True)
    for name, func, help in (
        ("show", cmd_objection_show, "an objection and the votes to clear it"),
        ("withdraw", cmd_objection_withdraw, "withdraw your own objection"),
        ("clear", cmd_objection_clear, "vote to clear someone else's objection (board members)"),
    ):
        op = osub.add_parser(name, help=help, parents=[common], formatter_class=_Formatter)
        op.add_argument("objection", type=int, metavar="OBJECTION")
        if name != "show":
            op.add_argument("-m", "--message", required=name == "clear", help="why")
        op.set_defaults(func=func)

    who = command("whoami", "who the token belongs to, its scope, projects and roles")
    who.set_defaults(func=cmd_whoami)

    e = command(
        "exports",
        "list, download and verify publication bundles",
        description="Without an action: list the exports you may open. `verify` checks the "
        "Ed25519 signatures with the cryptography package if it is importable, else with "
        "`openssl pkeyutl` (OpenSSL 3.0, or 1.1.1).",
    )
    e.add_argument("--limit", type=int, default=50)
    e.set_defaults(func=cmd_exports)
    esub = e.add_subparsers(dest="command_name", metavar="ACTION")
    el = esub.add_parser("list", help="list exports", parents=[common])
    el.add_argument("--limit", type=int, default=50)
    el.set_defaults(func=cmd_exports)
    key_help = "the signing key's PEM file (default: fetched from the lab's key list)"
    ed = esub.add_parser("download", help="download a bundle (checksum verified)", parents=[common])
    ed.add_argument("export", type=int, metavar="EXPORT")
    ed.add_argument("-o", "--output", metavar="FILE", help="default: the bundle's name")
    ed.add_argument("--verify", action="store_true", help="verify it after downloading")
    ed.add_argument("--key", metavar="PEM", help=key_help)
    ed.add_argument("--openssl", action="store_true", help="check signatures with openssl")
    ed.set_defaults(func=cmd_export_download)
    ev = esub.add_parser(
        "verify",
        help="verify a bundle's signatures and files",
        parents=[common],
        description="Check a bundle (.tar.gz or unpacked folder) as docs/verify.md does: the "
        "key is current or retired in the lab's list (or given with --key), both Ed25519 "
        "signatures verify, every file matches SHA256SUMS and the manifest, and there is no "
        "other file. Exit 0 when all holds, 1 otherwise (each problem is named).",
    )
    ev.add_argument("bundle", metavar="BUNDLE")
    ev.add_argument("--key", metavar="PEM", help=key_help)
    ev.add_argument("--openssl", action="store_true", help="check signatures with openssl")
    ev.set_defaults(func=cmd_export_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.json = bool(getattr(args, "json", False))
    try:
        api = Api(load_settings(args.url, args.token))
        return int(args.func(api, args))
    except ClientError as exc:
        print(f"h3lab: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted (the run, if any, keeps going on the server)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
