"""Guards for the private Lightning APIs lit_vision relies on: they fail loudly when Lightning changes.

Each has no public equivalent in the Lightning version we test; where it is used says why.
"""

from __future__ import annotations

import inspect

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy


def test_tensorboard_default_hp_metric(tmp_path) -> None:
    # insight.py turns off the -1 hp_metric placeholder after the logger was built.
    logger = TensorBoardLogger(tmp_path)
    assert logger._default_hp_metric is True
    assert TensorBoardLogger(tmp_path, default_hp_metric=False)._default_hp_metric is False


def test_model_checkpoint_last_global_step_saved() -> None:
    # resume.py refreshes last.ckpt at epoch end unless the callback saved at this step.
    assert ModelCheckpoint()._last_global_step_saved == 0
    assert "_last_global_step_saved = trainer.global_step" in inspect.getsource(
        ModelCheckpoint._save_checkpoint
    )


def test_fit_loop_batch_progress_in_checkpoints() -> None:
    # resume.py reads the optimizer steps done in the epoch from a checkpoint's loop state.
    state = L.Trainer(logger=False, enable_checkpointing=False).fit_loop.state_dict()
    assert "processed" in state["epoch_loop.batch_progress"]["current"]


def test_ddp_strategy_ddp_kwargs() -> None:
    # finetune.py (FreezeSchedule.setup) sets find_unused_parameters before DDP wraps the model.
    strategy = DDPStrategy(find_unused_parameters=True)
    assert strategy._ddp_kwargs == {"find_unused_parameters": True}


def test_lightning_module_jit_is_scripting() -> None:
    # export.py sets it while scripting, as LightningModule.to_torchscript does.
    assert L.LightningModule()._jit_is_scripting is False
    assert "_jit_is_scripting" in inspect.getsource(L.LightningModule.to_torchscript)
