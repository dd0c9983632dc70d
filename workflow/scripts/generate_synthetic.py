"""Generate the EM-like demo data set (labelled, CEM-MitoLab layout, and an unlabelled pool)."""

from jobsetup import start_job

config = start_job(snakemake)

from pathlib import Path

from emkt.synthetic import generate_labelled_set, generate_unlabelled_pool

settings = config["data"]["synthetic"]
out = Path(snakemake.output[0])
generate_labelled_set(out / "cem_mitolab", settings["n_sources"], settings["images_per_source"],
                      tuple(settings["image_size"]), settings["seed"])
generate_unlabelled_pool(out / "unlabelled", settings["unlabelled_images"], tuple(settings["image_size"]),
                         settings["seed"] + 1)
