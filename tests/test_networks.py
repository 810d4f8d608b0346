"""Shapes of every network, ImageNet key mapping, and what each ablation variant lacks."""

import pytest
import torch
from ignite.engine import Events
from monai.engines import IterationEvents

from scripts.backbone import ResNetTrunk, load_backbone_weights
from scripts.engine import DiffMICEvaluator, DiffMICTrainer
from scripts.inferer import DiffMICInferer
from scripts.network import DiffMIC
from scripts.variants import VARIANTS

SMALL_STEM = {"stem_kernel": 3, "stem_stride": 1, "stem_max_pool": False}


def tiny_net(in_channels=3, num_classes=4, use_diffusion=True, use_local_stream=True, prediction_type="epsilon"):
    trunk = {"depth": 10, **SMALL_STEM}
    return DiffMIC(
        num_classes,
        in_channels,
        guidance={
            "global_trunk": trunk,
            "local_trunk": trunk,
            "use_local_stream": use_local_stream,
            "num_rois": 2,
            "roi_size": 8,
        },
        use_diffusion=use_diffusion,
        width=32,
        encoder={"trunk": trunk},
        diffusion={"prediction_type": prediction_type},
        ema_decay=0.9,
        scheduler={"name": "ddim", "steps": 3},
    )


@pytest.mark.parametrize("in_channels", [1, 3])
def test_shapes_of_every_network(in_channels):
    net = tiny_net(in_channels).eval()
    x = torch.randn(5, in_channels, 24, 24)
    guidance = net.dcg(x)
    assert guidance["global"].shape == guidance["local"].shape == guidance["fused"].shape == (5, 4)
    assert guidance["rois"].shape == (5, 2, 2) and guidance["attention"].shape == (5, 2)
    assert torch.allclose(guidance["attention"].sum(1), torch.ones(5))
    features = net.head.encoder(x)
    assert features.shape == (5, 32)
    eps = net.head.denoiser(features, torch.randn(5, 4), torch.rand(5, 4), torch.randint(0, 1000, (5,)))
    assert eps.shape == (5, 4)
    with torch.no_grad():
        out = net.predict(x, torch.randn(5, 2, net.chain_noise_draws(), 4))
        denoised = net(x)
    assert out["denoised"].shape == (5, 2, 4) and out["fused"].shape == (5, 4) and denoised.shape == (5, 4)
    assert not torch.allclose(denoised, out["fused"])  # the output is the denoised vector, not the prior


def test_torchvision_weights_map_onto_the_trunk(tmp_path):
    """A synthetic torchvision-format ResNet-18 state dict (same names and shapes) loads one to one."""
    source = ResNetTrunk(depth=18, in_channels=3)
    torchvision_like = {
        k.removeprefix("resnet."): v.clone().normal_() if v.is_floating_point() else v
        for k, v in source.state_dict().items()
    }
    torchvision_like["fc.weight"] = torch.zeros(1000, 512)
    torchvision_like["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(torchvision_like, path)

    rgb = load_backbone_weights(ResNetTrunk(depth=18, in_channels=3), str(path), "torchvision")
    assert torch.equal(rgb.resnet.layer2[0].downsample[0].weight, torchvision_like["layer2.0.downsample.0.weight"])
    grey = load_backbone_weights(ResNetTrunk(depth=18, in_channels=1), str(path), "torchvision")
    assert torch.allclose(grey.resnet.conv1.weight, torchvision_like["conv1.weight"].sum(1, keepdim=True))
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth does not match"):
        load_backbone_weights(ResNetTrunk(depth=18), str(tmp_path / "partial.pth"), "torchvision")


LABELS = torch.tensor([0, 1, 0, 1, 1, 0])


def one_iteration(variant: str, prediction_type: str = "epsilon", head_forward=None) -> dict:
    """One joint-training iteration of an ablation variant (optionally with a planted head); the trainer's output."""
    parts = VARIANTS[variant]
    net = tiny_net(
        in_channels=1,
        num_classes=2,
        use_diffusion=parts.use_diffusion,
        use_local_stream=parts.use_local_stream,
        prediction_type=prediction_type,
    )
    if head_forward is not None:
        net.head.forward = lambda *args: head_forward(net.head, *args)
    batch = {"image": torch.randn(6, 1, 24, 24), "label": LABELS}
    head_params = net.head.parameters() if net.use_diffusion else [torch.zeros(1, requires_grad=True)]
    trainer = DiffMICTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[batch],
        network=net,
        optimizer=torch.optim.Adam(head_params, 1e-3),
        dcg_optimizer=torch.optim.Adam(net.dcg.parameters(), 1e-3),
        loss_function=torch.nn.CrossEntropyLoss(),
        warmup_epochs=0,
        noise_draws=2,
        mmd_weight=0.5 if parts.use_mmd else 0.0,
        decollate=False,
    )
    trainer.run()
    return {"net": net, "output": trainer.state.output}


