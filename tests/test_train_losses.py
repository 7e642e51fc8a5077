"""Losses: each against a reference or a hand computation; the boundary weight map by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.losses import boundary_weight_map, ce_dice_loss, class_balance_weights, cross_entropy, dice_loss, min_snr_weights


def test_cross_entropy_with_class_weights_matches_torch():
    logits, target = torch.randn(2, 3, 5, 4), torch.randint(0, 3, (2, 5, 4))
    weights = torch.tensor([0.2, 1.0, 3.0])
    assert torch.allclose(cross_entropy(logits, target), F.cross_entropy(logits, target))
    assert torch.allclose(cross_entropy(logits, target, weights), F.cross_entropy(logits, target, weight=weights))


def test_cross_entropy_with_pixel_weights_is_the_weighted_mean():
    logits, target = torch.randn(1, 2, 3, 3), torch.randint(0, 2, (1, 3, 3))
    pixel = torch.rand(1, 3, 3)
    ce = -logits.log_softmax(1).gather(1, target[:, None])[:, 0]
    assert torch.allclose(cross_entropy(logits, target, pixel_weights=pixel), (pixel * ce).sum() / pixel.sum())
    # A zero weight removes a pixel entirely: changing its logits changes nothing.
    pixel[0, 1, 1] = 0
    before = cross_entropy(logits, target, pixel_weights=pixel)
    logits[0, :, 1, 1] = torch.tensor([50.0, -50.0])
    assert torch.allclose(before, cross_entropy(logits, target, pixel_weights=pixel))


def test_dice_loss_by_hand():
    target = torch.tensor([[[0, 1], [1, 1]]])                       # (1, 2, 2)
    perfect = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert dice_loss(perfect, target, smooth=0) < 1e-6
    assert dice_loss(-perfect, target, smooth=0) > 1 - 1e-6
    # Uniform probabilities 0.5: class 0 has 1 pixel, class 1 has 3.
    # dice_0 = 2 * 0.5 / (2 + 1) = 1/3, dice_1 = 2 * 1.5 / (2 + 3) = 3/5.
    uniform = torch.zeros(1, 2, 2, 2)
    assert torch.allclose(dice_loss(uniform, target, smooth=0), torch.tensor(1 - (1 / 3 + 3 / 5) / 2))
    # Pixels with weight 0 are left out: only the top-left pixel (class 0) counts, dice_1 = 0 / 0.5.
    keep = torch.tensor([[[1.0, 0], [0, 0]]])
    assert torch.allclose(dice_loss(uniform, target, keep, smooth=0), torch.tensor(1 - (2 * 0.5 / 1.5 + 0) / 2))


def test_ce_dice_is_the_sum():
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    both = ce_dice_loss(logits, target, dice_weight=0.5)
    assert torch.allclose(both, cross_entropy(logits, target) + 0.5 * dice_loss(logits, target))


def test_losses_fall_when_training_on_them():
    torch.manual_seed(0)
    target = torch.randint(0, 2, (2, 8, 8))
    for loss_fn in (cross_entropy, dice_loss, ce_dice_loss):
        logits = torch.zeros(2, 2, 8, 8, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=0.3)
        first = loss_fn(logits, target).item()
        for _ in range(20):
            opt.zero_grad()
            loss_fn(logits, target).backward()
            opt.step()
        assert loss_fn(logits, target).item() < 0.5 * first, loss_fn.__name__


def test_weight_map_by_hand():
    # A 1x9 strip: cell A = columns 0-1, membrane 2-4, cell B = columns 5-6, membrane 7-8.
    mask = np.array([[1, 1, 0, 0, 0, 1, 1, 0, 0]])
    w0, sigma = 10.0, 2.0
    w = boundary_weight_map(mask, object_class=1, w0=w0, sigma=sigma, balance_classes=False)
    # d1 / d2 per column: distances to the nearest and the second-nearest cell.
    d1 = np.array([0, 0, 1, 2, 1, 0, 0, 1, 2])
    d2 = np.array([5, 4, 3, 2, 3, 4, 5, 6, 7])
    expected = 1 + w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(w[0], expected, rtol=1e-6)
    # Column 3 (middle of the border): d1 = d2 = 2, so w = 1 + 10 exp(-16 / 8) = 2.3533...
    assert w[0, 3] == pytest.approx(1 + 10 * math.exp(-2), rel=1e-6)


def test_weight_map_class_balance_and_single_object():
    mask = np.array([[1, 1, 1, 0]])
    wc = class_balance_weights(mask, 2)
    # 4 pixels, 2 classes present: class 1 (3 pixels) weighs 4 / (2*3), class 0 (1 pixel) 4 / (2*1).
    np.testing.assert_allclose(wc[0], [2 / 3, 2 / 3, 2 / 3, 2.0])
    assert wc.sum() == pytest.approx(mask.size)
    # One object: no second-nearest cell, so no border term.
    np.testing.assert_allclose(boundary_weight_map(mask, 1, w0=10, sigma=5), wc)


def test_weight_map_windowing_matches_full_distances():
    # Two squares 3 pixels apart in a larger image: windowed distance transforms give the exact map
    # near them (and the border term far away is below w0 * exp(-12.5)).
    from scipy import ndimage

    mask = np.zeros((60, 60), dtype=np.int64)
    mask[10:20, 10:20] = 1
    mask[10:20, 23:33] = 1
    mask[45:50, 45:50] = 1
    w = boundary_weight_map(mask, 1, w0=10, sigma=3, balance_classes=False)
    labels, n = ndimage.label(mask)
    distances = np.sort(np.stack([ndimage.distance_transform_edt(labels != i) for i in range(1, n + 1)]), axis=0)
    exact = 1 + 10 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * 9))
    np.testing.assert_allclose(w, exact, atol=10 * math.exp(-12.5))
    assert w[15, 21] > 5  # the gap between the touching squares is heavily weighted


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_min_snr_weights(prediction):
    snr = torch.tensor([0.0, 0.5, 5.0, 100.0])
    w = min_snr_weights(snr, 5.0, prediction)
    clipped = torch.tensor([0.0, 0.5, 5.0, 5.0])
    expected = {
        "epsilon": torch.tensor([1.0, 1.0, 1.0, 0.05]),
        "v": clipped / (snr + 1),
        "sample": clipped,
    }[prediction]
    assert torch.allclose(w, expected)
    assert torch.isfinite(w).all()
