"""mbrl.evaluation: held-out open-loop errors against the nothing-moves baseline."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamics_models import make
from toy_pushing import pushing_episodes
from mbrl import checkpoints, store
from mbrl.configs import EvalConfig, TrainConfig
from mbrl.errors import UserError
from mbrl.evaluation import format_eval, rollout_errors, run_eval
from mbrl.training import run_training

STEPS = 22  # long enough for the 20-step horizon


def write_toy_dataset(root: Path, n: int, seed: int, env: str = "push-box") -> Path:
    for i, ep in enumerate(pushing_episodes(n, STEPS, seed=seed)):
        store.write_episode(root, i, ep)
    store.write_json_atomic(root / store.META_NAME, {"schema_version": store.SCHEMA_VERSION, "env": env, "seed": seed})
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n=25, seed=0)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "kp"
    run_training(TrainConfig(data=str(data), out=str(out), epochs=3, batch_size=64, lr=2e-3,
                             rollout_steps=3, val_fraction=0.2, device="cpu"))
    return out


def test_eval_on_held_out_episodes(run, data):
    result = run_eval(EvalConfig(run=str(run), data=str(data), device="cpu"))
    on_disk = json.loads((run / "eval.json").read_text())
    assert result["path"] == str(run / "eval.json")
    assert on_disk == {k: v for k, v in result.items() if k != "path"}
    assert on_disk["split"] == "held-out" and on_disk["episodes"] == 5 and on_disk["first_episode"] == 20
    assert on_disk["model"] == str(run) and on_disk["model_name"] == "keypoint"
    assert set(on_disk["horizons"]) == {"1", "5", "10", "20"}
    for h, e in on_disk["horizons"].items():
        assert set(e) >= {"model", "baseline", "ratio"}
        assert e["ratio"] == pytest.approx(e["baseline"] / e["model"])
        assert e["windows"] == 5 * (STEPS - int(h) + 1)
        assert e["ratio"] > 2, (h, e)
    assert "ratio" in format_eval(result)


def test_eval_on_another_dataset_uses_all_episodes(run, tmp_path):
    other = write_toy_dataset(tmp_path / "other", n=4, seed=7)
    out = tmp_path / "e" / "eval.json"
    result = run_eval(EvalConfig(run=str(run), data=str(other), out=str(out), device="cpu"))
    assert result["split"] == "all" and result["episodes"] == 4
    assert json.loads(out.read_text())["horizons"]["5"]["ratio"] > 2


def test_eval_of_pretrained_writes_to_cwd(run, data, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "PRETRAINED_DIR", tmp_path / "pretrained")
    (tmp_path / "pretrained" / "kp").mkdir(parents=True)
    shutil.copy(run / "checkpoint.pt", tmp_path / "pretrained" / "kp" / "checkpoint.pt")
    monkeypatch.chdir(tmp_path)
    # a copy of the training set elsewhere with the same meta.json is still the training set
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    result = run_eval(EvalConfig(run="pretrained:kp", data=str(copy), device="cpu"))
    assert Path(result["path"]) == Path("eval.json") and (tmp_path / "eval.json").is_file()
    assert result["split"] == "held-out"


def test_eval_refuses_other_env(run, tmp_path):
    pile = write_toy_dataset(tmp_path / "pile", n=2, seed=1, env="pile")
    with pytest.raises(UserError, match="trained for push-box, not pile"):
        run_eval(EvalConfig(run=str(run), data=str(pile), device="cpu"))


def test_eval_missing_run(tmp_path, data):
    with pytest.raises(UserError, match="no checkpoint"):
        run_eval(EvalConfig(run=str(tmp_path), data=str(data), device="cpu"))


def test_rollout_errors_baseline_by_hand():
    model = make("keypoint", hidden=8, layers=1)
    ep = pushing_episodes(1, 6, seed=2)[0]
    states, actions = model.episode_states(ep)
    errs = rollout_errors(model, [(states, actions)], (2, 6, 7))
    kp = ep["keypoints"]
    by_hand = np.mean([np.linalg.norm(kp[t + 2] - kp[t], axis=-1).mean() for t in range(5)])
    assert errs[2]["baseline"] == pytest.approx(by_hand, rel=1e-5)
    assert errs[2]["windows"] == 5 and errs[6]["windows"] == 1
    assert 7 not in errs  # longer than the episode
    with torch.no_grad():
        pred = model.rollout(states[:1], actions[None])[0, -1]
    assert errs[6]["model"] == pytest.approx(float(model.position_error(pred, states[-1])), rel=1e-5)