def test_basic_has_no_diffusion():
    run = one_iteration("basic")
    assert not hasattr(run["net"], "head") and not hasattr(run["net"], "diffusion")
    assert "loss_noise" not in run["output"]


def test_c1_has_no_local_stream_parameters():
    run = one_iteration("C1")
    names = [n for n, _ in run["net"].named_parameters()]
    assert not any(n.startswith(("dcg.local", "dcg.mil")) for n in names)
    assert "loss_noise" in run["output"]


def test_c2_has_no_mmd_term_and_full_has_one():
    c2 = one_iteration("C2")["output"]
    assert float(c2["loss_mmd"]) == 0.0
    assert torch.isclose(c2["loss"], c2["loss_ce"] + c2["loss_noise"])
    full = one_iteration("full")["output"]
    assert float(full["loss_mmd"]) > 0.0
    assert torch.isclose(full["loss"], full["loss_ce"] + full["loss_noise"] + 0.5 * full["loss_mmd"])


def test_dcg_epochs_fixes_the_prior_after_them_while_the_denoiser_trains():
    """dcg_epochs: 2 of 3 epochs (warm-up 1): epoch 3 leaves the DCG's weights and BatchNorm statistics as they
    were and trains the denoiser on the eval-mode priors that validation sees."""
    net = tiny_net(in_channels=1, num_classes=2)
    batch = {"image": torch.randn(6, 1, 24, 24), "label": LABELS}
    trainer = DiffMICTrainer(
        device="cpu",
        max_epochs=3,
        train_data_loader=[batch],
        network=net,
        optimizer=torch.optim.Adam(net.head.parameters(), 1e-3),
        dcg_optimizer=torch.optim.Adam(net.dcg.parameters(), 1e-3),
        loss_function=torch.nn.CrossEntropyLoss(),
        warmup_epochs=1,
        dcg_epochs=2,
        decollate=False,
    )
    states = {}

    def snapshot(engine):
        states[engine.state.epoch] = {
            "dcg": {k: v.clone() for k, v in net.dcg.state_dict().items()},
            "head": {k: v.clone() for k, v in net.head.state_dict().items()},
            "output": engine.state.output,
        }

    trainer.add_event_handler(Events.EPOCH_COMPLETED, snapshot)
    trainer.run()
    changed = {
        e: [k for k in states[e]["dcg"] if not torch.equal(states[e]["dcg"][k], states[e - 1]["dcg"][k])]
        for e in (2, 3)
    }
    assert changed[2] and not changed[3]  # epoch 2 trained the DCG, epoch 3 did not touch it
    head_changed = [k for k in states[3]["head"] if not torch.equal(states[3]["head"][k], states[2]["head"][k])]
    assert head_changed  # the denoiser still trains
    assert states[2]["output"]["lr_dcg"] == 1e-3 and states[3]["output"]["lr_dcg"] == 0.0
    assert "loss_ce" not in states[3]["output"] and float(states[3]["output"]["loss_noise"]) > 0
    with torch.no_grad():  # the priors it trained on: those of the DCG in eval mode
        expected = torch.softmax(net.dcg.eval()(batch["image"])["fused"], dim=1)
    assert torch.allclose(torch.softmax(states[3]["output"]["pred"], dim=1), expected)

    with pytest.raises(ValueError, match=r"dcg_epochs \(1\) must be at least warmup_epochs \(2\)"):
        DiffMICTrainer(
            device="cpu",
            max_epochs=3,
            train_data_loader=[batch],
            network=net,
            optimizer=torch.optim.Adam(net.head.parameters()),
            dcg_optimizer=torch.optim.Adam(net.dcg.parameters()),
            loss_function=torch.nn.CrossEntropyLoss(),
            warmup_epochs=2,
            dcg_epochs=1,
        )


