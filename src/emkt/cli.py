"""The command line: ``python -m emkt predict`` segments a folder of new EM images with a
trained model; ``python -m emkt export`` writes a trained network as a bioimage.io model
package. Heavy imports (torch, MONAI, bioimageio) wait until a command runs, so --help is quick."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

PROG = "emkt"


def available_cores() -> int:
    """The cores this process may run on (a scheduler's allocation, not the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    """``emkt`` and its sub-commands."""
    parser = argparse.ArgumentParser(prog=PROG, description="Teacher-student segmentation of mitochondria "
                                     "in electron-microscopy images.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_predict_parser(commands)
    add_export_parser(commands)
    return parser


def add_predict_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``emkt predict``: the options of emkt.predict.predict_folder."""
    predict = commands.add_parser(
        "predict", help="segment a folder of images or volumes with a trained model",
        description="Segment every TIFF, PNG and JPEG image of a folder with a trained model. Writes "
                    "OUTPUT/probability/, OUTPUT/mask/ (0/255) and OUTPUT/instances/ (labels 1..n), one "
                    ".tiff per image, and OUTPUT/predictions.csv (one row per input file). Volumes (TIFF "
                    "stacks, Zarr / OME-Zarr folders, MRC files) are segmented section by section into "
                    "OUTPUT/volumes/<name>.ome.zarr, with a per-section table <name>.sections.csv.")
    predict.add_argument("--checkpoint", required=True, type=Path,
                         help="model checkpoint, e.g. results/models/student_expanded_anchored_0.pth")
    predict.add_argument("--input", required=True, type=Path, help="folder of images and volumes to segment, or one image or volume")
    predict.add_argument("--output", required=True, type=Path, help="folder the results are written to")
    predict.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: %(default)s)")
    predict.add_argument("--batch-size", type=int, default=16,
                         help="images of one shape per sliding-window call, and windows per forward pass "
                              "(default: %(default)s)")
    predict.add_argument("--overlap", type=float, default=0.25, help="overlap of the sliding windows, in [0, 1) (default: %(default)s)")
    predict.add_argument("--threshold", type=float, default=0.5, help="a pixel is foreground when p >= threshold (default: %(default)s)")
    predict.add_argument("--min-size", type=int, default=32,
                         help="smallest object kept in instances, in pixels, as the workflow's "
                              "evaluate.min_object_size (default: %(default)s)")
    predict.add_argument("--probability", choices=("float32", "uint8"), default="float32",
                         help="probability maps as float32 in [0, 1] or uint8 round(p * 255) "
                              "(default: %(default)s)")
    predict.add_argument("--recursive", action="store_true", help="also segment the images of sub-folders")
    predict.add_argument("--resume", action="store_true",
                         help="keep the results of images (and the sections of volumes) an earlier run finished")
    predict.add_argument("--memory-mb", type=float, default=4096,
                         help="memory for image arrays, in MB: a TIFF (or a volume's section) whose prediction "
                              "would need more is read, predicted and written in bands of rows, with the same "
                              "result; volumes are read and written a few sections at a time within it; model "
                              "and runtime come on top (default: %(default)g)")
    predict.add_argument("--link-3d", action="store_true",
                         help="for volumes: also label objects across sections (objects of adjacent sections "
                              "that overlap are one), as labels/instances_3d of the output")
    predict.add_argument("--teacher", type=Path, default=None,
                         help="a teacher checkpoint of the student's input size, e.g. "
                              "results/models/teacher_joint_error_map_0.pth: adds each image's predicted loss to "
                              "predictions.csv, OUTPUT/error/ (error-map teachers: predicted per-pixel error) and "
                              "OUTPUT/review_queue.csv (images, and objects, most likely wrong first); volumes are "
                              "reviewed per section (losses in <name>.sections.csv, the error map at error/ in "
                              "<name>.ome.zarr)")
    predict.add_argument("--review-figure", type=int, default=0, metavar="N",
                         help="with --teacher: draw the N images the teacher ranks worst into "
                              "OUTPUT/review/worst_images.png (default: none)")
    predict.add_argument("--threads", type=int, default=None,
                         help=f"CPU threads (default: all available, here {available_cores()})")
    predict.set_defaults(run=run_predict)
    return predict


def run_predict(args: argparse.Namespace) -> None:
    """Load the model and segment the folder (errors are ValueError / OSError, reported by main)."""
    from .checkpoints import SEGMENTATION_KINDS, load_model
    from .predict import predict_folder
    from .runtime import select_device, set_threads

    set_threads(args.threads or available_cores())
    try:
        device = select_device(args.device)
    except RuntimeError as error:  # an unknown device string or CUDA asked for without a GPU
        raise ValueError(f"--device {args.device}: {error}") from None
    if not args.input.exists():  # before the (slow) model load
        raise ValueError(f"{args.input}: input folder (or file) not found")
    if args.review_figure < 0 or (args.review_figure and args.teacher is None):
        raise ValueError(f"--review-figure {args.review_figure}: needs N >= 0 and a --teacher to rank the images")
    model, checkpoint = load_model(args.checkpoint, expected_kind=SEGMENTATION_KINDS)
    teacher = None
    if args.teacher is not None:
        from .proofread import check_teacher

        teacher, teacher_checkpoint = load_model(args.teacher, expected_kind="teacher")
        check_teacher(checkpoint, teacher_checkpoint, args.checkpoint, args.teacher)
    predict_folder(model, checkpoint, args.input, args.output, threshold=args.threshold, min_size=args.min_size,
                   overlap=args.overlap, batch_size=args.batch_size, device=device, probability=args.probability,
                   recursive=args.recursive, resume=args.resume,
                   memory_mb=args.memory_mb, link_3d=args.link_3d, teacher=teacher,
                   review_figure=args.review_figure)


def add_export_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``emkt export``: the options of emkt.export.export_model."""
    export = commands.add_parser(
        "export", help="write a trained network as a bioimage.io model package",
        description="Write a student, segmenter or ensemble checkpoint as a bioimage.io model package (format "
                    "0.5): OUTPUT/rdf.yaml with TorchScript and PyTorch state-dict weights, documentation, cover "
                    "and test tensors (--zip: also zipped, as OUTPUT/<OUTPUT name>.bioimageio.zip). "
                    "bioimageio.core's test must pass before anything is written.")
    export.add_argument("--checkpoint", required=True, type=Path,
                        help="model checkpoint, e.g. results/models/student_expanded_anchored_0.pth")
    export.add_argument("--output", required=True, type=Path,
                        help="folder of the package (new, or an earlier package, which is replaced)")
    export.add_argument("--sample", type=Path, default=None,
                        help="an EM image (TIFF, PNG, JPEG); of 16 evenly spaced crops of the network's input size, "
                             "the one with the most predicted mitochondria is the test input and the cover "
                             "(default: a generated EM-like image)")
    export.add_argument("--config", type=Path, nargs="+", default=None, metavar="YAML",
                        help="the run's config files, merged in order as Snakemake does (e.g. config.yaml mine.yaml); "
                             "shown in the documentation")
    export.add_argument("--table", type=Path, action="append", default=[], metavar="FILE",
                        help="a test table for the documentation: this network's evaluation CSV (results/eval/...) "
                             "or a Markdown file; repeat for several")
    export.add_argument("--name", default=None, help="the model's name (default: from the checkpoint)")
    export.add_argument("--description", default=None, help="one-sentence description (default: from the checkpoint)")
    export.add_argument("--authors", nargs="+", default=[], metavar="NAME", help="the package's authors")
    export.add_argument("--license", default="MIT",
                        help="SPDX licence of the weights, e.g. MIT or CC-BY-4.0 (default: %(default)s)")
    export.add_argument("--cite", nargs=2, action="append", default=[], metavar=("TEXT", "DOI_OR_URL"),
                        help="a citation to add (MONAI, and CEM-MitoLab for runs on it, are always cited); repeat "
                             "for several")
    export.add_argument("--zip", action="store_true",
                        help="also write the package as one zip file (deepImageJ installs and bioimage.io uploads "
                             "take a zip; it holds the weights a second time)")
    export.add_argument("--skip-test", action="store_true", help="do not run bioimageio.core's test of the package")
    export.add_argument("--threads", type=int, default=None,
                        help=f"CPU threads (default: all available, here {available_cores()})")
    export.set_defaults(run=run_export)
    return export


def run_export(args: argparse.Namespace) -> None:
    """Export the checkpoint and print where the package is."""
    from .config import load_config
    from .export import PackageInfo, export_model
    from .runtime import set_threads

    set_threads(args.threads or available_cores())
    config = load_config(*args.config) if args.config else None
    info = PackageInfo(name=args.name, description=args.description, authors=args.authors, license=args.license,
                       cite=[tuple(pair) for pair in args.cite])
    result = export_model(args.checkpoint, args.output, info, sample=args.sample, config=config, tables=args.table,
                          test=not args.skip_test, zip_package=args.zip)
    tested = "bioimageio.core's test passed" if result.test_status else "not tested (--skip-test)"
    written = f"{result.folder}/rdf.yaml" + (f" and {result.zip_path}" if result.zip_path else "")
    print(f"{written}: input {result.size}, TorchScript {result.torchscript}; {tested}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; expected failures print one line ``emkt <command>: error: ...`` and return 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        args.run(args)
    except (ValueError, OSError) as error:  # bad checkpoint, folder or file (DataFileError is a ValueError)
        message = " ".join(str(error).split())
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0
