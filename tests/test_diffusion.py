"""The prior-shifted diffusion against CARD's closed forms, and the strided DDIM schedule."""

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from scripts.diffusion import PriorShiftedDiffusion
from scripts.scheduler import ReverseScheduler

T = 1000


@pytest.fixture
def diffusion():
    return PriorShiftedDiffusion(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02)


def card_terms(t: int):
    """alpha_t, abar_t, abar_{t-1} and beta_t of CARD's linear schedule (its float32 betas), in float64."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float32).double()
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    return alphas[t], abar[t], abar_prev, betas[t]


def labels_and_prior(n=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.nn.functional.one_hot(torch.randint(0, c, (n,), generator=g), c).float()
    prior = torch.softmax(torch.randn(n, c, generator=g), 1)
    eps = torch.randn(n, c, generator=g)
    return y0, prior, eps


@pytest.mark.parametrize("t", [0, 1, 250, 999])
def test_forward_sample_is_cards(diffusion, t):
    y0, prior, eps = labels_and_prior()
    _, abar, _, _ = card_terms(t)
    y0, prior, eps = y0.double(), prior.double(), eps.double()
    expected = abar.sqrt() * y0 + (1 - abar.sqrt()) * prior + (1 - abar).sqrt() * eps
    got = diffusion.add_noise(y0, prior, eps, torch.full((y0.shape[0],), t))  # float32
    assert torch.allclose(got.double(), expected, atol=1e-5)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_reverse_step_is_cards_posterior(diffusion, t):
    y0, prior, eps = (v.double() for v in labels_and_prior(seed=1))
    alpha, abar, abar_prev, beta = card_terms(t)
    y_t = abar.sqrt() * y0 + (1 - abar.sqrt()) * prior + (1 - abar).sqrt() * eps
    eps_hat = eps + 0.1 * torch.randn(eps.shape, generator=torch.Generator().manual_seed(3)).double()
    y0_hat = (y_t - (1 - abar.sqrt()) * prior - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    gamma0 = beta * abar_prev.sqrt() / (1 - abar)
    gamma1 = (1 - abar_prev) * alpha.sqrt() / (1 - abar)
    gamma2 = 1 + (abar.sqrt() - 1) * (alpha.sqrt() + abar_prev.sqrt()) / (1 - abar)
    mean = gamma0 * y0_hat + gamma1 * y_t + gamma2 * prior
    variance = (1 - abar_prev) / (1 - abar) * beta
    noise = torch.randn(y0.shape, generator=torch.Generator().manual_seed(7))
    expected = mean + variance.sqrt() * noise

    # MONAI's own DDPM step on z = y - prior, with the same noise draw. It runs in float32, where
    # 1 - abar_t cancels at small t, hence the looser tolerance for it alone.
    monai_step = DDPMScheduler(T, clip_sample=False, beta_start=1e-4, beta_end=0.02)
    z_prev, _ = monai_step.step(eps_hat.float(), t, (y_t - prior).float(), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(z_prev.double() + prior, expected, atol=1e-4)

    # the bundle's step with eta=1 onto t-1 is the same ancestral step
    y_prev, y0_pred = ReverseScheduler(diffusion).step(eps_hat, t, t - 1, y_t, prior, "epsilon", eta=1.0, noise=noise)
    assert torch.allclose(y_prev, expected, atol=1e-5)
    assert torch.allclose(y0_pred, y0_hat, atol=1e-5)


def test_monai_ddim_timesteps_mismatch_is_not_inherited(diffusion):
    """MONAI 1.6.1's DDIM steps from 999 to 899 while its schedule's next timestep is 888."""
    steps = ReverseScheduler(diffusion, "ddim", 10).timesteps
    assert steps == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


@pytest.mark.parametrize("k", [1, 10, 50, T])
def test_ddim_with_the_true_noise_lands_on_every_marginal(diffusion, k):
    """With the predictor returning the eps that produced z_T, each deterministic step lands on
    sqrt(abar_next) z0 + sqrt(1 - abar_next) eps and the chain ends at y0."""
    y0, prior, eps = (v.double() for v in labels_and_prior(n=8, c=5, seed=2))
    abar, scheduler = diffusion.alphas_cumprod, ReverseScheduler(diffusion, "ddim", k)
    steps = scheduler.timesteps
    y = abar[steps[0]].sqrt() * (y0 - prior) + (1 - abar[steps[0]]).sqrt() * eps + prior
    for i, t in enumerate(steps):
        t_next = steps[i + 1] if i + 1 < len(steps) else -1
        y, _ = scheduler.step(eps, t, t_next, y, prior, "epsilon", eta=0.0)
        a_next = abar[t_next] if t_next >= 0 else torch.tensor(1.0, dtype=torch.float64)
        expected = a_next.sqrt() * (y0 - prior) + (1 - a_next).sqrt() * eps + prior
        assert torch.allclose(y, expected, atol=1e-5), f"step {t} -> {t_next}"
    assert torch.allclose(y, y0, atol=1e-5)


@pytest.mark.parametrize("k", [1, 10, T])
def test_a_denoiser_predicting_y0_exactly_lands_on_y0_and_steps_as_its_implied_noise(k):
    """prediction_type 'sample': the step reads the output as y0. A perfect y0 predictor ends every chain at y0,
    and each step equals the epsilon step with the noise that the predicted y0 implies."""
    eps_diffusion = PriorShiftedDiffusion(num_train_timesteps=T)
    diffusion = PriorShiftedDiffusion(num_train_timesteps=T, prediction_type="sample")
    y0, prior, eps = (v.double() for v in labels_and_prior(n=8, c=5, seed=3))
    assert torch.equal(diffusion.target(y0, eps), y0) and torch.equal(eps_diffusion.target(y0, eps), eps)
    abar, scheduler = diffusion.alphas_cumprod, ReverseScheduler(diffusion, "ddim", k)
    steps = scheduler.timesteps
    y = prior + torch.randn(y0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y0_guess = torch.softmax(torch.randn(y0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64), 1)
    for i, t in enumerate(steps):
        t_next = steps[i + 1] if i + 1 < len(steps) else -1
        implied = (y - prior - abar[t].sqrt() * (y0_guess - prior)) / (1 - abar[t]).sqrt()
        noise = torch.randn(y0.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        stepped, y0_hat = scheduler.step(y0_guess, t, t_next, y, prior, "sample", eta=1.0, noise=noise)
        assert torch.allclose(y0_hat, y0_guess, atol=1e-9)
        assert torch.allclose(stepped, scheduler.step(implied, t, t_next, y, prior, "epsilon", eta=1.0, noise=noise)[0])
        y, _ = scheduler.step(y0, t, t_next, y, prior, "sample", eta=0.0)  # the perfect predictor
    assert torch.allclose(y, y0, atol=1e-9)


def test_an_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type 'v'"):
        PriorShiftedDiffusion(prediction_type="v")
