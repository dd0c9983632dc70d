"""bioimage.io model packages (format 0.5) of trained segmentation networks: what
``python -m emkt export`` and the workflow's ``export_network`` rule write.

A package holds ``rdf.yaml`` (described with bioimageio.spec, not written by hand), the
network as TorchScript and as a PyTorch state dict with its architecture (``emkt_models.py``,
a copy of ``emkt.models``, which imports only torch and MONAI), a documentation page, a cover
image and a test input and output computed by emkt. The packaged network ends in the sigmoid,
so its output is the foreground probability; its input is z-scored per image by the package's
preprocessing, as emkt normalises images. bioimageio.spec and .core are imported here only, so
that no other command pays for them.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tifffile
import torch
import yaml
from torch import nn

from . import __version__, models
from .checkpoints import SEGMENTATION_KINDS, load_model
from .data import DataFileError
from .models import ProbabilityNetwork, count_parameters, size_multiple, student_arch

log = logging.getLogger(__name__)

INPUT_ID, OUTPUT_ID = "raw", "probability"
# bioimage.io's zero_mean_unit_variance divides by (std + eps); emkt's z-score by max(std, 1e-6):
# the same on any image with contrast.
ZSCORE_EPS = 1e-6
# The sample crops tried for the test tensors and the cover: this many per side, evenly spaced.
SAMPLE_CROPS_PER_SIDE = 4
ARCHITECTURE_FILE = "emkt_models.py"
# The files of a package.
FILES = {"torchscript": "weights_torchscript.pt", "state_dict": "weights_state_dict.pt",
         "environment": "environment.yaml", "documentation": "README.md", "cover": "cover.png",
         "test_input": "test_input.npy", "test_output": "test_output.npy",
         "sample_input": "sample_input.tif", "sample_output": "sample_output.tif"}
TAGS = ["electron-microscopy", "mitochondria", "semantic-segmentation", "2d", "pytorch", "monai", "emkt"]
# Citations every package carries: the library that implements the networks (the URL of its
# CITATION.cff). The training data's is added when the run's config says where they came from:
# the EMPIAR entry the workflow downloads (config.yaml's data.empiar), as the repository names
# no DOI for it.
MONAI_CITATION = ("MONAI: the implementation of the network (Cardoso et al., MONAI: An open-source framework "
                  "for deep learning in healthcare, 2022).", "https://monai.io")
CEM_MITOLAB_CITATION = ("CEM-MitoLab, the labelled mitochondria images the network was trained on "
                        "(EMPIAR-11037).", "https://ftp.ebi.ac.uk/empiar/world_availability/11037/")
DOI_PATTERN = re.compile(r"^10\.\d{4,9}/\S+$")


@dataclass
class PackageInfo:
    """What a package says about itself beyond the network: names, people, licence, citations.

    ``cite`` holds (text, DOI or URL) pairs, added to those every package carries."""

    name: str | None = None
    description: str | None = None
    authors: list[str] = field(default_factory=list)
    license: str = "MIT"
    cite: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ExportResult:
    """Where the package went, how its input size was declared and how it was checked."""

    folder: Path
    zip_path: Path | None
    size: str
    torchscript: str
    test_status: str | None


def export_model(checkpoint: str | Path, output: str | Path, info: PackageInfo | None = None, *,
                 sample: str | Path | None = None, config: dict | None = None,
                 tables: Sequence[str | Path] = (), test: bool = True, zip_package: bool = False) -> ExportResult:
    """Write the bioimage.io package of a student, segmenter or ensemble checkpoint to the folder
    ``output`` (rdf.yaml and its files); with ``zip_package`` also the same package zipped
    inside it (``<output name>.bioimageio.zip``, for deepImageJ and uploads).

    ``sample``: an image (TIFF, PNG, JPEG) whose input-size crop with the most predicted
    foreground (``sample_image``) becomes the test input; none: a generated EM-like image. ``config``: the run's config (documented; its data
    source picks the data citation). ``tables``: evaluation CSVs of this network
    (results/eval/...) or Markdown tables, shown in the documentation. ``test``: run
    bioimageio.core's test on the package and write nothing unless it passes.
    A folder that exists must be an earlier package (hold rdf.yaml): it is replaced whole."""
    checkpoint, output = Path(checkpoint), Path(output)
    info = info or PackageInfo()
    _check_output(output)
    network, payload = load_model(checkpoint, SEGMENTATION_KINDS)  # a teacher is refused here, naming the file
    check_info(info)
    wrapper = ProbabilityNetwork(payload["kind"], payload["arch"], payload["input_size"])
    wrapper.network.load_state_dict(network.state_dict())
    wrapper.eval()
    size = payload["input_size"]
    image, sample_name = sample_image(sample, size, wrapper)
    test_input = image.astype(np.float32)[None, None]
    with torch.no_grad():
        test_output = wrapper(torch.from_numpy(zscore(test_input))).numpy()
    tables_md = tables_markdown([Path(table) for table in tables])

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        files = staging / "files"
        how = write_files(files, wrapper, image, test_input, test_output)
        # a traced network keeps the shapes of its trace: only the training input size
        multiple = size_multiple(payload["kind"], payload["arch"]) if how == "scripted" else None
        minimum = size if multiple is None else math.ceil(size / multiple) * multiple
        size_text = (f"{size} x {size} pixels exactly" if multiple is None else
                     f"at least {minimum} x {minimum} pixels, in steps of {multiple}")
        (files / FILES["documentation"]).write_text(documentation(
            payload, checkpoint, info, how=how, size_text=size_text, sample_name=sample_name, config=config,
            tables=tables_md, tested=test, parameters=count_parameters(network)))
        descr = _described(payload, checkpoint, info, files, minimum=minimum, multiple=multiple, config=config)
        package = staging / "package"
        zip_path = package / f"{output.name}.bioimageio.zip" if zip_package else None
        _save(descr, package, zip_path)
        status = None
        if test:
            summary = validate_package(package / "rdf.yaml")
            status = summary.status
            if status != "passed":
                raise ValueError(f"{checkpoint}: the exported package failed bioimageio.core's test "
                                 f"({_failures(summary)})")
        _replace(package, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(output, output / zip_path.name if zip_path else None, size_text, how, status)


def write_files(files: Path, wrapper: nn.Module, image: np.ndarray, test_input: np.ndarray,
                test_output: np.ndarray) -> str:
    """A package's files but the documentation into the new folder ``files``: weights (returns
    how the TorchScript was made), architecture, environment, test and sample tensors, cover."""
    files.mkdir()
    scripted, how = to_torchscript(wrapper, test_input, test_output)
    scripted.save(str(files / FILES["torchscript"]))
    torch.save(wrapper.state_dict(), files / FILES["state_dict"])
    shutil.copyfile(models.__file__, files / ARCHITECTURE_FILE)
    (files / FILES["environment"]).write_text(_environment())
    np.save(files / FILES["test_input"], test_input)
    np.save(files / FILES["test_output"], test_output)
    tifffile.imwrite(files / FILES["sample_input"], image)
    tifffile.imwrite(files / FILES["sample_output"], test_output[0, 0])
    write_cover(image, test_output[0, 0], files / FILES["cover"])
    return how


def _check_output(output: Path) -> None:
    """Refuse to replace a folder that is not an earlier package: --output may be mistyped."""
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / "rdf.yaml").is_file())):
        raise ValueError(f"{output}: exists and is not a bioimage.io package (no rdf.yaml); choose a new folder")


def _replace(package: Path, output: Path) -> None:
    """Move the finished package to ``output``, replacing an earlier one only now."""
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
        output.rename(old / output.name)
        package.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        package.rename(output)


def zscore(image: np.ndarray) -> np.ndarray:
    """Per-image z-score of a (1, 1, H, W) array as the package's preprocessing computes it
    (float64 statistics over channel, y and x)."""
    values = image.astype(np.float64)
    return ((values - values.mean()) / (values.std() + ZSCORE_EPS)).astype(np.float32)


def sample_image(sample: str | Path | None, size: int, network: nn.Module | None = None) -> tuple[np.ndarray, str]:
    """(a size x size uint8 crop, where it came from): of ``sample`` (read as emkt predict reads
    images), the crop among up to SAMPLE_CROPS_PER_SIDE**2 evenly spaced ones where ``network``
    (a ProbabilityNetwork) finds the most foreground, so that the test tensors and the cover
    show mitochondria; the central crop without a network. A generated EM-like image when no
    sample is given."""
    if sample is None:
        from .synthetic import render_em_image, source_style

        image, _ = render_em_image(np.random.default_rng(0), (size, size), source_style(0))
        return image, "a generated EM-like image (emkt.synthetic, seed 0)"
    from .predict import read_any_image

    sample = Path(sample)
    if not sample.is_file():
        raise ValueError(f"{sample}: sample image not found")
    image = read_any_image(sample)
    height, width = image.shape
    if height < size or width < size:
        raise DataFileError(f"{sample}: the sample image is {height} x {width}, smaller than the network's input "
                            f"size {size} x {size}; give a larger one")
    centre = ((height - size) // 2, (width - size) // 2)
    if network is None:
        return _crop(image, centre, size), f"the central {size} x {size} crop of `{sample.name}`"
    corners = [(top, left) for top in _spaced(height - size) for left in _spaced(width - size)]
    with torch.no_grad():
        foreground = [float((network(torch.from_numpy(zscore(_crop(image, corner, size)[None, None])))
                             >= 0.5).float().mean()) for corner in corners]
    top, left = corners[int(np.argmax(foreground))]  # the first of equals: all empty gives the top left
    return (_crop(image, (top, left), size),
            f"the {size} x {size} crop at row {top}, column {left} of `{sample.name}` (of "
            f"{len(corners)} evenly spaced crops, the one the network finds the most mitochondria in)")


def _spaced(span: int) -> list[int]:
    """Up to SAMPLE_CROPS_PER_SIDE evenly spaced offsets in [0, span]."""
    return sorted({round(span * k / (SAMPLE_CROPS_PER_SIDE - 1)) for k in range(SAMPLE_CROPS_PER_SIDE)})


def _crop(image: np.ndarray, corner: tuple[int, int], size: int) -> np.ndarray:
    return image[corner[0]:corner[0] + size, corner[1]:corner[1] + size]


def to_torchscript(wrapper: nn.Module, test_input: np.ndarray,
                   expected: np.ndarray) -> tuple[torch.jit.ScriptModule, str]:
    """The network as TorchScript and how it was made: scripted where it compiles (the
    convolutional networks: any input size their downsampling allows), else traced on the test
    input (ViTAutoEnc, SwinUNETR: the trace keeps shapes of that input size only). Either must
    give the eager network's output on the test input."""
    example = torch.from_numpy(zscore(test_input))
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, which bioimage.io does not take; the
        # tracer's warnings about sizes are what the fixed input size of traced networks answers
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            module, how = torch.jit.script(wrapper), "scripted"
        except Exception as error:  # TorchScript's compiler raises several types for unsupported Python
            log.info("TorchScript cannot compile %s; tracing it at %s x %s, the package's fixed input size",
                     type(wrapper.network).__name__, *example.shape[-2:])
            log.debug("TorchScript's compiler: %s", error)
            with torch.no_grad():
                module, how = torch.jit.trace(wrapper, example, check_trace=False), "traced"
    with torch.no_grad():
        difference = float(np.abs(module(example).numpy() - expected).max())
    if difference > 1e-4:
        raise ValueError(f"the {how} TorchScript network differs from the network by {difference:.2g} on the test input")
    return module, how


