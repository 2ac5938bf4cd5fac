"""Terminal client for the h3lab API: ``python -m h3lab.client``.

Standard library only (urllib, argparse, json, csv) — no Django, no torch — so it runs on any
machine with Python 3.11 and talks to a lab over HTTP. Progress goes to stderr, results to
stdout, so output pipes cleanly (``… metrics 12 --csv > curve.csv``).

Credentials come from ``--token`` / ``--url``, else ``H3LAB_TOKEN`` / ``H3LAB_URL``, else
``~/.config/h3lab/config.json`` (``{"url": "...", "token": "h3l_..."}``). Create a token on
the lab's ``/api/tokens/`` page.

Exit codes: 0 success (``watch``: the run succeeded), 1 the run failed, 2 the run was cancelled
(or a usage error, as for every argparse program), 3 authentication, 4 not found / not allowed,
5 invalid input, 6 cannot reach the server, 7 any other server answer.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

DEFAULT_URL = "http://127.0.0.1:8000"
CONFIG_FILE = Path("~/.config/h3lab/config.json")
FINAL = {"succeeded": 0, "failed": 1, "cancelled": 2}
EXIT_AUTH, EXIT_NOT_FOUND, EXIT_INVALID, EXIT_CONNECTION, EXIT_SERVER = 3, 4, 5, 6, 7
CHUNK = 1 << 16

EPILOG = """examples:
  export H3LAB_URL=https://lab.example.org H3LAB_TOKEN=h3l_...   # token from /api/tokens/
  python -m h3lab.client submit --project induction --preset h3 --task induction_head \\
      --steps 2000 --lr 5e-4 --watch
  python -m h3lab.client submit --project induction --config sweep/run3.json --name lr-3e-4
  python -m h3lab.client runs --project induction --status running
  python -m h3lab.client watch 42            # exit code 0 succeeded, 1 failed, 2 cancelled
  python -m h3lab.client metrics 42 --csv > run42.csv
  python -m h3lab.client artifacts 42
  python -m h3lab.client download 317 -o model.safetensors
  python -m h3lab.client findings --tier 3
"""


class ClientError(Exception):
    """A failure worth one clear line on stderr, and the exit code to leave with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- configuration and HTTP -----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    url: str
    token: str


def load_settings(url: str | None, token: str | None, config_file: Path | None = None) -> Settings:
    """Flags, then the environment, then the config file."""
    stored: dict[str, Any] = {}
    path = (config_file or CONFIG_FILE).expanduser()
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read {path}: {exc}", EXIT_INVALID) from None
    base = url or os.environ.get("H3LAB_URL") or stored.get("url") or DEFAULT_URL
    secret = token or os.environ.get("H3LAB_TOKEN") or stored.get("token") or ""
    return Settings(url=str(base).rstrip("/"), token=str(secret))


class Api:
    """A thin JSON-over-HTTP wrapper that turns every failure into a :class:`ClientError`."""

    def __init__(self, settings: Settings, *, retries_on_429: int = 5) -> None:
        self.settings = settings
        self.retries_on_429 = retries_on_429

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            full = path
        else:
            prefix = "" if path.startswith("/api/") else "/api/v1"
            full = f"{self.settings.url}{prefix}/{path.lstrip('/')}"
        pairs = [(k, v) for k, v in (query or {}).items() if v is not None and v != []]
        flat = [(k, x) for k, v in pairs for x in (v if isinstance(v, list) else [v])]
        return full + ("?" + urllib.parse.urlencode(flat) if flat else "")

    def open(self, method: str, url: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json", "User-Agent": "h3lab-client/1"}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        # SECURITY: the client talks HTTP(S) to the lab's API only; urllib would also open
        # file: and other schemes, so anything else is refused before a request is built.
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url!r}")
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
                    "Check H3LAB_URL (or --url) and that the server is running.",
                    EXIT_CONNECTION,
                ) from None
            except (TimeoutError, ConnectionError) as exc:
                msg = f"cannot reach {self.settings.url}: {exc}"
                raise ClientError(msg, EXIT_CONNECTION) from None
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        with self.open(method, self.url(path, query), body) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

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
                "set H3LAB_TOKEN (or --token)"
                if not self.settings.token
                else "create a new token and set H3LAB_TOKEN"
            )
            return ClientError(
                f"authentication failed: {message} — {hint} ({self.settings.url}/api/tokens/)",
                EXIT_AUTH,
            )
        if exc.code == 403:
            return ClientError(f"not allowed: {message}", EXIT_AUTH)
        if exc.code == 404:
            return ClientError(
                "not found — it does not exist, or your account may not see it", EXIT_NOT_FOUND
            )
        if exc.code == 400:
            fields = error.get("fields") or {}
            lines = [f"  {name or 'input'}: {' '.join(msgs)}" for name, msgs in fields.items()]
            detail = "\n".join(lines) if lines else f"  {message}"
            return ClientError(f"invalid request:\n{detail}", EXIT_INVALID)
        if exc.code == 410:
            return ClientError(str(message), EXIT_NOT_FOUND)
        return ClientError(f"server answered {exc.code}: {message}", EXIT_SERVER)


