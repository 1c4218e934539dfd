"""What techniques read from the source clip: its VAE latents, their DDIM inversion, optical flow,
pose alignment and the control maps.

``Sources(args, pipe, clip)`` computes each on first use (a run that needs none pays nothing);
``save_bank``/``load_bank`` keep a reference clip's source latents and poses in a safetensors file
(``--save-residuals`` / ``--residuals``), so one swing can drive any prompt and subject.
"""
import json
import logging

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pose_extract
from common import files
from common.errors import UserError
from loading import controls, flow, inversions
from loop import pipeline, predict

log = logging.getLogger(__name__)


def save_bank(path, source_latents, keypoints=None, metadata=None):
    """Save a reference clip's source latents (F, 4, h, w) and keypoints (F, 18, 3) as safetensors."""
    tensors = {"source_latents": source_latents.float().cpu().contiguous()}
    if keypoints is not None:
        tensors["keypoints"] = torch.as_tensor(keypoints, dtype=torch.float32)
    with files.atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"sdvideo": json.dumps(metadata or {})})


def load_bank(path):
    """(source_latents, keypoints or None, metadata) from save_bank's file."""
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = json.loads((f.metadata() or {}).get("sdvideo", "{}"))
    return tensors["source_latents"], tensors.get("keypoints"), metadata


def pose_matrices(source_keypoints, target_keypoints, factor):
    """Per frame 2x3 similarity from the source's pose to the generated pose, in latent pixels."""
    matrices = np.stack([pose_extract.similarity_transform(s, t) for s, t in zip(source_keypoints, target_keypoints)])
    matrices[:, :, 2] /= factor  # the linear part is scale free; the shift is in pixels
    return torch.from_numpy(matrices)


class Sources:
    """The source clip as techniques see it, each part computed once, on first use."""

    def __init__(self, args, pipe, clip):
        self.args, self.pipe, self.clip = args, pipe, clip
        self._latents = self._bank_keypoints = self._flows = self._control_maps = None

    def latents(self):
        """E(v) of the source frames (F, 4, h, w) from --residuals or the video."""
        if self._latents is None:
            self._latents, self._bank_keypoints = self._read_latents()
        return self._latents

    def _read_latents(self):
        args, pipe = self.args, self.pipe
        if args.residuals:
            try:
                latents, keypoints, _ = load_bank(args.residuals)
            except Exception as error:  # a foreign or damaged file fails inside safetensors in many ways
                raise UserError(f"--residuals {args.residuals} is not a residual file ({error})") from None
            expected = (len(self.clip.pose_maps), pipe.unet.config.in_channels,
                        args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor)
            if tuple(latents.shape) != expected:
                raise UserError(f"--residuals {args.residuals} holds latents {tuple(latents.shape)}; this run needs "
                                f"{expected} (same frame count, --height and --width as when it was saved)")
            return latents, None if keypoints is None else keypoints.numpy()
        batch = args.batch_size or predict.AUTO_BATCH_CPU
        return pipeline.encode(pipe, self.clip.source_frames, batch).float().cpu(), None

    def control_maps(self):
        """The loop's control maps (F, H, W, 3 K): the pose maps, then the extra controls' from the source."""
        if self._control_maps is None:
            args = self.args
            self._control_maps = controls.stack(self.clip.pose_maps, controls.extra_maps(
                args.control, self.clip.source_frames, args.canny_low, args.canny_high, args.annotator_path))
        return self._control_maps

    def inverted(self):
        """--invert-source: the source latents inverted to where denoising starts (F, 4, h, w), and
        what run.json records of the inversion (loading/inversions.py)."""
        args = self.args
        models = {name: getattr(args, name) for name in ("model", "base", "controlnet", "vae", "lora", "embedding")}
        request = inversions.InversionRequest(args.source_prompt, args.steps, args.inversion_steps or args.steps,
                                              args.strength, args.inversion_control,
                                              controls.loop_scales(args.control, args.controlnet_scale),
                                              args.batch_size, models)
        return inversions.inverted(self.pipe, self.latents(), self.control_maps(), request, not args.quiet)

    def matrices(self):
        """Source-to-generated pose similarities (F, 2, 3) in latent pixels, where both poses are known."""
        self.latents()
        if self._bank_keypoints is None or self.clip.keypoints is None:
            return None
        return pose_matrices(self._bank_keypoints, self.clip.keypoints, self.pipe.vae_scale_factor)

    def flows(self):
        """Backward optical flow between consecutive source frames at latent size, (F-1, h, w, 2),
        and its forward-backward reliability masks (F-1, 1, h, w)."""
        if self._flows is None:
            flows, masks = flow.to_latent_resolution(*flow.backward_flows(self.clip.source_frames),
                                                     self.pipe.vae_scale_factor)
            self._flows = torch.from_numpy(flows), torch.from_numpy(masks)[:, None]
        return self._flows

    def moving(self, threshold, relative=False):
        """Per latent pixel and frame pair, 1 where the source's flow exceeds ``threshold`` source
        pixels, or with ``relative`` that fraction of the pair's largest flow (Ground-A-Video's rule);
        unreliable flow counts as moving. (F-1, h, w) float: flow-gated noise's mask."""
        flows, masks = self.flows()
        speed = flows.norm(dim=-1) * self.pipe.vae_scale_factor  # latent pixels -> source pixels
        if relative:
            speed = speed / speed.flatten(1).amax(1).clamp_min(torch.finfo(speed.dtype).eps)[:, None, None]
        return ((speed > threshold) | (masks[:, 0] < 0.5)).float()

    def save(self, path):
        """--save-residuals: the source latents and the clip's poses."""
        save_bank(path, self.latents(), self.clip.keypoints,
                  {"video": self.args.video, "size": [self.args.width, self.args.height],
                   "frames": len(self.latents())})
        log.info("saved source latents and poses to %s", path)