def write_cover(image: np.ndarray, probability: np.ndarray, path: Path) -> None:
    """A 2:1 PNG (bioimage.io's cover shape): the test input and its probability map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("input")
    axes[1].imshow(probability, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("mitochondria probability")
    for axis in axes:
        axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _environment() -> str:
    """The conda environment the state-dict weights need: PyTorch and MONAI of this export."""
    import monai

    torch_version = torch.__version__.split("+")[0]
    return yaml.safe_dump({"name": "emkt-export", "channels": ["conda-forge", "nodefaults"],
                           "dependencies": ["python>=3.10", f"pytorch=={torch_version}", "pip",
                                            {"pip": [f"monai=={monai.__version__}"]}]}, sort_keys=False)


def network_name(payload: dict) -> str:
    """A short name of a checkpoint's network, e.g. 'UNet student' or 'ensemble of 3'."""
    kind, arch = payload["kind"], payload["arch"]
    if kind == "ensemble":
        return f"ensemble of {len(arch['members'])} networks"
    kind_type = student_arch(arch)["type"] if kind == "student" else arch["type"]
    names = {"vitautoenc": "ViTAutoEnc", "swinunetr": "SwinUNETR", "unet": "UNet", "basicunet": "BasicUNet",
             "segresnet": "SegResNet"}
    return f"{names.get(kind_type, kind_type)} {kind}"


