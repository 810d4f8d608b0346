"""The fast preprocessing of full-size images (reduced JPEG decoding, torch's antialiased resize) against the
previous pipeline (full decoding, MONAI's Resized with Gaussian anti-aliasing), and train.yaml's and
inference.yaml's preprocessing kept in step."""

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, PILReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized
from PIL import Image

from conftest import bundle_configs, require_data
from scripts import readers
from scripts import transforms as T

SIZE = 224
MEAN_TOLERANCE = 0.01  # mean |new - old| on the [-1, 1] scale (measured: at most 0.0082, on the mosaic JPEG)
MAX_TOLERANCE = 0.25  # largest pixel difference, at sharp edges (measured: at most 0.24)


def pipeline(converter, resize) -> Compose:
    """The bundle's deterministic preprocessing up to the resize (train.yaml's image_loading + base_transforms)."""
    reader = PILReader(reverse_indexing=False, converter=converter)
    return Compose(
        [
            LoadImaged("image", reader=reader, dtype=None, image_only=True),
            EnsureChannelFirstd("image"),
            T.Ensure2Dd("image"),
            T.ScaleBitDepthd("image"),
            T.MatchChannelsd("image", 3),
            T.CenterSquareCropd("image"),
            resize,
        ]
    )


OLD = pipeline(readers.standard_pil_mode, Resized("image", (SIZE, SIZE), mode="bilinear", anti_aliasing=True))
NEW = pipeline(readers.ReducedDecode(4 * SIZE), T.AntialiasResized("image", (SIZE, SIZE)))  # train.yaml's


def ham_images(count: int) -> list:
    data = require_data("ham10000/images")
    return sorted((data / "ham10000" / "images").glob("*.jpg"))[:count]


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """3000x2250 images from real HAM10000 photographs: two upsampled (smooth, like a photograph at full
    resolution) as JPEG, and a mosaic of 225 of them (sharp edges, real texture) as JPEG and PNG."""
    folder = tmp_path_factory.mktemp("full_size")
    files = ham_images(225)
    paths = []
    for i, f in enumerate(files[:2]):
        path = folder / f"upsampled{i}.jpg"
        Image.open(f).convert("RGB").resize((3000, 2250), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    mosaic = Image.new("RGB", (3000, 2250))
    for k, f in enumerate(files):
        mosaic.paste(Image.open(f).convert("RGB"), ((k % 15) * 200, (k // 15) * 150))
    for suffix in ("jpg", "png"):
        mosaic.save(folder / f"mosaic.{suffix}", **({"quality": 90} if suffix == "jpg" else {}))
        paths.append(folder / f"mosaic.{suffix}")
    return paths


def difference(path) -> torch.Tensor:
    old, new = OLD({"image": str(path)})["image"], NEW({"image": str(path)})["image"]
    assert new.shape == old.shape == (3, SIZE, SIZE) and new.dtype == torch.float32
    return (torch.as_tensor(new) - torch.as_tensor(old)).abs()


def test_full_size_images_match_the_previous_pipeline(full_size):
    for path in full_size:
        diff = difference(path)
        assert float(diff.mean()) < MEAN_TOLERANCE and float(diff.max()) < MAX_TOLERANCE, (path.name, diff.mean())


def test_the_stored_ham10000_images_give_the_same_tensors():
    """The shared copies are 200x150 (upsampled to 224: no anti-aliasing in either pipeline)."""
    for path in ham_images(4):
        assert float(difference(path).max()) < 1e-4


def test_reduced_decoding_keeps_both_sides_at_least_min_side(full_size):
    jpeg, png = full_size[2], full_size[3]
    image = readers.ReducedDecode(4 * SIZE)(Image.open(jpeg))
    assert image.size == (1500, 1125)  # 1/2 scale: 1/4 would make the short side 563 < 896
    assert readers.ReducedDecode(SIZE)(Image.open(jpeg)).size == (375, 282)  # 1/8
    assert readers.ReducedDecode(None)(Image.open(jpeg)).size == (3000, 2250)
    assert readers.ReducedDecode(SIZE)(Image.open(png)).size == (3000, 2250)  # only JPEG decodes reduced


def test_antialias_resize_keeps_the_image_type_and_skips_equal_sizes():
    image = torch.rand(1, 28, 28)
    out = T.AntialiasResized("image", (28, 28))({"image": image})["image"]
    assert torch.equal(out, image)
    out = T.AntialiasResized("image", (14, 10))({"image": image.numpy()})["image"]
    assert isinstance(out, np.ndarray) and out.shape == (1, 14, 10)


@pytest.mark.parametrize("overlays", [[], ["data/ham10000"]])
def test_training_and_inference_preprocess_an_image_identically(overlays):
    """train.yaml's validation preprocessing and inference.yaml's give the same tensor; with ImageNet
    normalisation (the default), (pixel/255 - mean) / std of the resized image."""
    path = ham_images(1)[0]
    images = []
    for first in ("train", "inference"):
        parser = ConfigParser()
        parser.read_config(bundle_configs(first, *overlays))
        images.append(parser.get_parsed_content("validate#preprocessing" if first == "train" else "preprocessing"))
    train, infer = (p({"image": str(path)})["image"] for p in images)
    assert torch.equal(train, infer)
    unnormalised = NEW({"image": str(path)})["image"]
    mean, std = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(train, ((torch.as_tensor(unnormalised) + 1) / 2 - mean) / std, atol=1e-5)


def test_small_recipe_keeps_inputs_in_minus_one_to_one():
    parser = ConfigParser()
    parser.read_config(bundle_configs("train", "data/ham10000", "small"))
    path = ham_images(1)[0]
    image = parser.get_parsed_content("validate#preprocessing")({"image": str(path)})["image"]
    assert image.shape == (3, 28, 28) and float(image.min()) >= -1 and float(image.max()) <= 1


def test_in_place_bit_depth_scaling_gives_the_same_values_and_leaves_the_input():
    """ScaleBitDepthd's one-copy, in-place arithmetic equals the out-of-place (x / full).clamp(0, 1) * 2 - 1."""
    rng = np.random.default_rng(0)
    arrays = [
        (rng.integers(0, 256, (3, 50, 60), dtype=np.uint8), 255.0),
        (rng.integers(0, 65536, (1, 50, 60), dtype=np.uint16), 65535.0),
        (rng.integers(0, 65536, (1, 5, 6)).astype(np.int32), 65535.0),
        (rng.uniform(0, 255, (3, 5, 6)), 255.0),
    ]
    for array, full in arrays:
        before = array.copy()
        for image in (array, torch.from_numpy(array), MetaTensor(torch.from_numpy(array))):
            out = T.ScaleBitDepthd("image")({"image": image})["image"]
            expected = (torch.as_tensor(array).float() / full).clamp(0, 1) * 2 - 1
            assert torch.equal(torch.as_tensor(out), expected) and out.dtype == torch.float32
            assert isinstance(out, MetaTensor) == isinstance(image, MetaTensor)
        assert (array == before).all()


def test_the_pil_reader_gives_writable_pixels(tmp_path):
    """numpy's view of a PIL image is read-only, which torch warns about when it wraps it."""
    from scripts.readers import WritablePILReader

    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(tmp_path / "a.png")
    reader = WritablePILReader(reverse_indexing=False)
    data, _ = reader.get_data(reader.read(str(tmp_path / "a.png")))
    assert data.flags.writeable and data.shape == (6, 8) and data[1, 0] == 8
