"""Mixed-precision training: one config switch, used on CUDA and ignored on a CPU."""

import contextlib

import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE, DATA_DIR, TINY, bundle_configs, require_data, train_workflow
from scripts.denoiser import ConditionalDenoiser


def test_amp_is_ignored_on_a_cpu(tmp_path):
    require_data("medmnist/breastmnist.npz")
    parser = ConfigParser()
    parser.read_config(bundle_configs("train", "data/breastmnist", "small"))
    parser.update({"amp": True, "device": "$torch.device('cpu')", "data_root": str(DATA_DIR)})
    parser.update({"bundle_root": str(BUNDLE), "output_dir": str(tmp_path / "eval"), "model_dir": str(tmp_path)})
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.amp is False and isinstance(trainer.autocast(), contextlib.nullcontext)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP trains on CUDA only: run this test on a GPU machine")
def test_amp_training_on_cuda_runs_float16_forwards_with_gradient_scaling(tmp_path):
    require_data("medmnist/breastmnist.npz")
    dtypes = []  # of the denoiser's outputs in training

    def record(module, inputs, output):
        if isinstance(module, ConditionalDenoiser) and module.training:
            dtypes.append(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        overrides = dict(TINY, max_epochs=2, warmup_epochs=1, amp=True, progress_bar=False)
        workflow = train_workflow(bundle_configs("train", "data/breastmnist", "small"), tmp_path, **overrides)
    finally:
        hook.remove()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.amp is True and 0 < trainer.scaler.get_scale() < float("inf")
    assert dtypes and all(d == torch.float16 for d in dtypes)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert 0.0 <= workflow.parser.get_parsed_content("validate#evaluator").state.metrics["macro_f1"] <= 1.0