def documentation(payload: dict, checkpoint: Path, info: PackageInfo, *, how: str, size_text: str,
                  sample_name: str, config: dict | None, tables: list[str], tested: bool, parameters: int) -> str:
    """The package's README.md: the network, its input and output, its training run (from the
    config) and its validation (the package test, the run's test tables)."""
    name = info.name or _default_name(payload, checkpoint)
    extra = payload.get("extra") or {}
    lines = [f"# {name}", "", info.description or _default_description(payload), "",
             "## The network", "",
             f"- {network_name(payload)} ({parameters:,} parameters), from `{checkpoint.name}` "
             f"(written by emkt {payload.get('emkt_version', 'unknown')}; exported by emkt {__version__}).",
             f"- Architecture (the checkpoint's `arch`): `{yaml.safe_dump(payload['arch'], default_flow_style=True).strip()}`; "
             f"trained on {payload['input_size']} x {payload['input_size']} crops.",
             ]
    if "kept_epoch" in extra:
        start = f", fine-tuned from the `{extra['fine_tuned_from']}` network" if extra.get("fine_tuned_from") else ""
        lines.append(f"- Weights of epoch {extra['kept_epoch']} (the epoch its stage kept on validation){start}.")
    lines += [
        f"- Weights: TorchScript ({how}) and a PyTorch state dict; `{ARCHITECTURE_FILE}` (emkt's `models` module, "
        "which needs only PyTorch and MONAI, see `environment.yaml`) rebuilds the network as "
        "`ProbabilityNetwork(kind, arch, input_size)` with the values in `rdf.yaml`.",
        "",
        "## Input and output", "",
        f"- Input `{INPUT_ID}`: one grey EM image per batch entry, axes (batch, channel, y, x) with one channel, "
        f"{size_text}. Any grey values: the package's preprocessing z-scores each image (`zero_mean_unit_variance` "
        "over channel, y and x), as emkt does (`" + payload["normalisation"] + "`).",
        f"- Output `{OUTPUT_ID}`: the mitochondria probability of each pixel, in [0, 1], the input's size. The sigmoid "
        "is part of the packaged network, so there is no postprocessing. emkt's masks are `probability >= 0.5`, its "
        "instances the connected components of the mask (not part of the package).",
        f"- emkt predicts large images in overlapping windows of {payload['input_size']} x {payload['input_size']} "
        "pixels, each z-scored with the whole image's statistics; tools that tile the image should use tiles of "
        "that size with some overlap to match it.",
        "",
    ]
    if config is not None:
        lines += _training_section(config)
    lines += ["## Validation", "",
              f"- Test tensors: `{FILES['test_input']}` is {sample_name}, as float32 grey values; `{FILES['test_output']}` "
              "is emkt's probability for it (z-score, network, sigmoid).",
              ("- `emkt export` ran bioimageio.core's `test_model` on this package before writing it: both weight "
               "formats reproduced the test output, and the declared input sizes ran." if tested else
               "- This package was exported with `--skip-test`: bioimageio.core's test was not run."),
              ""]
    for table in tables:
        lines += [table, ""]
    return "\n".join(lines)


