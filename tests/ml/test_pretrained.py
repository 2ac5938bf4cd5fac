"""Exported models load without training state; HazyResearch/H3 checkpoints convert safely."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch

from h3lab.__main__ import main
from h3lab.checkpoint import from_pretrained, save_pretrained
from h3lab.config import RunConfig, TaskConfig, TrainConfig
from h3lab.nn.lm import LanguageModel
from h3lab.train import train
from tests.ml.test_reference import reference_lm_forward, reference_lm_state_dict

TASK = TaskConfig(
    name="induction_head_safari", vocab_size=8, seq_len=8, num_train=64, num_test=16, num_val=16
)


def _trained(tmp_path: Path) -> Path:
    cfg = RunConfig.build(
        preset="h3",
        d_model=16,
        d_state=8,
        task=TASK,
        train=TrainConfig(steps=4, batch_size=8, eval_every=2, device="cpu"),
    )
    train(cfg, tmp_path / "run")
    return tmp_path / "run"


def test_an_export_holds_weights_config_and_card_and_loads_without_training_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _trained(tmp_path)
    out = tmp_path / "model"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert "from_pretrained" in (out / "README.md").read_text()
    model, _, task = from_pretrained(out)
    trained, _, _ = from_pretrained(run)  # a training checkpoint loads the same way
    ids = torch.randint(0, 8, (2, 9))
    torch.testing.assert_close(model(ids), trained(ids), rtol=0, atol=0)
    assert task == TASK and isinstance(model, LanguageModel) and not model.training
    # eval and generate work on the export alone (no optimizer.safetensors, no state.json).
    assert main(["eval", "--checkpoint", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 16
    assert (
        main(["generate", "--checkpoint", str(out), "--prompt", "1 2 7", "--max-new-tokens", "2"])
        == 0
    )
    assert len(capsys.readouterr().out.split()) == 5


def test_the_validation_selected_weights_are_an_export(tmp_path: Path) -> None:
    run = _trained(tmp_path)
    model, _, task = from_pretrained(run / "selected")
    data = json.loads((run / "selected" / "config.json").read_text())
    assert data["source"]["selected_on"] == "val" and task == TASK
    assert isinstance(model, LanguageModel)


def test_import_h3_converts_a_reference_checkpoint_to_an_export_with_the_same_forward(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mixers = ["h3", "attn", "h3"]
    sd = reference_lm_state_dict(mixers, 2, torch.Generator().manual_seed(7))
    ckpt = tmp_path / "model.pt"
    # A PyTorch-Lightning style file, as some of the released checkpoints are.
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, ckpt)
    out = tmp_path / "h3"
    assert main(["import-h3", str(ckpt), "--out", str(out), "--n-head", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["mixers"] == mixers
    model, model_cfg, task = from_pretrained(out)
    assert task is None and model_cfg.head_dim == 2
    ids = torch.randint(0, 11, (2, 7))
    want = reference_lm_forward(sd, ids, mixers, n_head=2, head_dim=2)
    assert float((model(ids).detach() - want).abs().max()) <= 1e-5 * float(want.abs().max())
    # With no task recorded, eval asks for data instead of guessing.
    assert main(["eval", "--checkpoint", str(out)]) == 2
    assert "--data" in capsys.readouterr().err


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_import_h3_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    bad = tmp_path / "evil.pt"
    with bad.open("wb") as f:
        pickle.dump({"backbone.embeddings.word_embeddings.weight": _Boom()}, f)
    with pytest.raises(pickle.UnpicklingError):
        from h3lab.nn.reference_weights import import_reference_checkpoint

        import_reference_checkpoint(bad)


def test_save_pretrained_round_trips_a_model_built_from_scratch(tmp_path: Path) -> None:
    from h3lab.nn.config import LMConfig

    cfg = LMConfig(vocab_size=9, d_model=8, mixers=("gss", "attn"), n_head=2, d_state=4)
    model = LanguageModel(cfg, torch.Generator().manual_seed(0)).eval()
    save_pretrained(tmp_path / "m", model, cfg)
    back, back_cfg, task = from_pretrained(tmp_path / "m")
    assert back_cfg == cfg and task is None
    ids = torch.randint(0, 9, (1, 5))
    torch.testing.assert_close(back(ids), model(ids), rtol=0, atol=0)


def test_early_stopping_and_selection_read_validation_and_legacy_configs_read_test(
    tmp_path: Path,
) -> None:
    base = RunConfig.build(
        preset="attention",
        d_model=16,
        n_head=2,
        task=TASK,
        train=TrainConfig(steps=20, batch_size=8, eval_every=2, device="cpu"),
    )
    # Accuracy ≥ 0 always holds (a threshold validation would refuse, set here directly), so
    # the run stops after `early_stop_patience` (2) evaluations — on whichever split decides.
    cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, early_stop_acc=0.0))
    result = train(cfg, tmp_path / "new")
    assert result.status == "early_stopped" and result.step == 4  # patience 2, every 2 steps
    assert result.selected_on == "val"
    assert "early stop at step 4: val accuracy" in (tmp_path / "new" / "train.log").read_text()
    # A config stored before the validation split existed has none, and decides on test.
    stored = base.to_dict()
    del stored["task"]["num_val"]
    legacy = RunConfig.from_dict(stored)
    assert legacy.task.num_val == 0
    result = train(legacy, tmp_path / "old")
    assert result.selected_on == "test" and not (tmp_path / "old" / "selected").exists()
