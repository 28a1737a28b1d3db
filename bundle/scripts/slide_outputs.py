"""The files one slide's inference writes, written as one unit, and the cohort's ``summary.csv``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import OutputWriteError, atomic_folder, write_failure
from .heatmap import save_heatmap, save_image
from .regions import Region, to_asap_xml, to_geojson
from .tiling import PatchGeometry

COMPLETE_MARKER = "complete.json"
PATCH_COLUMNS = ["x", "y", "size0", "level", "score", "z", "tissue_fraction", "stain_fallback", "tumour"]
SUMMARY_COLUMNS = [
    "slide", "path", "status", "error", "n_patches", "tissue_mm2", "score_mean", "score_std", "tumour_mm2",
    "stain_fallbacks", "domain_distance", "out_of_domain", "seconds",
]  # fmt: skip


def read_summary(path: str | Path) -> pd.DataFrame:
    """A ``summary.csv`` with slide ids kept as written (``001`` stays ``001``, ``NA`` stays ``NA``)."""
    return pd.read_csv(
        path, dtype={"slide": str, "path": str, "error": str}, keep_default_na=False, na_values=[""],
        float_precision="round_trip",
    )  # fmt: skip


def file_record(path: Path) -> dict:
    """A written file's size and SHA-256, which ``complete.json`` keeps so a later run can tell the set is intact."""
    return {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def intact(folder: Path, files: object) -> str:
    """'' when every file ``complete.json`` lists in ``files`` is in ``folder`` as written, else what is not."""
    if not isinstance(files, dict) or not files:
        return "it lists no files"
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_record(path) != record:
            return f"{name} was changed"
    return ""


@dataclass
class SlideOutputs:
    """One slide's results as its output folder holds them: ``patches.csv``, ``score_map.npy`` + ``score_map.json``,
    ``heatmap.png``, ``regions.geojson`` and ``regions.xml``, and the ``thumbnail.jpg`` and ``tissue_mask.png`` that
    evaluation draws on; ``complete.json`` says the set is whole and what made it."""

    slide: str
    patches: pd.DataFrame
    z_map: np.ndarray
    grid_info: dict
    regions: list[Region]
    facts: dict
    geometry: PatchGeometry
    settings: dict
    summary: dict
    heatmap_title: str

    def write(self, folder: Path) -> None:
        """Write the files as one unit (``complete.json`` last), replacing an earlier run's only once all are written,
        so a kill leaves the old set or the new one. Runs off the scoring's critical path (``SlideInference`` writes a
        slide in a thread while the next one is scored)."""
        facts = self.facts
        try:
            with atomic_folder(folder) as out:
                self.patches.to_csv(out / "patches.csv", index=False)
                np.save(out / "score_map.npy", self.z_map)
                (out / "score_map.json").write_text(json.dumps(self.grid_info, indent=2))
                (out / "regions.geojson").write_text(
                    json.dumps(to_geojson(self.regions, self.geometry.mpp0, {"out_of_domain": facts["out_of_domain"]}))
                )
                (out / "regions.xml").write_text(to_asap_xml(self.regions, facts["out_of_domain"]))
                save_image(out / "thumbnail.jpg", facts["thumbnail"])
                save_image(out / "tissue_mask.png", (facts["mask"] * 255).astype(np.uint8))
                save_heatmap(
                    out / "heatmap.png", facts["thumbnail"], facts["mask_downsample"], self.z_map, self.geometry,
                    self.grid_info["z_threshold"], self.heatmap_title,
                )  # fmt: skip
                marker = {
                    "slide": str(Path(self.slide).resolve()), "fingerprint": facts["fingerprint"],
                    "settings": self.settings, "summary": self.summary,
                    "files": {p.name: file_record(p) for p in sorted(out.iterdir())},
                }  # fmt: skip
                (out / COMPLETE_MARKER).write_text(json.dumps(marker))
        except OSError as error:
            raise OutputWriteError(f"cannot write its outputs to {folder}: {write_failure(error)}") from error