def _training_section(config: dict) -> list[str]:
    data, train = config.get("data", {}), config.get("train", {})
    shown = {key: value for key, value in config.items() if key not in ("resources", "distributed", "export")}
    return ["## Training", "",
            f"- Data source `{data.get('source')}`; split {config.get('split')}; seeds {config.get('seeds')}; "
            f"batch size {train.get('batch_size')}, learning rate {train.get('lr')}.",
            "- The run's whole config (docs/configuration.md of emkt explains every key):", "",
            "```yaml", yaml.safe_dump(shown, sort_keys=False).rstrip(), "```", ""]


def tables_markdown(paths: Sequence[Path]) -> list[str]:
    """The test tables for the documentation: Markdown files as they are, and emkt evaluation
    CSVs of this network (long format, results/eval/...) together as one table of metrics by
    dataset."""
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path}: table not found")
    texts = [f"From `{path.name}`:\n\n" + path.read_text().strip() for path in paths if path.suffix.lower() == ".md"]
    csvs = [path for path in paths if path.suffix.lower() != ".md"]
    if not csvs:
        return texts
    from .tables import read_long_tables

    long = read_long_tables(csvs)  # ValueError naming a file that is not in the long format
    wide = long.pivot_table(index="metric", columns="dataset", values="value", aggfunc="mean", sort=False)
    header = ["metric", *[str(c) for c in wide.columns]]
    rows = ["| " + " | ".join([str(metric), *("–" if np.isnan(v) else f"{v:.4g}" for v in values)]) + " |"
            for metric, values in wide.iterrows()]
    seeds = ", ".join(str(seed) for seed in sorted(long["seed"].unique()))
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows])
    sources = ", ".join(f"`{Path(*path.parts[-2:])}`" for path in csvs)  # eval/x.csv, <external set>/x.csv
    return [f"Metrics of this network (seed {seeds}) from emkt's evaluation ({sources}): "
            "`test` is the run's test split, `val` its validation split (used for choosing, so not a test), other "
            "columns external labelled sets; thresholds and object sizes as in the run's `evaluate` config.\n\n"
            + table, *texts]


