"""sdvideo: pose-controlled video with Stable Diffusion + ControlNet-OpenPose, no fine-tuning.

Run the bundled golf-swing demo on the tiny random model (writes outputs/demo/video.mp4):

    python sdvideo.py --model tiny --out outputs/demo --overwrite

and on real weights (SD 2.1 base + the OpenPose ControlNet, from the HF cache or folders):

    python sdvideo.py --video swing.mp4 --poses swing_poses.json --prompt "an astronaut swinging a golf club"

This module only parses arguments and wires the parts: pose_extract (poses -> maps), models,
pipeline (the denoising loop), video_io and outputs (files).
"""
import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import signal
import sys
import time

import numpy as np

from errors import UserError

log = logging.getLogger("sdvideo")

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_POSES = os.path.join(HERE, "demo", "golf_swing.json")
DEFAULT_PROMPT = "a golfer swinging a club on a sunny golf course, photorealistic, detailed"
DEFAULT_NEGATIVE = "blurry, deformed, extra limbs, low quality"
TOY_PROMPT = "a golfer in a red shirt and black trousers, on a golf course"
DEFAULT_BASE = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_CONTROLNET = "thibaud/controlnet-sd21-openpose-diffusers"
# What --height/--width, --prompt and --negative-prompt default to, per --model (None: real weights).
# The toy model knows only its training prompts' words and was trained with "" as the
# unconditional prompt; it draws 64 px pictures.
MODEL_DEFAULTS = {
    None: dict(height=512, width=512, prompt=DEFAULT_PROMPT, negative_prompt=DEFAULT_NEGATIVE),
    "tiny": dict(height=512, width=512, prompt=DEFAULT_PROMPT, negative_prompt=DEFAULT_NEGATIVE),
    "toy": dict(height=64, width=64, prompt=TOY_PROMPT, negative_prompt=""),
}
SIZE_MULTIPLE = 8
MAX_SIDE = 2048  # SD 2.1 was trained at 512/768; 2048 px already needs --vae-tiling and a large GPU
MAX_FPS = 240.0
MAX_CONTROLNET_SCALE = 5.0
NOISE_CHOICES = ("independent", "fixed", "progressive", "slerp")
MULTISTEP = ("dpm++", "unipc")  # schedulers that keep the model outputs of earlier steps


