"""Write one trained network as a bioimage.io model package (config 'export'): what
`python -m emkt export` does, as a step of the workflow."""

from jobsetup import start_torch_job

config, _ = start_torch_job(snakemake)

from emkt.export import PackageInfo, export_model

settings = snakemake.params.export
info = PackageInfo(authors=list(settings.get("authors") or []), license=settings["license"],
                   cite=[(entry["text"], entry.get("doi") or entry["url"]) for entry in settings.get("cite") or []])
export_model(snakemake.input.model, snakemake.output[0], info,
             sample=snakemake.input.sample[0] if snakemake.input.sample else None, config=config,
             tables=list(snakemake.input.tables), zip_package=bool(settings.get("zip")))