def one_batch_trainer(net: DiffMIC, images: torch.Tensor, **kwargs) -> DiffMICTrainer:
    """A trainer of ``net`` on one batch of ``images`` with LABELS, no warm-up, Adam 1e-3 for both optimizers."""
    settings = dict(device="cpu", max_epochs=1, train_data_loader=[{"image": images, "label": LABELS}], network=net)
    settings.update(optimizer=torch.optim.Adam(net.head.parameters(), 1e-3), warmup_epochs=0, decollate=False)
    settings.update(
        dcg_optimizer=torch.optim.Adam(net.dcg.parameters(), 1e-3), loss_function=torch.nn.CrossEntropyLoss()
    )
    return DiffMICTrainer(**{**settings, **kwargs})


def test_eval_prior_mode_trains_the_denoiser_on_the_priors_validation_sees():
    """prior_mode eval: after the DCG's step, the denoiser is conditioned on the DCG's eval-mode priors (running
    BatchNorm statistics, no gradient), not on the training forward's; train mode: the training forward's."""
    batch = {"image": torch.randn(6, 1, 24, 24), "label": LABELS}
    seen = {}
    for mode in ("train", "eval"):
        torch.manual_seed(0)
        net = tiny_net(in_channels=1, num_classes=2)
        trainer = one_batch_trainer(net, batch["image"], prior_mode=mode)
        denoise = trainer._denoise
        trainer._denoise = lambda model, images, labels, priors, m=mode, f=denoise: (
            seen.__setitem__(m, {k: v.clone() for k, v in priors.items()}) or f(model, images, labels, priors)
        )
        trainer.run()
        assert net.dcg.training  # back in train mode for the next step
        with torch.no_grad():  # the DCG after this iteration's step, in eval mode
            expected = net.priors(net.dcg.eval()(batch["image"]))
        matches = {k: torch.allclose(seen[mode][k], expected[k], atol=1e-6) for k in expected}
        assert all(matches.values()) if mode == "eval" else not any(matches.values()), (mode, matches)
    with pytest.raises(ValueError, match="prior_mode must be 'train' or 'eval'"):
        one_batch_trainer(net, batch["image"], prior_mode="eval_mode")