def batch_size_arg(value):
    """--batch-size: a positive integer, or 'auto' (0 inside the program)."""
    if value == "auto":
        return 0
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or 'auto'), got {size}")
    return size


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2, as every sdvideo error."""

    def error(self, message):
        self.exit(2, f"sdvideo: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = OneLineParser(
        prog="sdvideo.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Pose-controlled video generation with SD + ControlNet-OpenPose, zero-shot. "
                    "With no --video/--poses it runs the bundled golf-swing demo poses.")
    inp = parser.add_argument_group("input")
    inp.add_argument("--video", help="source video (any container FFmpeg reads); its poses are extracted "
                                     "unless --poses is given")
    inp.add_argument("--poses", help="OpenPose JSON (sequence file or folder of --write_json files) "
                                     "or a folder of pose-map images; default: extracted from --video, "
                                     "or the demo swing without --video")
    inp.add_argument("--start", type=float, default=0.0, help="first frame's time in seconds")
    inp.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    inp.add_argument("--stride", type=int, default=1, help="keep every N-th frame")
    inp.add_argument("--fps", type=float, default=None, help="resample to this frame rate (instead of --stride)")
    inp.add_argument("--height", type=int, default=None,
                     help="output height, rounded to a multiple of 8 (default: 512; 64 with --model toy)")
    inp.add_argument("--width", type=int, default=None,
                     help="output width, rounded to a multiple of 8 (default: 512; 64 with --model toy)")
    inp.add_argument("--fit", choices=("crop", "pad"), default="crop", help="keep aspect by centre crop or padding")

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=tuple(k for k in MODEL_DEFAULTS if k), default=None,
                       help="a built-in model instead of --base/--controlnet: 'toy', the trained toy world "
                            "(64 px figures, toy_model/); 'tiny', random weights (noise pictures; for tests)")
    model.add_argument("--base", default=None,
                       help=f"SD 1.x/2.x diffusers folder or hub id (default: {DEFAULT_BASE})")
    model.add_argument("--controlnet", default=None,
                       help=f"ControlNet diffusers folder, hub id, or original .ckpt/.safetensors "
                            f"(default: {DEFAULT_CONTROLNET})")
    model.add_argument("--controlnet-config", default=os.path.join(HERE, "cldm_v21.yaml"),
                       help="original config used to convert a .ckpt/.safetensors --controlnet")
    model.add_argument("--scheduler", choices=("ddim", "dpm++", "euler", "euler-a", "unipc"), default="ddim",
                       help="sampler, built from the base model's scheduler config")
    model.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="model precision")
    model.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto", help="where to run")
    model.add_argument("--local-files-only", action="store_true",
                       help="never contact the hub (HF_HUB_OFFLINE=1 does the same)")

    gen = parser.add_argument_group("generation")
    gen.add_argument("--prompt", default=None,
                     help=f"text prompt for every frame (default: '{DEFAULT_PROMPT}'; with --model toy: '{TOY_PROMPT}')")
    gen.add_argument("--negative-prompt", default=None,
                     help=f"negative prompt (default: '{DEFAULT_NEGATIVE}'; with --model toy: none)")
    gen.add_argument("--steps", type=int, default=20, help="denoising steps")
    gen.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (<= 1: off)")
    gen.add_argument("--controlnet-scale", type=float, default=1.0, help="ControlNet conditioning scale")
    gen.add_argument("--control-start", type=float, default=0.0, help="fraction of the schedule where control starts")
    gen.add_argument("--control-end", type=float, default=1.0, help="fraction of the schedule where control ends")
    gen.add_argument("--seed", type=int, default=0, help="frame i's generator is seeded seed + i")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")

    tech = parser.add_argument_group("techniques")
    tech.add_argument("--noise", choices=NOISE_CHOICES, default="independent",
                      help="initial noise across frames: independent per frame, one fixed, "
                           "a progressive random walk, or a slerp between two seeds")
    tech.add_argument("--noise-drift", type=float, default=0.1,
                      help="progressive noise: radians per frame, z_i = cos(d) z_(i-1) + sin(d) e_i")
    tech.add_argument("--preset", choices=("baseline", "seed", "keyframe", "t2v-zero"), default=None,
                      help="a named combination (see README); explicit flags override its settings")
    tech.add_argument("--anchor", default="first",
                      help="reference frame of copying, blending, differences, cross-frame attention: first|middle|N")
    tech.add_argument("--blend-steps", default=None, help="latent blending at steps a:b (ints, or fractions like 0:0.5)")
    tech.add_argument("--blend-weight", type=float, default=0.5, help="blending: z <- (1-w) z + w z_ref")
    tech.add_argument("--blend-ref", choices=("anchor", "previous"), default="anchor", help="blending reference")
    tech.add_argument("--copy-step", default=None, help="intermediate latent copying at step k (int, or a fraction like 0.3)")
    tech.add_argument("--copy-from", choices=("anchor", "previous"), default="anchor",
                      help="copy the anchor's latent, or each frame its predecessor's")
    tech.add_argument("--diff-steps", default=None,
                      help="inject source latent differences at steps a:b (needs --video or --residuals)")
    tech.add_argument("--diff-scale", type=float, default=1.0,
                      help="differences: z_i <- z_i + lambda (z_anchor + sqrt(abar_t) d_i - z_i); 1 = full injection")
    tech.add_argument("--diff-align", choices=("none", "stats", "pose"), default="none",
                      help="align source differences: as is, channel statistics, or pose similarity")
    tech.add_argument("--init-from-source", action="store_true",
                      help="start each frame from its source frame's latent noised to --strength (SDEdit)")
    tech.add_argument("--strength", type=float, default=0.7, help="--init-from-source: fraction of the schedule run")
    tech.add_argument("--mode", choices=("plain", "keyframe"), default="plain",
                      help="keyframe: every K-th frame in full, the rest from keyframe + residual")
    tech.add_argument("--keyframe-interval", type=int, default=8, help="keyframe mode: K")
    tech.add_argument("--residual-strength", type=float, default=0.5,
                      help="keyframe mode: fraction of the schedule run for frames between keyframes")
    tech.add_argument("--save-residuals", default=None, help="save the source latents and poses to this file")
    tech.add_argument("--residuals", default=None,
                      help="source latents from a --save-residuals file instead of --video (same frame count and size)")
    tech.add_argument("--cross-frame-attn", choices=("off", "anchor", "previous", "anchor+previous"), default="off",
                      help="self-attention keys and values from these frames (UNet and ControlNet)")
    tech.add_argument("--flow-warp", type=float, default=0.0,
                      help="fuse the previous frame's clean latent warped by the source's optical flow, weight w")
    tech.add_argument("--flow-steps", default="0:0.5", help="flow warp at steps a:b")

    import pose_extract

    pose_extract.add_extraction_arguments(parser)

    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="run folder (default: outputs/run-<date>-<time>)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    out.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from OUT.partial (same settings): reuses its latents and frames")
    out.add_argument("--quiet", action="store_true", help="no progress bars or info messages")

    perf = parser.add_argument_group("performance")
    perf.add_argument("--batch-size", type=batch_size_arg, default=4,
                      help="frames per UNet/ControlNet call; 'auto': as many as fit the GPU, halved on out-of-memory")
    perf.add_argument("--attention", choices=("sdpa", "classic", "xformers"), default="sdpa",
                      help="attention backend: PyTorch SDPA, diffusers' classic processor, or xformers")
    perf.add_argument("--channels-last", action="store_true", help="channels-last memory layout for UNet and ControlNet")
    perf.add_argument("--compile", action="store_true", help="torch.compile UNet and ControlNet (compiled once per shape)")
    perf.add_argument("--vae-slicing", action="store_true", help="VAE-decode one frame at a time")
    perf.add_argument("--vae-tiling", action="store_true", help="VAE-decode in tiles (large frames)")
    perf.add_argument("--offload", choices=("none", "model", "sequential"), default="none",
                      help="keep weights in CPU memory and move them to the GPU as used: whole models "
                           "(little slower) or layer by layer (least GPU memory, much slower)")
    perf.add_argument("--recompute-control-embedding", action="store_true",
                      help="compute ControlNet's pose-map embedding at every step (default: once per frame; "
                           "the numbers are the same)")
    return parser


# ---- 1. validate ------------------------------------------------------------------------------

def apply_model_defaults(args):
    """Fill the defaults that depend on --model; a built-in model with --base/--controlnet is refused."""
    if args.model and (args.base or args.controlnet):
        raise UserError(f"--model {args.model} is a built-in model: drop --base/--controlnet, or drop --model "
                        "to load those weights")
    if not args.model:
        args.base, args.controlnet = args.base or DEFAULT_BASE, args.controlnet or DEFAULT_CONTROLNET
    for name, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def validate(args):
    """Check every argument a user can get wrong; round sizes. Raises UserError."""
    apply_model_defaults(args)
    checks = [
        (args.steps >= 1, "--steps must be at least 1"),
        (args.guidance >= 0, "--guidance must be >= 0"),
        (0 <= args.controlnet_scale <= MAX_CONTROLNET_SCALE, f"--controlnet-scale must be in [0, {MAX_CONTROLNET_SCALE}]"),
        (0 <= args.control_start < args.control_end <= 1, "need 0 <= --control-start < --control-end <= 1"),
        (args.eta >= 0, "--eta must be >= 0"),
        (0 < args.height <= MAX_SIDE and 0 < args.width <= MAX_SIDE,
         f"--height and --width must be in 1..{MAX_SIDE} pixels"),
        (args.start >= 0, "--start must be >= 0 seconds"),
        (args.max_frames is None or args.max_frames >= 1, "--max-frames must be at least 1"),
        (args.stride >= 1, "--stride must be at least 1"),
        (args.fps is None or 0 < args.fps <= MAX_FPS, f"--fps must be in (0, {MAX_FPS:g}]"),
        (args.fps is None or args.stride == 1, "give --fps or --stride, not both"),
        (0 < args.noise_drift <= math.pi, "--noise-drift must be in (0, pi] radians"),
    ]
    checks += [
        (0 <= args.blend_weight <= 1, "--blend-weight must be in [0, 1]"),
        (args.diff_scale >= 0, "--diff-scale must be >= 0"),
        (0 < args.strength <= 1, "--strength must be in (0, 1]"),
        (0 <= args.residual_strength <= 1, "--residual-strength must be in [0, 1]"),
        (args.keyframe_interval >= 1, "--keyframe-interval must be at least 1"),
        (0 <= args.flow_warp <= 1, "--flow-warp must be in [0, 1]"),
        (args.anchor in ("first", "middle") or args.anchor.isdigit(), "--anchor must be first, middle or a frame number"),
        (not (args.flow_warp > 0 and args.video is None), "--flow-warp needs --video (the flow comes from the source)"),
        (not (args.init_from_source and args.video is None), "--init-from-source needs --video"),
        (not (args.save_residuals and args.video is None), "--save-residuals needs --video"),
        (not ((args.diff_steps or args.mode == "keyframe") and args.video is None and args.residuals is None),
         "latent differences and --mode keyframe need --video or --residuals (a --save-residuals file)"),
        (args.residuals is None or os.path.isfile(args.residuals), f"--residuals file not found: {args.residuals}"),
        (not (args.copy_step is not None and args.copy_from == "previous" and args.scheduler in MULTISTEP),
         f"--copy-from previous cannot run with --scheduler {args.scheduler}: a multistep solver keeps each frame's "
         "history, which a frame given its predecessor's latent does not have; use --scheduler ddim, euler or "
         "euler-a, or --copy-from anchor"),
        (not args.save_residuals or os.path.isdir(os.path.dirname(os.path.abspath(args.save_residuals))),
         f"--save-residuals {args.save_residuals}: its folder does not exist; create it or choose another path"),
        (not args.save_residuals or not os.path.exists(args.save_residuals) or args.overwrite,
         f"--save-residuals {args.save_residuals} exists; pass --overwrite to replace it or choose another path"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    from techniques import parse_step, parse_step_range

    in_use = {"blend_steps": True, "diff_steps": True, "copy_step": True, "flow_steps": args.flow_warp > 0}
    for flag, used in in_use.items():
        value = getattr(args, flag)
        if used and value is not None:
            try:
                (parse_step if flag == "copy_step" else parse_step_range)(value, args.steps)
            except ValueError as error:
                raise UserError(f"--{flag.replace('_', '-')} {value}: {error} (with --steps {args.steps})") from None
    for name in ("height", "width"):
        value = getattr(args, name)
        rounded = max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        if rounded != value:
            log.warning("--%s %d is not a multiple of %d; using %d", name, value, SIZE_MULTIPLE, rounded)
            setattr(args, name, rounded)
    if args.video is None and args.poses is None:
        args.poses = DEMO_POSES
    if args.out is None:
        args.out = os.path.join("outputs", time.strftime("run-%Y%m%d-%H%M%S"))


# ---- 3. models --------------------------------------------------------------------------------

def load_models(args):
    import models

    spec = models.ModelSpec(model=args.model, base=args.base, controlnet=args.controlnet,
                            controlnet_config=args.controlnet_config, scheduler=args.scheduler,
                            dtype=args.dtype, device=args.device,
                            local_files_only=args.local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1",
                            attention=args.attention, channels_last=args.channels_last, compile=args.compile,
                            vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling, offload=args.offload,
                            reuse_control_embedding=not args.recompute_control_embedding)
    return models.load_pipeline(spec)


# ---- 4. generate, 5. write --------------------------------------------------------------------

def generation_config(args):
    from pipeline import GenerationConfig

    noise_settings = {"drift": args.noise_drift} if args.noise == "progressive" else {}
    return GenerationConfig(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                            guidance=args.guidance, controlnet_scale=args.controlnet_scale,
                            control_start=args.control_start, control_end=args.control_end, seed=args.seed,
                            noise=args.noise, noise_settings=noise_settings, batch_size=args.batch_size,
                            eta=args.eta)


def source_latents_for(args, pipe, clip):
    """E(v) of the source frames (F, 4, h, w) from --residuals or the video, and the bank's keypoints."""
    import pipeline
    import techniques

    if args.residuals:
        try:
            latents, keypoints, _ = techniques.load_bank(args.residuals)
        except Exception as error:  # a foreign or damaged file fails inside safetensors in many ways
            raise UserError(f"--residuals {args.residuals} is not a residual file ({error})") from None
        expected = (len(clip.pose_maps), pipe.unet.config.in_channels,
                    args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor)
        if tuple(latents.shape) != expected:
            raise UserError(f"--residuals {args.residuals} holds latents {tuple(latents.shape)}; this run needs "
                            f"{expected} (same frame count, --height and --width as when it was saved)")
        return latents, None if keypoints is None else keypoints.numpy()
    return pipeline.encode(pipe, clip.source_frames, args.batch_size or pipeline.AUTO_BATCH_CPU).float().cpu(), None