def _default_name(payload: dict, checkpoint: Path) -> str:
    return f"emkt mitochondria {network_name(payload)} ({checkpoint.stem})"


def _default_description(payload: dict) -> str:
    return (f"Semantic segmentation of mitochondria in 2D electron-microscopy images: a {network_name(payload)} "
            "trained with emkt (teacher-student knowledge transfer), giving each pixel's mitochondria probability.")


def citations(info: PackageInfo, config: dict | None) -> list[tuple[str, str]]:
    """The package's (text, DOI or URL) citations: MONAI, CEM-MitoLab when the run trained on
    the EMPIAR data, then the user's."""
    data = [CEM_MITOLAB_CITATION] if config is not None and config.get("data", {}).get("source") == "empiar" else []
    return [MONAI_CITATION, *data, *info.cite]


def check_info(info: PackageInfo) -> None:
    """ValueError on one line for a licence, author name or citation bioimage.io refuses,
    before any work is done."""
    from bioimageio.spec.model import v0_5 as spec
    from pydantic import ValidationError

    try:
        spec.LicenseId(info.license)
    except ValidationError:
        raise ValueError(f"licence {info.license!r} is not an SPDX identifier bioimage.io accepts "
                         "(e.g. MIT, CC-BY-4.0, Apache-2.0)") from None
    for name in info.authors:
        if not name.strip() or "/" in name:
            raise ValueError(f"author {name!r}: bioimage.io needs a name without '/'")
    for text, link in info.cite:
        if not text.strip() or not (DOI_PATTERN.match(link) or re.match(r"^https?://\S+$", link)):
            raise ValueError(f"citation {text!r} {link!r}: needs a text and a DOI (10.xxxx/...) or an http(s) URL")


def _described(payload: dict, checkpoint: Path, info: PackageInfo, files: Path, **kwargs: Any) -> Any:
    """``describe``, with a value bioimage.io refuses reported on one line."""
    from pydantic import ValidationError

    try:
        return describe(payload, checkpoint, info, files, **kwargs)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ValueError(f"{checkpoint}: bioimage.io refuses the description ({problems})") from None


