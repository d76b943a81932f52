import numpy as np
import pytest

from medfm.data.transforms import fit_to_size, pictures, volume_slices


def _wide(height=20, width=60):
    image = np.zeros((1, height, width), dtype=np.uint8)
    image[:, :, : width // 2] = 200
    return image


def test_pad_keeps_aspect_and_centres():
    out = fit_to_size(_wide(), 30, "pad")
    assert out.shape == (1, 30, 30) and out.dtype == np.uint8
    rows_with_content = np.flatnonzero(out[0].max(axis=1))
    assert (rows_with_content.min(), rows_with_content.max()) == (10, 19)  # 10 px of image, 10 px bands


def test_crop_fills_the_square():
    out = fit_to_size(_wide(), 30, "crop")
    assert out.shape == (1, 30, 30)
    assert out[0, :, 0].min() == 200 and out[0, :, -1].max() == 0  # centre crop of a half-bright image


def test_resize_stretches_and_accepts_float_in_unit_range():
    out = fit_to_size(np.full((3, 7, 50), 0.5, dtype=np.float32), 16, "resize")
    assert out.shape == (3, 16, 16) and int(out.mean()) in (127, 128)


def test_unknown_mode():
    with pytest.raises(ValueError, match="fit mode"):
        fit_to_size(_wide(), 8, "squash")


def test_volume_slices_by_name_and_skip_empty():
    volume = np.zeros((1, 4, 5, 6), dtype=np.float32)
    volume[0, 1:3] = 1.0  # only D slices 1 and 2 hold anything
    names = ["axial", "coronal", "sagittal"]
    axial = list(volume_slices(volume, ["axial"], names, min_foreground=0.5))
    assert [(a, i) for a, i, _ in axial] == [("axial", 1), ("axial", 2)]
    assert axial[0][2].shape == (1, 5, 6)
    coronal = list(volume_slices(volume, ["coronal"], names, step=2))
    assert [i for _, i, _ in coronal] == [0, 2, 4] and coronal[0][2].shape == (1, 4, 6)
    with pytest.raises(ValueError, match="axes are"):
        list(volume_slices(volume, ["oblique"], names))


def test_pictures_passes_2d_through():
    sample = {"image": _wide(), "meta": {}}
    [(info, image)] = list(pictures(sample, ["axial"], 1, 0.0))
    assert info == {} and image is sample["image"]


def test_thick_slices_are_resampled_to_square_pixels_and_slivers_dropped():
    volume = np.ones((1, 10, 40, 40), dtype=np.float32)
    meta = {"axis_names": ["axial", "coronal", "sagittal"], "spacing": [4.0, 1.0, 1.0]}
    sample = {"image": volume, "meta": meta}
    shapes = {
        info["slice_axis"]: image.shape for info, image in pictures(sample, ["axial", "coronal"], 5, 0.0)
    }
    assert shapes == {"axial": (1, 40, 40), "coronal": (1, 40, 40)}  # 10 slices x 4 mm = 40 mm
    single = {"image": np.ones((1, 1, 40, 40), dtype=np.float32), "meta": meta}
    axes = [info["slice_axis"] for info, _ in pictures(single, ["axial", "coronal", "sagittal"], 1, 0.0)]
    assert axes == ["axial"]  # a 4 mm x 40 mm coronal sliver is left out