def pose_matrices(source_keypoints, target_keypoints, factor):
    """Per frame 2x3 similarity from the source's pose to the generated pose, in latent pixels."""
    import torch

    import pose_extract

    matrices = np.stack([pose_extract.similarity_transform(s, t) for s, t in zip(source_keypoints, target_keypoints)])
    matrices[:, :, 2] /= factor  # the linear part is scale free; the shift is in pixels
    return torch.from_numpy(matrices)


def build_techniques(args, pipe, clip):
    """The technique objects and keyframe plan the flags ask for, in hook order."""
    import torch

    import flow
    import techniques as tq

    source, bank_keypoints = None, None
    if args.diff_steps or args.init_from_source or args.mode == "keyframe" or args.save_residuals:
        source, bank_keypoints = source_latents_for(args, pipe, clip)
    if args.save_residuals:
        tq.save_bank(args.save_residuals, source, clip.keypoints,
                     {"video": args.video, "size": [args.width, args.height], "frames": len(source)})
        log.info("saved source latents and poses to %s", args.save_residuals)
    matrices = None
    if args.diff_align == "pose" and bank_keypoints is not None and clip.keypoints is not None:
        matrices = pose_matrices(bank_keypoints, clip.keypoints, pipe.vae_scale_factor)

    found = []
    if args.init_from_source:
        found.append(tq.StartFromLatents(source, args.strength))
    if args.copy_step is not None:
        found.append(tq.Copy(tq.parse_step(args.copy_step, args.steps), args.copy_from, args.anchor))
    if args.diff_steps:
        found.append(tq.LatentDifferences(tq.parse_step_range(args.diff_steps, args.steps), args.diff_scale, source,
                                          args.diff_align, args.anchor, matrices))
    if args.blend_steps:
        found.append(tq.Blend(tq.parse_step_range(args.blend_steps, args.steps), args.blend_weight, args.blend_ref,
                              args.anchor))
    if args.cross_frame_attn != "off":
        found.append(tq.CrossFrameAttention(args.cross_frame_attn, args.anchor))
    if args.flow_warp > 0:
        flows, masks = flow.to_latent_resolution(*flow.backward_flows(clip.source_frames), pipe.vae_scale_factor)
        found.append(tq.FlowWarp(args.flow_warp, tq.parse_step_range(args.flow_steps, args.steps),
                                 torch.from_numpy(flows), torch.from_numpy(masks)[:, None]))
    keyframes = None
    if args.mode == "keyframe":
        keyframes = tq.KeyframePlan(args.keyframe_interval, args.residual_strength, source, args.diff_align, matrices)
    return found, keyframes


