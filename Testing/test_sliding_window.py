"""3-D networks through the sliding-window inferer: exact geometry with an oracle, and a real tiny 3-D U-Net
that trains on phantoms and segments an unseen one."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from LiverTumorSegLib.labels import LIVER, TUMOR
from LiverTumorSegLib.modelfile import ModelConfig, SegmentationModel, load_model, save_model
from LiverTumorSegLib.models import register_model
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegLib.pipeline import run_segmentation

from conftest import dice, encode_labels


@register_model("test_oracle3d")
class Oracle3D(nn.Module):
    """The 3-D twin of conftest's oracle: logits are steep ramps of the voxel's own intensity."""

    size_multiple = 8
    spatial_dims = 3

    def __init__(self, in_channels: int = 1, levels: tuple[float, ...] = (0.25, 0.7)):
        super().__init__()
        self.in_channels = in_channels
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32).view(1, -1, 1, 1, 1))

    def forward(self, x):
        assert x.dim() == 5 and all(s % 8 == 0 for s in x.shape[2:])
        return 200.0 * (x[:, :1] - self.levels)


def _oracle3d(**cfg) -> SegmentationModel:
    config = ModelConfig("test_oracle3d", {"in_channels": 1}, (LIVER, TUMOR), size_multiple=8, spatial_dims=3,
                         inferer="sliding_window", patch_size=(16, 32, 32), overlap=0.5, min_lesion_mm3=0.0, **cfg)
    return SegmentationModel(Oracle3D(), config)


def test_sliding_window_patches_cover_the_volume_and_map_back_exactly(tmp_path):
    ct, truth = make_phantom(shape_zyx=(27, 70, 83), spacing_zyx=(3.0, 1.8, 1.8), seed=2, orientation="RAS",
                             lesion_diameters_mm=(14.0, 20.0))
    model = _oracle3d()
    seen = []
    result = run_segmentation(encode_labels(ct, truth), model, device="cpu",
                              progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(truth))
    assert seen and seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert set(result.lesion_probability) == {"Tumor"}
    save_model(model, tmp_path / "m.pt")  # the file says which inferer runs it, and it round-trips
    again = load_model(tmp_path / "m.pt")
    assert (again.config.inferer, again.config.patch_size, again.config.spatial_dims) == ("sliding_window",
                                                                                            (16, 32, 32), 3)


def test_sliding_window_on_a_coarser_model_grid_keeps_the_geometry():
    ct, truth = make_phantom(shape_zyx=(30, 80, 90), spacing_zyx=(2.0, 1.5, 1.5), seed=3, lesion_diameters_mm=(20.0,))
    model = _oracle3d(spacing_yx_mm=(3.0, 3.0), spacing_z_mm=4.0)
    got = sitk.GetArrayFromImage(run_segmentation(encode_labels(ct, truth), model, device="cpu").labels)
    t = sitk.GetArrayFromImage(truth)
    assert got.shape == t.shape and dice(got > 0, t > 0) > 0.9 and dice(got == 2, t == 2) > 0.85
    shift = np.array(np.nonzero(got > 0)).mean(1) - np.array(np.nonzero(t > 0)).mean(1)
    assert np.abs(shift).max() < 0.25  # voxels: the grids are mapped centre to centre, no drift


def test_a_tiny_3d_unet_trains_and_segments_a_phantom(tmp_path):
    from LiverTumorSegTrainLib.config import TrainConfig
    from LiverTumorSegTrainLib.trainer import train

    data = tmp_path / "data"
    data.mkdir()
    for seed in range(5):
        ct, labels = make_phantom(shape_zyx=(24, 64, 64), spacing_zyx=(4.0, 3.0, 3.0), seed=seed, n_lesions=1)
        sitk.WriteImage(ct, str(data / f"p{seed}.nii.gz"))
        sitk.WriteImage(labels, str(data / f"p{seed}_truth.nii.gz"))
    cfg = TrainConfig(data=[str(data)], output=str(tmp_path / "run"), architecture="unet", base_width=6,
                      arch_args={"spatial_dims": 3, "depth": 2}, context_slices=0, spacing_mm=3.0,
                      patch_size=[16, 48, 48], batch_size=2, epochs=12, steps_per_epoch=12, val_cases=["p4"],
                      val_every=6, lr=3e-3, window_hu=(-100.0, 200.0), tumor_fraction=0.3, device="cpu",
                      cache_dir=str(tmp_path / "cache"), calibrate_thresholds=False)
    result = train(cfg, progress=False)
    model = load_model(result.model_path)
    assert (model.config.spatial_dims, model.config.inferer, model.config.size_multiple) == (3, "sliding_window", 4)
    ct, labels = make_phantom(shape_zyx=(24, 64, 64), spacing_zyx=(4.0, 3.0, 3.0), seed=11, n_lesions=1)
    got = sitk.GetArrayFromImage(run_segmentation(ct, model, device="cpu").labels)
    assert dice(got > 0, sitk.GetArrayFromImage(labels) > 0) > 0.8
