"""The real entry point on tiny budgets: the pipeline end to end, and bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mbrl.cli import main


def mbrl(*args: str) -> subprocess.CompletedProcess:
    """The real entry point, in a new interpreter (about 4 s a call on 2 cores, most of it imports)."""
    return subprocess.run([sys.executable, "-m", "mbrl.cli", *args], capture_output=True, text=True, timeout=600)


def mbrl_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """``main(args)`` in this process, its exit status and output as ``mbrl`` returns them."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def assert_one_line_error(r: subprocess.CompletedProcess, fragment: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr and fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset and a keypoint model trained on it through the CLI."""
    root = tmp_path_factory.mktemp("pipeline")
    data, run = root / "data", root / "run"
    assert main(["collect", "push-box", "--out", str(data), "--episodes", "60", "--steps", "30"]) == 0
    assert main(["train", "keypoint", "--data", str(data), "--out", str(run), "--epochs", "3", "--device", "cpu"]) == 0
    return data, run


def test_train_eval_plan_with_video(trained, tmp_path):
    data, run = trained
    assert main(["eval", str(run), "--data", str(data)]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["horizons"]) == {"1", "5", "10", "20"}
    # Even a few hundred optimiser steps on real MuJoCo pushes beat "nothing moves" on held-out episodes.
    assert ev["horizons"]["5"]["model"] * 2 < ev["horizons"]["5"]["baseline"], ev["horizons"]["5"]
    out = tmp_path / "plan"
    assert main(["plan", "push-box", "--model", str(run), "--planner", "cem", "--episodes", "1", "--samples", "64",
                 "--horizon", "5", "--max-steps", "4", "--video", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["episodes"][0]
    assert {"final_position_error", "final_yaw_error", "success", "steps", "median_plan_ms"} <= set(row)
    assert 1 <= row["steps"] <= 4 and 0 <= metrics["success_rate"] <= 1
    video = next(out.glob("episode_*.mp4"))
    assert video.stat().st_size > 1000
    assert next(out.glob("episode_*_cost.png")).stat().st_size > 1000


def test_oracle_mppi_reaches_an_easy_goal(tmp_path):
    out = tmp_path / "oracle"
    assert main(["plan", "push-box", "--model", "oracle", "--planner", "mppi", "--episodes", "1", "--seed", "3",
                 "--samples", "128", "--max-steps", "40", "--out", str(out)]) == 0
    row = json.loads((out / "metrics.json").read_text())["episodes"][0]
    assert row["success"], row
    assert row["final_position_error"] < 0.02 and row["final_yaw_error"] < 0.2


def test_gradient_planner_with_the_oracle_is_a_clear_error(tmp_path):
    r = mbrl("plan", "push-box", "--model", "oracle", "--planner", "gd", "--out", str(tmp_path / "p"))
    assert_one_line_error(r, "not differentiable")


@pytest.mark.parametrize("args,fragment", [
    (["collect", "push-box", "--episodes", "-3"], "--episodes"),
    (["collect", "push-ball"], "unknown environment"),
    (["plan", "push-box", "--model", "oracle", "--horizon", "-1"], "--horizon"),
    (["plan", "pile", "--model", "oracle", "--resolution", "many"], "--resolution"),
    (["plan", "pile", "--model", "oracle", "--task", "stack"], "unknown pile task"),
    (["plan", "push-box", "--model", "oracle", "--task", "gather"], "--task is for the pile"),
    (["plan", "pile", "--model", "pretrained:keypoint"], "not pile"),
    (["collect", "pile", "--particles", "50:20"], "--particles"),
    (["bench", "particle", "--model", "/nonexistent/run"], "/nonexistent/run"),
    (["plan", "push-box", "--model", "oracle", "--planner", "newton"], "unknown planner"),
    (["train", "keypoint", "--data", "/nonexistent/data"], "no dataset"),
    (["eval", "/nonexistent/run", "--data", "/nonexistent/data"], "/nonexistent/run"),
    (["plan", "push-box", "--model", "/nonexistent/run"], "/nonexistent/run"),
    (["bench", "nothing"], "unknown benchmark"),
    (["plan", "push-box", "--model", "pretrained:keypoint", "--cost", "goal-image"], "for a pixel model"),
    (["plan", "push-box", "--model", "oracle", "--cost", "designated-pixel"], "for a pixel model"),
    (["plan", "push-box", "--model", "oracle", "--cost", "l1"], "--cost"),
    (["plan", "push-box", "--model", "oracle", "--success", "close"], "--success"),
    (["train", "pixel", "--data", "/nonexistent/data"], "no dataset"),
    (["plan", "push-box", "--model", "pretrained:keypoint,pretrained:keypoint"], "cloth only"),
    (["plan", "cloth", "--model", "pretrained:mesh,oracle"], "not the oracle"),
    (["plan", "cloth", "--model", "pretrained:mesh,"], "not an empty name"),
    (["plan", "cloth", "--model", "pretrained:mesh,pretrained:mesh-visible"], "full-mesh models"),
    (["plan", "cloth", "--model", "pretrained:mesh,/nonexistent/run"], "/nonexistent/run"),
    (["plan", "pile", "--model", "oracle", "--workers", "2"], "--workers"),
    (["plan", "cloth", "--model", "oracle", "--workers", "0"], "--workers"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(args, fragment, tmp_path, capsys):
    """In this process, for time: the tests below run the real entry point."""
    if args[0] == "plan":
        args = args + ["--out", str(tmp_path / "p")]
    if args[0] == "collect":
        args = args + ["--out", str(tmp_path / "d")]
    assert_one_line_error(mbrl_here(capsys, *args), fragment)
    assert not (tmp_path / "p").exists() and not (tmp_path / "d").exists()


def test_an_unwritable_output_path_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    r = mbrl("collect", "push-box", "--episodes", "1", "--out", str(blocker / "data"))
    assert_one_line_error(r, "a_file")
    assert blocker.read_text() == "keep me"


def test_corrupt_checkpoint_and_dataset_are_reported_and_left_alone(trained, tmp_path):
    data, run = trained
    bad_run = tmp_path / "bad_run"
    bad_run.mkdir()
    (bad_run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(mbrl("plan", "push-box", "--model", str(bad_run), "--out", str(tmp_path / "p")), "checkpoint")
    assert (bad_run / "checkpoint.pt").read_bytes() == b"not a checkpoint"

    bad_data = tmp_path / "bad_data"
    bad_data.mkdir()
    (bad_data / "meta.json").write_text((data / "meta.json").read_text())
    (bad_data / "episodes").mkdir()
    (bad_data / "episodes" / "ep_000000.npz").write_bytes(b"garbage")
    assert_one_line_error(mbrl("train", "keypoint", "--data", str(bad_data), "--out", str(tmp_path / "r")), "corrupt")
    assert (bad_data / "episodes" / "ep_000000.npz").read_bytes() == b"garbage"


def test_training_into_an_existing_run_needs_resume(trained):
    data, run = trained
    before = (run / "checkpoint.pt").read_bytes()
    r = mbrl("train", "keypoint", "--data", str(data), "--out", str(run), "--epochs", "1")
    assert_one_line_error(r, "--resume")
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_model_trained_for_another_env_is_refused(trained, tmp_path):
    """A checkpoint whose dataset came from another env cannot drive push-box."""
    import torch

    data, run = trained
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["dataset_meta"]["env"] = "pile"
    other = tmp_path / "other_run"
    other.mkdir()
    torch.save(ckpt, other / "checkpoint.pt")
    r = mbrl("plan", "push-box", "--model", str(other), "--out", str(tmp_path / "p"))
    assert_one_line_error(r, "trained for pile, not push-box")


@pytest.mark.parametrize("args", [["plan", "push-box", "--samples", "abc"], ["frobnicate"], []])
def test_a_malformed_command_line_is_one_line(args):
    assert_one_line_error(mbrl(*args), "mbrl")


@pytest.mark.parametrize("command", ["collect", "train", "eval", "plan", "demo", "bench"])
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out
