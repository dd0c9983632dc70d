"""The ensemble of the members' checkpoints (evaluated as a reference) and its soft labels
(per-pixel mean and standard deviation over members) of every labelled train image."""

from jobsetup import data_files, save_segmentation_network, start_torch_job

seed = int(snakemake.wildcards.seed)
config, device = start_torch_job(snakemake, seed)

import logging

from emkt.checkpoints import SEGMENTATION_KINDS, ensemble_arch, load_model
from emkt.data import normalise_image, read_split
from emkt.models import EnsembleSegmenter
from emkt.inference import soft_labels
from emkt.store import LabelledStore, write_soft_labels

members, checkpoints = [], []
for path in snakemake.input.members:
    model, checkpoint = load_model(path, expected_kind=SEGMENTATION_KINDS)
    members.append(model)
    checkpoints.append(checkpoint)
sizes = {c["input_size"] for c in checkpoints}
if len(sizes) != 1:
    raise ValueError(f"ensemble members were trained at different input sizes {sorted(sizes)}: {list(snakemake.input.members)}")
ensemble = EnsembleSegmenter(members).to(device)
size = sizes.pop()
save_segmentation_network(snakemake, config, device, snakemake.output.model, ensemble, "ensemble",
                          ensemble_arch(checkpoints), {"condition": "ensemble", "seed": seed,
                                                       "members": list(snakemake.params.members)},
                          input_size=size, seed=seed)

files = data_files(snakemake, config)
store = LabelledStore(files.labelled)
ids = read_split(files.split, "train")["id"]
images = ((int(i), normalise_image(store.image(i))) for i in ids)
ev = config["evaluate"]
table = write_soft_labels(soft_labels(ensemble, images, size, ev["overlap"], ev["batch_size"], device,
                                      snakemake.params.temperature),
                          snakemake.output.pixels, snakemake.output.table)
logging.info("soft labels of %d train images from %d members at temperature %g", len(table), len(members),
             snakemake.params.temperature)
