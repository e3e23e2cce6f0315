"""mbrl.training and mbrl.checkpoints on a toy pushing dataset (real entry points, tiny budgets)."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from toy_pushing import pushing_episodes
from mbrl import checkpoints, store, training
from mbrl.checkpoints import check_model_for_env, export_model, load_model
from mbrl.configs import TrainConfig
from mbrl.errors import UserError
from mbrl.evaluation import episode_tensors, rollout_errors
from mbrl.training import run_training

EPISODES, STEPS = 30, 16


def write_toy_dataset(root: Path, n: int = EPISODES, steps: int = STEPS, seed: int = 0, env: str = "push-box") -> Path:
    for i, ep in enumerate(pushing_episodes(n, steps, seed=seed)):
        store.write_episode(root, i, ep)
    store.write_json_atomic(root / store.META_NAME, {"schema_version": store.SCHEMA_VERSION, "env": env, "seed": seed})
    return root


def train_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), epochs=3, batch_size=64, lr=2e-3, rollout_steps=3,
                val_fraction=0.2, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "kp"
    path = run_training(train_cfg(data, out))
    assert path == out / "checkpoint.pt"
    return out


def read_log(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_directory(run):
    assert [int(r["epoch"]) for r in read_log(run)] == [1, 2, 3]
    row = read_log(run)[-1]
    assert set(row) == set(training.LOG_FIELDS)
    assert float(row["val_err_5step_m"]) > 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["epochs"] == 3 and cfg["model_name"] == "keypoint"
    assert cfg["datasets"][0]["num_train"] == 24 and cfg["datasets"][0]["num_val"] == 6
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["format_version"] == 1 and ckpt["model_name"] == "keypoint"
    assert ckpt["dataset_meta"]["env"] == "push-box"
    assert ckpt["dataset_meta"]["split"]["num_train"] == 24
    assert ckpt["train_state"]["epoch"] == 3 and "optimizer" in ckpt["train_state"]
    assert not list(run.glob(".*.tmp"))


def test_trained_model_beats_do_nothing_baseline(run, data):
    model, _ = load_model(run, "cpu")
    _, episodes = store.load_dataset(data, keys=model.dataset_keys)
    errs = rollout_errors(model, episode_tensors(model, episodes[24:]), (1, 5))
    assert errs[5]["baseline"] / errs[5]["model"] > 3, errs
    assert errs[1]["baseline"] / errs[1]["model"] > 2, errs


def test_checkpoint_round_trip_gives_identical_predictions(run, tmp_path):
    model, ckpt = load_model(run, "cpu")
    same, _ = load_model(run / "checkpoint.pt", "cpu")
    copy = export_model(run, tmp_path / "export.pt")
    exported, ckpt2 = load_model(copy, "cpu")
    assert ckpt2["train_state"] is None and ckpt2["model_config"] == model.config()
    s0 = torch.tensor([[0.0, 0, .05, .05, -.05, .05, -.05, -.05, .05, -.05, .09, 0.01]])
    u = torch.rand(16, 6, 2) * 0.06 - 0.03
    with torch.no_grad():
        ref = model.rollout(s0, u)
        assert torch.equal(ref, same.rollout(s0, u))
        assert torch.equal(ref, exported.rollout(s0, u))
    assert not model.training


def test_a_half_precision_export_is_smaller_and_predicts_the_same_to_float16_precision(run, tmp_path):
    model, _ = load_model(run, "cpu")
    full, half = export_model(run, tmp_path / "full.pt"), export_model(run, tmp_path / "half.pt", half=True)
    assert half.stat().st_size < 0.75 * full.stat().st_size
    exported, _ = load_model(half, "cpu")
    assert all(p.dtype == torch.float32 for p in exported.parameters())
    s0 = torch.tensor([[0.0, 0, .05, .05, -.05, .05, -.05, -.05, .05, -.05, .09, 0.01]])
    u = torch.rand(16, 6, 2) * 0.06 - 0.03
    with torch.no_grad():
        torch.testing.assert_close(exported.rollout(s0, u), model.rollout(s0, u), atol=2e-3, rtol=0)


def test_resume_continues_from_saved_epoch(run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    # a row written after the last checkpoint (killed between the two) must not survive
    with open(resumed / "log.csv", "a") as f:
        f.write("4,1,1,1,1,1\n")
    run_training(train_cfg("ignored-on-resume", resumed, epochs=4, resume=True))
    assert [int(r["epoch"]) for r in read_log(resumed)] == [1, 2, 3, 4]
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["train_state"]["epoch"] == 4
    # already done: nothing changes
    before = (resumed / "checkpoint.pt").read_bytes()
    run_training(train_cfg("ignored-on-resume", resumed, epochs=2, resume=True))
    assert (resumed / "checkpoint.pt").read_bytes() == before
    assert len(read_log(resumed)) == 4


def test_resume_reproduces_an_uninterrupted_run(data, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "MIN_STEPS_PER_EPOCH", 5)
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_training(train_cfg(data, straight, epochs=2))
    run_training(train_cfg(data, split, epochs=1))
    run_training(train_cfg(data, split, epochs=2, resume=True))
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(split / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_fine_tunes_from_another_run_and_keeps_its_held_out_episodes(run, data, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "MIN_STEPS_PER_EPOCH", 5)
    tuned, fresh = tmp_path / "tuned", tmp_path / "fresh"
    # a different --val-fraction: the init run's held-out episodes must stay held out anyway
    run_training(train_cfg(data, tuned, epochs=1, lr=1e-4, rollout_steps=5, val_fraction=0.5, init=str(run)))
    run_training(train_cfg(data, fresh, epochs=1, lr=1e-4, rollout_steps=5))
    cfg = json.loads((tuned / "config.json").read_text())
    assert cfg["datasets"][0]["num_train"] == 24 and cfg["train"]["init"] == str(run)
    trained = float(read_log(run)[-1]["val_err_5step_m"])
    assert float(read_log(tuned)[-1]["val_err_5step_m"]) < 1.5 * trained
    assert float(read_log(fresh)[-1]["val_err_5step_m"]) > 2 * trained
    ckpt = torch.load(tuned / "checkpoint.pt", weights_only=True)
    assert ckpt["train_state"]["epoch"] == 1 and ckpt["train_state"]["train_config"]["rollout_steps"] == 5


def test_init_from_a_missing_run_or_another_model_is_refused(run, data, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run_training(train_cfg(data, tmp_path / "a", init=str(tmp_path / "nothing")))
    with pytest.raises(UserError, match="is a 'keypoint' model, not 'pixel'"):
        run_training(train_cfg(data, tmp_path / "b", model="pixel", init=str(run)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_model_args_set_options_of_a_new_run_and_over_an_init_run(run, data, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "MIN_STEPS_PER_EPOCH", 2)
    run_training(train_cfg(data, tmp_path / "small", epochs=1, model_args="hidden=32, activation=tanh"))
    small, _ = load_model(tmp_path / "small")
    assert small.config()["hidden"] == 32 and small.config()["activation"] == "tanh"
    run_training(train_cfg(data, tmp_path / "tuned", epochs=1, init=str(run), model_args="augment_rotation=false"))
    tuned, _ = load_model(tmp_path / "tuned")
    trained, _ = load_model(run)
    assert tuned.config() == {**trained.config(), "augment_rotation": False}


@pytest.mark.parametrize("text,match", [("nope=1", "has no option 'nope'"), ("hidden", "expected KEY=VALUE"),
                                        ("activation=nope", "does not fit")])
def test_bad_model_args_are_one_clear_error_before_anything_is_written(data, tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        run_training(train_cfg(data, tmp_path / "run", model_args=text))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_existing_run_needs_resume(run, data):
    with pytest.raises(UserError, match="--resume"):
        run_training(train_cfg(data, run))


def test_resume_without_checkpoint(data, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        run_training(train_cfg(data, tmp_path / "new", resume=True))


def test_dataset_of_another_env_is_refused(tmp_path):
    other = write_toy_dataset(tmp_path / "pile", n=4, steps=6, env="pile")
    with pytest.raises(UserError, match="is for push-box.*pile"):
        run_training(train_cfg(other, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("field,value", [("epochs", 0), ("lr", -1.0), ("batch_size", 0),
                                         ("rollout_steps", 0), ("val_fraction", 1.0), ("model", "nope")])
def test_bad_options(data, tmp_path, field, value):
    with pytest.raises(UserError):
        run_training(train_cfg(data, tmp_path / "run", **{field: value}))


def test_missing_and_corrupt_checkpoints(run, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nothing.pt")
    with pytest.raises(UserError, match="no checkpoint in run directory"):
        load_model(tmp_path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="corrupt checkpoint"):
        load_model(garbage)
    truncated = tmp_path / "truncated.pt"
    data = (run / "checkpoint.pt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt checkpoint"):
        load_model(truncated)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    for bad, match in [({**ckpt, "format_version": 99}, "format version 99"),
                       ({**ckpt, "model_name": "nope"}, "unknown dynamics model"),
                       ({**ckpt, "model_config": {**ckpt["model_config"], "hidden": 8}}, "weights do not fit"),
                       ([1, 2, 3], "not a model checkpoint")]:
        path = tmp_path / "bad.pt"
        torch.save(bad, path)
        with pytest.raises(UserError, match=match):
            load_model(path)
    monkeypatch.setattr(checkpoints, "PRETRAINED_DIR", tmp_path / "pretrained")
    with pytest.raises(UserError, match="no pretrained model 'keypoint'"):
        load_model("pretrained:keypoint")
    (tmp_path / "pretrained" / "kp").mkdir(parents=True)
    shutil.copy(run / "checkpoint.pt", tmp_path / "pretrained" / "kp" / "checkpoint.pt")
    model, _ = load_model("pretrained:kp")
    assert model.name == "keypoint"


def test_check_model_for_env(run):
    model, ckpt = load_model(run)
    check_model_for_env(model, "push-box", ckpt)
    with pytest.raises(UserError, match="model 'keypoint' was trained for push-box, not pile"):
        check_model_for_env(model, "pile", ckpt)
    with pytest.raises(UserError, match="model 'keypoint' is for push-box, not pile"):
        check_model_for_env(model, "pile")


def test_training_on_several_datasets_holds_out_each_ones_last_episodes(run, data, tmp_path, monkeypatch):
    """--data A,B (e.g. DAgger: the random data and the MPC's own): the windows of both datasets'
    training episodes, each dataset's last episodes held out; eval and --init know every split."""
    from mbrl.configs import EvalConfig
    from mbrl.evaluation import run_eval

    monkeypatch.setattr(training, "MIN_STEPS_PER_EPOCH", 2)
    more = write_toy_dataset(tmp_path / "more", n=10, seed=3)
    both = tmp_path / "both"
    run_training(train_cfg(f"{data},{more}", both, epochs=1, rollout_steps=5, init=str(run)))
    cfg = json.loads((both / "config.json").read_text())
    assert [(d["num_train"], d["num_val"]) for d in cfg["datasets"]] == [(24, 6), (8, 2)]
    assert cfg["windows"]["train"] == (24 + 8) * (STEPS - 5 + 1) and cfg["windows"]["val"] == (6 + 2) * (STEPS - 5 + 1)
    result = run_eval(EvalConfig(run=str(both), data=str(more), out=str(tmp_path / "eval.json"), device="cpu"))
    assert result["split"] == "held-out" and result["first_episode"] == 8 and result["episodes"] == 2

    # grown later, B keeps its split under --init and --resume: its new episodes are held out too
    for i, ep in enumerate(pushing_episodes(5, STEPS, seed=4), start=10):
        store.write_episode(more, i, ep)
    run_training(train_cfg(f"{data},{more}", tmp_path / "again", epochs=1, rollout_steps=5, init=str(both)))
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert [(d["num_train"], d["num_val"]) for d in cfg["datasets"]] == [(24, 6), (8, 7)]
    run_training(train_cfg(f"{data},{more}", both, epochs=2, resume=True))
    assert [int(r["epoch"]) for r in read_log(both)] == [1, 2]


@pytest.mark.parametrize("second, match", [("same", "names a dataset twice"), ("pile", "is from pile"),
                                           ("spec", "other push-box settings")])
def test_datasets_that_do_not_train_together_are_one_clear_error(data, tmp_path, second, match):
    if second == "same":
        other = data
    else:
        other = write_toy_dataset(tmp_path / second, n=4, env="pile" if second == "pile" else "push-box")
        if second == "spec":
            meta = store.read_meta(other)
            store.write_json_atomic(other / store.META_NAME, {**meta, "env_spec": {"config": {"max_push": 1}}})
    with pytest.raises(UserError, match=match):
        run_training(train_cfg(f"{data},{other}", tmp_path / "r"))
    assert not (tmp_path / "r").exists()
