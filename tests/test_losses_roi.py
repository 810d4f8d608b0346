"""MMD and ROI retrieval."""

import pytest
import torch

from scripts.losses import DiffMICLoss, rbf_mmd
from scripts.roi import crop_windows, normalized_saliency, select_windows


def test_mmd_zero_for_identical_and_grows_with_separation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    assert rbf_mmd(x, x).abs() < 1e-6
    y = torch.randn(64, 3, generator=g)
    values = [float(rbf_mmd(x, y + shift, (0.5, 1.0, 2.0))) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(v >= 0 for v in values)
    assert values == sorted(values) and values[-1] > values[0] + 0.1


def test_the_authors_mmd_kernel_is_the_rbf_kernel_with_bandwidth_classes_over_root_two():
    """benchmarks/settings/y0_authors_mmd.yaml: the authors' kernel exp(-mean_d((a - b)^2) / D) over D label
    dimensions equals the RBF kernel of bandwidth D / sqrt(2), so their MMD is rbf_mmd with that bandwidth."""
    g = torch.Generator().manual_seed(0)
    for classes in (2, 5, 7):
        x, y = torch.randn(16, classes, generator=g), torch.randn(12, classes, generator=g) + 0.5

        def kernel(a, b, d=classes):
            return torch.exp(-(a[:, None, :] - b[None, :, :]).pow(2).mean(2) / d)

        authors = kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()
        assert torch.isclose(rbf_mmd(x, y, (classes / 2**0.5,)), authors, atol=1e-6)


def test_windows_take_the_planted_hot_spots_in_bounds_without_overlap():
    heat = torch.zeros(2, 32, 32)
    planted = [(2, 3), (20, 18), (10, 24)]
    for r, c in planted:
        heat[:, r : r + 6, c : c + 6] = 1.0 + r / 100  # distinct, so the order is known
    corners = select_windows(heat, num_windows=3, window=6)
    assert corners.shape == (2, 3, 2)
    assert sorted(map(tuple, corners[0].tolist())) == sorted(planted)
    for b in range(2):
        boxes = corners[b].tolist()
        for i, (r1, c1) in enumerate(boxes):
            assert 0 <= r1 <= 32 - 6 and 0 <= c1 <= 32 - 6
            for r2, c2 in boxes[i + 1 :]:
                assert abs(r1 - r2) >= 6 or abs(c1 - c2) >= 6, "windows overlap"


def test_more_windows_than_fit_still_returns_k():
    corners = select_windows(torch.rand(1, 8, 8), num_windows=5, window=4)
    assert corners.shape == (1, 5, 2)


def test_crops_are_the_image_pixels_of_every_channel():
    images = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    corners = torch.tensor([[[1, 2], [5, 5]], [[0, 0], [6, 3]]])
    crops = crop_windows(images, corners, 4)
    assert crops.shape == (2, 2, 3, 4, 4)
    assert torch.equal(crops[1, 1], images[1, :, 6:10, 3:7])
    assert torch.equal(crops[0, 0], images[0, :, 1:5, 2:6])


def test_saliency_is_normalised_per_class_then_summed():
    saliency = torch.stack([torch.arange(4.0).view(2, 2), 10 * torch.arange(4.0).view(2, 2)])[None]
    heat = normalized_saliency(saliency, (2, 2))
    assert torch.allclose(heat[0], 2 * torch.arange(4.0).view(2, 2) / 3)


def test_diffmic_loss_sums_its_terms_and_weights_rows_by_the_prior_miss():
    """loss = loss_noise + mmd_weight * loss_mmd; the MMD terms read the global and local streams, so without them
    the loss needs the fused stream only; prior_error_weight w weighs a row's error 1 + w (1 - p_prior(true))."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(8, 3, generator=g)
    predicted = {k: torch.randn(8, 3, generator=g) for k in ("fused", "global", "local")}
    full = DiffMICLoss(mmd_weight=0.5, mmd_bandwidths=(0.5, 2.0))
    terms = full(predicted, target)
    assert full.streams == ("fused", "global", "local")
    assert torch.isclose(terms["loss_noise"], torch.nn.functional.mse_loss(predicted["fused"], target))
    mmd = rbf_mmd(target, predicted["global"], (0.5, 2.0)) + rbf_mmd(target, predicted["local"], (0.5, 2.0))
    assert torch.isclose(terms["loss_mmd"], mmd) and torch.isclose(terms["loss"], terms["loss_noise"] + 0.5 * mmd)

    no_mmd = DiffMICLoss(mmd_weight=0.0)
    assert no_mmd.streams == ("fused",)
    terms = no_mmd({"fused": predicted["fused"]}, target)
    assert float(terms["loss_mmd"]) == 0.0 and torch.equal(terms["loss"], terms["loss_noise"])

    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    sure = torch.nn.functional.one_hot(labels, 3).float()
    weighted = DiffMICLoss(mmd_weight=0.0, prior_error_weight=10.0)
    plain = no_mmd.denoising_error(predicted["fused"], target)
    assert torch.isclose(weighted.denoising_error(predicted["fused"], target, sure, labels), plain)
    assert torch.isclose(weighted.denoising_error(predicted["fused"], target, 1.0 - sure, labels), 11.0 * plain)
    with pytest.raises(ValueError, match="pass prior and labels"):
        weighted({"fused": predicted["fused"]}, target)