def technique_record(found, keyframes):
    """Every technique's settings for run.json (tensors left out)."""
    import dataclasses

    def fields(obj):
        return {f.name: (list(v) if isinstance(v := getattr(obj, f.name), range) else v)
                for f in dataclasses.fields(obj) if not hasattr(getattr(obj, f.name), "shape")}

    record = [{"technique": type(t).__name__, **fields(t)} for t in found]
    if keyframes is not None:
        record.append({"technique": "KeyframePlan", **fields(keyframes)})
    return record


CHECKPOINT = "latents.safetensors"  # the clean latents of an unfinished run, for --resume


def resume_settings(args):
    """What decides a run's result, which --resume must find unchanged: the arguments and the
    contents (not the names) of the input files."""
    import models

    def content(path):
        if os.path.isdir(path):
            return {name: content(os.path.join(path, name)) for name in sorted(os.listdir(path))}
        return models.file_hash(path) if os.path.isfile(path) else None

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "overwrite", "resume", "quiet")}
    settings["input_contents"] = {k: content(getattr(args, k)) for k in ("video", "poses", "residuals")
                                  if getattr(args, k)}
    return settings


def save_checkpoint(run, latents, stats):
    from safetensors.torch import save_file

    from safetensors import SafetensorError

    import outputs

    try:
        with outputs.atomic_path(run.path(CHECKPOINT)) as tmp:
            save_file({"latents": latents.float().cpu().contiguous()}, tmp,
                      metadata={"unet_evals": str(stats.unet_evals), "controlnet_evals": str(stats.controlnet_evals)})
    except SafetensorError as error:  # its I/O failures (disk full, size limit) are OSErrors to the caller
        raise OSError(str(error).rsplit(": ", 1)[-1]) from None


