"""loading/flow.py: DIS at a working size (small clips upscaled), and occlusion masks that shrink to latent
size by dilation and max-pooling, against synthetic motion with a known answer."""
import cv2
import numpy as np

from loading import flow


def moving_disc(size, shift, steps=3, radius_fraction=0.12):
    """Frames (steps, size, size, 3) of a textured disc moving ``shift`` px right per frame."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3)).astype(np.uint8), (0, 0), size / 64)
    frames = []
    for k in range(steps):
        frame = np.full((size, size, 3), 90, np.uint8)
        mask = np.zeros((size, size), np.uint8)
        centre = (int(size * 0.3 + k * shift), size // 2)
        cv2.circle(mask, centre, int(radius_fraction * size), 1, -1)
        moved = np.roll(texture, int(k * shift), axis=1)
        frame[mask > 0] = moved[mask > 0]
        frames.append(frame)
    return np.stack(frames), mask


def test_small_frames_are_upscaled_so_the_flow_sees_the_motion():
    frames, mask = moving_disc(64, 6)  # 6 px a frame on a 64 px clip, as a toy swing's arms move
    upscaled, _ = flow.backward_flows(frames)
    native, _ = flow.backward_flows(frames, min_size=0)
    inside = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
    found = -upscaled[-1][inside][:, 0].mean()  # the disc came from the left: backward flow points left
    assert abs(found - 6) < 1.5, found
    assert abs(-native[-1][inside][:, 0].mean() - 6) > abs(found - 6)  # DIS on the small frames finds less
    assert flow.upscale_factor(64, 64) == 4 and flow.upscale_factor(64, 96) == 4 and flow.upscale_factor(512, 300) == 1


def test_large_frames_are_left_as_they_are():
    frames, _ = moving_disc(256, 6)
    assert np.array_equal(flow.backward_flows(frames)[0], flow.backward_flows(frames, min_size=0)[0])


def test_an_unreliable_pixel_makes_its_latent_cell_and_its_neighbours_unreliable():
    flows, masks = np.zeros((1, 32, 32, 2), np.float32), np.ones((1, 32, 32), np.float32)
    masks[0, 13, 13] = 0  # one pixel fails the forward-backward check, inside latent cell (3, 3) at factor 4
    _, small = flow.to_latent_resolution(flows, masks, 4)
    assert small.shape == (1, 8, 8)
    assert small[0, 3, 3] == 0  # area averaging (the old way) would have trusted it: 15/16 reliable
    dilated = cv2.dilate((masks[0] < 0.5).astype(np.uint8), np.ones((5, 5), np.uint8))
    expected = 1 - dilated.reshape(8, 4, 8, 4).max(axis=(1, 3))
    assert np.array_equal(small[0], expected) and 1 <= (expected == 0).sum() <= 4  # its cell and a neighbour or so
    assert small[0, 0, 0] == 1 and small[0, 6, 6] == 1  # far from it: trusted


def test_flows_shrink_to_latent_pixels():
    flows = np.full((2, 32, 32, 2), 8.0, np.float32)
    small, _ = flow.to_latent_resolution(flows, np.ones((2, 32, 32), np.float32), 8)
    assert small.shape == (2, 4, 4, 2) and np.allclose(small, 1.0)
