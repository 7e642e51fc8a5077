"""Objects labelled one by one: the seeded watershed, its pipeline option, the CLI flag and the bench score."""

import numpy as np
import PIL.Image
import pytest
import torch

from bench.metrics import cell_components, rand_error
from bench.quality_seg import segmentation_scores
from pipelines import SegmentationPipeline
from pipelines.instances import label_instances
from unet_diffusion import UNet
from unet_diffusion.cli import main


def two_cells_with_a_gap(shape=(20, 20)):
    """p(cell) of two confident cells either side of a membrane (columns 9-10) that the model half misses in rows 9-10."""
    probability = np.full(shape, 0.99)
    probability[..., 9:11] = 0.05
    probability[..., 9:11, 9:11] = 0.6  # a gap: above 0.5, so the mask joins the cells through it
    return probability


def test_a_gap_in_the_membrane_does_not_merge_two_cells():
    probability = two_cells_with_a_gap()
    mask = probability >= 0.5
    assert cell_components(mask).max() == 1  # the mask's components: one merged cell
    labels = label_instances(probability, mask)
    assert labels.dtype == np.int32 and labels.shape == mask.shape
    assert set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels > 0, mask)  # the mask decides which pixels are cells
    assert len(set(labels[:, :9].ravel())) == 1 and len(set(labels[:, 11:].ravel())) == 1
    assert labels[0, 0] != labels[0, 19]
    truth = np.zeros_like(labels)
    truth[:, :9], truth[:, 11:] = 1, 2
    assert rand_error(truth, labels) == pytest.approx(0) and rand_error(truth, cell_components(mask)) > 0.3


def test_cores_parts_without_a_core_and_small_cores():
    probability = two_cells_with_a_gap()
    probability[0:3, 0:3] = 0.7  # below the seed threshold but in the mask, cut off from the left cell
    probability[3, 0:3] = probability[0:3, 3] = 0.05
    labels = label_instances(probability, probability >= 0.5)
    assert len(np.unique(labels)) == 4 and labels[0, 0] not in (labels[10, 5], labels[10, 15])  # its own object
    speck = np.full((12, 12), 0.05)
    speck[5:7, 5:7] = 0.95  # a 4-pixel core: under min_seed_size it seeds nothing, but the part is still an object
    assert label_instances(speck, speck >= 0.5, min_seed_size=10).max() == 1
    assert label_instances(np.zeros((5, 5)), np.zeros((5, 5), bool)).max() == 0
    assert label_instances(np.full((4, 4), 0.6), np.ones((4, 4), bool)).min() == 1  # no background: one object


def test_volumes_are_labelled_in_3d():
    probability = np.stack([two_cells_with_a_gap()] * 3)
    labels = label_instances(probability, probability >= 0.5)
    assert labels.shape == (3, 20, 20) and set(np.unique(labels)) == {0, 1, 2}
    assert (labels[0] == labels[2]).all()


def test_errors_of_label_instances():
    probability = two_cells_with_a_gap()
    with pytest.raises(ValueError, match="same shape"):
        label_instances(probability, np.ones((3, 3), bool))
    for bad in (0, 1, 1.5, "0.9", True):
        with pytest.raises(ValueError, match="seed_threshold must be a number strictly between 0 and 1"):
            label_instances(probability, probability > 0.5, seed_threshold=bad)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="min_seed_size must be a positive int"):
            label_instances(probability, probability > 0.5, min_seed_size=bad)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    unet = UNet.from_preset("seg-small", channels=(8, 16), norm_groups=4, weight_init="torch")
    return SegmentationPipeline(unet=unet, image_mean=0.5, image_std=0.5)


def test_the_pipeline_labels_the_objects_of_a_class(pipe):
    images = torch.rand(2, 1, 24, 32)
    out = pipe(images, instances=1, seed_threshold=0.55)
    assert out.instances.shape == out.masks.shape and out.instances.dtype == np.int32
    for probability, mask, labels in zip(out.probabilities, out.masks, out.instances):
        np.testing.assert_array_equal(labels, label_instances(probability[1], mask == 1, seed_threshold=0.55))
        assert labels.max() > 1
    plain = pipe(images)
    assert plain.instances is None
    np.testing.assert_array_equal(plain.masks, out.masks)
    masks, probabilities, labels = pipe(images, instances=0, output_type="pt", return_dict=False)
    assert isinstance(labels, torch.Tensor) and torch.equal(labels > 0, masks == 0)
    assert len(pipe(images, return_dict=False)) == 2


def test_pipeline_instance_errors(pipe):
    for bad in (2, -1, 1.0, True, "1"):
        with pytest.raises(ValueError, match=r"instances must be the index of the class whose objects to label, 0\.\.1"):
            pipe(torch.rand(1, 1, 16, 16), instances=bad)
    with pytest.raises(ValueError, match="seed_threshold"):
        pipe(torch.rand(1, 1, 16, 16), instances=1, seed_threshold=1.0)


def test_segment_writes_instance_labels(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    image = PIL.Image.fromarray((np.random.default_rng(0).random((30, 40)) * 255).astype(np.uint8))
    image.save(tmp_path / "a.png")
    args = ["segment", str(tmp_path / "model"), str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*args, "--instances", "1", "--seed-threshold", "0.55"]) == 0
    written = PIL.Image.open(tmp_path / "out" / "a_instances.png")
    assert written.mode.startswith("I")  # 16-bit
    expected = pipe(PIL.Image.open(tmp_path / "a.png"), instances=1, seed_threshold=0.55).instances[0]
    np.testing.assert_array_equal(np.asarray(written), expected)
    assert main([*args, "--instances", "5"]) == 1


def test_the_bench_scores_watershed_cells_beside_components():
    probability = two_cells_with_a_gap()
    truth = np.ones((20, 20), np.int64)
    truth[:, 9:11] = 0
    pred = (probability >= 0.5).astype(np.int64)
    scores = segmentation_scores(truth, pred, 1, label_instances(probability, pred == 1))
    assert scores["rand_error_watershed"] == pytest.approx(0) and scores["rand_error"] > 0.3
