"""Augmentation: image and label move together, labels stay integer classes, draws are
reproducible from the generator, and each named combination turns on what it says."""

import numpy as np
import pytest
import torch

from synthmix.trainers.augmentation import AUGMENTATIONS, Augment, build_augmentation


def _batch(n=4, size=32, k=4, seed=0):
    """Labels of blocky regions; the image equals the label (as float), two channels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        for c in range(1, k):
            r, s = rng.integers(2, size - 10, 2)
            labels[i, r:r + 8, s:s + 8] = c
    labels = torch.from_numpy(labels)
    images = labels[:, None].float().repeat(1, 2, 1, 1)
    return images, labels


def test_registry_names():
    assert set(AUGMENTATIONS.names()) == {"none", "flip", "rotate", "translate", "intensity", "elastic",
                                          "standard", "traditional"}


def test_none_is_identity():
    images, labels = _batch()
    out_i, out_l = build_augmentation("none")(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(out_i, images) and torch.equal(out_l, labels)


@pytest.mark.parametrize("name", ["flip", "rotate", "translate", "elastic", "standard"])
def test_spatial_transform_keeps_image_and_label_aligned(name):
    images, labels = _batch()
    # Intensity changes off so the image must still equal its label where it is not blended.
    aug = build_augmentation(name, {"intensity_shift_std": 0.0, "intensity_scale_std": 0.0,
                                    "reference_size": None})
    out_i, out_l = aug(images, labels, torch.Generator().manual_seed(1))
    assert out_l.dtype == torch.int64 and out_l.shape == labels.shape
    assert set(out_l.unique().tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(out_l, labels)  # something moved
    # Where the bilinear image is (nearly) an exact class value, the nearest label agrees.
    for ch in range(2):
        img = out_i[:, ch]
        exact = (img - img.round()).abs() < 1e-4
        assert exact.float().mean() > 0.5
        assert torch.equal(img[exact].round().long(), out_l[exact])


def test_flip_is_an_exact_mirror():
    images, labels = _batch()
    aug = Augment(flip_prob=1.0)
    out_i, out_l = aug(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(out_l, labels.flip(-1))
    assert torch.allclose(out_i, images.flip(-1), atol=1e-5)


def test_translation_by_whole_pixels_shifts_the_label():
    images, labels = _batch(n=1)
    aug = Augment(translate_std_px=3.0, reference_size=None)
    g = torch.Generator().manual_seed(5)
    out_i, out_l = aug(images, labels, g)
    # Recover the drawn shift the way the augmenter drew it (same generator sequence).
    g = torch.Generator().manual_seed(5)
    torch.rand(1, generator=g), torch.rand(1, generator=g)
    shift = 3.0 * torch.randn(1, 2, generator=g)
    dx, dy = shift[0].tolist()
    # output(y, x) = input(y + dy, x + dx): check the label's centre of mass moved by -shift.
    def centre(lab):
        ys, xs = torch.nonzero(lab[0] > 0, as_tuple=True)
        return ys.float().mean().item(), xs.float().mean().item()
    (y0, x0), (y1, x1) = centre(labels), centre(out_l)
    assert y1 - y0 == pytest.approx(-dy, abs=0.75) and x1 - x0 == pytest.approx(-dx, abs=0.75)


def test_intensity_only_changes_the_image_by_scale_and_shift():
    images, labels = _batch()
    aug = build_augmentation("intensity")
    out_i, out_l = aug(images, labels, torch.Generator().manual_seed(2))
    assert torch.equal(out_l, labels)
    for b in range(len(images)):
        x, y = images[b].flatten(), out_i[b].flatten()
        a, c = np.polyfit(x.numpy(), y.numpy(), 1)
        assert torch.allclose(y, a * x + c, atol=1e-4)
        assert a != pytest.approx(1.0, abs=1e-6)


def test_reproducible_with_a_seeded_generator_and_different_across_seeds():
    images, labels = _batch()
    aug = build_augmentation("standard", {"rotate_deg": 10.0, "flip_prob": 0.5})
    a = aug(images, labels, torch.Generator().manual_seed(3))
    b = aug(images, labels, torch.Generator().manual_seed(3))
    c = aug(images, labels, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_standard_is_003_table_one():
    aug = build_augmentation("standard")
    assert (aug.intensity_shift_std, aug.intensity_scale_std, aug.translate_std_px, aug.elastic_std_px) == \
        (0.05, 0.05, 10.0, 10.0)
    assert aug.flip_prob == 0 and aug.rotate_deg == 0


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match="'rotation'"):
        build_augmentation("rotate", {"rotation": 5})
    with pytest.raises(ValueError, match="flip_prob"):
        build_augmentation("flip", {"flip_prob": 2.0})