def load_checkpoint(run):
    """(latents, LoopStats) saved by an interrupted run, or None."""
    from safetensors import safe_open

    import pipeline

    if not os.path.isfile(run.path(CHECKPOINT)):
        return None
    with safe_open(run.path(CHECKPOINT), framework="pt") as f:
        metadata = f.metadata()
        latents = f.get_tensor("latents")
    return latents, pipeline.LoopStats(int(metadata["unet_evals"]), int(metadata["controlnet_evals"]))


def finished_frames(run, pipe, latents, chunk, progress):
    """Frames in order: read back where a resumed run already wrote them, else VAE-decoded."""
    from PIL import Image
    from tqdm.auto import tqdm

    import pipeline

    with tqdm(total=len(latents), desc="decoding", unit="frame", disable=not progress) as bar:
        for start in range(0, len(latents), chunk):
            names = [run.path("frames", f"{i:05d}.png") for i in range(start, min(start + chunk, len(latents)))]
            if all(os.path.isfile(name) for name in names):
                for name in names:
                    with Image.open(name) as image:
                        yield np.asarray(image.convert("RGB"))
            else:
                yield from pipeline.decode(pipe, latents[start:start + chunk], chunk, progress=False)
            bar.update(len(names))


def write_frames(run, frames, clip):
    """Write each generated frame as PNG and into video.mp4 and side_by_side.mp4 as it arrives."""
    import video_io

    videos = [video_io.VideoWriter(run.path("video.mp4"), clip.fps),
              video_io.VideoWriter(run.path("side_by_side.mp4"), clip.fps)]
    left = clip.source_frames if clip.source_frames is not None else clip.pose_maps
    try:
        for index, frame in enumerate(frames):
            video_io.write_png(run.path("frames", f"{index:05d}.png"), frame)
            videos[0].write(frame)
            videos[1].write(np.concatenate([left[index], frame], axis=1))
    except BaseException:
        for video in videos:
            video.abort()
        raise
    for video in videos:
        video.close()


