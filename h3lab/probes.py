"""Probes that findings cite: each writes ``<kind>.png``, ``<kind>.svg`` and ``<kind>.json`` to
an output directory and returns the JSON-able dict it wrote.

- :func:`induction_probe` — induction-head scores per attention head on repeated random
  token sequences (Olsson et al. 2022; TransformerLens' tutorial): the *prefix-matching*
  score (attention from a repeated token to the token after its previous occurrence) and the
  *copying* score of the head's OV circuit; plus, for any architecture, next-token accuracy on
  the first vs the repeated half.
- :func:`attention_probe` — attention patterns per head as heatmaps.
- :func:`kernel_probe` — the H3 shift and diagonal SSM kernels (``hook_shift_kernel``,
  ``hook_kernel``) per layer.
- :func:`recall_probe` — associative-recall accuracy at the final query, by the position of
  the queried key's last occurrence.

Activations come from ``LanguageModel.run_with_cache`` hook names, which the JSON records, so
a finding can cite e.g. ``blocks.1.mixer.hook_pattern``. Probes run the model in eval mode
on CPU tensors unless given a device, and draw randomness only from an explicit seed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from h3lab.config import RunConfig
from h3lab.curves import json_safe

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from h3lab.nn.lm import LanguageModel

PROBE_KINDS: tuple[str, ...] = ("induction", "attention", "kernels", "recall")
_PATTERN = re.compile(r"^blocks\.(\d+)\.mixer\.hook_pattern$")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _write(out_dir: Path, kind: str, fig: Figure, data: dict[str, Any]) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json_safe(
        {"probe": kind, **data, "files": [f"{kind}.png", f"{kind}.svg", f"{kind}.json"]}
    )
    fig.savefig(out_dir / f"{kind}.png", dpi=110)
    fig.savefig(out_dir / f"{kind}.svg")
    (out_dir / f"{kind}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


def _pattern_hooks(model: LanguageModel) -> list[tuple[int, str]]:
    """(layer, hook name) of every attention pattern hook."""
    found = [(_PATTERN.match(n), n) for n in model.hook_names()]
    return [(int(m.group(1)), n) for m, n in found if m]


@torch.no_grad()
def _cache(
    model: LanguageModel, ids: torch.Tensor, names: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    was_training = model.training
    model.eval()
    try:
        logits, cache = model.run_with_cache(ids, names)
    finally:
        model.train(was_training)
    return logits.float(), {k: v.float().cpu() for k, v in cache.items()}


def ov_copying_score(model: LanguageModel, layer: int, head: int) -> float | None:
    """Olsson et al.'s copying score Re(Σλ)/Σ|λ| over the eigenvalues λ of the head's full OV
    circuit ``W_E W_V W_O W_U`` (vocab × vocab; LayerNorms and MLPs ignored, as they do).
    Positive near 1: attending to a token raises that token's logit. None when the mixer
    does not expose ``in_proj`` / ``out_proj`` weights."""
    mixer = model.blocks[layer].mixer
    in_proj, out_proj = getattr(mixer, "in_proj", None), getattr(mixer, "out_proj", None)
    hd: int | None = getattr(mixer, "head_dim", None)
    if in_proj is None or out_proj is None or hd is None:
        return None
    d = model.cfg.d_model
    w_v = in_proj.weight[2 * d + head * hd : 2 * d + (head + 1) * hd].double()  # (hd, D)
    w_o = out_proj.weight[:, head * hd : (head + 1) * hd].double()  # (D, hd)
    w_e = model.embed.weight.double()  # (V, D)
    w_u = model.lm_head.weight.double()  # (V, D)
    circuit = w_e @ w_v.T @ w_o.T @ w_u.T  # (V, V): source token -> logit
    eig = torch.linalg.eigvals(circuit)
    denom = eig.abs().sum().item()
    return eig.sum().real.item() / denom if denom > 0 else 0.0


def induction_probe(
    model: LanguageModel,
    out_dir: Path,
    *,
    half_len: int = 32,
    n_seqs: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Induction scores on ``n_seqs`` sequences of ``half_len`` random tokens, each repeated
    once ((B, 2T) tokens). Per attention head: ``prefix_matching`` = mean attention from
    position i ≥ T to i - T + 1; ``copying`` = :func:`ov_copying_score`. For every model:
    next-token accuracy on the first half (chance) vs the repeated half (in-context copying).
    """
    g = torch.Generator().manual_seed(seed)
    t = half_len
    half = torch.randint(model.cfg.vocab_size, (n_seqs, t), generator=g)  # (B, T)
    ids = torch.cat([half, half], dim=1).to(device)  # (B, 2T)
    hooks = _pattern_hooks(model)
    logits, cache = _cache(model, ids, [n for _, n in hooks])  # logits (B, 2T, V)
    correct = (logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean(0).cpu()  # (2T - 1,)
    heads: list[dict[str, Any]] = []
    q = torch.arange(t, 2 * t)  # query positions in the repeated half
    for layer, name in hooks:
        pattern = cache[name]  # (B, nh, 2T, 2T)
        prefix = pattern[:, :, q, q - t + 1].mean(dim=(0, 2))  # (nh,)
        for h in range(pattern.shape[1]):
            heads.append(
                {
                    "layer": layer,
                    "head": h,
                    "hook": name,
                    "prefix_matching": prefix[h].item(),
                    "copying": ov_copying_score(model, layer, h),
                }
            )
    data = {
        "half_len": t,
        "n_seqs": n_seqs,
        "seed": seed,
        "first_half_accuracy": correct[: t - 1].mean().item(),
        "repeated_half_accuracy": correct[t - 1 :].mean().item(),
        "accuracy_by_position": correct.tolist(),
        "heads": heads,
    }
    fig = _figure(10, 3.5)
    ax_pos, ax_heads = fig.subplots(1, 2)
    ax_pos.plot(range(1, 2 * t), correct.numpy())
    ax_pos.axvline(t, color="grey", ls="--", lw=1)
    ax_pos.set(
        xlabel="position",
        ylabel="next-token accuracy",
        ylim=(0, 1.02),
        title="repeated random tokens",
    )
    if heads:
        labels = [f"{r['layer']}.{r['head']}" for r in heads]
        x = torch.arange(len(heads)).numpy()
        ax_heads.bar(x - 0.2, [r["prefix_matching"] for r in heads], 0.4, label="prefix matching")
        ax_heads.bar(x + 0.2, [r["copying"] or 0.0 for r in heads], 0.4, label="copying (OV)")
        ax_heads.set_xticks(x, labels)
        ax_heads.set(xlabel="layer.head", ylim=(-1, 1), title="induction scores per head")
        ax_heads.axhline(0, color="black", lw=0.5)
        ax_heads.legend(fontsize=8)
    else:
        ax_heads.text(0.5, 0.5, "no attention heads", ha="center", va="center")
        ax_heads.set_axis_off()
    return _write(out_dir, "induction", fig, data)


def attention_probe(
    model: LanguageModel, inputs: torch.Tensor, out_dir: Path, *, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Heatmaps of every head's attention pattern on one sequence ``inputs`` (L,). JSON per
    head: mean entropy (nats), previous-token score (mean weight on i - 1) and where the last
    position attends most. Raises ValueError for a model without attention layers."""
    hooks = _pattern_hooks(model)
    if not hooks:
        raise ValueError("the model has no attention layers (no blocks.*.mixer.hook_pattern)")
    ids = inputs.reshape(1, -1).to(device)  # (1, L)
    _, cache = _cache(model, ids, [n for _, n in hooks])
    n_head = cache[hooks[0][1]].shape[1]
    length = ids.shape[1]
    fig = _figure(2.6 * n_head, 2.6 * len(hooks))
    axes = fig.subplots(len(hooks), n_head, squeeze=False)
    heads = []
    for row, (layer, name) in enumerate(hooks):
        pattern = cache[name][0]  # (nh, L, L)
        entropy = -(pattern * pattern.clamp_min(1e-12).log()).sum(-1).mean(-1)  # (nh,)
        prev = pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)  # (nh,)
        for h in range(n_head):
            ax = axes[row, h]
            ax.imshow(pattern[h].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer} head {h}", fontsize=9)
            ax.set_xlabel("key", fontsize=8)
            ax.set_ylabel("query", fontsize=8)
            heads.append(
                {
                    "layer": layer,
                    "head": h,
                    "hook": name,
                    "mean_entropy": entropy[h].item(),
                    "previous_token": prev[h].item(),
                    "last_query_argmax": int(pattern[h, -1].argmax()),
                }
            )
    return _write(
        out_dir, "attention", fig, {"tokens": ids[0].tolist(), "length": length, "heads": heads}
    )


def _effective_length(kernel: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Per channel, the lag by which ``mass`` of Σ|k| has accumulated: (C,) long."""
    cum = kernel.abs().cumsum(-1)  # (C, L)
    total = cum[:, -1:].clamp_min(1e-12)
    return (cum / total < mass).sum(-1)


def kernel_probe(
    model: LanguageModel, out_dir: Path, *, length: int = 64, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Plot every SSM kernel (``hook_kernel``: diagonal SSM (C, L); ``hook_shift_kernel``:
    shift SSM (C, ≤N)) as channel × lag heatmaps with the mean |k| by lag. JSON per hook:
    shape, mean |k| by lag, median effective length (lag holding 90 % of Σ|k|) and, per lag,
    how many channels peak there. Raises ValueError for a model without SSM kernels."""
    names = [
        n
        for n in model.hook_names()
        if n.endswith(("mixer.hook_kernel", "mixer.hook_shift_kernel"))
    ]
    if not names:
        raise ValueError("the model has no SSM kernels (no blocks.*.mixer.hook_kernel)")
    ids = torch.zeros(1, length, dtype=torch.long, device=device)  # kernels ignore the input
    _, cache = _cache(model, ids, names)
    fig = _figure(10, 2.4 * len(names))
    axes = fig.subplots(len(names), 2, squeeze=False)
    kernels = []
    for row, name in enumerate(names):
        k = cache[name]  # (C, L')
        mean_abs = k.abs().mean(0)  # (L',)
        peaks = torch.bincount(k.abs().argmax(-1), minlength=k.shape[1])  # (L',)
        kernels.append(
            {
                "hook": name,
                "kind": "shift" if name.endswith("shift_kernel") else "ssm",
                "shape": list(k.shape),
                "mean_abs_by_lag": mean_abs.tolist(),
                "median_effective_length": int(_effective_length(k).median()),
                "channels_peaking_at_lag": peaks.tolist(),
            }
        )
        lim = k.abs().max().item() or 1.0
        axes[row, 0].imshow(
            k.numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest"
        )
        axes[row, 0].set(title=name, xlabel="lag", ylabel="channel")
        axes[row, 1].plot(mean_abs.numpy())
        axes[row, 1].set(
            title="mean |k| by lag", xlabel="lag", yscale="log" if k.shape[1] > 8 else "linear"
        )
    return _write(out_dir, "kernels", fig, {"length": length, "kernels": kernels})


def recall_probe(
    model: LanguageModel,
    cfg: RunConfig,
    out_dir: Path,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Accuracy at the final query of the associative-recall test set, grouped by the position
    of the queried key's last occurrence (and so by its distance from the query). Raises
    ValueError for other tasks."""
    from h3lab.data.datasets import make_datasets

    if cfg.task.name != "associative_recall":
        raise ValueError(f"the recall probe needs the associative_recall task, not {cfg.task.name}")
    _, test = make_datasets(cfg.task)
    inputs, targets = test.inputs, test.targets  # (N, L)
    length = inputs.shape[1]
    correct = []
    for i in range(0, len(test), batch_size):
        logits, _ = _cache(model, inputs[i : i + batch_size].to(device), [])
        correct.append(logits[:, -1].argmax(-1).cpu() == targets[i : i + batch_size, -1])
    hit = torch.cat(correct).float()  # (N,)
    query = inputs[:, -1:]  # (N, 1)
    pos = torch.arange(length - 1).expand(len(test), -1)  # (N, L - 1)
    last = torch.where(inputs[:, :-1] == query, pos, -1).amax(-1)  # (N,) last key occurrence
    count = torch.bincount(last, minlength=length - 1).double()  # (L - 1,)
    acc = torch.bincount(last, weights=hit.double(), minlength=length - 1) / count.clamp_min(1)
    present = count > 0
    positions = torch.arange(length - 1)[present]
    data = {
        "accuracy": hit.mean().item(),
        "positions": positions.tolist(),
        "distance_from_query": (length - 1 - positions).tolist(),
        "accuracy_by_position": acc[present].tolist(),
        "count_by_position": count[present].long().tolist(),
    }
    fig = _figure(8, 3.2)
    ax = fig.subplots()
    ax.bar(positions.numpy(), acc[present].numpy(), color="tab:blue")
    ax.set(
        xlabel="position of the queried key (last occurrence)",
        ylabel="accuracy at the query",
        ylim=(0, 1.02),
        title=f"associative recall: overall {data['accuracy']:.3f}",
    )
    return _write(out_dir, "recall", fig, data)


def run_probe(
    kind: str,
    model: LanguageModel,
    cfg: RunConfig,
    out_dir: Path,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Run probe ``kind`` (one of :data:`PROBE_KINDS`) with defaults drawn from the run's task."""
    model = model.to(device)
    if kind == "induction":
        return induction_probe(
            model, out_dir, half_len=max(8, cfg.task.seq_len // 2), seed=seed, device=device
        )
    if kind == "attention":
        from h3lab.data.datasets import make_datasets

        _, test = make_datasets(cfg.task)
        return attention_probe(model, test.inputs[0], out_dir, device=device)
    if kind == "kernels":
        return kernel_probe(model, out_dir, length=min(cfg.task.seq_len, 256), device=device)
    if kind == "recall":
        return recall_probe(model, cfg, out_dir, device=device)
    raise ValueError(f"unknown probe {kind!r}; choose from {', '.join(PROBE_KINDS)}")


__all__ = [
    "PROBE_KINDS",
    "attention_probe",
    "induction_probe",
    "kernel_probe",
    "ov_copying_score",
    "recall_probe",
    "run_probe",
]
