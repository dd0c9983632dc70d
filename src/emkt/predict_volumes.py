"""Segmenting an EM volume (a TIFF stack, a Zarr / OME-Zarr array, an MRC file) section by
section with a 2D network, into a chunked OME-Zarr image (emkt.volumes.VolumeOutput):
what ``emkt.predict.predict_folder`` (and so ``python -m emkt predict`` and the rule
predict_images) does with the volumes of a folder.

Sections are predicted as 2D images are (emkt.predict: the same sliding windows, per-section
z-score with exact statistics, threshold and minimum object size), a batch of sections at a
time within the memory budget; a section too large for the budget is predicted in bands of
rows (emkt.bands) and its instances labelled band by band. Each finished batch is recorded
in ``<name>.sections.csv`` beside the output, after its arrays are written, so that a resumed
run skips it. Linking objects across sections (``link_3d``) is a last pass over the written
instances (emkt.volumes.link_sections), bounded like the rest.

With a teacher (emkt.proofread.Proofreader) every section is reviewed as a 2D image is: its
predicted loss goes into the sections table, an error-map teacher's map into the output's
``error`` image, and the review queue gets the section's rows. As for 2D images, sections
predicted in bands are not reviewed, and a resumed run judges its finished sections again
from their written probabilities.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from .bands import IN_MEMORY_BYTES, LABEL_BYTES, LazyImage, label_in_bands, rows_within
from .data import DataFileError, printable
from .files import atomic_path
from .inference import predict_tiles
from .predict import (MAX_BATCH_PIXELS, band_probabilities, decode_probability, encode_probability, exact_zscore,
                      postprocess)
from .proofread import Proofreader, encode_error
from .volumes import OUTPUT_SUFFIX, Volume, VolumeOutput, link_sections, open_volume

log = logging.getLogger("emkt")

SECTION_COLUMNS = ["section", "foreground_fraction", "objects"]
LOSS = "predicted_loss"  # the teacher's, a column of the sections table when a teacher reviews


def sections_table_path(output: Path) -> Path:
    """``<name>.sections.csv`` beside ``<name>.ome.zarr``: one row per finished section."""
    return output.with_name(output.name.removesuffix(OUTPUT_SUFFIX) + ".sections.csv")


def predict_volume(model: nn.Module, checkpoint: dict, source: str | Path, output: str | Path, *,
                   threshold: float = 0.5, min_size: int = 32, overlap: float = 0.25, batch_size: int = 16,
                   device: torch.device | str = "cpu", probability: str = "float32", memory_mb: float = 4096,
                   resume: bool = False, link_3d: bool = False, reviewer: Proofreader | None = None,
                   names: tuple[str, str] | None = None) -> dict:
    """Segment the volume at ``source`` into the OME-Zarr image ``output`` (…/<name>.ome.zarr)
    and its per-section table ``<name>.sections.csv``; returns the volume's row of
    predictions.csv (height, width, sections, foreground_fraction, objects: summed over
    sections, objects_3d when linked, status). ``resume`` keeps the sections an earlier run
    with the same settings finished. Settings as ``emkt.predict.predict_folder``.
    Unreadable volumes and a resumed output of other settings raise DataFileError.

    With a ``reviewer`` the teacher judges every section (``_SectionJudge``; ``names``: the
    volume's file and output as the review queue names them), the sections table gets each
    section's ``predicted_loss`` and the row their mean; an error-map teacher's maps go to
    the output's ``error`` image. Sections over the memory budget are not judged (NaN)."""
    source, output, device = Path(source), Path(output), torch.device(device)
    input_size = checkpoint["input_size"]
    with open_volume(source) as volume:
        depth, height, width = volume.shape
        if not depth * height * width:
            raise DataFileError(f"{source}: an empty volume, shape {volume.shape}")
        settings = {"source": printable(source), "shape": [depth, height, width], "probability": probability,
                    "threshold": threshold, "min_size": min_size, "overlap": overlap, "input_size": input_size}
        out, finished = _open_output(output, settings, resume, link_3d)
        todo = [z for z in range(depth) if z not in finished]
        budget_pixels = int(memory_mb * 2**20 // IN_MEMORY_BYTES)
        judge = _SectionJudge.start(reviewer, out, volume, names or (printable(source), printable(output.name)),
                                    height * width <= budget_pixels)
        if finished:  # the table again: re-judged sections, no stale losses
            finished = judge.resumed(finished) if judge is not None else _without_loss(finished, reviewer is not None)
            _write_sections(finished, sections_table_path(output), reviewer is not None)
        start, done_pixels = time.perf_counter(), 0
        with tqdm(total=depth, initial=depth - len(todo), desc=printable(output.name), unit="section") as progress:
            def record(rows: list[dict]) -> None:
                nonlocal done_pixels
                finished.update({row["section"]: row for row in rows})
                _write_sections(finished, sections_table_path(output), reviewer is not None)
                done_pixels += len(rows) * height * width
                progress.update(len(rows))
                progress.set_postfix_str(f"{done_pixels / 1e6 / max(time.perf_counter() - start, 1e-9):.2f} Mpx/s")

            if height * width <= budget_pixels:
                per_call = max(1, min(batch_size, min(MAX_BATCH_PIXELS, budget_pixels) // (height * width)))
                for first in range(0, len(todo), per_call):
                    batch = todo[first:first + per_call]
                    sections = [volume.section(z) for z in batch]
                    probs = predict_tiles(model, np.stack(sections), input_size, overlap, batch_size, device,
                                          exact_zscore)
                    rows = [_write_section(out, z, prob, threshold, min_size, probability)
                            for z, prob in zip(batch, probs)]
                    if judge is not None:  # the section z-scored as the student saw it
                        for row, section, prob in zip(rows, sections, probs):
                            row[LOSS] = judge(row["section"], exact_zscore(section), prob)
                    record(rows)
            else:
                for z in todo:
                    row = _predict_section_in_bands(model, volume, out, z, input_size, overlap, batch_size, device,
                                                    memory_mb, threshold, min_size, probability)
                    record([{**row, LOSS: float("nan")} if reviewer is not None else row])
        objects_3d = _link(out, finished, memory_mb) if link_3d else None
    sections = pd.DataFrame([finished[z] for z in range(depth)])
    row = {"height": height, "width": width, "sections": depth,
           "foreground_fraction": float(sections["foreground_fraction"].mean()),
           "objects": int(sections["objects"].sum()), "objects_3d": objects_3d,
           "status": "ok" if todo else "resumed", "pixels": len(todo) * height * width}
    if reviewer is not None:  # sections are equal in size: the mean of the whole volume's map
        row[LOSS] = float(sections[LOSS].mean(skipna=False))
    return row


@dataclass
class _SectionJudge:
    """The teacher's judgement of a volume's sections (emkt.proofread.Proofreader.review_section):
    a call judges one section (z-scored as the student saw it, and its probability), writes an
    error-map teacher's map into the output's error image and returns the predicted loss."""

    reviewer: Proofreader
    out: VolumeOutput
    volume: Volume
    names: tuple[str, str]

    @classmethod
    def start(cls, reviewer: Proofreader | None, out: VolumeOutput, volume: Volume, names: tuple[str, str],
              within_budget: bool) -> _SectionJudge | None:
        """The judge, or None without a teacher or when the sections are over the memory budget
        (warned); the output keeps an error image only when an error-map teacher judges now."""
        judge = cls(reviewer, out, volume, names) if reviewer is not None and within_budget else None
        if reviewer is not None and judge is None:
            log.warning("%s: sections over the memory budget, so not reviewed by the teacher", printable(volume.path))
        if judge is not None and reviewer.dense:
            out.add_error(reviewer.probability)
        else:
            out.remove_error()
        return judge

    def __call__(self, z: int, image: np.ndarray, prob: np.ndarray) -> float:
        file, output = self.names
        result = self.reviewer.review_section(image, prob, file=file, output=output, section=z,
                                              source=self.volume.path)
        if result.error is not None:
            self.out.error[z] = encode_error(result.error, self.reviewer.probability)
        return result.loss

    def resumed(self, finished: dict[int, dict]) -> dict[int, dict]:
        """The finished sections of an earlier run judged again from their written probabilities
        (a uint8 map read as p = v/255), as emkt.proofread.review_resumed judges images."""
        judged = {}
        for z in tqdm(sorted(finished), desc=f"review {printable(self.out.path.name)}", unit="section"):
            prob = decode_probability(self.out.probability[z])
            judged[z] = {**finished[z], LOSS: self(z, exact_zscore(self.volume.section(z)), prob)}
        return judged


def _without_loss(finished: dict[int, dict], reviewing: bool) -> dict[int, dict]:
    """Finished sections without an earlier teacher's losses: NaN when a teacher is given but
    cannot judge them (over the memory budget), no column without a teacher."""
    if reviewing:
        return {z: {**row, LOSS: float("nan")} for z, row in finished.items()}
    return {z: {k: v for k, v in row.items() if k != LOSS} for z, row in finished.items()}


def _open_output(output: Path, settings: dict, resume: bool, link_3d: bool) -> tuple[VolumeOutput, dict[int, dict]]:
    """The output and its finished sections (by section): those of an earlier run with the same
    settings when resuming, else none in a new output."""
    table = sections_table_path(output)
    if resume and output.is_dir() and table.is_file():
        out = VolumeOutput.open(output)
        # the source is named as given (relative or not), so only the settings of the result count
        different = sorted(k for k in settings if k != "source" and out.settings.get(k) != settings[k])
        if different:
            raise DataFileError(f"{output}: written with other settings ({', '.join(different)}); "
                                "run without --resume to predict it again")
        rows = pd.read_csv(table)
        return out, {int(row["section"]): row for row in rows.to_dict("records")}
    table.unlink(missing_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    return VolumeOutput.create(output, tuple(settings["shape"]), settings["probability"], settings, link_3d), {}


def _write_section(out: VolumeOutput, z: int, prob: np.ndarray, threshold: float, min_size: int,
                   probability: str) -> dict:
    """Write one section's probability, mask and instances; returns its row."""
    mask, instances = postprocess(prob, threshold, min_size)
    out.probability[z] = encode_probability(prob, probability)
    out.label("mask")[z] = mask
    out.label("instances")[z] = instances
    return {"section": z, "foreground_fraction": float(np.mean(mask > 0)), "objects": int(instances.max(initial=0))}


def _predict_section_in_bands(model: nn.Module, volume: Volume, out: VolumeOutput, z: int, input_size: int,
                              overlap: float, batch_size: int, device: torch.device, memory_mb: float,
                              threshold: float, min_size: int, probability: str) -> dict:
    """One section too large for ``memory_mb``, predicted band by band (emkt.predict.band_probabilities)
    into the output, its instances labelled in bands of the written mask (emkt.bands.label_in_bands)."""
    what = f"{printable(volume.path)} section {z}"
    image = LazyImage(Path(what), volume.section_rows(z), None)
    for start, stop, prob in band_probabilities(model, image, input_size, overlap, batch_size, device, memory_mb, what):
        out.probability[z, start:stop] = encode_probability(prob, probability)
        out.label("mask")[z, start:stop] = np.multiply(prob >= threshold, 255, dtype=np.uint8)
    mask = Volume(out.path, out.label("mask"), out.probability.shape, np.dtype(np.uint8))
    width = out.probability.shape[2]
    row, _, bands = label_in_bands(mask.section_rows(z), min_size, rows_within(memory_mb, width, LABEL_BYTES))
    for start, instances in bands:
        out.label("instances")[z, start:start + len(instances)] = instances
    return {"section": z, "foreground_fraction": row["foreground_fraction"], "objects": row["objects"]}


def _link(out: VolumeOutput, finished: dict[int, dict], memory_mb: float) -> int:
    """Write ``instances_3d`` (emkt.volumes.link_sections of the written instances); returns
    the number of 3D objects."""
    depth, height, width = out.probability.shape
    instances, linked = out.label("instances"), out.add_instances_3d()
    rows = min(height, rows_within(memory_mb, width, LABEL_BYTES))
    objects, labels_3d = link_sections(lambda z, start, stop: instances[z, start:stop],
                                       [int(finished[z]["objects"]) for z in range(depth)], height, rows)
    for z in range(depth):
        for start in range(0, height, rows):
            linked[z, start:start + rows] = labels_3d(z, start, start + rows)
    out.group.attrs["emkt"] = {**out.settings, "objects_3d": objects}
    return objects


def _write_sections(finished: dict[int, dict], path: Path, reviewed: bool = False) -> None:
    """The per-section table, in section order, written atomically; ``reviewed``: with the
    teacher's predicted loss of each section."""
    table = pd.DataFrame([finished[z] for z in sorted(finished)], columns=SECTION_COLUMNS + [LOSS] * reviewed)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