def test_prior_error_weight_and_dcg_loss_terms():
    """prior_error_weight w weights an image's denoising error by 1 + w (1 - p_prior(true class)): 1 where the prior
    is sure and right, 1 + w where it gives the true class nothing; dcg_loss_terms picks the DCG's cross-entropy."""
    net = tiny_net(in_channels=1, num_classes=2)
    images = torch.randn(6, 1, 24, 24)

    def trainer(**kwargs) -> DiffMICTrainer:
        return one_batch_trainer(net, images, noise_draws=2, mmd_weight=0.0, **kwargs)

    def loss_noise(weight: float, prior: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # the same (t, eps) draws for each
        one = trainer(prior_error_weight=weight)
        rows = one._denoise(net, images, LABELS, {k: prior for k in ("fused", "global", "local")})
        assert torch.equal(rows["labels"], LABELS.repeat(2)) and torch.equal(rows["prior"], prior.repeat(2, 1))
        return one.diffusion_loss(**rows)["loss_noise"]

    sure = torch.nn.functional.one_hot(LABELS, 2).float()
    assert torch.isclose(loss_noise(10.0, sure), loss_noise(0.0, sure))
    assert torch.isclose(loss_noise(10.0, 1.0 - sure), 11.0 * loss_noise(0.0, 1.0 - sure))

    with torch.no_grad():
        logits = net.dcg.train()(images)
    fused_only = trainer(dcg_loss_terms=["fused"])
    fused_only.run()
    expected = torch.nn.functional.cross_entropy(logits["fused"], LABELS)
    assert torch.isclose(fused_only.state.output["loss_ce"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="dcg_loss_terms must list some of global, local and fused"):
        trainer(dcg_loss_terms=["fusion"])


def test_handlers_on_monai_iteration_events_run_at_each_step_of_both_stages():
    """As in MONAI's SupervisedTrainer, each step fires FORWARD_COMPLETED (output: image, label, pred),
    LOSS_COMPLETED (output: the loss and its terms) and BACKWARD_COMPLETED (before the optimizer step), and
    each iteration MODEL_COMPLETED after its steps. Epoch 1 (warm-up): the DCG's step; 2 (joint): the DCG's,
    then the denoiser's; 3 (DCG fixed by dcg_epochs): the denoiser's."""
    torch.manual_seed(0)
    net = tiny_net(in_channels=1, num_classes=2)
    trainer = one_batch_trainer(net, torch.randn(6, 1, 24, 24), max_epochs=3, warmup_epochs=1, dcg_epochs=2)
    names = {"FORWARD_COMPLETED": "F", "LOSS_COMPLETED": "L", "BACKWARD_COMPLETED": "B", "MODEL_COMPLETED": "M"}
    seen = {1: [], 2: [], 3: []}

    def record(engine, name):
        weights = net.dcg.saliency.weight.clone(), net.head.denoiser.output.weight.clone()
        seen[engine.state.epoch].append((name, dict(engine.state.output), weights))

    for event, name in names.items():
        trainer.add_event_handler(getattr(IterationEvents, event), record, name)
    trainer.run()

    assert ["".join(name for name, _, _ in seen[e]) for e in (1, 2, 3)] == ["FLBM", "FLBFLBM", "FLBM"]
    for epoch, calls in seen.items():
        dcg_step = epoch < 3
        if dcg_step:  # the DCG step's forward: what MONAI's trainer holds then
            assert list(calls[0][1]) == ["image", "label", "pred"]
        for (name, output, weights), (_, _, after) in zip(calls, calls[1:], strict=False):
            assert {"image", "label", "pred"} <= set(output)
            if name == "L":
                assert torch.isfinite(output["loss"])
            if name == "B":  # gradients computed, step not yet taken: the next event sees the stepped module
                stepped = 0 if dcg_step and "loss_noise" not in output else 1
                assert not torch.equal(weights[stepped], after[stepped]) and torch.equal(
                    weights[1 - stepped], after[1 - stepped]
                )
    losses = {e: [output for name, output, _ in calls if name == "L"] for e, calls in seen.items()}
    assert torch.equal(losses[1][0]["loss"], losses[1][0]["loss_ce"])
    joint = losses[2][1]
    assert torch.equal(losses[2][0]["loss"], joint["loss_ce"]) and float(joint["loss_noise"]) > 0
    assert torch.isclose(joint["loss"], joint["loss_ce"] + joint["loss_noise"] + 0.5 * joint["loss_mmd"])
    fixed = losses[3][0]
    assert "loss_ce" not in fixed and torch.isclose(fixed["loss"], fixed["loss_noise"] + 0.5 * fixed["loss_mmd"])


def test_the_evaluator_fires_forward_and_model_completed_as_monais_does():
    net = tiny_net(in_channels=1, num_classes=2).eval()
    batch = {"image": torch.randn(3, 1, 24, 24), "label": LABELS[:3], "id": ["a", "b", "c"]}
    inferer = DiffMICInferer(seed=0)
    evaluator = DiffMICEvaluator(device="cpu", val_data_loader=[batch], network=net, inferer=inferer, decollate=False)
    seen = []
    for event in (IterationEvents.FORWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):
        evaluator.add_event_handler(event, lambda engine, e=event: seen.append((e, sorted(engine.state.output))))
    evaluator.run()
    assert [e for e, _ in seen] == [IterationEvents.FORWARD_COMPLETED, IterationEvents.MODEL_COMPLETED]
    assert {"image", "label", "pred", "prior", "id"} <= set(seen[0][1])


def test_ema_ramps_up_and_is_used_for_sampling():
    net = tiny_net()  # ema_decay 0.9
    weight = net.head.denoiser.output.weight
    averaged = net.ema.module.denoiser.output.weight
    net.update_ema()  # the first update copies the weights
    assert torch.equal(averaged, weight)
    for n in range(1, 40):
        before = averaged.clone()
        with torch.no_grad():
            weight.add_(1.0)
        net.update_ema()
        decay = min(0.9, (1 + n) / (10 + n))  # ramped: short memory early, `decay` later
        assert torch.allclose(averaged, decay * before + (1 - decay) * weight, atol=1e-5)
    net.eval()  # sampling reads the EMA copy: rho(x) from its encoder, the noise from its denoiser
    images, features, y = torch.randn(2, 3, 24, 24), torch.randn(2, 32), torch.randn(2, 4)
    prior, t = torch.rand(2, 4), torch.tensor([5, 900])
    with torch.no_grad():
        assert torch.equal(net.features(images), net.ema.module.encoder(images))
        sampled = net.denoise(features, y, prior, t)
        assert torch.equal(sampled, net.ema.module.denoiser(features, y, prior, t))
        assert not torch.allclose(sampled, net.head.denoiser(features, y, prior, t))


def test_a_y0_predicting_network_scripts_and_samples_as_in_eager_mode():
    """prediction_type 'sample' reaches the compiled chain: the TorchScript module samples what eager does,
    and a denoiser output read as y0 gives other samples than the same output read as noise."""
    torch.manual_seed(0)
    net = tiny_net(prediction_type="sample").eval()
    images, noise = torch.randn(3, 3, 24, 24), torch.randn(3, 2, net.chain_noise_draws(), 4)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        eager = net.predict(images, noise)["denoised"]
        assert torch.allclose(scripted.predict(images, noise)["denoised"], eager, atol=1e-6)
        net.diffusion.prediction_type = "epsilon"
        assert not torch.allclose(net.predict(images, noise)["denoised"], eager)


def test_a_y0_predicting_denoiser_is_trained_on_the_label():
    """With prediction_type 'sample' the regression and MMD targets are the one-hot labels: a head that outputs
    them exactly has zero noise and MMD losses, which the same head has not when the target is the noise."""

    def perfect_y0(head, images, y_t, prior, t):
        y0 = torch.nn.functional.one_hot(LABELS, 2).float().repeat(y_t.shape[1] // len(LABELS), 1)
        return y0.expand(y_t.shape[0], -1, -1) + 0.0 * next(head.parameters()).sum()  # keeps a gradient path

    sample = one_iteration("full", "sample", perfect_y0)["output"]
    assert float(sample["loss_noise"]) == 0.0 and abs(float(sample["loss_mmd"])) < 1e-6
    epsilon = one_iteration("full", "epsilon", perfect_y0)["output"]
    assert float(epsilon["loss_noise"]) > 0.1 and float(epsilon["loss_mmd"]) > 0.0
