"""Reverse samplers against CARD's closed forms, per-image seeded noise, and the probability rule."""

import math

import pytest
import torch
from matplotlib.patches import Rectangle

from scripts.diffusion import PriorShiftedDiffusion
from scripts.figures import saliency_figure
from scripts.inferer import DiffMICInferer
from scripts.network import DiffMIC
from scripts.roi import select_windows
from scripts.scheduler import ReverseScheduler
from scripts.uncertainty import label_probabilities, summarize_samples

T = 1000


@pytest.fixture(scope="module")
def diffusion():
    return PriorShiftedDiffusion(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02)


def planted_denoiser(features, y, prior, t):
    """A fixed noise predictor that depends on every input, standing in for the trained denoiser."""
    return 0.3 * y.double() - 0.2 * prior.double() + 1e-3 * t[:, None].double() + features[:, :1].double()


class PlantedDenoiser(torch.nn.Module):
    def forward(self, features, y, prior, t):
        return planted_denoiser(features, y, prior, t)


def planted_network(sampler: dict) -> DiffMIC:
    """A DiffMIC whose sampling head's denoiser is the planted one (no EMA: the head samples)."""
    trunk = {"depth": 10, "stem_kernel": 3, "stem_stride": 1, "stem_max_pool": False}
    guidance = {"global_trunk": trunk, "use_local_stream": False}
    network = DiffMIC(3, 1, guidance=guidance, width=4, encoder={"trunk": trunk}, ema_decay=None, scheduler=sampler)
    network.head.denoiser = PlantedDenoiser()
    return network


def card_schedule():
    """alpha_t, abar_t, abar_{t-1} and beta_t for every t, from the bundle's abar (MONAI's schedule, whose
    float32 rounding test_diffusion checks against CARD's): the tests here check the steps' algebra."""
    abar = PriorShiftedDiffusion(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02).alphas_cumprod
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    alphas = abar / abar_prev
    return alphas, abar, abar_prev, 1 - alphas


