"""Cross-fitted priors (``prior_folds``): the folds, what each DCG copy trains on, the priors the denoiser gets,
an unchanged DCG, and an exact resume."""

import copy
from collections import Counter

import numpy as np
import pytest
import torch
from test_networks import LABELS, tiny_net

from scripts.checkpoint import _inert, resume_training
from scripts.crossfit import FoldGuidance, assign_folds
from scripts.engine import DiffMICTrainer
from scripts.folder_lock import FolderLock

IDS = [f"image{i}" for i in range(6)]
ITEMS = [{"id": i, "label": int(label)} for i, label in zip(IDS, LABELS, strict=True)]
HEADS = ("global", "local", "fused")


def test_folds_are_stratified_reproducible_and_leave_the_global_generators_alone():
    items = [{"id": f"i{n}", "label": n % 3} for n in range(31)]
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    folds = assign_folds(items, 3, seed=0)
    assert torch.equal(torch_state, torch.random.get_rng_state())
    assert np.array_equal(numpy_state, np.random.get_state()[1])
    assert folds == assign_folds(items[::-1], 3, seed=0)  # the datalist's order does not matter
    assert folds != assign_folds(items, 3, seed=1)
    sizes = Counter(folds.values())
    assert sorted(sizes) == [0, 1, 2] and max(sizes.values()) - min(sizes.values()) <= 1
    for label in range(3):  # each class spread over the folds as evenly as it can be
        per_fold = Counter(folds[it["id"]] for it in items if it["label"] == label)
        assert max(per_fold.values()) - min(per_fold.values()) <= 1


def trainer_of(net, images, fold_guidance, **kwargs) -> DiffMICTrainer:
    """A one-batch trainer (no warm-up, Adam 1e-3) whose DCG optimizer also steps the DCG copies, as train.yaml's."""
    params = list(net.dcg.parameters()) + list(fold_guidance.parameters() if fold_guidance else [])
    settings = dict(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{"image": images, "label": LABELS, "id": IDS}],
        network=net,
        optimizer=torch.optim.Adam(net.head.parameters(), 1e-3),
        dcg_optimizer=torch.optim.Adam(params, 1e-3),
        loss_function=torch.nn.CrossEntropyLoss(),
        warmup_epochs=0,
        decollate=False,
        fold_guidance=fold_guidance,
    )
    return DiffMICTrainer(**{**settings, **kwargs})


def test_each_copy_trains_outside_its_fold_and_gives_its_fold_out_of_sample_priors():
    """Copy j steps on the batch's images outside fold j (exactly an Adam step on their cross-entropy); the
    denoiser is conditioned on each image's prior from the copy that did not train on it, in eval mode; and the
    network's own DCG trains exactly as without cross-fitting."""
    torch.manual_seed(0)
    images = torch.randn(6, 1, 24, 24)
    net = tiny_net(in_channels=1, num_classes=2)
    plain = copy.deepcopy(net)
    guidance = FoldGuidance(net.dcg, 2, ITEMS, seed=0)
    start = copy.deepcopy(guidance)
    trainer = trainer_of(net, images, guidance)
    seen = {}
    denoise = trainer._denoise
    trainer._denoise = lambda model, x, labels, priors: seen.update(priors) or denoise(model, x, labels, priors)
    torch.manual_seed(1)
    trainer.run()
    assert float(trainer.state.output["loss_ce_folds"]) > 0

    torch.manual_seed(1)
    trainer_of(plain, images, None).run()
    ours, theirs = net.dcg.state_dict(), plain.dcg.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)

    folds = guidance.folds(IDS, torch.device("cpu"))
    assert sorted(Counter(folds.tolist()).values()) == [3, 3]
    for j in range(2):
        reference = start.copies[j].train()
        optimizer = torch.optim.Adam(reference.parameters(), 1e-3)
        rows = folds != j
        out = reference(images[rows])
        sum(torch.nn.functional.cross_entropy(out[k], LABELS[rows]) for k in HEADS).backward()
        optimizer.step()
        trained = guidance.copies[j].state_dict()
        for key, value in reference.state_dict().items():
            assert torch.allclose(trained[key].float(), value.float(), atol=1e-6), (j, key)
        assert guidance.copies[j].training  # back in train mode after giving its priors
        with torch.no_grad():
            expected = net.priors(copy.deepcopy(guidance.copies[j]).eval()(images[folds == j]))
        for key in HEADS:
            assert torch.allclose(seen[key][folds == j], expected[key], atol=1e-6), (j, key)
    with torch.no_grad():
        own = net.priors(copy.deepcopy(net.dcg).eval()(images))
    assert not torch.allclose(seen["fused"], own["fused"], atol=1e-4)  # not the DCG's own priors


def test_cross_fitting_refuses_what_would_train_wrong():
    net = tiny_net(in_channels=1, num_classes=2)
    images = torch.randn(6, 1, 24, 24)
    with pytest.raises(ValueError, match="prior_folds must be 0 .* or at least 2, got 1"):
        FoldGuidance(net.dcg, 1, ITEMS)
    guidance = FoldGuidance(net.dcg, 2, ITEMS)
    with pytest.raises(ValueError, match="put their parameters in dcg_optimizer"):
        trainer_of(net, images, guidance, dcg_optimizer=torch.optim.Adam(net.dcg.parameters()))
    with pytest.raises(KeyError, match=r"1 training image id\(s\) not in the split .* \['other'\]"):
        guidance.folds(IDS[:-1] + ["other"], torch.device("cpu"))
    no_ids = trainer_of(net, images, guidance, train_data_loader=[{"image": images, "label": LABELS}])
    with pytest.raises(KeyError, match="batch without 'id'"):
        no_ids.run()
    assert not guidance.state_dict() == {} and _inert(FoldGuidance(net.dcg, 0, ITEMS))  # old checkpoints lack none
    assert not _inert(guidance)


def test_a_cross_fitted_training_resumes_to_the_uninterrupted_result(tmp_path):
    """Two epochs in one run, and one epoch, a latest checkpoint, then a resumed second epoch: the same DCG, copies
    and head, exactly."""
    images = torch.randn(6, 1, 24, 24, generator=torch.Generator().manual_seed(0))

    def build(max_epochs: int) -> dict:
        torch.manual_seed(0)
        net = tiny_net(in_channels=1, num_classes=2)
        guidance = FoldGuidance(net.dcg, 2, ITEMS, seed=0)
        trainer = trainer_of(net, images, guidance, max_epochs=max_epochs, seed=0)
        return {
            "network": net,
            "fold_guidance": guidance,
            "optimizer": trainer.optimizer,
            "dcg_optimizer": trainer.dcg_optimizer,
            "trainer": trainer,
        }

    whole = build(2)
    whole["trainer"].run()
    first = build(1)
    first["trainer"].run()
    models = tmp_path / "models"
    models.mkdir()
    torch.save({k: v.state_dict() for k, v in first.items()}, models / "latest_checkpoint_epoch=1.pt")
    resumed = build(2)
    assert resume_training(resumed["trainer"], resumed, str(models), resume=True).endswith("epoch=1.pt")
    resumed["trainer"].run()
    FolderLock(str(models)).release()
    assert resumed["trainer"].state.epoch == 2
    for name in ("network", "fold_guidance"):
        ours, theirs = resumed[name].state_dict(), whole[name].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