def reset_peak_memory():
    """Start this run's peak-memory count afresh (a sweep runs many in one process)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the process's peak since its start is the best there is


def peak_memory_gib(pipe):
    """Peak GPU memory allocated by torch, or the process's peak resident memory on a CPU."""
    import resource

    import torch

    device = pipe._execution_device
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2 ** 20  # KiB
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2 ** 30 if sys.platform == "darwin" else peak / 2 ** 20  # macOS: bytes; Linux: KiB


def versions():
    import diffusers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def run(args, command):
    """Steps 2-6 of main, for validated args; command: the shell command that reproduces the run."""
    import torch

    import inputs
    import outputs
    import pipeline
    import video_io

    timings = {}
    started = time.perf_counter()
    reset_peak_memory()
    run_folder = outputs.RunFolder(args.out, args.overwrite, args.resume, resume_settings(args))
    try:
        # 2. poses and source frames (all reading happens before anything is written)
        clip = inputs.load_clip(args)
        timings["inputs_s"] = time.perf_counter() - started
        # 3. models
        mark = time.perf_counter()
        pipe = load_models(args)
        timings["load_models_s"] = time.perf_counter() - mark
        log.info("%d frames at %dx%d, %g fps, on %s (%s)", len(clip.pose_maps), args.width, args.height,
                 clip.fps, pipe._execution_device, args.dtype)
        run_folder.create("frames", "poses", *(("source",) if clip.source_frames is not None else ()))
        for index, pose_map in enumerate(clip.pose_maps):
            video_io.write_png(run_folder.path("poses", f"{index:05d}.png"), pose_map)
        for index, frame in enumerate(clip.source_frames if clip.source_frames is not None else []):
            video_io.write_png(run_folder.path("source", f"{index:05d}.png"), frame)  # lossless, for the metrics
        if clip.keypoints is not None:  # the control poses at the working size (pose fidelity compares with them)
            import pose_extract

            sequence = clip.extracted or pose_extract.PoseSequence(clip.keypoints)
            sequence.canvas_size, sequence.fps = (args.width, args.height), clip.fps
            pose_extract.write_poses(run_folder.path("poses.json"), sequence)
        chunk = args.batch_size or pipeline.AUTO_BATCH_CPU
        # 4. techniques and denoising (skipped when resuming after it finished)
        mark = time.perf_counter()
        try:
            found, keyframes = build_techniques(args, pipe, clip)
            checkpoint = load_checkpoint(run_folder) if args.resume else None
            if checkpoint is None:
                latents, stats = pipeline.generate(pipe, clip.pose_maps, generation_config(args), found, keyframes,
                                                   progress=not args.quiet)
                save_checkpoint(run_folder, latents, stats)
            else:
                latents, stats = checkpoint
                log.info("resuming: denoised latents found in %s", run_folder.partial)
            timings["denoise_s"] = time.perf_counter() - mark
            # 5. decode and write frames and videos (frames already written are reused)
            mark = time.perf_counter()
            latents = latents.to(device=pipe._execution_device, dtype=pipe.vae.dtype)
            write_frames(run_folder, finished_frames(run_folder, pipe, latents, chunk, not args.quiet), clip)
        except torch.OutOfMemoryError:
            raise UserError(f"out of memory at --batch-size {args.batch_size}, {args.width}x{args.height}, "
                            f"{args.dtype}; lower --batch-size or use --dtype fp16") from None
        timings["decode_write_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - started
        # 6. record the run and publish the folder
        num_frames = len(clip.pose_maps)
        run_folder.write_json("run.json", {
            "args": vars(args), "frames": num_frames, "fps": clip.fps, "size": [args.width, args.height],
            "seeds": {"seed": args.seed, "rule": "frame i uses torch.Generator('cpu').manual_seed(seed + i)"},
            "techniques": {"preset": args.preset, "noise": args.noise,
                           "noise_settings": generation_config(args).noise_settings,
                           "hooks": technique_record(found, keyframes)},
            "models": {"model": args.model, "base": args.base, "controlnet": args.controlnet,
                       "scheduler": type(pipe.scheduler).__name__,
                       "prediction_type": pipe.scheduler.config.get("prediction_type")},
            "device": str(pipe._execution_device), "versions": versions(), "timings": timings,
            "cost": {"unet_evals_per_frame": stats.unet_evals / num_frames,
                     "controlnet_evals_per_frame": stats.controlnet_evals / num_frames,
                     "seconds_per_frame": timings["total_s"] / num_frames, "peak_memory_gib": peak_memory_gib(pipe)},
            "command": command,
        })
        run_folder.finish(scratch=(CHECKPOINT,))
    except OSError as error:  # disk full, file too large, read-only file system, permissions
        if run_folder.lock is None:  # not writing yet: not a failure of the run folder
            raise
        run_folder.discard()
        raise UserError(f"cannot write the run to {run_folder.partial}: {error.strerror or error}; free space or "
                        "choose another --out (nothing of this run was kept)") from None
    finally:
        run_folder.release()
    log.info("wrote %s (video.mp4, side_by_side.mp4, frames/, poses/, run.json) in %.1f s",
             run_folder.out, timings["total_s"])
    return run_folder.out


def parse_args(argv=None):
    """Parse, with a --preset's settings as defaults that explicit flags override."""
    from techniques import PRESETS

    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.preset:
        parser.set_defaults(**PRESETS[known.preset])
    return parser.parse_args(argv)


def evaluation_parser(prog):
    parser = OneLineParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clip-model", default="openai/clip-vit-large-patch14",
                        help="CLIP for frame and prompt consistency (folder or hub id)")
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP metrics")
    parser.add_argument("--pose-backend", default=None, choices=("openpose", "dwpose", "mediapipe"),
                        help="detector for pose fidelity (PCK@0.1); default: skip it")
    parser.add_argument("--annotator-path", default=None, help="the detector's weights folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    return parser


def evaluation_options(args):
    """The CLIP model and pose detector the metrics need, loaded once."""
    import metrics
    import pose_extract

    clip = None if args.no_clip else metrics.load_clip_model(args.clip_model)
    detector = pose_extract.make_detector(args.pose_backend, args.annotator_path) if args.pose_backend else None
    return {"clip": clip, "detector": detector}


def evaluate_main(argv):
    """python sdvideo.py evaluate RUN_DIR... : metrics of finished runs -> a table and RUN/metrics.json."""
    import metrics

    parser = evaluation_parser("sdvideo.py evaluate")
    parser.add_argument("runs", nargs="+", help="run folders")
    args = parser.parse_args(argv)
    options = evaluation_options(args)
    rows = [{"run": run, **metrics.evaluate_run(run, **options)} for run in args.runs]
    columns = ["run"] + [c for c in rows[0] if c not in ("run", "frames") and any(r.get(c) is not None for r in rows)]
    print(metrics.format_table(rows, columns))


def sweep_main(argv):
    """python sdvideo.py sweep CONFIG.yaml : many runs, evaluated and compared (see sweep.py)."""
    import sweep

    parser = evaluation_parser("sdvideo.py sweep")
    parser.add_argument("config", help="sweep YAML (see demo/sweep.yaml)")
    args = parser.parse_args(argv)
    flags = [action.dest for action in build_parser()._actions if action.dest != "help"]
    config = sweep.load_config(args.config, flags)
    settings = config.get("evaluate") or {}
    for key, value in settings.items():  # the YAML's evaluate section, unless given on the command line
        if getattr(args, key, None) in (None, False, parser.get_default(key)):
            setattr(args, key, value)
    rows = sweep.run_sweep(args.config, main, evaluation_options(args), flags)
    failed = [r for r in rows or [] if r.get("error")]
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} sweep runs failed ({', '.join(r['run'] for r in failed)}); "
                        f"their errors are in {os.path.join(config['out'], 'results.md')}")


