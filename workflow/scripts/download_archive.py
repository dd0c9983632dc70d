"""Download one EMPIAR archive: resumable, retried, size/checksum/CRC-verified before it counts."""

from jobsetup import start_job

config = start_job(snakemake)

from emkt.download import archive_url, fetch_archive

archive = snakemake.params.archive
fetch_archive(archive_url(snakemake.params.url_base, archive["entry"], archive["file"]), snakemake.output[0],
              checksum=archive["checksum"], retries=snakemake.params.retries, timeout_s=snakemake.params.timeout_s)