def _retry_after(exc: urllib.error.HTTPError) -> float:
    try:
        return min(60.0, max(1.0, float(exc.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


# --- commands -------------------------------------------------------------------------------------


def _set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ClientError(f"--set {dotted}: {key} is not a section", EXIT_INVALID)
    node[leaf] = value


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config sent with ``submit``: the JSON file (if any), then the flags, then --set."""
    config: dict[str, Any] = {}
    if args.config:
        try:
            config = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read config {args.config}: {exc}", EXIT_INVALID) from None
        if not isinstance(config, dict):
            raise ClientError(f"{args.config} must hold a JSON object", EXIT_INVALID)
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
    for item in args.set or []:
        dotted, sep, raw = item.partition("=")
        if not sep:
            raise ClientError(f"--set {item}: use section.field=value", EXIT_INVALID)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare word is a string
        _set_path(config, dotted.strip(), value)
    return config


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
    run = api.post("runs/", body)
    print(run["id"])
    print(
        f"run #{run['id']} queued on {run['queue']} ({run['preset']}, {run['task']})",
        file=sys.stderr,
    )
    if run.get("queue_unreachable"):
        print(
            "the job queue is unreachable: the run stays queued and starts when it returns",
            file=sys.stderr,
        )
    if args.watch:
        return watch(api, run["id"], interval=args.interval)
    return 0


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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


def watch(api: Api, run_id: int, *, interval: float = 1.0, out: IO[str] | None = None) -> int:
    """Follow a run until it ends; the exit code is its outcome (0/1/2)."""
    out = out or sys.stderr
    live = out.isatty()
    last_printed = ""
    while True:
        run = api.get(f"runs/{run_id}/")
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
            return FINAL[run["status"]]
        time.sleep(interval)


def cmd_watch(api: Api, args: argparse.Namespace) -> int:
    return watch(api, args.run, interval=args.interval)


def table(rows: list[list[str]], headers: list[str], out: IO[str]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
        out.write("\n")


def cmd_runs(api: Api, args: argparse.Namespace) -> int:
    runs = list(
        api.pages(
            "runs/", limit=args.limit, project=args.project, status=args.status, page_size=100
        )
    )
    if args.json:
        json.dump(runs, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
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
    return 0


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
        if args.csv:
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
    return 0


def cmd_artifacts(api: Api, args: argparse.Namespace) -> int:
    items = list(api.pages("artifacts/", run=args.run, page_size=100))
    rows = [[str(a["id"]), a["kind"], _size(a["size"]), a["name"]] for a in items]
    table(rows, ["ID", "KIND", "SIZE", "NAME"], sys.stdout)
    return 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def cmd_download(api: Api, args: argparse.Namespace) -> int:
    meta = api.get(f"artifacts/{args.artifact}/")
    target = args.output or Path(meta["name"]).name
    digest = hashlib.sha256()
    with api.open("GET", api.url(meta["download_url"])) as response:
        expected = response.headers.get("X-Checksum-SHA256", meta["sha256"])
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
            if digest.hexdigest() != expected:
                part.unlink()
                raise ClientError(f"checksum mismatch downloading {meta['name']}", EXIT_SERVER)
            part.replace(target)
    if digest.hexdigest() != expected:
        raise ClientError(f"checksum mismatch downloading {meta['name']}", EXIT_SERVER)
    where = "stdout" if target == "-" else target
    print(f"saved {meta['name']} to {where} ({_size(meta['size'])}, sha256 ok)", file=sys.stderr)
    return 0


def cmd_findings(api: Api, args: argparse.Namespace) -> int:
    items = list(
        api.pages("findings/", limit=args.limit, project=args.project, tier=args.tier, q=args.q)
    )
    if args.json:
        json.dump(items, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = [
        [str(f["id"]), f["tier_label"], f["status"], f["project"], f["title"][:70]] for f in items
    ]
    table(rows, ["ID", "TIER", "STATUS", "PROJECT", "TITLE"], sys.stdout)
    return 0


# --- argument parsing -----------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m h3lab.client",
        description="Submit, follow and fetch h3lab training runs from a terminal.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("--url", help=f"lab address (H3LAB_URL; default {DEFAULT_URL})")
    p.add_argument("--token", help="API token (H3LAB_TOKEN, or ~/.config/h3lab/config.json)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "submit",
        help="submit a training run",
        description="Submit a run. The config comes from --config (JSON in the shape of a "
        "run's config), then the flags, then --set overrides.",
        formatter_class=_Formatter,
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
    s.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    s.set_defaults(func=cmd_submit)

    w = sub.add_parser("watch", help="follow a run with a progress bar until it ends")
    w.add_argument("run", type=int, metavar="RUN")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    w.set_defaults(func=cmd_watch)

    r = sub.add_parser("runs", help="list runs")
    r.add_argument("--project")
    r.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    r.add_argument("--limit", type=int, default=20)
    r.add_argument("--json", action="store_true", help="print the API's JSON")
    r.set_defaults(func=cmd_runs)

    m = sub.add_parser("metrics", help="a run's metric series (summary, or CSV)")
    m.add_argument("run", type=int, metavar="RUN")
    m.add_argument("--name", action="append", help="only this series (repeatable)")
    m.add_argument("--csv", action="store_true", help="one row per step, one column per series")
    m.add_argument("-o", "--output", metavar="FILE")
    m.set_defaults(func=cmd_metrics)

    a = sub.add_parser("artifacts", help="list a run's artifacts (ids for download)")
    a.add_argument("run", type=int, metavar="RUN")
    a.set_defaults(func=cmd_artifacts)

    d = sub.add_parser("download", help="download an artifact (checksum verified)")
    d.add_argument("artifact", type=int, metavar="ARTIFACT")
    d.add_argument(
        "-o", "--output", metavar="FILE", help="default: the artifact's name; - for stdout"
    )
    d.set_defaults(func=cmd_download)

    f = sub.add_parser("findings", help="list findings you can read")
    f.add_argument("--project")
    f.add_argument("--tier", type=int, choices=[0, 1, 2, 3], help="0 team … 3 public")
    f.add_argument("-q", help="words in the title")
    f.add_argument("--limit", type=int, default=50)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_findings)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