SUBCOMMANDS = {"evaluate": evaluate_main, "sweep": sweep_main}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if hasattr(signal, "SIGXFSZ"):  # over a file size limit: an OSError we report, not a silent kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if argv and argv[0] in SUBCOMMANDS:
        configure_logging("--quiet" in argv)
        try:
            SUBCOMMANDS[argv[0]](argv[1:])
        except UserError as error:
            print(f"sdvideo: error: {error}", file=sys.stderr)
            return 2
        return 0
    try:
        args = parse_args(argv)
    except SystemExit as done:  # --help, or a bad flag already reported in one line
        return done.code
    configure_logging(args.quiet)
    try:
        # 1. validate arguments
        validate(args)
        run(args, shlex.join(["python", "sdvideo.py", *argv]))
    except UserError as error:
        print(f"sdvideo: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        partial = f"{os.path.normpath(args.out)}.partial" if args.out else None
        kept = f"; finished frames are kept in {partial}" if partial and os.path.isdir(partial) else ""
        print(f"sdvideo: interrupted{kept}", file=sys.stderr)
        return 130
    return 0


def configure_logging(quiet):
    """Our messages through logging (warnings only with --quiet); the libraries' own: diffusers'
    warnings (the CLIP 77-token truncation among them) shown, transformers' advice about optional
    packages we never use (torchvision) not; --quiet also hides their loading bars. No global
    warning filters."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True)
    logging.getLogger().setLevel(logging.WARNING if quiet else logging.INFO)
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error() if quiet else diffusers_logging.set_verbosity_warning()
    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar() if quiet else library.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
