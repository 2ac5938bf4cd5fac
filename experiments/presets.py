"""Quick-start presets: per task and model, run-form values that learn within about a minute.

The run form's defaults once trained a model that stayed near chance (27 % on associative
recall after 6 minutes). A preset here fills every field the form shows — vocabulary and
sequence length (smaller than the paper's where that keeps the run short, and the label says
so), width, depth, steps, learning rate and batch size — with values measured to reach ≥ 90 %
validation and test accuracy on a 2-core CPU within two minutes (``scripts/measure_presets.py``
writes the measurements to ``docs/presets/``; docs/quickstart.md has the table). The form shows
the label, the demo lab trains with the same presets.

Pure Python (no Django), so the form, the demo and the measuring script share one table.
"""

from __future__ import annotations

from dataclasses import dataclass

from h3lab.config import RunConfig, TaskConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    """What the run form's fields are set to for ``task`` and ``model`` (a model preset).
    ``minutes``: the wall time until validation accuracy first reached 90 %, measured on the
    quiet 2-core CPU with one torch thread (docs/quickstart.md), rounded up."""

    task: str
    model: str
    vocab_size: int
    seq_len: int
    steps: int
    lr: float
    minutes: int
    batch_size: int = 128
    d_model: int = 64
    n_layer: int = 2
    # Not fields of the form: a fresh form submits them with the preset (see ``hidden``).
    weight_decay: float = 1.0
    warmup_steps: int = 100

    @property
    def label(self) -> str:
        return (
            f"quick start: V {self.vocab_size}, L {self.seq_len}, {self.steps:,} steps "
            f"— learns in ~{self.minutes} min"
        )

    def fields(self) -> dict[str, int | float]:
        """The run form's field values."""
        return {
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "d_model": self.d_model,
            "n_layer": self.n_layer,
            "steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
        }

    def hidden(self) -> dict[str, dict[str, float | int]]:
        """Settings the form does not show, as config sections: what a fresh run form (one
        not repeating a run) submits beneath the fields. The SSM parameters' learning rate
        follows the preset's (the CLI's ``--lr`` does the same)."""
        return {
            # The run form has no field for it; without this a fresh form's runs would have
            # no validation split (a config without num_val loads as a legacy one, with 0).
            "task": {"num_val": TaskConfig.num_val},
            "train": {
                "ssm_lr": self.lr,
                "weight_decay": self.weight_decay,
                "warmup_steps": self.warmup_steps,
            },
        }

    def config(
        self, *, seed: int = 0, early_stop_acc: float | None = None, device: str = "auto"
    ) -> RunConfig:
        """The run config the form submits for this preset (the form keeps every other
        setting at its default), optionally with early stopping."""
        return RunConfig.build(
            preset=self.model,
            n_layer=self.n_layer,
            d_model=self.d_model,
            task=TaskConfig(self.task, vocab_size=self.vocab_size, seq_len=self.seq_len, seed=seed),
            train=TrainConfig(
                steps=self.steps,
                lr=self.lr,
                ssm_lr=self.lr,
                weight_decay=self.weight_decay,
                warmup_steps=self.warmup_steps,
                batch_size=self.batch_size,
                seed=seed,
                device=device,
                early_stop_acc=early_stop_acc,
            ),
        )


PRESETS: tuple[Preset, ...] = (
    Preset("associative_recall", "h3", vocab_size=8, seq_len=16, steps=600, lr=2e-3, minutes=1),
    Preset(
        "associative_recall", "attention", vocab_size=8, seq_len=16, steps=1000, lr=3e-3, minutes=1
    ),
    # The paper's induction-head task at the paper's sizes: the mechanism study's H3 setting
    # (docs/interpretability.md) formed the induction mechanism at step ~1,100 of 4,000.
    Preset(
        "induction_head_safari", "h3", vocab_size=20, seq_len=30, steps=1500, lr=2e-3, minutes=2
    ),
    # The paper's associative recall at the paper's sizes: the mechanism study's quick setting
    # (H3 passed 97 % validation accuracy by step 800 there); attention at lr 1e-3 on this
    # 1,500-step schedule stayed at 80 % (docs/presets/candidates/), at 2e-3 it learns.
    Preset(
        "associative_recall_safari",
        "h3",
        vocab_size=10,
        seq_len=20,
        steps=1000,
        lr=2e-3,
        minutes=2,
    ),
    Preset(
        "associative_recall_safari",
        "attention",
        vocab_size=10,
        seq_len=20,
        steps=1500,
        lr=2e-3,
        minutes=1,
    ),
)


def preset_for(task: str, model: str) -> Preset | None:
    """The quick-start preset of ``task`` for ``model``, falling back to the task's H3 preset
    (the form's default model); None for a task without presets."""
    by_key = {(p.task, p.model): p for p in PRESETS}
    return by_key.get((task, model)) or by_key.get((task, "h3"))
