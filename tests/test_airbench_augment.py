"""The batch augmentation against airbench94's (KellerJordan/cifar10-airbench, legacy/airbench94.py): translation
with reflect padding, alternating flips, and TTA's reflect-padded shifts, on tiny batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from imgclf.data.augment import AugmentPolicy, random_translate, tta_logits
from imgclf.data.catalog import get_dataset
from imgclf.data.datamodule import ImageDataModule, augment_policy
from imgclf.errors import UserError


def distinct_images(n: int = 32, h: int = 6, w: int = 7) -> torch.Tensor:
    """uint8 images in 1..255 (no zeros, so zero fill is visible)."""
    return torch.randint(1, 256, (n, 2, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def airbench_crops(image: torch.Tensor, r: int) -> list[torch.Tensor]:
    """Every output airbench94's batch_crop can give for `image`: its reflect-padded copy (CifarLoader's
    F.pad(images, (pad,)*4, 'reflect')) cropped at shifts sy, sx in [-r, r]."""
    h, w = image.shape[-2:]
    padded = F.pad(image[None].float(), (r,) * 4, mode="reflect")[0]
    return [padded[:, r + sy:r + sy + h, r + sx:r + sx + w] for sy in range(-r, r + 1) for sx in range(-r, r + 1)]


def test_reflect_translation_gives_airbench94s_crops() -> None:
    images = distinct_images()
    torch.manual_seed(0)
    out = random_translate(images, 2, "reflect")
    seen = set()
    for o, image in zip(out, images, strict=True):
        matches = [k for k, crop in enumerate(airbench_crops(image, 2)) if torch.equal(o.float(), crop)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # drawn per image
    # zero fill is another augmentation: its border pixels are 0 where reflect's copy the image
    torch.manual_seed(0)
    assert (random_translate(images, 2, "zeros") == 0).any() and not (out == 0).any()


def airbench_epochs(images: torch.Tensor, epochs: int) -> list[torch.Tensor]:
    """The images as airbench94's CifarLoader serves them each epoch (flip on, translate off, unshuffled): a random
    half pre-flipped at epoch 0 (batch_flip_lr), then `images.flip(-1)` on every odd epoch."""
    flip_mask = (torch.rand(len(images)) < 0.5).view(-1, 1, 1, 1)
    stored = torch.where(flip_mask, images.flip(-1), images)
    return [stored.flip(-1) if epoch % 2 == 1 else stored for epoch in range(epochs)]


def orientation(shown: torch.Tensor, images: torch.Tensor) -> list[str]:
    return ["as is" if torch.equal(s, i) else "mirrored" if torch.equal(s, i.flip(-1)) else "other"
            for s, i in zip(shown, images, strict=True)]


def test_alternating_flips_show_each_image_as_airbench94_does() -> None:
    images = distinct_images()
    policy = AugmentPolicy(flip=True, alternate=True)
    stored = policy.preflip(images, seed=3)
    ours = [policy(stored, epoch) for epoch in range(4)]
    torch.manual_seed(3)
    theirs = airbench_epochs(images, 4)
    for epoch in range(4):
        mine, reference = orientation(ours[epoch], images), orientation(theirs[epoch], images)
        assert "other" not in mine
        if epoch:  # every image turns over from one epoch to the next
            assert all(a != b for a, b in zip(mine, orientation(ours[epoch - 1], images), strict=True))
        # the same rule as airbench94's: as on epoch 0 on even epochs, mirrored from it on odd ones
        assert [a == b for a, b in zip(mine, orientation(ours[0], images), strict=True)] == \
            [a == b for a, b in zip(reference, orientation(theirs[0], images), strict=True)]
    assert 6 < orientation(stored, images).count("mirrored") < 26  # a random half, not all or none
    assert torch.equal(policy.preflip(images, seed=3), stored)  # seeded: every DDP rank stores the same


def test_datamodule_stores_half_mirrored_and_mirrors_all_on_odd_epochs() -> None:
    plain = ImageDataModule(dataset="digits", flip="none", translate=0)
    alternating = ImageDataModule(dataset="digits", flip="alternating", translate=0)
    plain.setup("fit"), alternating.setup("fit")
    original, stored = plain.splits["train"].images, alternating.splits["train"].images
    asymmetric = [not torch.equal(i, i.flip(-1)) for i in original]
    states = [s for s, keep in zip(orientation(stored, original), asymmetric, strict=True) if keep]
    assert "other" not in states and 0.4 < states.count("mirrored") / len(states) < 0.6
    assert torch.equal(alternating.splits["test"].images, plain.splits["test"].images)  # evaluation untouched
    labels = torch.zeros(len(stored), dtype=torch.long)
    for epoch in range(3):
        alternating.trainer = SimpleNamespace(training=True, current_epoch=epoch)
        shown, _ = alternating.on_after_batch_transfer((stored, labels), 0)
        assert torch.equal(shown, stored.flip(-1) if epoch % 2 else stored)


def test_tta_reflect_views_are_airbench94s() -> None:
    images = distinct_images(3).float()
    views: list[torch.Tensor] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        views.append(x)
        return x.mean(dim=(1, 2, 3))[:, None]

    tta_logits(model, images, padding="reflect")
    padded = F.pad(images, (1,) * 4, mode="reflect")  # airbench94's infer_mirror_translate
    h, w = images.shape[-2:]
    translated = [padded[:, :, 0:h, 0:w], padded[:, :, 2:h + 2, 2:w + 2]]
    expected = [images, images.flip(-1), translated[0], translated[0].flip(-1), translated[1], translated[1].flip(-1)]
    assert len(views) == 6 and all(torch.equal(v, e) for v, e in zip(views, expected, strict=True))


def test_datasets_keep_their_own_augmentation_unless_told() -> None:
    for name in ("digits", "fashion_mnist", "cifar10"):
        assert ImageDataModule(dataset=name, root="unused").policy == get_dataset(name).augment
    dm = ImageDataModule(dataset="cifar10", root="unused", translate=2, translate_padding="reflect")
    assert dm.policy == AugmentPolicy(flip=True, alternate=False, translate=2, padding="reflect")


def test_bad_augmentation_overrides_are_user_errors() -> None:
    with pytest.raises(UserError, match="translate"):
        ImageDataModule(dataset="digits", translate=-1)
    with pytest.raises(UserError, match="held in memory"):
        augment_policy(AugmentPolicy(), "alternating", None, None, in_memory=False)
