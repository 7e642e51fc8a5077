"""The benchmarks' metric functions on small cases worked out by hand (no data, a few milliseconds)."""

import numpy as np
import pytest

from bench.metrics import cell_components, dice, frechet_distance, frechet_distance_of, pixel_error, rand_error


def test_rand_error_is_zero_for_identical_segmentations_up_to_renaming():
    truth = np.array([[1, 1, 0, 2], [1, 1, 0, 2], [0, 0, 0, 2], [3, 3, 0, 2]])
    renamed = np.where(truth == 0, 0, 10 - truth)
    assert rand_error(truth, truth) == 0.0
    assert rand_error(truth, renamed) == 0.0


def test_rand_error_of_a_split_and_a_merge():
    # One true segment of 4 pixels cut in two halves: p = 2 x (2/4); sum p^2 = 1/2, sum s^2 = 1,
    # sum t^2 = 1/2 -> precision 1, recall 1/2, F = 2/3, error 1/3. The merge is the mirror case.
    assert rand_error(np.array([1, 1, 1, 1]), np.array([1, 1, 2, 2])) == pytest.approx(1 / 3)
    assert rand_error(np.array([1, 1, 2, 2]), np.array([1, 1, 1, 1])) == pytest.approx(1 / 3)


def test_rand_error_counts_predicted_boundary_pixels_as_singletons_and_ignores_true_boundary():
    # 3 pixels agree, 1 predicted boundary pixel inside the cell: sum p^2 = (9 + 1)/16 = sum t^2,
    # sum s^2 = 1 -> precision 1, recall 10/16, F = 20/26, error 6/26.
    assert rand_error(np.array([1, 1, 1, 1]), np.array([1, 1, 1, 0])) == pytest.approx(6 / 26)
    # Whatever is predicted where the truth is boundary does not count.
    assert rand_error(np.array([0, 0, 1, 1]), np.array([4, 5, 7, 7])) == 0.0


def test_rand_error_on_components_of_a_cell_map():
    truth = np.ones((5, 5), bool)
    truth[:, 2] = False                     # a membrane column: two cells
    pred = np.ones((5, 5), bool)
    pred[:4, 2] = False                     # the membrane has a gap at the bottom: the cells merge
    true_labels, pred_labels = cell_components(truth), cell_components(pred)
    assert true_labels.max() == 2 and pred_labels.max() == 1
    # On the 20 true cell pixels the prediction is one segment: precision (2 * 10^2) / 20^2 = 1/2,
    # recall 1, error 1/3.
    assert rand_error(true_labels, pred_labels) == pytest.approx(1 / 3)
    diagonal = np.ones((3, 3), bool)
    diagonal[[0, 1, 2], [2, 1, 0]] = False  # a diagonal membrane separates with 4-connectivity
    assert cell_components(diagonal).max() == 2


def test_rand_error_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="same shape"):
        rand_error(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="no segment"):
        rand_error(np.zeros((2, 2)), np.ones((2, 2)))


def test_pixel_error_and_dice():
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    assert pixel_error(truth, pred) == 0.25
    assert dice(truth == 0, pred == 0) == pytest.approx(2 * 1 / (2 + 1))
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4))
    sigma = a.T @ a / 50 + 0.1 * np.eye(4)
    mu = rng.normal(size=4)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    features = rng.normal(size=(200, 3))
    assert frechet_distance_of(features, features) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift():
    sigma = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
    mu = np.array([1.0, -2.0, 0.5])
    shift = np.array([3.0, 0.0, -4.0])
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(25.0)


def test_frechet_distance_of_scaled_gaussians():
    # One dimension: (mu1 - mu2)^2 + (s1 - s2)^2 for standard deviations s1, s2; here 1 + (3 - 1)^2.
    assert frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([1.0]), np.array([[9.0]])) == pytest.approx(5.0)
    # Diagonal covariances: sum over dimensions of (sqrt(a) - sqrt(b))^2.
    assert frechet_distance(np.zeros(2), np.diag([4.0, 1.0]), np.zeros(2), np.diag([1.0, 16.0])) == pytest.approx(1 + 9)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
