"""The mechanism study: does each trained 2-layer model implement the two-step mechanism H3 was
designed from?

Induction heads (Olsson et al. 2022) copy in two steps: a **previous-token** mechanism in layer 0
writes "the token before me" into each position, and a **match-and-copy** mechanism in layer 1
finds the earlier occurrence of the current token and copies what followed it. H3 (Fu et al.
2023) was built to do the same with SSMs: the **shift SSM** remembers recent tokens (a
previous-token filter) and the **diagonal SSM** carries the memory over the whole sequence.

For each (task, model) cell the study trains a 2-layer model (or loads one), then measures on
held-out examples:

- *attention*: the previous-token score of every layer-0 head (mean attention from position i
  to i - 1) and the prefix-matching score of every layer-1 head (on repeated random tokens); the
  top head of each is ablated (zero and mean) and patched (clean ``hook_z`` slice into a
  corrupted run), beside a control head of the same layer;
- *H3*: the fraction of each layer's shift-kernel mass at lag 1, and the accuracy with each
  layer's shift SSM and diagonal SSM ablated (zero and mean) and patched.

A claim counts as **found** when ablating the component removes at least half of the accuracy
above chance (``collapse`` ≥ 0.5) and patching it restores at least half of the clean logit
difference (``restored`` ≥ 0.5). The report states each number; it does not round a miss up.

``python -m h3lab study mechanism --out DIR`` writes ``mechanism.md``, ``mechanism.json`` and
one ``<task>-<model>.png``/``.svg`` per cell.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from h3lab import interventions as iv
from h3lab.config import RunConfig, TaskConfig, TrainConfig
from h3lab.curves import json_safe
from h3lab.nn.lm import LanguageModel

FOUND_COLLAPSE = 0.5
FOUND_RESTORED = 0.5
PROTOCOLS = ("quick", "paper")
# The study's task names → the reproduction's rows (the paper's tasks with safari's semantics).
PAPER_TASKS = {
    "induction_head_safari": "induction_head",
    "associative_recall_safari": "associative_recall",
}


@dataclass(frozen=True)
class StudyConfig:
    """The cells and the training budget. Task sizes default to the paper's synthetic sizes."""

    tasks: tuple[str, ...] = ("induction_head_safari", "associative_recall_safari")
    models: tuple[str, ...] = ("attention", "h3")
    sizes: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {
            "induction_head_safari": (20, 30),
            "associative_recall_safari": (10, 20),
            "induction_head": (20, 30),
            "associative_recall": (10, 20),
        }
    )
    d_model: int = 64
    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1.0
    early_stop_acc: float = 0.99
    seed: int = 0
    examples: int = 512
    device: str = "cpu"
    # "quick": the settings above (a short, high-lr schedule); "paper": each cell exactly as
    # the synthetic reproduction trains it (safari's settings and budget, h3lab.reproduce), so
    # the study analyses the models of the paper's protocol. d_model, steps, batch_size, lr and
    # weight_decay then come from the reproduction, not from this config.
    protocol: str = "quick"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}"
            )
        if self.protocol == "paper":
            other = [t for t in self.tasks if t not in PAPER_TASKS]
            if other:
                raise ValueError(
                    f"the paper protocol trains the paper's tasks ({', '.join(PAPER_TASKS)}); "
                    f"not {', '.join(other)}"
                )

    def run_config(self, task: str, model: str) -> RunConfig:
        if self.protocol == "paper":
            from h3lab import reproduce

            row = PAPER_TASKS[task]
            steps = reproduce.PAPER_STEPS[row]
            train = replace(reproduce.TRAIN, steps=steps, warmup_steps=steps // 10)
            return reproduce.run_config(row, model, device=self.device, seed=self.seed, train=train)
        vocab, seq_len = self.sizes.get(task, (20, 30))
        train = TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr if model != "attention" else self.lr / 2,
            ssm_lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=min(100, max(1, self.steps // 10)),
            eval_every=max(1, min(100, self.steps // 4)),
            checkpoint_every=max(1, min(1000, self.steps)),
            early_stop_acc=self.early_stop_acc,
            seed=self.seed,
            device=self.device,
        )
        model_kw: dict[str, Any] = {"n_head": 1} if model == "attention" else {}
        return RunConfig.build(
            preset=model,
            n_layer=2,
            d_model=self.d_model,
            task=TaskConfig(name=task, vocab_size=vocab, seq_len=seq_len, seed=self.seed),
            train=train,
            **model_kw,
        )


# --- measurements ------------------------------------------------------------------------------


def chance(answers: torch.Tensor) -> float:
    """Accuracy of always guessing uniformly among the answers that occur."""
    return 1.0 / max(1, int(torch.unique(answers).numel()))


def collapse(base: float, ablated: float, floor: float) -> float:
    """Fraction of the accuracy above chance that an ablation removes (1 = down to chance)."""
    return (base - ablated) / (base - floor) if base - floor > 1e-9 else float("nan")


@torch.no_grad()
def previous_token_scores(model: LanguageModel, inputs: torch.Tensor, layer: int) -> list[float]:
    """Per head of ``layer``: mean attention from position i to i - 1."""
    name = f"blocks.{layer}.mixer.hook_pattern"
    _, cache = model.run_with_cache(inputs, [name])
    pattern = cache[name].float()  # (B, H, L, L)
    i = torch.arange(1, pattern.shape[-1])
    return pattern[:, :, i, i - 1].mean(dim=(0, 2)).tolist()


@torch.no_grad()
def prefix_matching_scores(
    model: LanguageModel, layer: int, *, half: int, n: int, seed: int
) -> list[float]:
    """Per head of ``layer``: attention from a repeated token to the token after its first
    occurrence, on ``n`` random sequences of ``half`` tokens repeated once."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(model.cfg.vocab_size, (n, half), generator=g)
    ids = torch.cat([tokens, tokens], dim=1).to(iv.model_device(model))
    name = f"blocks.{layer}.mixer.hook_pattern"
    _, cache = model.run_with_cache(ids, [name])
    pattern = cache[name].float()
    q = torch.arange(half, 2 * half)
    return pattern[:, :, q, q - half + 1].mean(dim=(0, 2)).tolist()


@torch.no_grad()
def lag_one_mass(model: LanguageModel, layer: int) -> float:
    """Fraction of layer ``layer``'s shift-kernel mass (mean over channels) at lag 1."""
    name = f"blocks.{layer}.mixer.hook_shift_kernel"
    probe = torch.zeros(1, 4, dtype=torch.long, device=iv.model_device(model))
    _, cache = model.run_with_cache(probe, [name])
    kernel = cache[name].float().abs()  # (D, ≤N)
    if kernel.shape[-1] < 2:
        return float("nan")
    share = kernel[:, 1] / kernel.sum(-1).clamp_min(1e-12)
    return share.mean().item()


@dataclass
class Test:
    """One component's ablation and patching numbers."""

    component: str
    role: str  # "previous token", "match and copy", "memory", "control"
    hook: str
    channels: tuple[int, int] | None
    zero_accuracy: float
    mean_accuracy: float
    collapse: float
    restored: float
    signature: dict[str, float] = field(default_factory=dict)
    corruption: str = "values"  # what the patching's corrupted inputs change: values or keys

    @property
    def found(self) -> bool:
        return (
            not math.isnan(self.collapse)
            and self.collapse >= FOUND_COLLAPSE
            and self.restored >= FOUND_RESTORED
        )


def _test(
    model: LanguageModel,
    comp: iv.Component,
    role: str,
    data: dict[str, torch.Tensor],
    base: float,
    floor: float,
    signature: dict[str, float] | None = None,
) -> Test:
    zero = iv.ablate(model, data["inputs"], data["answers"], [comp], mode="zero")
    mean = iv.ablate(
        model, data["inputs"], data["answers"], [comp], mode="mean", reference=data["reference"]
    )
    # A previous-token component reads the token before each value: a value corruption leaves
    # that unchanged, so it is patched on the key corruption; the others on the value one.
    corruption = "keys" if role == "previous token" else "values"
    suffix = "_keys" if corruption == "keys" else ""
    patch = iv.patch_scan(
        model,
        data["inputs"],
        data["corrupted" + suffix],
        data["answers"],
        data["wrong" + suffix],
        [comp.site],
    )
    worst = min(zero.accuracy, mean.accuracy)
    return Test(
        component=comp.name,
        role=role,
        hook=comp.site.module,
        channels=comp.site.channels,
        zero_accuracy=zero.accuracy,
        mean_accuracy=mean.accuracy,
        collapse=collapse(base, worst, floor),
        restored=float(patch["rows"][0]["restored"]),
        signature=signature or {},
        corruption=corruption,
    )


def analyse(model: LanguageModel, cfg: RunConfig, *, examples: int, seed: int) -> dict[str, Any]:
    """Every measurement of one trained model (see the module docstring)."""
    mixers = tuple(cfg.model.mixers)
    if len(mixers) < 2 or len(set(mixers)) != 1 or mixers[0] not in ("attn", "h3"):
        raise ValueError(
            "the mechanism study needs an attention or an H3 model of two or more layers, every "
            f"layer the same kind; this run's layers are {', '.join(mixers)}"
        )
    model.eval()
    inputs, answers = iv.task_examples(cfg, 2 * examples, seed)
    inputs, answers = inputs.to(iv.model_device(model)), answers.to(iv.model_device(model))
    # The mean-ablation reference and the analysed examples are disjoint halves of what the
    # test split holds: with fewer than 2 × ``examples`` test examples, each gets half.
    half = min(examples, inputs.shape[0] // 2)
    reference = inputs[:half]
    inputs, answers = inputs[half : 2 * half], answers[half : 2 * half]
    corrupted, wrong = iv.corrupt_copy_task(
        inputs.cpu(), answers.cpu(), torch.Generator().manual_seed(seed + 1)
    )
    corrupted_keys, wrong_keys = iv.corrupt_copy_keys(
        inputs.cpu(), answers.cpu(), torch.Generator().manual_seed(seed + 2)
    )
    data = {
        "corrupted_keys": corrupted_keys.to(inputs.device),
        "wrong_keys": wrong_keys.to(inputs.device),
        "inputs": inputs,
        "answers": answers,
        "reference": reference,
        "corrupted": corrupted.to(inputs.device),
        "wrong": wrong.to(inputs.device),
    }
    base = iv.score(iv.forward(model, inputs), answers).accuracy
    floor = chance(answers)
    parts = {c.name: c for c in iv.components(model)}
    tests: list[Test] = []
    if "L0.head0" in parts:
        prev = previous_token_scores(model, inputs, 0)
        match = prefix_matching_scores(
            model, 1, half=max(4, cfg.task.seq_len // 2), n=64, seed=seed
        )
        p, m = (
            max(range(len(prev)), key=prev.__getitem__),
            max(range(len(match)), key=match.__getitem__),
        )
        tests.append(
            _test(model, parts[f"L0.head{p}"], "previous token", data, base, floor,
                  {"previous_token_score": prev[p]})
        )  # fmt: skip
        tests.append(
            _test(model, parts[f"L1.head{m}"], "match and copy", data, base, floor,
                  {"prefix_matching_score": match[m]})
        )  # fmt: skip
        for layer, scores, top in ((0, prev, p), (1, match, m)):
            for h in range(len(scores)):
                if h != top:
                    tests.append(
                        _test(model, parts[f"L{layer}.head{h}"], "control", data, base, floor)
                    )
    if "L0.shift_ssm" in parts:
        for layer in (0, 1):
            tests.append(
                _test(model, parts[f"L{layer}.shift_ssm"], "previous token", data, base, floor,
                      {"lag_one_mass": lag_one_mass(model, layer)})
            )  # fmt: skip
            tests.append(_test(model, parts[f"L{layer}.diag_ssm"], "memory", data, base, floor))
    return {
        "accuracy": base,
        "chance": floor,
        "examples": int(inputs.shape[0]),
        "inputs_sha256": iv.tensor_hash(inputs),
        "tests": [{**asdict(t), "found": t.found} for t in tests],
    }


# --- the study ---------------------------------------------------------------------------------


def train_cell(
    cfg: RunConfig, work: Path, log: Callable[[str], None]
) -> tuple[LanguageModel, dict[str, Any]]:
    """Train (or resume, or reuse a finished) run in ``work``; its last checkpoint's model and
    how training ended (status, steps, the step validation would select)."""
    from h3lab.train import Callbacks, load_checkpoint, train

    result = train(cfg, work, Callbacks(on_log=log), resume=True)
    log(f"{cfg.preset}/{cfg.task.name}: {result.status} at step {result.step}, "
        f"test accuracy {result.test_accuracy:.3f}")  # fmt: skip
    model, _ = load_checkpoint(work)
    training = {
        "status": result.status,
        "step": result.step,
        "budget": cfg.train.steps,
        "test_accuracy": result.test_accuracy,
        "selected_step": result.selected_step,
        "selected_on": result.selected_on,
        "selected_val_accuracy": result.selected_val_accuracy,
    }
    return model, training


def plot_cell(name: str, cell: dict[str, Any]) -> Any:
    """Two panels per model: accuracy with each component ablated (zero, mean) beside the
    trained accuracy and chance, and the share of the logit difference patching restores,
    beside the thresholds a finding needs."""
    tests = cell["tests"]
    fig = iv.new_figure(max(7.0, 1.5 * len(tests) + 3), 3.4)
    ablated, patched = fig.subplots(1, 2, sharex=True)
    labels = [f"{t['component']}\n{t['role']}" for t in tests]
    xs = list(range(len(labels)))
    ablated.bar([x - 0.2 for x in xs], [t["zero_accuracy"] for t in tests], 0.4, label="zero")
    ablated.bar([x + 0.2 for x in xs], [t["mean_accuracy"] for t in tests], 0.4, label="mean")
    ablated.axhline(cell["accuracy"], color="#222", linestyle="--", label="trained")
    ablated.axhline(cell["chance"], color="#999", linestyle=":", label="chance")
    ablated.set_ylim(0, 1.02)
    ablated.set_ylabel("accuracy with the component ablated")
    ablated.legend(fontsize=7, loc="upper right")
    colours = ["#2a7" if t["found"] else "#c55" for t in tests]
    patched.bar(xs, [t["restored"] for t in tests], 0.6, color=colours)
    for x, t in zip(xs, tests, strict=True):
        patched.annotate(
            t.get("corruption", "values"), (x, max(0.0, t["restored"])), ha="center",
            va="bottom", fontsize=6,
        )  # fmt: skip
    patched.axhline(
        FOUND_RESTORED, color="#999", linestyle=":", label=f"found needs ≥ {FOUND_RESTORED}"
    )
    patched.set_ylim(min(0.0, *(t["restored"] for t in tests)) - 0.02, 1.1)
    patched.set_ylabel("logit difference restored by patching")
    patched.legend(fontsize=7, loc="upper right")
    for ax in (ablated, patched):
        ax.set_xticks(xs, labels, fontsize=7)
    fig.suptitle(f"{name} (green: found, red: not found)", fontsize=9)
    return fig


DEFINITIONS = (
    "*Collapse*: the share of accuracy above chance removed by the worse of zero and mean "
    "ablation; *restored*: the share of the clean-vs-corrupted logit difference restored by "
    "patching the component, on inputs whose *values* were corrupted (the token after each "
    "earlier occurrence of the query replaced) or, for previous-token components, whose *keys* "
    "were (the query swapped with another key, every value in place; a value corruption leaves "
    f"what they read unchanged). A claim is **found** when collapse ≥ {FOUND_COLLAPSE} and "
    f"restored ≥ {FOUND_RESTORED}."
)


def _training_line(training: dict[str, Any] | None) -> str:
    if not training:
        return ""
    how = {"early_stopped": "stopped early on validation", "completed": "ran its budget"}
    return (
        f" Trained {training['step']:,} of {training['budget']:,} steps "
        f"({how.get(training['status'], training['status'])}); the last checkpoint is analysed."
    )


def cell_lines(
    name: str, cell: dict[str, Any], *, heading: str = "##", image: str = ""
) -> list[str]:
    """One model's section: accuracy, the table of tests, what was and was not found."""
    lines = [
        f"{heading} {name}",
        "",
        f"Accuracy {cell['accuracy']:.1%} (chance {cell['chance']:.1%}) on "
        f"{cell['examples']} test examples." + _training_line(cell.get("training")),
        "",
        "| component | role | signature | zero abl. | mean abl. | collapse | restored | found |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in cell["tests"]:
        sig = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in t["signature"].items())
        lines.append(
            f"| {t['component']} | {t['role']} | {sig or '—'} | {t['zero_accuracy']:.1%} | "
            f"{t['mean_accuracy']:.1%} | {t['collapse']:.2f} | {t['restored']:.2f} "
            f"({t.get('corruption', 'values')}) | {'yes' if t['found'] else 'no'} |"
        )
    claims = [t for t in cell["tests"] if t["role"] != "control"]
    found = [t["component"] for t in claims if t["found"]]
    missed = [t["component"] for t in claims if not t["found"]]
    lines += [
        "",
        f"Found: {', '.join(found) or 'none'}. Not found: {', '.join(missed) or 'none'}.",
        f"![{name}]({image or name + '.png'})",
        "",
    ]
    return lines


def training_text(study: StudyConfig) -> str:
    """How the study's models were trained, in a sentence."""
    if study.protocol == "paper":
        from h3lab import reproduce

        t = reproduce.TRAIN
        budgets = ", ".join(
            f"{task} {reproduce.PAPER_STEPS[row]:,}" for task, row in PAPER_TASKS.items()
        )
        return (
            f"2-layer models trained with seed {study.seed} under the paper's protocol, exactly "
            "as `python -m h3lab reproduce synthetic` trains them (docs/synthetic.md): safari's "
            f"settings (d_model {reproduce.MODEL_BASE['d_model']}, batch {t.batch_size}, AdamW "
            f"lr {t.lr}, weight decay {t.weight_decay}, embedding dropout "
            f"{reproduce.MODEL_BASE['embed_dropout']}; attention with one head per layer and "
            f"learned positions), safari's budget ({budgets} steps), early stop and checkpoint "
            "selection on validation only."
        )
    return (
        f"2-layer models, d_model {study.d_model}, trained with seed {study.seed} "
        f"(≤ {study.steps} steps, batch {study.batch_size}, lr {study.lr}, weight decay "
        f"{study.weight_decay}; attention at half the lr, one head per layer)."
    )


def report(cells: dict[str, dict[str, Any]], study: StudyConfig) -> str:
    lines = [
        "# Mechanism study: previous-token and match-and-copy components",
        "",
        training_text(study) + " Measured on "
        f"up to {study.examples} held-out test examples per cell (half of the test split at most; "
        "the other half is the mean-ablation reference). " + DEFINITIONS,
        "",
    ]
    for name, cell in cells.items():
        lines += cell_lines(name, cell)
    return "\n".join(lines) + "\n"


def mechanism_study(
    out_dir: Path,
    study: StudyConfig,
    *,
    work_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or reuse) every cell, analyse it, write the report; returns the JSON written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(work_dir) if work_dir else out_dir / "runs"
    torch.manual_seed(study.seed)
    cells: dict[str, dict[str, Any]] = {}
    for task in study.tasks:
        for model_name in study.models:
            cfg = study.run_config(task, model_name)
            name = f"{task}-{model_name}"
            model, training = train_cell(cfg, work_dir / name, log)
            cell = analyse(model.to(study.device), cfg, examples=study.examples, seed=study.seed)
            cell["config"] = cfg.to_dict()
            cell["training"] = training
            cells[name] = cell
            fig = plot_cell(name, cell)
            fig.savefig(out_dir / f"{name}.png", dpi=110)
            fig.savefig(out_dir / f"{name}.svg")
    data: dict[str, Any] = json_safe({"study": asdict(study), "cells": cells})
    (out_dir / "mechanism.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out_dir / "mechanism.md").write_text(report(cells, study), encoding="utf-8")
    return data
