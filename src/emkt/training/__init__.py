"""The training stages, one module per kind of stage, each run by a rule of the workflow
(workflow/rules/*.smk -> workflow/scripts/<rule>.py -> the function here):

- supervised: ``train_student_baseline`` (rule train_student_baseline), ``train_segmenter``
  (train_segmenter);
- teacher: ``pretrain_teacher`` (pretrain_teacher), ``joint_train`` (joint_train);
- expansion: ``expand_student`` (expand_student), with its variants and ``Committee``;
- distillation: ``distill_from_soft_labels`` (distill_ensemble), ``feature_distill``
  (feature_distill);
- self_training: ``self_train`` (train_pseudo_labelled), and ``fit_on_pool``, the loop of both
  pool conditions;
- mean_teacher: ``mean_teacher_train`` (train_mean_teacher).

Every stage runs the one loop of emkt.training.loop (``fit``) with its own epoch and
validation; emkt.training.loaders holds the samplers and loaders and
emkt.training.validation the student's validation. The files a stage reads are named by
emkt.store.DataFiles.
"""

from .distillation import distill_from_soft_labels, feature_distill
from .expansion import expand_student
from .loop import KeptStudent, TrainingCollapsed
from .mean_teacher import mean_teacher_train
from .self_training import self_train
from .supervised import train_segmenter, train_student_baseline
from .teacher import joint_train, pretrain_teacher

__all__ = ["KeptStudent", "TrainingCollapsed", "distill_from_soft_labels", "expand_student", "feature_distill",
           "joint_train", "mean_teacher_train", "pretrain_teacher", "self_train", "train_segmenter", "train_student_baseline"]
