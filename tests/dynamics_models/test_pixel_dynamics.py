"""The CDNA pixel model: kernel transforms, state layout, rollout, and learning a moving square."""
import numpy as np
import torch

from dynamics_models.pixel import PixelDynamics, apply_kernels
from mbrl.image_metrics import psnr

S = 16  # image side of the toy tests
SCALE = 0.01  # m per pixel of the toy scene: an action of 0.02 m moves the square 2 pixels


def toy_model(**kw) -> PixelDynamics:
    torch.manual_seed(0)
    return PixelDynamics(image_size=S, width=8, num_kernels=3, kernel_size=5, action_scale=0.02,
                         pusher_scale=0.08, **kw)


def square_frames(pushers: np.ndarray) -> np.ndarray:
    """pushers [T, 2] (m) -> [T, S, S, 3] uint8: a 3x3 blue square at the pusher on a grey floor.

    Pixel (u, v) = pusher / SCALE + S/2 (u along x, v along y)."""
    frames = np.full((len(pushers), S, S, 3), 120, np.uint8)
    for t, (x, y) in enumerate(pushers):
        u, v = int(round(x / SCALE)) + S // 2, int(round(y / SCALE)) + S // 2
        frames[t, max(v - 1, 0):v + 2, max(u - 1, 0):u + 2] = (30, 60, 220)
    return frames


def toy_episode(rng: np.random.Generator, steps: int = 12) -> dict:
    actions = rng.choice([-0.02, -0.01, 0.0, 0.01, 0.02], size=(steps, 2)).astype(np.float32)
    start = rng.uniform(-0.03, 0.03, size=2)
    pusher = np.concatenate([start[None], start + np.cumsum(actions, axis=0)]).clip(-0.06, 0.06)
    actions = np.diff(pusher, axis=0).astype(np.float32)  # the square stops at the border
    return {"rgb": square_frames(pusher), "pusher": pusher.astype(np.float32), "actions": actions}


def test_a_one_hot_kernel_moves_pixels_by_its_offset():
    image = torch.zeros(1, 2, 8, 8)
    image[0, :, 3, 4] = 1.0
    kernel = torch.zeros(1, 1, 3, 3)
    kernel[0, 0, 1, 2] = 1.0  # offset (+1 column, 0 rows)
    moved = apply_kernels(image, kernel)[0, 0]
    assert moved.shape == (2, 8, 8)
    assert moved[:, 3, 5].tolist() == [1.0, 1.0] and float(moved.sum()) == 2.0


def test_encode_and_episode_states_share_the_layout():
    model = toy_model()
    ep = toy_episode(np.random.default_rng(0))
    states, actions = model.episode_states(ep)
    assert states.shape == (13, model.state_dim) and actions.shape == (12, 2)
    frames, pushers, designated = model.split_state(states.float())
    # State t holds frames t-1 and t; the first state repeats frame 0.
    torch.testing.assert_close(frames[0, 0], frames[0, 1])
    torch.testing.assert_close(frames[5, 0], frames[4, 1])
    torch.testing.assert_close(pushers[5, 1], torch.as_tensor(ep["pusher"][5]), atol=1e-4, rtol=0)
    obs = {"rgb_context": ep["rgb"][4:6], "pusher_context": ep["pusher"][4:6], "designated": [3, 7]}
    encoded = model.encode(obs)[0]
    torch.testing.assert_close(encoded[:-S * S], states[5, :-S * S].float(), atol=1e-3, rtol=0)
    d = model.split_state(encoded)[2]
    assert float(d.sum()) == 1.0 and float(d[7, 3]) == 1.0  # row v = 7, column u = 3


def test_rollout_moves_the_pusher_and_keeps_a_distribution():
    model = toy_model().eval()
    ep = toy_episode(np.random.default_rng(1))
    state = model.encode({"rgb": ep["rgb"][0], "pusher": ep["pusher"][0], "designated": [8, 8]})
    actions = torch.full((4, 3, 2), 0.01, requires_grad=True)
    pred = model.rollout(state, actions)
    assert pred.shape == (4, 3, model.state_dim)
    frames, pushers, designated = model.split_state(pred)
    torch.testing.assert_close(pushers[:, -1, -1], (torch.as_tensor(ep["pusher"][0]) + 0.03).expand(4, 2))
    torch.testing.assert_close(designated.sum(dim=(-1, -2)), torch.ones(4, 3))
    assert frames.min() >= 0 and frames.max() <= 1
    model.frames(pred).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0


def test_a_trained_model_predicts_the_moving_square_better_than_copying_the_last_frame():
    rng = np.random.default_rng(0)
    model = toy_model(schedule_k=20.0)
    windows = []
    for _ in range(40):
        states, actions = model.episode_states(toy_episode(rng))
        for t in range(0, 12 - 4 + 1):
            windows.append((states[t:t + 5], actions[t:t + 4]))
    train, test = windows[:-40], windows[-40:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(250):
        idx = torch.randint(0, len(train), (16,), generator=gen)
        batch = {"states": torch.stack([train[i][0] for i in idx]), "actions": torch.stack([train[i][1] for i in idx])}
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.ground_truth_fraction() < 0.01  # scheduled sampling has handed over to the model's own frames
    model.eval()
    states = torch.stack([w[0] for w in test]).float()
    actions = torch.stack([w[1] for w in test])
    with torch.no_grad():
        pred = model.rollout(states[:, 0], actions)
    truth = model.frames(states[:, 1:])
    model_psnr = float(psnr(model.frames(pred), truth).mean())
    copy_psnr = float(psnr(model.frames(states[:, :1]).expand_as(truth), truth).mean())
    assert model_psnr > copy_psnr + 3.0, (model_psnr, copy_psnr)
