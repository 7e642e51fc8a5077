"""The shape judge (bench.shapes_judge) on shapes the data source draws: right on real shapes, wrong on the
wrong label and on blobs, and the same on a training run's sample grid as on the images."""

import numpy as np
import torch

from bench.shapes_judge import blurred, drawn_shapes, foreground, judge, read_grid, summarize
from train.diffusion import save_grid


def test_drawn_shapes_are_right_and_a_shifted_label_is_wrong():
    images, labels = drawn_shapes(90, seed=3)
    assert set(labels) == {0, 1, 2}
    assert summarize(judge(images, labels))["score"] == 1.0
    shifted = summarize(judge(images, [(k + 1) % 3 for k in labels]))
    assert shifted["score"] == 0.0


def test_blobs_lose_their_corners():
    images, labels = drawn_shapes(90, seed=4)
    result = summarize(judge(blurred(images), labels))
    assert result["per_kind"]["square"]["right"] <= 0.25  # a blurred square reads as a circle
    assert result["score"] <= 0.75


def test_fragments_and_empty_samples_are_wrong():
    images, labels = drawn_shapes(30, seed=5)
    cut = images.copy()
    for image in cut:  # a background-coloured band through its middle splits each shape in two
        middle = int(np.flatnonzero(foreground(image).any(axis=0)).mean())
        image[:, middle - 1:middle + 1] = image[0, 0]
    assert summarize(judge(cut, labels))["score"] <= 0.2
    empty = np.repeat(images[:, :1, :1], 16, axis=1).repeat(16, axis=2)
    assert not any(v["right"] for v in judge(empty, labels))


def test_a_sample_grid_reads_back_as_its_images(tmp_path):
    images, _ = drawn_shapes(36, seed=6)
    path = tmp_path / "samples.png"
    save_grid(torch.from_numpy(images).permute(0, 3, 1, 2), path)  # as training writes samples.png
    read, labels = read_grid(path)
    np.testing.assert_allclose(read, images, atol=1 / 255)
    assert labels == [i % 3 for i in range(36)]
