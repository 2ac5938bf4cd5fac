"""Causal interventions on a trained model, on its named hook points (:mod:`h3lab.nn.hooks`).

Three kinds, as in TransformerLens-style interpretability work, each a pure function that takes a
model and token tensors and returns a JSON-able result (``run_*`` also write ``<kind>.png``,
``<kind>.svg`` and ``<kind>.json`` like the probes):

- **ablation** (:func:`ablate`, :func:`ablation_scan`): replace a component's activation by zero,
  by its mean over a reference batch (per position), or by its value on another example
  (resample), and measure the task metric and loss at the answer position.
- **activation patching** (:func:`patch_scan`): run a *corrupted* input, put back one site's
  activation from the *clean* run (a whole hook, one position, one head or one channel), and
  report the fraction of the clean-vs-corrupted logit difference it restores.
- **activation addition / steering** (:func:`steering_direction`, :func:`steer`): a direction
  from contrast pairs (mean activation on one set minus the other, at the last position) added
  to a hook with a sweep of coefficients; reports how the outputs move.

Components are found from the model's hook names, whatever the mixer (:func:`components`):
attention heads (their slice of ``hook_z``), H3's shift and diagonal SSM outputs
(``hook_shift``, ``hook_diag``: zeroing an SSM's output is zeroing its kernel), S4D's SSM
output, any single SSM channel, whole mixers (``hook_out``) and MLPs (the ``mlp`` module's
output). Hybrids get each layer's own.

The tasks' answer is the last position's target, copied from the context (associative recall:
the value bound to the queried key; induction: the token after the trigger's earlier
occurrence). :func:`corrupt_copy_task` makes the corrupted inputs for patching: every token that
follows an earlier occurrence of the final query token is replaced by another answer token, so
the corrupted run's answer differs; :func:`corrupt_copy_keys` instead swaps the query with
another key before the end, leaving every answer token in place (what a previous-token
mechanism reads changes, the values do not).

Exactness (tests/ml/test_interventions.py): ablating nothing changes nothing; patching every
position of a hook with clean activations restores the clean output exactly; steering with
coefficient 0 is the identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from h3lab.curves import json_safe

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from h3lab.nn.lm import LanguageModel

AblationMode = Literal["zero", "mean", "resample"]
ABLATION_MODES: tuple[AblationMode, ...] = ("zero", "mean", "resample")


# --- sites and components -----------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Where an intervention acts: the output of module ``module`` (a hook point or any
    submodule path, e.g. ``blocks.1.mixer.hook_z`` or ``blocks.0.mlp``), restricted to the
    slice ``channels`` of its last dimension and to sequence ``position`` (dim 1) if given.
    Activations are (B, L, C)."""

    module: str
    channels: tuple[int, int] | None = None  # [start, stop) of the last dimension
    position: int | None = None

    def select(self, act: Tensor) -> tuple[Any, ...]:
        """An index into ``act`` (B, L, C) for this site."""
        pos: Any = slice(None) if self.position is None else self.position
        ch: Any = slice(None) if self.channels is None else slice(*self.channels)
        return (slice(None), pos, ch)


@dataclass(frozen=True)
class Component:
    """A named part of the model to ablate: ``layer`` (or None for embedding-level parts),
    ``kind`` (``head``, ``mixer``, ``mlp``, ``shift_ssm``, ``diag_ssm``, ``ssm_channel``), and
    the site it lives at."""

    name: str
    layer: int
    kind: str
    site: Site