def card_posterior(t: int, y_t, prior, eps_hat):
    """Mean and variance of CARD's ancestral step t -> t-1 (its gamma_0, gamma_1, gamma_2 and beta tilde)."""
    alphas, abar, abar_prev, betas = (v[t] for v in card_schedule())
    y0_hat = (y_t - (1 - abar.sqrt()) * prior - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    gamma0 = betas * abar_prev.sqrt() / (1 - abar)
    gamma1 = (1 - abar_prev) * alphas.sqrt() / (1 - abar)
    gamma2 = 1 + (abar.sqrt() - 1) * (alphas.sqrt() + abar_prev.sqrt()) / (1 - abar)
    return gamma0 * y0_hat + gamma1 * y_t + gamma2 * prior, (1 - abar_prev) / (1 - abar) * betas


def card_last_step(y_1, prior, eps_hat):
    """CARD's final step onto y0 (``p_sample_t_1to0``): the noise-free reparameterisation at t = 0."""
    abar0 = card_schedule()[1][0]
    return (y_1 - (1 - abar0.sqrt()) * prior - (1 - abar0).sqrt() * eps_hat) / abar0.sqrt()


def inputs(n=5, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.softmax(torch.randn(n, c, generator=g), 1).double()


def test_ddim_with_eta_1_is_the_ddpm_step_at_every_timestep(diffusion):
    """Over all T steps: the DDIM step (eta = 1, t -> t-1) has the posterior mean and variance of DDPM."""
    features, prior = inputs()
    g, scheduler = torch.Generator().manual_seed(1), ReverseScheduler(diffusion)
    for t in range(1, T):
        y_t = prior + torch.randn(prior.shape, generator=g, dtype=torch.float64)
        eps_hat = planted_denoiser(features, y_t, prior, torch.full((5,), t))
        mean, variance = card_posterior(t, y_t, prior, eps_hat)
        zero, _ = scheduler.step(eps_hat, t, t - 1, y_t, prior, "epsilon", eta=1.0, noise=torch.zeros_like(y_t))
        one, _ = scheduler.step(eps_hat, t, t - 1, y_t, prior, "epsilon", eta=1.0, noise=torch.ones_like(y_t))
        assert torch.allclose(zero, mean, atol=1e-7, rtol=1e-6), f"mean at t={t}"
        assert torch.allclose((one - zero) ** 2, variance.expand_as(one), rtol=1e-6), f"variance at t={t}"


@pytest.mark.parametrize(("name", "steps"), [("truncated", 100), ("truncated", 250), ("ddpm", T)])
def test_ancestral_samplers_reproduce_cards_chain_step_by_step(diffusion, name, steps):
    """``truncated`` (the authors' procedure) and ``ddpm``: y_K = prior + noise, CARD's posterior draw at
    every step with the same noise, the noise-free reparameterisation onto y0 last."""
    features, prior = inputs()
    network = planted_network({"name": name, "steps": steps})
    assert network.scheduler.timesteps == list(range(steps - 1, -1, -1))
    noise = torch.randn(5, 1, network.chain_noise_draws(), 3, generator=torch.Generator().manual_seed(2)).double()
    y0, path = network.sample(features, prior, noise, trajectory=True)
    y0, path, noise = y0[:, 0], [p[:, 0] for p in path], noise[:, 0]
    y = prior + noise[:, 0]
    assert torch.equal(path[0], y)
    for i, t in enumerate(range(steps - 1, 0, -1)):
        eps_hat = planted_denoiser(features, y, prior, torch.full((5,), t))
        mean, variance = card_posterior(t, y, prior, eps_hat)
        y = mean + variance.sqrt() * noise[:, i + 1]
        assert torch.allclose(path[i + 1], y, rtol=1e-9, atol=1e-9), f"step {t} -> {t - 1}"
    y = card_last_step(y, prior, planted_denoiser(features, y, prior, torch.zeros(5)))
    assert torch.allclose(y0, y, rtol=1e-9, atol=1e-9) and len(path) == steps + 1


def test_sampler_settings_are_checked(diffusion):
    with pytest.raises(ValueError, match="unknown sampler 'ddmp'"):
        ReverseScheduler(diffusion, "ddmp")
    with pytest.raises(ValueError, match="eta must be in"):
        ReverseScheduler(diffusion, "ddim", 10, eta=2.0)
    assert ReverseScheduler(diffusion, "ddim", 10).num_draws == 1  # deterministic after the first draw
    assert ReverseScheduler(diffusion, "ddim", 10, eta=0.5).num_draws == 10
    assert ReverseScheduler(diffusion, "ddpm").describe() == {"name": "ddpm", "steps": T, "eta": 1.0}
    with pytest.raises(ValueError, match=r"needs noise of shape \(5, 1, 1, 3\)"):
        planted_network({"name": "ddim"}).sample(*inputs(), torch.zeros(5, 1, 2, 3))


def tiny_network(sampler: dict) -> DiffMIC:
    trunk = {"depth": 10, "stem_kernel": 3, "stem_stride": 1, "stem_max_pool": False}
    guidance = {"global_trunk": trunk, "local_trunk": trunk, "num_rois": 2, "roi_size": 6}
    torch.manual_seed(0)
    return DiffMIC(3, 1, guidance=guidance, width=32, encoder={"trunk": trunk}, scheduler=sampler).eval()


def test_predictions_do_not_depend_on_batch_size_or_order():
    """Noise seeded by (seed, image id): batch of 32, one image at a time and shuffled agree, with
    several samples per image and per-step noise (eta > 0)."""
    network = tiny_network({"name": "ddim", "steps": 4, "eta": 0.5})
    inferer = DiffMICInferer(seed=3, num_samples=3)
    images = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    ids = [f"img_{i}" for i in range(32)]
    with torch.no_grad():
        batched = inferer.outputs(images, network, ids)
        single = [inferer.outputs(images[i : i + 1], network, ids[i : i + 1]) for i in range(32)]
        order = torch.randperm(32, generator=torch.Generator().manual_seed(5))
        shuffled = inferer.outputs(images[order], network, [ids[i] for i in order])
    for key in ("denoised", "probs", "entropy", "agreement"):  # an untrained denoiser reaches hundreds: rtol
        assert torch.allclose(torch.cat([s[key] for s in single]), batched[key], rtol=1e-4, atol=1e-5), key
        assert torch.allclose(shuffled[key], batched[key][order], rtol=1e-4, atol=1e-5), key
    assert not torch.allclose(batched["denoised"][:, 0], batched["denoised"][:, 1])  # samples differ
    other_seed = DiffMICInferer(seed=4, num_samples=3).outputs(images[:4], network, ids[:4])["denoised"]
    assert not torch.allclose(other_seed, batched["denoised"][:4])


class ExportedBeforeTheRename(torch.nn.Module):
    """What an inferer calls on a model.ts of bundle 0.4.0 or earlier: ``noise_draws``, not ``chain_noise_draws``."""

    def __init__(self, network: DiffMIC) -> None:
        super().__init__()
        self.network, self.num_classes = network, network.num_classes

    def noise_draws(self) -> int:
        return self.network.chain_noise_draws()

    def predict(self, images: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.network.predict(images, noise)


def test_the_inferer_runs_a_model_exported_before_chain_noise_draws_was_named():
    network = tiny_network({"name": "ddim", "steps": 4, "eta": 0.5})
    old = ExportedBeforeTheRename(network)
    assert not hasattr(old, "chain_noise_draws")
    inferer = DiffMICInferer(seed=3, num_samples=2)
    images, ids = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(4)), ["a", "b", "c"]
    with torch.no_grad():
        assert torch.equal(inferer.outputs(images, old, ids)["probs"], inferer.outputs(images, network, ids)["probs"])


def test_probability_rule_keeps_the_argmax_and_sums_to_one():
    y = torch.tensor([[1.2, -0.1, 0.3], [-0.2, -0.5, -0.1], [0.0, 0.9, 0.9]])
    p = label_probabilities(y)
    assert torch.allclose(p.sum(1), torch.ones(3)) and (p >= 0).all()
    assert torch.allclose(p[0], torch.tensor([1.2, 0.0, 0.3]) / 1.5)
    assert torch.equal(p[1], torch.tensor([0.0, 0.0, 1.0]))  # no positive entry: one-hot of the argmax
    assert p[0].argmax() == y[0].argmax()


def test_samples_are_summarised_by_mean_vote_agreement_and_entropy():
    samples = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [[0.2, 0.8], [0.2, 0.8], [0.2, 0.8]]])
    out = summarize_samples(samples)
    assert torch.allclose(out["probs"], torch.tensor([[2 / 3, 1 / 3], [0.2, 0.8]]))
    assert out["vote"].tolist() == [0, 1]
    assert torch.allclose(out["agreement"], torch.tensor([2 / 3, 1.0]))
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert out["entropy"][0].item() == pytest.approx(expected)


def test_saliency_figure_draws_the_retrieved_windows():
    """On a planted saliency map with two hot squares, the boxes drawn are the two retrieved windows."""
    heat = torch.zeros(1, 28, 28)
    heat[0, 3:9, 15:21] = 1.0
    heat[0, 18:24, 4:10] = 0.8
    corners = select_windows(heat, num_windows=2, window=6)[0]
    assert sorted(corners.tolist()) == [[3, 15], [18, 4]]
    figure = saliency_figure(torch.zeros(1, 28, 28).numpy(), heat[0].numpy(), corners.numpy(), 6, "planted")
    boxes = [p for p in figure.axes[0].patches if isinstance(p, Rectangle)]
    drawn = sorted([int(b.get_y() + 0.5), int(b.get_x() + 0.5)] for b in boxes)
    assert drawn == sorted(corners.tolist())
    assert all(b.get_width() == b.get_height() == 6 for b in boxes)
