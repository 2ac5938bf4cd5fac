"""Command line: ``python -m h3lab train|eval|generate|probe|intervene|study|bench|reproduce|
export|import-h3|demo-bundle``.

Pure PyTorch, like the rest of the ML core: the web platform runs the same functions through
Celery; this is the way in for a researcher at a terminal. Progress bars go to stderr,
results (JSON where useful) to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from h3lab import __version__
from h3lab.config import PRESETS, TASKS, ConfigError, RunConfig, TaskConfig, TrainConfig

EPILOG = """examples:
  python -m h3lab train --preset h3 --task induction_head --steps 2000 --out runs/ih-h3
  python -m h3lab eval --checkpoint runs/ih-h3
  python -m h3lab probe --checkpoint runs/ih-h3 --kind kernels --out runs/ih-h3/probes
  python -m h3lab reproduce synthetic --seeds 3
  python -m h3lab export --checkpoint runs/ih-h3 --out models/ih-h3
  python -m h3lab import-h3 H3-125M/model.pt --out models/h3-125m --n-head 12
  python -m h3lab <command> --help
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in epilogs laid out as written."""


def _sub(
    subs: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, epilog: str
) -> argparse.ArgumentParser:
    return subs.add_parser(
        name, help=help, description=help, epilog="examples:\n" + epilog, formatter_class=_Formatter
    )


def _prog() -> str:
    """The name the user typed: the installed ``h3lab`` script, or the module."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "h3lab" if name.startswith("h3lab") else "python -m h3lab"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Train, evaluate and probe H3 and attention language models.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(
        subs,
        "train",
        "train a model (resumes from OUT/checkpoint when present)",
        "  python -m h3lab train --preset attention --task associative_recall --out runs/ar-attn\n"
        "  python -m h3lab train --config run.json --out runs/mine --steps 500\n",
    )
    p.add_argument(
        "--config", type=Path, help="RunConfig JSON (as written in checkpoint/config.json)"
    )
    p.add_argument("--preset", choices=PRESETS, help="architecture (default h3)")
    p.add_argument("--task", choices=TASKS, help="dataset (default associative_recall)")
    p.add_argument("--data", help="file for the text / jsonl tasks")
    p.add_argument("--vocab-size", type=int, help="task vocabulary (default 20)")
    p.add_argument("--seq-len", type=int, help="sequence length (default 40)")
    p.add_argument("--d-model", type=int, help="model width (default 64)")
    p.add_argument("--n-layer", type=int, help="depth (default 2)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    p.add_argument("--lr", type=float, help="peak learning rate (also the SSM lr unless --ssm-lr)")
    p.add_argument("--ssm-lr", type=float, help="learning rate of SSM parameters")
    p.add_argument("--batch-size", type=int, help="batch size (default 32)")
    p.add_argument("--seed", type=int, help="seed for data order, init and task data")
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--early-stop-acc", type=float, help="stop once test accuracy holds ≥ this")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if OUT has a checkpoint"
    )

    p = _sub(
        subs,
        "eval",
        "evaluate a checkpoint or exported model on its test set or a JSONL file",
        "  python -m h3lab eval --checkpoint runs/ih-h3\n"
        "  python -m h3lab eval --checkpoint runs/ih-h3 --data heldout.jsonl\n",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="run or checkpoint directory")
    p.add_argument("--data", type=Path, help="JSONL file (see docs/data-format.md)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")

    p = _sub(
        subs,
        "generate",
        "continue a prompt greedily or by sampling",
        '  python -m h3lab generate --checkpoint runs/ih-h3 --prompt "3 7 19 4 19"\n'
        '  python -m h3lab generate --checkpoint runs/text --prompt "The " --temperature 0.8\n',
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="run or checkpoint directory")
    p.add_argument(
        "--prompt", required=True, help="text (byte-level models) or space-separated token ids"
    )
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int, default=0)

    from h3lab.interventions import ABLATION_MODES, INTERVENTION_KINDS
    from h3lab.probes import PROBE_KINDS

    p = _sub(
        subs,
        "probe",
        "run an interpretability probe; writes PNG, SVG and JSON",
        "  python -m h3lab probe --checkpoint runs/ih-attn --kind induction --out probes/\n"
        "  python -m h3lab probe --checkpoint runs/ar-h3 --kind recall --out probes/\n",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="run or checkpoint directory")
    p.add_argument("--kind", choices=PROBE_KINDS, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")

    p = _sub(
        subs,
        "intervene",
        "ablate, patch or steer a trained model on its task; writes PNG, SVG and JSON",
        "  python -m h3lab intervene --checkpoint runs/ar-h3 --kind ablation --out iv/\n"
        "  python -m h3lab intervene --checkpoint runs/ih-attn --kind patching --out iv/\n"
        "  python -m h3lab intervene --checkpoint runs/ar-h3 --kind steering \\\n"
        "      --hook blocks.1.hook_resid_post --coefficients 0 2 4 8 --out iv/\n",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="run or checkpoint directory")
    p.add_argument("--kind", choices=INTERVENTION_KINDS, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--examples", type=int, default=256, help="test examples used (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--modes",
        nargs="+",
        choices=ABLATION_MODES,
        default=list(ABLATION_MODES),
        help="ablation: zero, mean (over other examples, per position), resample",
    )
    p.add_argument(
        "--channels", action="store_true", help="ablation: also each diagonal-SSM channel"
    )
    p.add_argument("--hook", help="steering: hook name (default: residual after the middle layer)")
    p.add_argument(
        "--coefficients",
        nargs="+",
        type=float,
        default=[0.0, 1.0, 2.0, 4.0, 8.0, 16.0],
        help="steering: the coefficients to sweep",
    )
    p.add_argument(
        "--corruption",
        choices=("values", "keys"),
        default="values",
        help="patching: replace the token after each earlier occurrence of the query (values), "
        "or swap the query with another key, every value in place (keys: tests previous-token "
        "components)",
    )
    p.add_argument("--device", default="cpu")

    p = _sub(
        subs,
        "study",
        "the mechanism study: train 2-layer attention and H3 models, then ablate and patch "
        "their previous-token and match-and-copy components",
        "  python -m h3lab study mechanism --out docs/mechanism\n"
        "  python -m h3lab study mechanism --protocol paper --out docs/mechanism-paper\n"
        "  python -m h3lab study mechanism --tasks induction_head --models h3 --steps 2000 "
        "--out /tmp/m\n",
    )
    p.add_argument("study", choices=["mechanism"])
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--work-dir", type=Path, help="training runs (default OUT/runs; reused)")
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=[
            "induction_head_safari",
            "associative_recall_safari",
            "induction_head",
            "associative_recall",
        ],
        help="default: the paper's two tasks (safari semantics, the paper's sizes)",
    )
    p.add_argument("--models", nargs="+", choices=["attention", "h3"])
    p.add_argument(
        "--protocol",
        choices=["quick", "paper"],
        default="quick",
        help="quick: --steps at batch 128, lr 2e-3, weight decay 1.0, --d-model (default); "
        "paper: each cell trained exactly as 'reproduce synthetic' trains it (safari's "
        "settings and budget, early stop on validation; --steps and --d-model unused)",
    )
    p.add_argument("--steps", type=int, default=4000, help="training budget per cell")
    p.add_argument("--examples", type=int, default=512, help="held-out examples analysed")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")

    _sub(
        subs,
        "bench",
        "speed benchmarks (see python -m h3lab bench --help)",
        "  python -m h3lab bench --help\n",
    )

    from h3lab.reproduce import add_arguments

    p = _sub(
        subs,
        "reproduce",
        "reproduce the H3 paper's synthetic table under the paper's protocol",
        "  python -m h3lab reproduce synthetic --out docs/synthetic\n"
        "  python -m h3lab reproduce synthetic --seeds 3 --budget paper --device cuda\n"
        "  python -m h3lab reproduce synthetic --tasks induction_head --models h3 attention\n"
        "  python -m h3lab reproduce synthetic --first-seed 1 --seeds 2 --out s12\n"
        "  python -m h3lab reproduce synthetic --merge docs/synthetic s12 --out s012\n",
    )
    add_arguments(p)

    p = _sub(
        subs,
        "export",
        "export a run's model as config.json + model.safetensors + README.md (no training "
        "state), loadable with h3lab.checkpoint.from_pretrained",
        "  python -m h3lab export --checkpoint runs/ih-h3 --out models/ih-h3\n"
        "  python -m h3lab export --checkpoint runs/ih-h3/selected --out models/ih-h3\n",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="run, checkpoint or export")
    p.add_argument("--out", type=Path, required=True)

    p = _sub(
        subs,
        "demo-bundle",
        "pack finished runs (weights, config, downsampled metrics, provenance) into the demo "
        "bundle that `manage.py load_demo` imports; refuses runs below --min-accuracy",
        "  python -m h3lab demo-bundle mech-runs/induction_head_safari-h3 "
        "mech-runs/induction_head_safari-attention \\\n"
        "      --out experiments/demo_bundle --command 'python -m h3lab study mechanism "
        "--work-dir mech-runs --out mech'\n",
    )
    p.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    p.add_argument("--out", type=Path, required=True, help="bundle folder (replaced)")
    p.add_argument(
        "--command", dest="trained_by", required=True, help="the command that trained the runs"
    )
    p.add_argument("--min-accuracy", type=float, default=0.95, help="refuse weaker models")
    p.add_argument("--commit", help="h3lab commit that trained them (default: this checkout)")

    p = _sub(
        subs,
        "import-h3",
        "convert a HazyResearch/H3 checkpoint (torch file, loaded with weights_only=True) to "
        "an h3lab export",
        "  python -m h3lab import-h3 H3-125M/model.pt --out models/h3-125m --n-head 12\n"
        "  python -m h3lab import-h3 H3-1.3B/model.pt --out models/h3-1.3b --n-head 16\n",
    )
    p.add_argument("ckpt", type=Path, help="the reference checkpoint (.pt)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--n-head",
        type=int,
        help="attention heads (not recorded in the weights; see the model's card; default "
        "d_model / 64)",
    )
    return parser


def _train_config(args: argparse.Namespace) -> RunConfig:
    train_kw = {
        k: v
        for k, v in {
            "steps": args.steps,
            "lr": args.lr,
            "ssm_lr": args.ssm_lr if args.ssm_lr is not None else args.lr,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "device": args.device,
            "early_stop_acc": args.early_stop_acc,
        }.items()
        if v is not None
    }
    if args.config:
        shaping = ("preset", "task", "data", "vocab_size", "seq_len", "d_model", "n_layer")
        given = [f"--{n.replace('_', '-')}" for n in shaping if getattr(args, n) is not None]
        if given:
            raise ConfigError({"config": f"{', '.join(given)} cannot be combined with --config"})
        cfg = RunConfig.from_dict(json.loads(args.config.read_text(encoding="utf-8")))
        train = dataclasses.replace(cfg.train, **train_kw)
        return RunConfig.validated(model=cfg.model, task=cfg.task, train=train, preset=cfg.preset)
    task_kw = {
        k: v
        for k, v in {
            "name": args.task,
            "path": args.data,
            "vocab_size": args.vocab_size,
            "seq_len": args.seq_len,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    return RunConfig.build(
        preset=args.preset or "h3",
        n_layer=args.n_layer or 2,
        d_model=args.d_model or 64,
        task=TaskConfig(**task_kw),
        train=TrainConfig(**train_kw),
    )


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from h3lab.train import Callbacks, Progress, train

    cfg = _train_config(args)
    bar = tqdm(total=cfg.train.steps, file=sys.stderr, unit="step", dynamic_ncols=True)

    def progress(p: Progress) -> None:
        bar.n = p.step
        acc = "" if p.accuracy is None else f"{p.accuracy:.2f}"
        bar.set_postfix(loss=f"{p.loss:.3f}", acc=acc, lr=f"{p.lr:.1e}", refresh=True)

    try:
        result = train(
            cfg,
            args.out,
            Callbacks(on_progress=progress, on_log=lambda line: tqdm.write(line, file=sys.stderr)),
            resume=not args.no_resume,
        )
    finally:
        bar.close()
    print(
        json.dumps(
            {
                "status": result.status,
                "step": result.step,
                "test_accuracy": result.test_accuracy,
                "test_loss": result.test_loss,
                "checkpoint": str(result.checkpoint_dir),
            }
        )
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from h3lab.checkpoint import from_pretrained
    from h3lab.data.datasets import TokenDataset, make_datasets
    from h3lab.data.jsonl import read_jsonl, to_tensors
    from h3lab.train import evaluate

    model, model_cfg, task = from_pretrained(args.checkpoint)
    if args.data:
        examples = read_jsonl(args.data, vocab_size=model_cfg.vocab_size)
        dataset = TokenDataset(*to_tensors(examples))
    elif task is not None:
        dataset = make_datasets(task)[1]
    else:
        raise ConfigError({"data": "this model records no task: give --data FILE.jsonl"})
    model.to(args.device)
    r = evaluate(model, dataset, batch_size=args.batch_size, device=args.device)
    print(json.dumps({"loss": r.loss, "accuracy": r.accuracy, "examples": len(dataset)}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from h3lab.checkpoint import from_pretrained

    model, model_cfg, task = from_pretrained(args.checkpoint)
    byte_level = task is not None and task.name == "text"
    if byte_level:
        ids = list(args.prompt.encode("utf-8"))
    else:
        try:
            ids = [int(t) for t in args.prompt.split()]
        except ValueError:
            raise ConfigError({"prompt": "give space-separated token ids"}) from None
    if not ids or max(ids) >= model_cfg.vocab_size or min(ids) < 0:
        raise ConfigError({"prompt": f"token ids must be in [0, {model_cfg.vocab_size})"})
    g = torch.Generator().manual_seed(args.seed)
    out = model.generate(
        torch.tensor([ids]),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        generator=g,
    )[0].tolist()
    if byte_level:
        print(bytes(out).decode("utf-8", errors="replace"))
    else:
        print(" ".join(map(str, out)))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from h3lab.probes import run_probe
    from h3lab.train import load_checkpoint

    model, cfg = load_checkpoint(args.checkpoint)
    data = run_probe(args.kind, model, cfg, args.out, seed=args.seed, device=args.device)
    print(json.dumps({"probe": args.kind, "out": str(args.out), "files": data["files"]}))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from h3lab.reproduce import LABELS, merge_reports, reproduce_synthetic

    if args.merge:
        merge_reports(args.out, args.merge)
        print(json.dumps({"report": str(args.out / "synthetic.md")}))
        return 0
    bars: dict[tuple[str, str, int], Any] = {}

    def on_event(e: dict[str, Any]) -> None:
        key = (e["task"], e["model"], e["seed"])
        if e["kind"] == "start":
            bars[key] = tqdm(
                total=e["steps"],
                desc=f"{LABELS[e['model']]} / {e['task']} / seed {e['seed']}",
                file=sys.stderr,
                unit="step",
                dynamic_ncols=True,
                leave=False,
                disable=None,  # bars on a terminal only: in a log, stacked bars' cursor codes
            )
        elif key in bars and e["kind"] == "progress":
            bars[key].n = e["step"]
            bars[key].refresh()
        elif key in bars and e["kind"] == "eval":
            bars[key].set_postfix(test_acc=f"{e['accuracy']:.3f}")
        elif key in bars and e["kind"] in ("done", "failed"):
            bars.pop(key).close()

    reproduce_synthetic(
        args.out,
        tasks=args.tasks,
        models=args.models,
        seeds=args.seeds,
        first_seed=args.first_seed,
        budget=args.budget,
        budget_minutes=args.budget_minutes,
        device=args.device,
        work_dir=args.work_dir,
        jobs=args.jobs,
        threads=args.threads,
        train_overrides={"eval_every": args.eval_every} if args.eval_every else None,
        on_event=on_event,
        log=lambda line: tqdm.write(line, file=sys.stderr),
    )
    print(json.dumps({"report": str(args.out / "synthetic.md")}))
    return 0


def cmd_intervene(args: argparse.Namespace) -> int:
    from h3lab.interventions import InterventionSpec, run_intervention
    from h3lab.train import load_checkpoint

    spec = InterventionSpec(
        kind=args.kind,
        examples=args.examples,
        seed=args.seed,
        modes=tuple(args.modes),
        channels=args.channels,
        hook=args.hook,
        coefficients=tuple(args.coefficients),
        corruption=args.corruption,
    )
    model, cfg = load_checkpoint(args.checkpoint)
    data = run_intervention(spec, model, cfg, args.out, device=args.device)
    print(json.dumps({"intervention": args.kind, "out": str(args.out), "files": data["files"]}))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from h3lab.mechanism import StudyConfig, mechanism_study

    defaults = StudyConfig()
    study = StudyConfig(
        tasks=tuple(args.tasks or defaults.tasks),
        models=tuple(args.models or defaults.models),
        d_model=args.d_model,
        steps=args.steps,
        seed=args.seed,
        examples=args.examples,
        device=args.device,
        protocol=args.protocol,
    )
    mechanism_study(
        args.out, study, work_dir=args.work_dir, log=lambda line: tqdm.write(line, file=sys.stderr)
    )
    print(json.dumps({"report": str(args.out / "mechanism.md")}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from h3lab.checkpoint import from_pretrained, save_pretrained

    model, model_cfg, task = from_pretrained(args.checkpoint)
    out = save_pretrained(
        args.out, model, model_cfg, task=task, source={"exported_from": str(args.checkpoint)}
    )
    print(json.dumps({"export": str(out)}))
    return 0


def cmd_import_h3(args: argparse.Namespace) -> int:
    from h3lab.checkpoint import save_pretrained
    from h3lab.nn.reference_weights import import_reference_checkpoint

    model, model_cfg = import_reference_checkpoint(args.ckpt, n_head=args.n_head)
    out = save_pretrained(
        args.out,
        model,
        model_cfg,
        source={"converted_from": str(args.ckpt), "layout": "HazyResearch/H3 SSMLMHeadModel"},
    )
    print(json.dumps({"export": str(out), "mixers": list(model_cfg.mixers)}))
    return 0


def cmd_demo_bundle(args: argparse.Namespace) -> int:
    from h3lab.demobundle import BundleError, build_bundle

    try:
        manifest = build_bundle(
            args.runs,
            args.out,
            command=args.trained_by,
            min_accuracy=args.min_accuracy,
            commit=args.commit,
        )
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({"bundle": str(args.out), "models": [m["name"] for m in manifest["models"]],
                      "bytes": size}))  # fmt: skip
    return 0


COMMANDS = {
    "intervene": cmd_intervene,
    "study": cmd_study,
    "train": cmd_train,
    "eval": cmd_eval,
    "generate": cmd_generate,
    "probe": cmd_probe,
    "reproduce": cmd_reproduce,
    "export": cmd_export,
    "import-h3": cmd_import_h3,
    "demo-bundle": cmd_demo_bundle,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from h3lab import bench  # lazily: it is the nn engineer's module and may pull in more

        return int(bench.main(argv[1:]) or 0)
    if argv == ["--version"]:  # answered before the parser, whose probe options import torch
        print(f"{_prog()} {__version__}")
        return 0
    try:
        parser = build_parser()  # the probe and reproduce options import torch
    except ModuleNotFoundError as exc:  # the bare wheel: the client only (see README)
        print(
            f"h3lab: the ML command line needs {exc.name}, which is not installed: "
            "pip install 'h3lab[ml]' (the terminal client, h3lab-client, needs nothing)",
            file=sys.stderr,
        )
        return 1
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