def components(model: LanguageModel, *, channels: bool = False) -> list[Component]:
    """Every ablatable component of ``model``, layer by layer; ``channels`` adds each SSM
    channel of the diagonal SSMs (many: C per layer)."""
    names = set(model.hook_names())
    found: list[Component] = []
    for i, block in enumerate(model.blocks):
        prefix = f"blocks.{i}.mixer"
        mixer = block.mixer
        if f"{prefix}.hook_z" in names and hasattr(mixer, "head_dim"):
            hd: int = getattr(mixer, "head_dim")  # noqa: B009  (a Mixer protocol attribute)
            n_head: int = getattr(mixer, "n_head", model.cfg.d_model // hd)
            for h in range(n_head):
                site = Site(f"{prefix}.hook_z", channels=(h * hd, (h + 1) * hd))
                found.append(Component(f"L{i}.head{h}", i, "head", site))
        if f"{prefix}.hook_shift" in names:
            found.append(Component(f"L{i}.shift_ssm", i, "shift_ssm", Site(f"{prefix}.hook_shift")))
        if f"{prefix}.hook_diag" in names:
            diag = Site(f"{prefix}.hook_diag")
            found.append(Component(f"L{i}.diag_ssm", i, "diag_ssm", diag))
            if channels:
                width = _hook_width(model, f"{prefix}.hook_diag")
                for c in range(width):
                    site = Site(diag.module, channels=(c, c + 1))
                    found.append(Component(f"L{i}.diag_ssm.c{c}", i, "ssm_channel", site))
        found.append(Component(f"L{i}.mixer", i, "mixer", Site(f"{prefix}.hook_out")))
        if getattr(block, "mlp", None) is not None:
            found.append(Component(f"L{i}.mlp", i, "mlp", Site(f"blocks.{i}.mlp")))
    return found


def _hook_width(model: LanguageModel, name: str) -> int:
    probe = torch.zeros(1, 2, dtype=torch.long, device=model_device(model))
    _, cache = model.run_with_cache(probe, [name])
    return int(cache[name].shape[-1])


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --- running with interventions -----------------------------------------------------------------

Edit = Callable[[Tensor], Tensor]


@contextmanager
def intervening(model: nn.Module, edits: Sequence[tuple[str, Edit]]) -> Iterator[None]:
    """Within the block, the output of each named module is replaced by ``edit(output)``."""
    handles = []
    try:
        for name, edit in edits:
            module = model.get_submodule(name)
            handles.append(module.register_forward_hook(lambda _m, _a, out, f=edit: f(out)))
        yield
    finally:
        for h in handles:
            h.remove()


def _replace(site: Site, source: Callable[[Tensor], Tensor]) -> Edit:
    """An edit that writes ``source(act)`` (same shape as the selection) into the site."""

    def edit(act: Tensor) -> Tensor:
        out = act.clone()
        index = site.select(out)
        out[index] = source(act)[index]
        return out

    return edit


@torch.no_grad()
def forward(model: LanguageModel, ids: Tensor, edits: Sequence[tuple[str, Edit]] = ()) -> Tensor:
    """Logits (B, L, V), in eval mode, with ``edits`` applied."""
    was_training = model.training
    model.eval()
    try:
        with intervening(model, edits):
            logits: Tensor = model(ids)
    finally:
        model.train(was_training)
    return logits.float()


@torch.no_grad()
def cache_outputs(model: LanguageModel, ids: Tensor, modules: Sequence[str]) -> dict[str, Tensor]:
    """The outputs of ``modules`` (hook points or submodules) on ``ids``."""
    saved: dict[str, Tensor] = {}

    def keep(name: str) -> Edit:
        def edit(act: Tensor) -> Tensor:
            saved[name] = act.detach().clone()
            return act

        return edit

    forward(model, ids, [(m, keep(m)) for m in dict.fromkeys(modules)])
    return saved


# --- the task metric ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    accuracy: float  # argmax == answer at the last position
    loss: float  # cross-entropy of the answer at the last position


def score(logits: Tensor, answers: Tensor) -> Score:
    """``logits`` (B, L, V), ``answers`` (B,): the metric at the last position."""
    last = logits[:, -1]  # (B, V)
    acc = (last.argmax(-1) == answers).float().mean().item()
    loss = torch.nn.functional.cross_entropy(last, answers).item()
    return Score(accuracy=acc, loss=loss)


# --- ablation -----------------------------------------------------------------------------------


def ablation_edit(
    site: Site, mode: AblationMode, reference: Tensor | None, generator: torch.Generator
) -> Edit:
    """The edit for one ablated site. ``reference``: the site module's output on a reference
    batch (B_ref, L, C) — its per-position mean for ``mean``, random rows for ``resample``."""
    if mode == "zero":
        return _replace(site, torch.zeros_like)
    if reference is None:
        raise ValueError(f"{mode} ablation needs a reference batch")
    if mode == "mean":
        mean = reference.mean(0, keepdim=True)  # (1, L, C)
        return _replace(site, lambda act: mean.expand_as(act).to(act.dtype))
    if mode == "resample":

        def resampled(act: Tensor) -> Tensor:
            rows = torch.randint(reference.shape[0], (act.shape[0],), generator=generator)
            return reference[rows.to(reference.device)].to(act.dtype)

        return _replace(site, resampled)
    raise ValueError(f"unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}")


def ablate(
    model: LanguageModel,
    inputs: Tensor,
    answers: Tensor,
    parts: Sequence[Component],
    *,
    mode: AblationMode = "zero",
    reference: Tensor | None = None,
    seed: int = 0,
) -> Score:
    """The task score with every component in ``parts`` ablated at once. ``inputs`` (B, L),
    ``answers`` (B,); ``reference`` (B_ref, L) inputs for mean/resample (default: ``inputs``)."""
    g = torch.Generator().manual_seed(seed)
    ref_acts = (
        cache_outputs(
            model, inputs if reference is None else reference, [c.site.module for c in parts]
        )
        if mode != "zero"
        else {}
    )
    edits = [
        (c.site.module, ablation_edit(c.site, mode, ref_acts.get(c.site.module), g)) for c in parts
    ]
    return score(forward(model, inputs, edits), answers)


def ablation_scan(
    model: LanguageModel,
    inputs: Tensor,
    answers: Tensor,
    parts: Sequence[Component] | None = None,
    *,
    modes: Sequence[AblationMode] = ABLATION_MODES,
    reference: Tensor | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Ablate each component alone, in each mode: ``{"baseline": Score, "rows": [...]}``."""
    parts = components(model) if parts is None else list(parts)
    base = score(forward(model, inputs), answers)
    rows = []
    for comp in parts:
        for mode in modes:
            s = ablate(model, inputs, answers, [comp], mode=mode, reference=reference, seed=seed)
            rows.append(
                {
                    "component": comp.name,
                    "layer": comp.layer,
                    "kind": comp.kind,
                    "hook": comp.site.module,
                    "channels": comp.site.channels,
                    "mode": mode,
                    "accuracy": s.accuracy,
                    "loss": s.loss,
                    "accuracy_drop": base.accuracy - s.accuracy,
                }
            )
    return {"baseline": asdict(base), "rows": rows}


# --- corrupted inputs and activation patching ---------------------------------------------------


def corrupt_copy_task(
    inputs: Tensor, answers: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Corrupted copies of a copy task's inputs (B, L) and their answers (B,): every token
    following an earlier occurrence of the final query token becomes another answer token
    (drawn from the batch's answers, so it is a value the task uses), and the corrupted answer
    is that token. Rows where the query has no earlier occurrence keep their inputs."""
    inputs, answers = inputs.clone(), answers.clone()
    pool = torch.unique(answers)
    if pool.numel() < 2:
        raise ValueError("corruption needs at least two distinct answers in the batch")
    corrupted_answers = answers.clone()
    query = inputs[:, -1]  # (B,)
    for b in range(inputs.shape[0]):
        before = (inputs[b, :-2] == query[b]).nonzero().flatten() + 1  # positions after query
        if before.numel() == 0:
            continue
        choices = pool[pool != answers[b]]
        new = choices[torch.randint(choices.numel(), (1,), generator=generator)].item()
        inputs[b, before] = int(new)
        corrupted_answers[b] = int(new)
    return inputs, corrupted_answers


CORRUPTIONS: tuple[str, ...] = ("values", "keys")


def corrupt_copy_keys(
    inputs: Tensor, answers: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Corrupted copies of a copy task's inputs (B, L) that change the *keys* and keep every
    value in place: before the final query ``q``, ``q`` and another token ``t`` swap identities,
    where every occurrence of ``t`` is followed by the same answer token ``w`` other than the
    clean answer, so the query now points at ``w`` (the corrupted answer). Only what precedes
    the answer tokens changes, which is what a previous-token mechanism reads (the value
    corruption of :func:`corrupt_copy_task` leaves it unchanged). Rows without such a ``t`` keep
    their inputs."""
    inputs, answers = inputs.clone(), answers.clone()
    pool = torch.unique(answers)
    if pool.numel() < 2:
        raise ValueError("corruption needs at least two distinct answers in the batch")
    corrupted_answers = answers.clone()
    length = inputs.shape[1]
    for b in range(inputs.shape[0]):
        row, q = inputs[b], int(inputs[b, -1])
        body = row[: length - 2]  # the context before the final query and what precedes it
        if int(row[length - 2]) == q:
            continue
        at_q = (row[: length - 2] == q).nonzero().flatten()
        if at_q.numel() == 0:
            continue
        candidates = []
        for t in torch.unique(row[: length - 2]).tolist():
            if t == q or t == int(answers[b]) or t == int(row[length - 2]):
                continue
            at_t = (row[: length - 2] == t).nonzero().flatten()
            after = row[at_t + 1]
            w = int(after[0])
            if not (after == w).all() or w == int(answers[b]) or w not in pool:
                continue
            if torch.isin(at_t + 1, at_q).any():  # t right before q: the swap would move q's value
                continue
            candidates.append((t, w))
        if not candidates:
            continue
        t, w = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
        is_q, is_t = body == q, body == t
        body[is_q], body[is_t] = t, q
        corrupted_answers[b] = w
    return inputs, corrupted_answers


def _constant(value: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda _act: value


def logit_diff(logits: Tensor, clean_answers: Tensor, corrupted_answers: Tensor) -> float:
    """Mean over the batch of logit[clean answer] - logit[corrupted answer], last position."""
    last = logits[:, -1]
    rows = torch.arange(last.shape[0], device=last.device)
    return (last[rows, clean_answers] - last[rows, corrupted_answers]).mean().item()


def patch_sites(model: LanguageModel, seq_len: int, *, heads: bool = True) -> list[Site]:
    """The default patching grid: the residual stream before each layer and each mixer's
    output, at every position; plus each attention head (all positions)."""
    sites: list[Site] = []
    for i in range(len(model.blocks)):
        for module in (f"blocks.{i}.hook_resid_pre", f"blocks.{i}.mixer.hook_out"):
            sites += [Site(module, position=p) for p in range(seq_len)]
    if heads:
        sites += [c.site for c in components(model) if c.kind == "head"]
    return sites


def patch_scan(
    model: LanguageModel,
    clean: Tensor,
    corrupted: Tensor,
    clean_answers: Tensor,
    corrupted_answers: Tensor,
    sites: Sequence[Site],
) -> dict[str, Any]:
    """For each site, the corrupted run with that site's clean activation put back:
    ``restored`` = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted), where LD is the
    mean logit difference between the clean and the corrupted answer (1 = fully restored)."""
    clean_logits = forward(model, clean)
    corrupted_logits = forward(model, corrupted)
    ld_clean = logit_diff(clean_logits, clean_answers, corrupted_answers)
    ld_corrupt = logit_diff(corrupted_logits, clean_answers, corrupted_answers)
    denom = ld_clean - ld_corrupt
    acts = cache_outputs(model, clean, [s.module for s in sites])
    rows = []
    for site in sites:
        source = acts[site.module]
        patched = forward(model, corrupted, [(site.module, _replace(site, _constant(source)))])
        ld = logit_diff(patched, clean_answers, corrupted_answers)
        rows.append(
            {
                "hook": site.module,
                "position": site.position,
                "channels": site.channels,
                "logit_diff": ld,
                "restored": (ld - ld_corrupt) / denom if abs(denom) > 1e-9 else float("nan"),
                "accuracy": score(patched, clean_answers).accuracy,
            }
        )
    return {
        "clean_logit_diff": ld_clean,
        "corrupted_logit_diff": ld_corrupt,
        "clean_accuracy": score(clean_logits, clean_answers).accuracy,
        "corrupted_accuracy": score(corrupted_logits, clean_answers).accuracy,
        "rows": rows,
    }


# --- steering -----------------------------------------------------------------------------------


@torch.no_grad()
def steering_direction(
    model: LanguageModel, hook: str, positive: Tensor, negative: Tensor
) -> Tensor:
    """(C,): mean activation at ``hook``'s last position on ``positive`` minus on ``negative``
    (contrast pairs, e.g. examples whose answer is token a vs token b)."""
    acts = cache_outputs(model, torch.cat([positive, negative]), [hook])[hook]  # (B, L, C)
    last = acts[:, -1]
    return last[: len(positive)].mean(0) - last[len(positive) :].mean(0)


def steering_edit(direction: Tensor, coefficient: float, position: int | None = -1) -> Edit:
    """Add ``coefficient * direction`` to the activation (at ``position``, or everywhere)."""

    def edit(act: Tensor) -> Tensor:
        if coefficient == 0:
            return act
        out = act.clone()
        delta = (coefficient * direction).to(act.dtype)
        if position is None:
            out += delta
        else:
            out[:, position] += delta
        return out

    return edit


def steer(
    model: LanguageModel,
    hook: str,
    direction: Tensor,
    inputs: Tensor,
    target: int,
    coefficients: Sequence[float],
    *,
    position: int | None = -1,
) -> dict[str, Any]:
    """For each coefficient: how often the last position predicts ``target``, its mean
    log-probability, the fraction of predictions changed, and the KL divergence from the
    unsteered output distribution."""
    base = forward(model, inputs)[:, -1].log_softmax(-1)  # (B, V)
    rows = []
    for c in coefficients:
        out = forward(model, inputs, [(hook, steering_edit(direction, float(c), position))])
        logp = out[:, -1].log_softmax(-1)
        rows.append(
            {
                "coefficient": float(c),
                "target_rate": (logp.argmax(-1) == target).float().mean().item(),
                "target_logprob": logp[:, target].mean().item(),
                "changed": (logp.argmax(-1) != base.argmax(-1)).float().mean().item(),
                "kl": torch.nn.functional.kl_div(
                    logp, base, log_target=True, reduction="batchmean"
                ).item(),
            }
        )
    return {"hook": hook, "target": target, "direction_norm": direction.norm().item(), "rows": rows}


# --- reports: PNG + SVG + JSON ------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    """What a result was computed from: the inputs' hash and the seeds."""

    seed: int
    inputs_sha256: str
    n_examples: int
    extra: dict[str, Any] = field(default_factory=dict)


def tensor_hash(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_report(out_dir: Path, kind: str, fig: Figure, data: dict[str, Any]) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json_safe(
        {"intervention": kind, **data, "files": [f"{kind}.{e}" for e in ("png", "svg", "json")]}
    )
    fig.savefig(out_dir / f"{kind}.png", dpi=110)
    fig.savefig(out_dir / f"{kind}.svg")
    (out_dir / f"{kind}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


def plot_ablation(result: dict[str, Any], mode: AblationMode = "zero") -> Figure:
    rows = [r for r in result["rows"] if r["mode"] == mode]
    fig = new_figure(max(4.0, 0.35 * len(rows) + 2), 3.2)
    ax = fig.add_subplot()
    ax.bar([r["component"] for r in rows], [r["accuracy"] for r in rows], color="#5b4fd6")
    ax.axhline(result["baseline"]["accuracy"], color="#222", linestyle="--", label="no ablation")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy at the answer")
    ax.set_title(f"{mode} ablation, one component at a time")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_patching(result: dict[str, Any]) -> Figure:
    """Heatmap hook × position of the restored fraction (position-wise sites only)."""
    rows = [r for r in result["rows"] if r["position"] is not None]
    hooks = list(dict.fromkeys(r["hook"] for r in rows))
    positions = sorted({r["position"] for r in rows})
    grid = torch.full((len(hooks), len(positions)), float("nan"))
    for r in rows:
        grid[hooks.index(r["hook"]), positions.index(r["position"])] = r["restored"]
    fig = new_figure(max(4.0, 0.3 * len(positions) + 3), 0.4 * len(hooks) + 1.6)
    ax = fig.add_subplot()
    image = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_yticks(
        range(len(hooks)),
        [h.replace("blocks.", "L").replace(".mixer", "") for h in hooks],
        fontsize=8,
    )
    ax.set_xlabel("position")
    ax.set_title("fraction of the clean logit difference restored")
    fig.colorbar(image, ax=ax)
    return fig


def plot_steering(result: dict[str, Any]) -> Figure:
    rows = result["rows"]
    fig = new_figure(5, 3.2)
    ax = fig.add_subplot()
    xs = [r["coefficient"] for r in rows]
    ax.plot(xs, [r["target_rate"] for r in rows], marker="o", label="predicts target")
    ax.plot(xs, [r["changed"] for r in rows], marker="s", label="prediction changed")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("coefficient")
    ax.set_title(f"steering at {result['hook']}")
    ax.legend(fontsize=8)
    return fig


# --- one call per kind, with defaults from the run's task (the CLI and the platform's jobs) -------

INTERVENTION_KINDS: tuple[str, ...] = ("ablation", "patching", "steering")
COPY_TASKS = (
    "associative_recall_safari",
    "induction_head_safari",
    "associative_recall",
    "induction_head",
    "associative_recall_h3lab",
    "induction_head_h3lab",
)


@dataclass(frozen=True)
class InterventionSpec:
    """What to run: ``kind`` with ``examples`` test examples drawn with ``seed``; ablation
    ``modes``; steering ``hook`` (default: the residual stream after the middle layer) and
    ``coefficients``."""

    kind: str
    examples: int = 256
    seed: int = 0
    modes: tuple[AblationMode, ...] = ABLATION_MODES
    channels: bool = False
    hook: str | None = None
    coefficients: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    corruption: str = "values"  # patching: corrupt the values or the keys (see CORRUPTIONS)

    def __post_init__(self) -> None:
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}")
        if self.kind not in INTERVENTION_KINDS:
            raise ValueError(
                f"unknown intervention {self.kind!r}; choose from {', '.join(INTERVENTION_KINDS)}"
            )
        if not 2 <= self.examples <= 100_000:
            raise ValueError("examples must be between 2 and 100,000")
        bad = [m for m in self.modes if m not in ABLATION_MODES]
        if bad or not self.modes:
            raise ValueError(f"ablation modes must be among {', '.join(ABLATION_MODES)}")


def task_examples(cfg: Any, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` test examples of the run's task (inputs (n, L), answers (n,)), drawn with ``seed``
    from the test split."""
    from h3lab.data.datasets import make_datasets

    if cfg.task.name not in COPY_TASKS:
        raise ValueError(
            f"interventions need a copy task ({', '.join(COPY_TASKS)}); this run's task is "
            f"{cfg.task.name!r}"
        )
    test = make_datasets(cfg.task)[1]
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(test), generator=g)[: min(n, len(test))]
    return test.inputs[rows], test.targets[rows, -1]


def run_intervention(
    spec: InterventionSpec,
    model: LanguageModel,
    cfg: Any,
    out_dir: Path,
    *,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Run one intervention on the run's test examples and write its PNG, SVG and JSON."""
    model = model.to(device).eval()
    inputs, answers = task_examples(cfg, spec.examples, spec.seed)
    inputs, answers = inputs.to(device), answers.to(device)
    provenance: dict[str, Any] = {
        "seed": spec.seed,
        "n_examples": int(inputs.shape[0]),
        "task": cfg.task.name,
        "inputs_sha256": tensor_hash(inputs),
    }
    if spec.kind == "ablation":
        half = inputs.shape[0] // 2  # resample / mean from the other half: never the row itself
        reference = inputs[:half]
        result = ablation_scan(
            model,
            inputs[half:],
            answers[half:],
            components(model, channels=spec.channels),
            modes=spec.modes,
            reference=reference,
            seed=spec.seed,
        )
        fig = plot_ablation(result, spec.modes[0])
    elif spec.kind == "patching":
        g = torch.Generator().manual_seed(spec.seed + 1)
        corrupt = corrupt_copy_keys if spec.corruption == "keys" else corrupt_copy_task
        corrupted, wrong = corrupt(inputs.cpu(), answers.cpu(), g)
        provenance["corruption"] = spec.corruption
        corrupted, wrong = corrupted.to(device), wrong.to(device)
        provenance["corrupted_sha256"] = tensor_hash(corrupted)
        result = patch_scan(
            model, inputs, corrupted, answers, wrong, patch_sites(model, inputs.shape[1])
        )
        fig = plot_patching(result)
    else:
        hook = spec.hook or f"blocks.{len(model.blocks) // 2}.hook_resid_post"
        counts = torch.bincount(answers.cpu())
        if int((counts > 0).sum()) < 2:
            raise ValueError("steering needs examples with at least two different answers")
        a, b = (int(t) for t in counts.argsort(descending=True)[:2])
        direction = steering_direction(model, hook, inputs[answers == a], inputs[answers == b])
        result = steer(model, hook, direction, inputs[answers != a], a, spec.coefficients)
        result["contrast"] = {"positive_answer": a, "negative_answer": b}
        fig = plot_steering(result)
    return write_report(out_dir, spec.kind, fig, {**result, **provenance})