def describe(payload: dict, checkpoint: Path, info: PackageInfo, files: Path, *, minimum: int,
             multiple: int | None, config: dict | None) -> Any:
    """The bioimageio.spec 0.5 ModelDescr of a package whose files are in ``files``. The input
    side is ``minimum`` plus any number of ``multiple`` (None: exactly ``minimum``). The minimum
    is the training size: on smaller tiles the networks' instance norms would see other statistics."""
    from bioimageio.spec.model import v0_5 as spec

    size = payload["input_size"]
    side: Any = minimum if multiple is None else spec.ParameterizedSize(min=minimum, step=multiple)
    space = [spec.SpaceInputAxis(id=spec.AxisId(axis), size=side) for axis in ("y", "x")]
    raw = spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID),
        description="A 2D grey electron-microscopy image; any grey values (it is z-scored per image).",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("em")]), *space],
        test_tensor=spec.FileDescr(source=files / FILES["test_input"]),
        sample_tensor=spec.FileDescr(source=files / FILES["sample_input"]),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
                       spec.ZeroMeanUnitVarianceDescr(kwargs=spec.ZeroMeanUnitVarianceKwargs(
                           axes=[spec.AxisId("channel"), spec.AxisId("y"), spec.AxisId("x")], eps=ZSCORE_EPS))],
    )
    same_size = [spec.SpaceOutputAxis(id=spec.AxisId(axis), size=spec.SizeReference(
        tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(axis))) for axis in ("y", "x")]
    probability = spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID),
        description="Mitochondria probability of each pixel (the network's sigmoid); a mask is probability >= 0.5.",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("mitochondria")]), *same_size],
        test_tensor=spec.FileDescr(source=files / FILES["test_output"]),
        sample_tensor=spec.FileDescr(source=files / FILES["sample_output"]),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    torch_version = spec.Version(torch.__version__.split("+")[0])
    architecture = spec.ArchitectureFromFileDescr(
        source=files / ARCHITECTURE_FILE, callable=spec.Identifier(ProbabilityNetwork.__name__),
        kwargs={"kind": payload["kind"], "arch": payload["arch"], "input_size": size})
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=files / FILES["state_dict"], architecture=architecture, pytorch_version=torch_version,
            dependencies=spec.FileDescr(source=files / FILES["environment"])),
        torchscript=spec.TorchscriptWeightsDescr(
            source=files / FILES["torchscript"], pytorch_version=torch_version, parent="pytorch_state_dict"),
    )
    cite = [spec.CiteEntry(text=text, **({"doi": spec.Doi(link)} if DOI_PATTERN.match(link) else
                                         {"url": spec.HttpUrl(link)})) for text, link in citations(info, config)]
    return spec.ModelDescr(
        name=info.name or _default_name(payload, checkpoint),
        description=info.description or _default_description(payload),
        authors=[spec.Author(name=name) for name in info.authors],
        cite=cite,
        license=spec.LicenseId(info.license),
        tags=[*TAGS, payload["kind"]],
        documentation=spec.FileDescr(source=files / FILES["documentation"]),
        covers=[spec.FileDescr(source=files / FILES["cover"])],
        inputs=[raw],
        outputs=[probability],
        weights=weights,
        config=spec.Config(emkt={  # type: ignore[call-arg]  (Config keeps extra keys)
            "checkpoint": checkpoint.name, "kind": payload["kind"], "arch": payload["arch"], "input_size": size,
            "normalisation": payload["normalisation"], "emkt_version": payload.get("emkt_version"),
            "exported_by": __version__, "extra": payload.get("extra") or {}}),
    )


def _save(descr: Any, package: Path, zip_path: Path | None) -> None:
    """The package as a folder (rdf.yaml and its files) and, given a path, zipped inside it
    (bioimageio.spec validates the zip it writes)."""
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder
    from bioimageio.spec.model.v0_5 import ModelDescr

    if not isinstance(descr, ModelDescr):  # an InvalidDescr: the description itself is wrong
        raise ValueError(f"invalid bioimage.io description: {descr.validation_summary.format()}")
    save_bioimageio_package_as_folder(descr, output_path=package)
    if zip_path is not None:
        save_bioimageio_package(descr, output_path=zip_path)


def validate_package(rdf: str | Path, weight_format: str | None = None) -> Any:
    """bioimageio.core's own test of a package (rdf.yaml or zip): loads it, checks the files,
    runs each weight format on the test input against the test output and on the declared
    input sizes. Returns the ValidationSummary (``.status`` 'passed' or 'failed')."""
    from bioimageio.core import test_model

    return test_model(rdf, weight_format=weight_format, devices=["cpu"])


def _failures(summary: Any) -> str:
    """The failed checks of a ValidationSummary, on one line."""
    failed = [f"{detail.name}: {'; '.join(e.msg for e in detail.errors)}" for detail in summary.details
              if detail.status == "failed"]
    return " | ".join(failed) or summary.status
