"""Render the extension's screenshot (``LiverTumorSeg-1.png``) from the project's own output.

What it shows: three axial slices of a synthetic CT phantom (``livertumorseg phantom``, seed 3), with the
Liver (orange) and Tumor (yellow) contours the shipped default model draws through the real pipeline, and the
phantom's exact truth dashed. A phantom, because the real CT the model was trained on may not be redistributed
(CC BY-NC-ND); it shows the output users get, not the model's accuracy (see the model card for that).

    python Resources/Screenshots/render_screenshot.py
"""

from __future__ import annotations

from pathlib import Path

from LiverTumorSegLib.cli import default_model_path
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegLib.pipeline import segment
from LiverTumorSegTrainLib.plots import qc_slices

HERE = Path(__file__).resolve().parent


def main() -> None:
    ct, truth = make_phantom(shape_zyx=(80, 256, 256), spacing_zyx=(2.5, 1.5, 1.5), seed=3)
    model = default_model_path()
    labels = segment(ct, model, device="cpu")
    qc_slices(ct, labels, HERE / "LiverTumorSeg-1.png", truth=truth, overwrite=True,
              title="Liver Tumor AI on a synthetic CT phantom: Liver (orange), Tumor (yellow); dashed: truth")
    print(f"wrote {HERE / 'LiverTumorSeg-1.png'} with {model.name}")


if __name__ == "__main__":
    main()
