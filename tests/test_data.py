"""Reading images with OpenCV, the embedded photos, patches, noise and the split."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from kd_tf import images


def test_reader_handles_gray_rgba_16bit_and_bgr(tmp_path):
    gray = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    image = images.read_image(tmp_path / "gray.png")
    assert image.shape == (48, 64, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 0], gray / 255.0, atol=1e-6)

    deep = np.full((10, 12, 3), 65535, np.uint16)
    deep[..., 0] = 0                                      # blue channel in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    image = images.read_image(tmp_path / "deep.png")
    np.testing.assert_allclose(image[0, 0], [1.0, 1.0, 0.0])  # RGB: blue is last

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 255                                    # red (BGR index 2)
    rgba[..., 3] = 128
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert images.read_image(tmp_path / "rgba.png").shape == (8, 8, 3)
    with_alpha = images.read_image(tmp_path / "rgba.png", keep_alpha=True)
    np.testing.assert_allclose(with_alpha[0, 0], [1.0, 0.0, 0.0, 128 / 255], atol=1e-6)


def test_folder_reader_skips_and_counts_bad_files(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((70, 70, 3), np.uint8))
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "good2.jpg"), np.zeros((80, 90), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING"):
        found = images.read_image_folder(tmp_path, min_size=64)
    assert sorted(found) == ["good.png", "sub/good2.jpg"]
    assert "skipped 3 of 5 files" in caplog.text
    assert "broken.png" in caplog.text and "empty.jpg" in caplog.text and "smaller than 64" in caplog.text


def test_folder_reader_errors_when_nothing_is_usable(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"junk")
    with pytest.raises(images.ImageReadError, match="no readable images"):
        images.read_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        images.read_image_folder(tmp_path / "absent")


def test_embedded_photos_and_documented_split():
    assert set(images.DEFAULT_TRAIN).isdisjoint(images.DEFAULT_HELDOUT)
    assert len(images.DEFAULT_TRAIN) >= 12 and len(images.DEFAULT_HELDOUT) >= 4
    photos = images.default_photos(["flower", "ascent", "grace_hopper"])
    for image in photos.values():
        assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and min(image.shape[:2]) >= 256
    with pytest.raises(KeyError, match="available"):
        images.default_photos(["lena"])


def test_split_is_by_whole_image_and_seeded():
    pictures = {f"img{i}": np.zeros((8, 8, 3), np.float32) for i in range(10)}
    split = images.split_images(pictures, 0.3, seed=1)
    assert len(split.heldout) == 3 and len(split.train) == 7
    assert set(split.train).isdisjoint(split.heldout)
    assert images.split_images(pictures, 0.3, seed=1).heldout.keys() == split.heldout.keys()


def test_patch_dataset_is_seeded_and_noise_follows_sigma(photos):
    ds = images.patch_dataset(photos, patch_size=32, batch_size=8, sigma_range=(25, 25), seed=3)
    noisy, clean = next(iter(ds))
    assert noisy.shape == (8, 32, 32, 3) and clean.shape == (8, 32, 32, 3)
    assert float(tf.math.reduce_std(noisy - clean)) * 255 == pytest.approx(25, rel=0.05)
    again, _ = next(iter(images.patch_dataset(photos, patch_size=32, batch_size=8, sigma_range=(25, 25), seed=3)))
    np.testing.assert_array_equal(noisy.numpy(), again.numpy())
    other, _ = next(iter(images.patch_dataset(photos, patch_size=32, batch_size=8, sigma_range=(25, 25), seed=4)))
    assert not np.allclose(noisy.numpy(), other.numpy())


def test_blind_sigma_range_varies_per_patch(photos):
    noisy, clean = next(iter(images.patch_dataset(photos, patch_size=32, batch_size=64, sigma_range=(0, 55), seed=0)))
    sigmas = np.std((noisy - clean).numpy().reshape(64, -1), axis=1) * 255
    assert sigmas.min() < 15 and sigmas.max() > 40 and sigmas.max() < 60


def test_noisy_8bit_stores_the_noisy_patch_as_a_file_would(photos):
    """The same noise, clipped to [0, 1] and rounded to 1/255; validation crops follow."""
    kwargs = dict(patch_size=32, batch_size=8, sigma_range=(50, 50), seed=3)
    raw, clean = next(iter(images.patch_dataset(photos, **kwargs)))
    stored, clean_again = next(iter(images.patch_dataset(photos, noisy_8bit=True, **kwargs)))
    np.testing.assert_array_equal(clean.numpy(), clean_again.numpy())
    assert raw.numpy().min() < 0 or raw.numpy().max() > 1, "sigma 50 should leave [0, 1] somewhere"
    np.testing.assert_array_equal(stored.numpy(), images.to_8bit(raw.numpy()))
    crops, _ = images.fixed_crops(photos, crop_size=64, per_image=2, noisy_8bit=True)
    np.testing.assert_array_equal(crops, images.to_8bit(images.fixed_crops(photos, crop_size=64, per_image=2)[0]))


def test_min_scale_shows_each_photo_smaller_and_keeps_the_stream_at_one(photos):
    """A horizontal ramp of 1/1000 per pixel: at min_scale 0.25 each patch is the ramp downscaled
    by a factor in [0.25, 1], so its step per pixel lies in [1/1000, 4/1000] and spans that range;
    a photo smaller than the window is shown whole (steps up to 1/200 on a 200 px ramp, never more);
    min_scale 1 is the stream as before, bit for bit."""
    ramp = np.broadcast_to((np.arange(1000, dtype=np.float32) / 1000)[None, :, None], (600, 1000, 3)).copy()
    small = np.broadcast_to((np.arange(200, dtype=np.float32) / 1000)[None, :, None], (200, 200, 3)).copy()
    kwargs = dict(patch_size=32, batch_size=64, sigma_range=(0, 0), seed=1, augment=False)

    def steps(clean):
        return np.abs(np.diff(clean.numpy(), axis=2)).mean(axis=(1, 2, 3))

    scaled = steps(next(iter(images.patch_dataset({"ramp": ramp}, min_scale=0.25, **kwargs)))[1])
    assert scaled.min() > 0.001 - 1e-5 and scaled.max() < 0.004 + 1e-5
    assert scaled.min() < 0.0015 and scaled.max() > 0.003                       # the whole range is drawn
    whole = steps(next(iter(images.patch_dataset({"small": small}, min_scale=0.05, **kwargs)))[1])
    assert whole.max() < 0.001 * 200 / 32 * 1.01 and (whole > 0.001 * 200 / 32 * 0.99).sum() >= 8  # clamped at 200 px
    native = steps(next(iter(images.patch_dataset(photos, **kwargs)))[1])
    np.testing.assert_array_equal(native, steps(next(iter(images.patch_dataset(photos, min_scale=1.0, **kwargs)))[1]))
    with pytest.raises(ValueError, match=r"min_scale=0.*0 < min_scale <= 1"):
        images.patch_dataset(photos, min_scale=0)


def test_saturation_boost_saturates_half_the_patches_and_keeps_the_stream_at_one(photos):
    """A flat muted colour: with saturation_boost 3 about half the patches keep it and the others
    are pushed from its grey by a factor in [1, 3] (hue kept, clipped to [0, 1], some up to the
    clip); a grey image stays grey; saturation_boost 1 is the stream as before, bit for bit."""
    muted = np.broadcast_to(np.array([0.6, 0.45, 0.3], np.float32), (64, 64, 3)).copy()   # grey 0.45
    kwargs = dict(patch_size=16, batch_size=64, sigma_range=(0, 0), seed=3, augment=False)
    clean = next(iter(images.patch_dataset({"muted": muted}, saturation_boost=3.0, **kwargs)))[1].numpy()
    spread = clean[:, 0, 0, 0] - clean[:, 0, 0, 2]                    # red - blue: 0.3 at factor 1
    factors = spread / 0.3
    kept = np.isclose(factors, 1.0, atol=1e-4)
    assert 20 <= kept.sum() <= 44 and factors.min() > 1 - 1e-4 and factors.max() <= 3 + 1e-4
    assert (factors > 2.5).sum() >= 3                                  # the whole range is drawn
    np.testing.assert_allclose(clean.mean(axis=-1), 0.45, atol=1e-5)  # pushed from the grey, which stays
    assert np.allclose(clean, clean[:, :1, :1])                       # a flat patch stays flat
    grey = np.full((64, 64, 3), 0.5, np.float32)
    np.testing.assert_allclose(next(iter(images.patch_dataset({"grey": grey}, saturation_boost=3.0, **kwargs)))[1], 0.5)
    vivid = next(iter(images.patch_dataset({"v": np.broadcast_to(np.array([0.9, 0.5, 0.1], np.float32), (64, 64, 3))
                                            .copy()}, saturation_boost=3.0, **kwargs)))[1].numpy()
    assert vivid.min() == 0.0 and vivid.max() == 1.0                  # clipped
    native = next(iter(images.patch_dataset(photos, **kwargs)))[1].numpy()
    np.testing.assert_array_equal(native, next(iter(images.patch_dataset(photos, saturation_boost=1.0, **kwargs)))[1])
    with pytest.raises(ValueError, match=r"saturation_boost=0.5.*a factor >= 1"):
        images.patch_dataset(photos, saturation_boost=0.5)


def test_grey_fraction_greys_that_share_of_the_patches_and_keeps_the_noise_per_channel(photos):
    """A flat colour: with grey_fraction 0.25 about a quarter of the clean patches turn into its grey
    and the rest keep it; the noise stays independent per channel; 0 is the stream as before."""
    colour = np.broadcast_to(np.array([0.7, 0.4, 0.1], np.float32), (64, 64, 3)).copy()   # grey 0.4
    kwargs = dict(patch_size=16, batch_size=128, seed=5, augment=False)
    noisy, clean = (t.numpy() for t in next(iter(images.patch_dataset({"c": colour}, sigma_range=(25, 25),
                                                                      grey_fraction=0.25, **kwargs))))
    greyed = np.all(np.isclose(clean, 0.4, atol=1e-6), axis=(1, 2, 3))
    kept = np.all(np.isclose(clean, colour[:16, :16], atol=1e-6), axis=(1, 2, 3))
    assert np.all(greyed | kept) and 18 <= greyed.sum() <= 46
    residual = noisy[greyed] - clean[greyed]
    assert np.corrcoef(residual[..., 0].ravel(), residual[..., 1].ravel())[0, 1] < 0.1   # not one noise copied
    native = next(iter(images.patch_dataset(photos, sigma_range=(0, 0), **kwargs)))[1].numpy()
    np.testing.assert_array_equal(native, next(iter(images.patch_dataset(photos, sigma_range=(0, 0), grey_fraction=0.0,
                                                                         **kwargs)))[1])
    with pytest.raises(ValueError, match=r"grey_fraction=1.5.*0 <= fraction <= 1"):
        images.patch_dataset(photos, grey_fraction=1.5)


def test_patch_dataset_rejects_bad_arguments(photos):
    with pytest.raises(ValueError, match="sigma_range"):
        images.patch_dataset(photos, sigma_range=(30, 10))
    with pytest.raises(ValueError, match="smaller than patch_size"):
        images.patch_dataset({"tiny": np.zeros((16, 16, 3), np.float32)}, patch_size=32)


def test_fixed_crops_are_deterministic(photos):
    noisy, clean = images.fixed_crops(photos, crop_size=64, per_image=2)
    assert noisy.shape == clean.shape == (6, 64, 64, 3)
    again, _ = images.fixed_crops(photos, crop_size=64, per_image=2)
    np.testing.assert_array_equal(noisy, again)


def test_write_then_read_roundtrip(tmp_path, rng):
    image = rng.random((16, 20, 3)).astype(np.float32)
    images.write_image(tmp_path / "x.png", image, bit_depth=16)
    np.testing.assert_allclose(images.read_image(tmp_path / "x.png"), image, atol=1e-4)
