"""The training stages on tiny generated data: they run, log per epoch, and are deterministic on CPU."""

import copy

import pandas as pd
import pytest
import torch

from conftest import merged
from emkt.models import ErrorMapPredictor
from emkt.runtime import seed_everything
from emkt.resume import Checkpointing, fingerprint
from emkt.training.expansion import Committee, ExpansionGuard, expand_student, labelled_foreground_fraction
from emkt.training.loaders import EpochSampler
from emkt.training.loop import CollapseGuard, Selection, TrainingCollapsed, check_finite, fit
from emkt.training.supervised import train_student_baseline
from emkt.training.teacher import joint_train, pretrain_teacher

CPU = torch.device("cpu")




def state_equal_dict(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_baseline_is_deterministic_on_cpu(tiny_config, tiny_data, tmp_path):
    torch.set_num_threads(1)
    runs = []
    for name in ("a", "b"):
        seed_everything(0)
        runs.append(train_student_baseline(tiny_config, 0, tiny_data, tmp_path / f"{name}.csv", CPU))
    assert state_equal(*runs)
    first, second = (pd.read_csv(tmp_path / f"{n}.csv").drop(columns="seconds") for n in ("a", "b"))
    pd.testing.assert_frame_equal(first, second)
    assert list(first.columns) == ["epoch", "train_bce", "val_iou", "val_dice", "val_bce", "val_predicted_fraction", "lr"]
    assert len(first) == tiny_config["student_baseline"]["epochs"]


def test_all_stages_chain_and_log(tiny_config, tiny_data, tmp_path):
    torch.set_num_threads(1)
    seed_everything(1)
    teacher = pretrain_teacher(tiny_config, 1, tiny_data, tmp_path / "pre.csv", CPU)
    pre = pd.read_csv(tmp_path / "pre.csv")
    assert {"train_mse", "val_mse", "val_mae", "val_spearman", "lr", "seconds"} <= set(pre.columns)
    pretrained_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    teacher, student = joint_train(tiny_config, 1, tiny_data, teacher, tmp_path / "joint.csv", CPU)
    joint = pd.read_csv(tmp_path / "joint.csv")
    assert {"train_bce", "train_teacher_predicted", "train_teacher_mse", "val_iou", "val_teacher_mae"} <= set(joint.columns)
    assert any(not torch.equal(v, teacher.state_dict()[k]) for k, v in pretrained_state.items())

    joint_state = {k: v.clone() for k, v in student.state_dict().items()}
    expanded, kept_epoch = expand_student(tiny_config, 1, tiny_data, student, [teacher], tmp_path / "expand.csv",
                                          CPU, variant="faithful")
    history = pd.read_csv(tmp_path / "expand.csv")
    # epoch 0 is the joint student, validated before expansion and a candidate itself
    assert list(history["epoch"]) == [0, 1, 2] and "train_teacher_predicted" in history
    assert {"train_predicted_fraction", "val_bce", "val_predicted_fraction"} <= set(history.columns)
    kept = int(history["val_iou"].idxmax())
    assert kept_epoch == kept and state_equal_dict(joint_state, expanded.state_dict()) == (kept == 0)
    # the frozen teacher was not changed by expansion
    assert all(not p.requires_grad for p in teacher.parameters())


@pytest.mark.slow
def test_error_map_teacher_and_every_expansion_variant(tiny_config, tiny_data, tmp_path):
    """The error-map teacher pretrains and joint-trains on per-pixel targets; each variant
    expands the same joint student, and only the alternating one changes its teacher."""
    torch.set_num_threads(1)
    config = merged(tiny_config, {"teacher_pretrain": {"epochs": 1}, "joint": {"epochs": 1},
                                  "expand": {"epochs": 1, "consistency": "kl"}})
    seed_everything(2)
    dense = pretrain_teacher(config, 2, tiny_data, tmp_path / "pre_map.csv", CPU, kind="error_map")
    assert isinstance(dense, ErrorMapPredictor)
    dense, joint = joint_train(config, 2, tiny_data, dense, tmp_path / "joint_map.csv", CPU)
    critic = pretrain_teacher(config, 2, tiny_data, tmp_path / "pre.csv", CPU)
    image = torch.randn(2, 1, 32, 32)
    prob = torch.rand(2, 1, 32, 32)
    dense.eval()
    error_map = dense(image, prob, dense=True)
    assert error_map.shape == (2, 1, 32, 32) and bool((error_map >= 0).all())
    assert torch.allclose(dense(image, prob), error_map.mean(dim=(1, 2, 3)))
    start = {k: v.clone() for k, v in joint.state_dict().items()}
    teachers = {"anchored": [critic], "error_map": [dense], "alternating": [critic], "committee": [critic, dense]}
    for variant, members in teachers.items():
        before = [{k: v.clone() for k, v in m.state_dict().items()} for m in members]
        student = copy.deepcopy(joint)
        student.load_state_dict(start)
        expand_student(config, 2, tiny_data, student, members, tmp_path / f"{variant}.csv", CPU, variant=variant)
        history = pd.read_csv(tmp_path / f"{variant}.csv")
        assert list(history["epoch"]) == [0, 1], variant
        # anchored: a labelled BCE and the consistency (KL) to the starting student each step
        assert {"train_bce", "train_consistency", "train_teacher_predicted"} <= set(history.columns), variant
        assert history["train_consistency"].iloc[1] >= -1e-6
        assert ("train_teacher_mse" in history) == (variant == "alternating")
        changed = [not state_equal_dict(b, m.state_dict()) for b, m in zip(before, members)]
        assert changed == [variant == "alternating"] * len(members), variant


def test_committee_combines_teachers_by_mean_or_max():
    class Constant(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, image, prob):
            return torch.full((len(image),), self.value) + 0 * prob.mean()

    image = torch.zeros(3, 1, 4, 4)
    assert torch.allclose(Committee([Constant(1.0), Constant(3.0)], "mean")(image, image), torch.full((3,), 2.0))
    assert torch.allclose(Committee([Constant(1.0), Constant(3.0)], "max")(image, image), torch.full((3,), 3.0))


def test_epoch_sampler_subsets_and_reshuffles():
    sampler = EpochSampler(10, seed=3, global_batch=2, limit=4)
    first = list(sampler)
    assert len(first) == 4 and len(set(first)) == 4
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert len(EpochSampler(5, 0, global_batch=1, limit=None)) == 5
    # the incomplete last batch is dropped; fewer items than one batch make one short batch
    assert len(list(EpochSampler(7, 0, global_batch=3))) == len(EpochSampler(7, 0, global_batch=3)) == 6
    assert len(list(EpochSampler(2, 0, global_batch=3))) == len(EpochSampler(2, 0, global_batch=3)) == 2


def test_non_finite_loss_stops_training_before_anything_is_saved(tmp_path):
    with pytest.raises(FloatingPointError, match="expand: train loss became nan"):
        check_finite({"loss": float("nan"), "pool_images": 8}, "expand")
    model = torch.nn.Linear(1, 1)
    resume = Checkpointing(tmp_path / "state.pt", "test")
    with pytest.raises(FloatingPointError, match="stage: train bce became inf"):
        fit(2, lambda epoch: {"bce": float("inf")}, lambda: {"iou": 0.5}, {"model": model}, [], Selection("iou"),
            tmp_path / "history.csv", "stage", resume=resume)
    assert not (tmp_path / "history.csv").exists() and not resume.path.exists()


class Interrupt(Exception):
    """Stands in for a kill between two epochs."""


def run_interrupted(monkeypatch, after_epochs: int, run):
    """Run ``run()`` but stop it when validation is called for epoch ``after_epochs + 1``."""
    import emkt.training.validation as validation_module

    calls = {"n": 0}
    real = validation_module.student_validation

    def validation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after_epochs:
            raise Interrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(validation_module, "student_validation", validation)
        with pytest.raises(Interrupt):
            run()


@pytest.mark.slow
def test_interrupted_stages_resume_to_the_uninterrupted_result(tiny_config, tiny_data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    config = merged(tiny_config, {"student_baseline": {"epochs": 4}, "joint": {"epochs": 3}})
    seed_everything(0)
    teacher = pretrain_teacher(config, 0, tiny_data, tmp_path / "pre.csv", CPU)
    pretrained = {k: v.clone() for k, v in teacher.state_dict().items()}

    def fresh_teacher():
        from emkt.models import build_teacher, teacher_arch
        model = build_teacher(teacher_arch(config, "critic"), config["input_size"])
        model.load_state_dict(pretrained)
        return model

    stages = {
        "baseline": lambda resume, history: train_student_baseline(config, 0, tiny_data, history, CPU, resume),
        "joint": lambda resume, history: joint_train(config, 0, tiny_data, fresh_teacher(), history, CPU, resume)[1],
    }
    for name, stage in stages.items():
        seed_everything(0)
        reference = stage(None, tmp_path / f"{name}_ref.csv")
        resume = Checkpointing(tmp_path / f"{name}.pt", fingerprint(config, [], stage=name))
        seed_everything(0)
        run_interrupted(monkeypatch, 2, lambda: stage(resume, tmp_path / f"{name}.csv"))
        assert torch.load(resume.path, weights_only=True)["epoch"] == 2  # plain values only: loads safely
        seed_everything(0)  # a new process: same seed, then the state takes over
        resumed = stage(resume, tmp_path / f"{name}.csv")
        assert state_equal(reference, resumed), name
        ref_rows, rows = (pd.read_csv(tmp_path / f"{n}.csv").drop(columns="seconds") for n in (f"{name}_ref", name))
        pd.testing.assert_frame_equal(ref_rows, rows)
        # a state from another config is ignored, not resumed
        other = Checkpointing(resume.path, fingerprint(config, [], stage="other"))
        assert other.load({}) is None


class RunsCode:
    """Unpickling it calls open(path, "w"): a stand-in for a planted state file that runs code."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_planted_training_state_is_ignored_without_running_it(tmp_path, caplog):
    marker, model = tmp_path / "code_ran", torch.nn.Linear(2, 1)
    resume = Checkpointing(tmp_path / "state.pt", "fp")
    torch.save({"format": 2, "fingerprint": "fp", "epoch": 3, "rng": RunsCode(marker)}, resume.path)
    before = copy.deepcopy(model.state_dict())
    assert resume.load({"model:model": model}) is None
    assert not marker.exists() and state_equal_dict(before, model.state_dict())
    assert f"ignoring {resume.path}: refused to load: the training state asks for the global io.open" in caplog.text


def test_a_collapsing_student_stops_with_a_clear_error(tiny_config, tiny_data, tmp_path):
    # A vanishing positive weight drives the student to all-background: Dice stays 0.
    config = merged(tiny_config, {"train": {"pos_weight": 1e-6, "lr": 0.05, "collapse_patience": 2},
                                  "student_baseline": {"epochs": 6}})
    seed_everything(0)
    with pytest.raises(TrainingCollapsed, match="validation Dice <= 0.001 for 2 consecutive epochs"):
        train_student_baseline(config, 0, tiny_data, tmp_path / "h.csv", CPU)
    history = pd.read_csv(tmp_path / "h.csv")
    assert len(history) < 6 and (history["val_dice"].tail(2) <= 0.001).all()


def test_collapse_guard_counts_only_trailing_epochs():
    guard = CollapseGuard(patience=2, min_dice=0.0)
    guard.check([{"val_dice": 0.0}, {"val_dice": 0.3}, {"val_dice": 0.0}], "s")
    with pytest.raises(TrainingCollapsed):
        guard.check([{"val_dice": 0.3}, {"val_dice": 0.0}, {"val_dice": 0.0}], "s")
    assert CollapseGuard.from_config({"train": {"collapse_patience": 0, "collapse_dice": 0.1}}) is None


def test_expansion_guard_stops_a_collapse_and_a_fooled_teacher():
    guard = ExpansionGuard(labelled_fraction=0.2, ratio=4.0, patience=2)
    start = {"epoch": 0, "val_bce": 0.30}

    def epoch(k, fraction, predicted, bce):
        return {"epoch": k, "train_predicted_fraction": fraction, "train_teacher_predicted": predicted, "val_bce": bce}

    assert guard([start]) is None
    assert guard([start, epoch(1, 0.15, 0.2, 0.31)]) is None
    assert "collapse" in guard([start, epoch(1, 0.04, 0.2, 0.31)])  # below 0.2 / 4
    assert "collapse" in guard([start, epoch(1, 0.9, 0.2, 0.31)])  # above 0.2 * 4
    fooled = [start, epoch(1, 0.2, 0.20, 0.32), epoch(2, 0.2, 0.15, 0.35)]
    assert "fooling the teacher" in guard(fooled)
    assert guard(fooled[:2]) is None and guard([*fooled[:2], epoch(2, 0.2, 0.15, 0.30)]) is None
    assert ExpansionGuard(0.2, None, 0)([start, epoch(1, 0.0, 0.1, 9.0)]) is None  # both rules off


def test_fit_keeps_the_starting_model_when_training_only_hurts_and_stops_early(tmp_path):
    model = torch.nn.Linear(2, 1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([0.5, 0.4, 0.3, 0.2])  # validation IoU: the start is the best

    def train_epoch(epoch):
        with torch.no_grad():
            model.weight.add_(1.0)
        return {"loss": 1.0 / epoch}

    def stop_after_two(rows):
        return "enough" if rows[-1]["epoch"] >= 2 else None

    resume = Checkpointing(tmp_path / "state.pt", "fp")
    best = fit(5, train_epoch, lambda: {"iou": next(scores)}, {"m": model}, [], Selection("iou"),
               tmp_path / "h.csv", "s", resume=resume, validate_start=True, early_stop=stop_after_two)
    assert state_equal_dict(start, best["m"])
    history = pd.read_csv(tmp_path / "h.csv")
    assert list(history["epoch"]) == [0, 1, 2] and list(history["val_iou"]) == [0.5, 0.4, 0.3]
    # a stage resumed after it stopped early does not train on
    again = fit(5, train_epoch, lambda: {"iou": 0.0}, {"m": model}, [], Selection("iou"),
                tmp_path / "h2.csv", "s", resume=resume, validate_start=True, early_stop=stop_after_two)
    assert state_equal_dict(start, again["m"]) and len(pd.read_csv(tmp_path / "h2.csv")) == 3


def test_labelled_foreground_fraction_weights_images_by_size(tiny_data):
    split = pd.read_csv(tiny_data.split)
    train = split[split["split"] == "train"]
    expected = (train["foreground_fraction"] * train["height"] * train["width"]).sum() / (
        train["height"] * train["width"]).sum()
    assert labelled_foreground_fraction(tiny_data) == pytest.approx(expected) and 0 < expected < 1
