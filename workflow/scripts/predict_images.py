"""Segment a folder of new images and volumes with one trained network (config 'predict'): what
`python -m emkt predict` does, as a step of the workflow."""

from jobsetup import start_torch_job

config, device = start_torch_job(snakemake)

from emkt.checkpoints import SEGMENTATION_KINDS, load_model
from emkt.predict import predict_folder
from emkt.proofread import check_teacher

model, checkpoint = load_model(snakemake.input.model, expected_kind=SEGMENTATION_KINDS)
teacher = None
if snakemake.input.teacher:  # config 'predict' entry 'teacher': the same seed's teacher proofreads
    teacher, teacher_checkpoint = load_model(snakemake.input.teacher[0], expected_kind="teacher")
    check_teacher(checkpoint, teacher_checkpoint, snakemake.input.model, snakemake.input.teacher[0])
ev = config["evaluate"]
predict_folder(model, checkpoint, snakemake.params.folder, snakemake.output[0], threshold=ev["threshold"],
               min_size=ev["min_object_size"], overlap=ev["overlap"], batch_size=ev["batch_size"], device=device,
               probability=snakemake.params.probability, recursive=True,
               memory_mb=snakemake.params.memory_mb, link_3d=snakemake.params.link_3d, teacher=teacher)
