"""``sdvideo.py run`` (the default command): poses and a prompt in, a video and its record out.

``run_command_parser(subparsers)`` declares the flags (the techniques' come from their classes in
techniques.py and keyframes.py); ``run_command(args)`` checks them, loads inputs and models,
builds the techniques, runs the loop and writes the run folder (outputs.py).
"""
import argparse
import logging
import math
import os
import time

import torch

import adapters
import controls
import inputs
import models
import outputs
import pipeline
import planners
import pose_extract
import predict
import registry
from errors import HelpFormatter, UserError
from keyframes import KeyframePlan
from sources import Sources

log = logging.getLogger("sdvideo")
HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_POSES = os.path.join(HERE, "demo", "golf_swing.json")
DEFAULT_PROMPT = "a golfer swinging a club on a sunny golf course, photorealistic, detailed"
DEFAULT_NEGATIVE = "blurry, deformed, extra limbs, low quality"
TOY_PROMPT = "a golfer in a red shirt and black trousers, on a golf course"
# What --height/--width, --prompt and --negative-prompt default to, per --model (None: real weights).
# The toy model knows only its training prompts' words, was trained with "" as the unconditional
# prompt, and draws 64 px pictures.
MODEL_DEFAULTS = {
    None: dict(height=512, width=512, prompt=DEFAULT_PROMPT, negative_prompt=DEFAULT_NEGATIVE),
    "tiny": dict(height=512, width=512, prompt=DEFAULT_PROMPT, negative_prompt=DEFAULT_NEGATIVE),
    "toy": dict(height=64, width=64, prompt=TOY_PROMPT, negative_prompt=""),
}
SIZE_MULTIPLE = 8
MAX_SIDE = 2048  # SD 2.1 was trained at 512/768; 2048 px already needs --vae-tiling and a large GPU
MAX_FPS = 240.0
MAX_CONTROLNET_SCALE = 5.0
NOISE_CHOICES = ("independent", "fixed", "progressive", "slerp", "flow-gated")
# Presets: plain data keyed by technique name (and "noise", "common") and field.
PRESETS = {
    "baseline": {"noise": {"kind": "independent"}},
    # the original project's best: fixed noise, copying at 30 %, source latent differences after it
    "seed": {"noise": {"kind": "fixed"}, "copy": {"step": "0.3", "source": "anchor"},
             "differences": {"steps": "0.3:0.7", "scale": 1.0}},
    "keyframe": {"noise": {"kind": "fixed"}, "keyframe": {"mode": "keyframe", "interval": 8, "strength": 0.5}},
    # Text2Video-Zero without its motion dynamics: one noise, every frame attends to the first
    "t2v-zero": {"noise": {"kind": "fixed"}, "cross-frame-attention": {"mode": "anchor"},
                 "common": {"anchor": "first"}},
    # the newer training-free methods, each as this harness builds it
    "rave": {"grid": {"k": 2, "shuffle": True}},
    "flatten": {"noise": {"kind": "fixed"}, "trajectory-attention": {"on": True}},
    "flow-gated": {"noise": {"kind": "flow-gated"}},
}
COMMON_FLAGS = {"noise": {"kind": "noise", "drift": "noise_drift", "flow_threshold": "noise_flow_threshold"},
                "common": {"anchor": "anchor"}}


def preset_defaults(name):
    """A preset as argparse defaults (dest -> value), through each technique's field names."""
    flags = {**COMMON_FLAGS, **{cls.name: cls.flags for cls in (*registry.TECHNIQUES, KeyframePlan)}}
    return {flags[technique][field]: value for technique, fields in PRESETS[name].items()
            for field, value in fields.items()}


def control_list(value):
    """--control: "pose,canny" -> ("pose", "canny")."""
    try:
        return controls.parse_controls(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def run_command_parser(subparsers):
    parser = subparsers.add_parser("run", formatter_class=HelpFormatter,
                                   help="generate a video (the default command)",
                                   description="Pose-controlled video with SD + ControlNet-OpenPose, zero-shot. "
                                               "With no --video/--poses it runs the bundled golf-swing poses.")
    add_input_and_model_arguments(parser)
    add_generation_arguments(parser)
    tech = parser.add_argument_group("techniques")
    tech.add_argument("--preset", choices=sorted(PRESETS), default=None,
                      help="a named combination (see README); explicit flags override its settings")
    tech.add_argument("--noise", choices=NOISE_CHOICES, default="independent",
                      help="initial noise across frames: independent per frame, one fixed, a progressive "
                           "random walk, a slerp between two seeds, or gated by the source's optical flow")
    tech.add_argument("--noise-drift", type=float, default=0.1,
                      help="progressive noise: radians per frame, z_i = cos(d) z_(i-1) + sin(d) e_i")
    tech.add_argument("--noise-flow-threshold", type=float, default=1.0,
                      help="flow-gated noise: a latent pixel keeps the previous frame's noise where the source "
                           "moves less than this many pixels between the two frames (needs --video)")
    tech.add_argument("--anchor", default="first",
                      help="reference frame of copying, blending, differences, cross-frame attention: first|middle|N")
    for technique in (*registry.TECHNIQUES, KeyframePlan):
        technique.add_arguments(tech)
    tech.add_argument("--save-residuals", default=None, help="save the source latents and poses to this file")
    tech.add_argument("--residuals", default=None,
                      help="source latents from a --save-residuals file instead of --video (same frame count and size)")
    pose_extract.add_extraction_arguments(parser)
    add_output_and_performance_arguments(parser)
    parser.set_defaults(func=run_command)
    return parser


def add_input_and_model_arguments(parser):
    inp = parser.add_argument_group("input")
    inp.add_argument("--video", help="source video (any container FFmpeg reads); its poses are extracted "
                                     "unless --poses is given")
    inp.add_argument("--poses", help="OpenPose JSON (sequence file or folder of --write_json files) or a folder of "
                                     "pose-map images (default: extracted from --video, or the demo swing)")
    inp.add_argument("--start", type=float, default=0.0, help="first frame's time in seconds")
    inp.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    inp.add_argument("--stride", type=int, default=1, help="keep every N-th frame")
    inp.add_argument("--fps", type=float, default=None, help="resample to this frame rate (instead of --stride)")
    for side in ("height", "width"):
        inp.add_argument(f"--{side}", type=int, default=None,
                         help=f"output {side}, rounded to a multiple of 8 (default: 512; 64 with --model toy)")
    inp.add_argument("--fit", choices=("crop", "pad"), default="crop", help="keep aspect by centre crop or padding")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=tuple(k for k in MODEL_DEFAULTS if k), default=None,
                       help="a built-in model instead of --base/--controlnet: 'toy', the trained toy world "
                            "(64 px figures, toy_model/); 'tiny', random weights (noise pictures; for tests)")
    model.add_argument("--base", default=None, help=f"SD 1.x/2.x diffusers folder or hub id (default: "
                                                    f"{models.DEFAULT_BASE})")
    model.add_argument("--controlnet", default=None, help=f"ControlNet diffusers folder, hub id, or original "
                                                          f".ckpt/.safetensors (default: {models.DEFAULT_CONTROLNET})")
    model.add_argument("--controlnet-config", default=None,
                       help="original config used to convert a .ckpt/.safetensors --controlnet (default: "
                            "cldm_v21.yaml beside sdvideo.py)")
    model.add_argument("--scheduler", choices=tuple(models.SCHEDULERS), default="ddim",
                       help="sampler, built from the base model's scheduler config (its timestep spacing kept); "
                            "lcm, tcd: few-step (LCM/TCD LoRAs); model: the base folder's own (SD-Turbo's Euler)")
    model.add_argument("--vae", type=models.parse_vae, default=None, metavar="full|tiny[=PATH_OR_ID]",
                       help=f"full: the base's VAE; tiny: diffusers' AutoencoderTiny ({models.TINY_VAE}, or "
                            "another), decoding and encoding the source, about 20x cheaper")
    model.add_argument("--dtype", choices=tuple(models.DTYPES), default="fp32", help="model precision")
    model.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto", help="where to run")
    model.add_argument("--local-files-only", action="store_true",
                       help="never contact the hub (HF_HUB_OFFLINE=1 does the same)")
    model.add_argument("--lora", action="append", type=adapters.parse_lora, default=[], metavar="PATH_OR_ID[:SCALE]",
                       help="a LoRA on the base model (file, folder or hub id), at SCALE (1 if not given); "
                            "repeatable, each its own adapter")
    model.add_argument("--embedding", action="append", type=adapters.parse_embedding, default=[],
                       metavar="PATH_OR_ID[:TOKEN]",
                       help="a textual-inversion embedding, used where the prompt has TOKEN (the file's own "
                            "token if not given); repeatable")


def add_generation_arguments(parser):
    gen = parser.add_argument_group("generation")
    gen.add_argument("--prompt", default=None,
                     help=f"text prompt for every frame (default: '{DEFAULT_PROMPT}'; with --model toy: '{TOY_PROMPT}')")
    gen.add_argument("--negative-prompt", default=None,
                     help=f"negative prompt (default: '{DEFAULT_NEGATIVE}'; with --model toy: none)")
    gen.add_argument("--steps", type=int, default=20, help="denoising steps")
    gen.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (<= 1: off)")
    gen.add_argument("--controlnet-scale", type=float, nargs="+", action="extend", default=None, metavar="SCALE",
                     help="ControlNet conditioning scale: one for all controls, or one per --control in its "
                          "order (default: 1)")
    gen.add_argument("--control", type=control_list, default=("pose",),
                     help="the controls, comma-separated: pose, then canny and/or depth from the source clip "
                          "(needs --video), each with its own ControlNet (default: pose)")
    gen.add_argument("--controlnet-canny", default=None,
                     help=f"the canny edges' ControlNet (default: {controls.DEFAULT_CONTROLNETS['canny']})")
    gen.add_argument("--controlnet-depth", default=None,
                     help=f"the depth maps' ControlNet (default: {controls.DEFAULT_CONTROLNETS['depth']})")
    gen.add_argument("--canny-low", type=int, default=100, help="Canny's lower hysteresis threshold (OpenCV)")
    gen.add_argument("--canny-high", type=int, default=200, help="Canny's upper hysteresis threshold (OpenCV)")
    gen.add_argument("--control-start", type=float, default=0.0, help="fraction of the schedule where control starts")
    gen.add_argument("--control-end", type=float, default=1.0, help="fraction of the schedule where control ends")
    gen.add_argument("--seed", type=int, default=0, help="frame i's generator is seeded seed + i")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")


def add_output_and_performance_arguments(parser):
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="run folder (default: outputs/run-<date>-<time>)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing run folder (and --save-residuals file)")
    out.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from OUT.partial (same settings and inputs): reuses its latents "
                          "and frames")
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


# ---- 1. validate ------------------------------------------------------------------------------

def apply_model_defaults(args):
    """Fill the defaults that depend on --model; a built-in model with --base/--controlnet is refused."""
    if args.model and (args.base or args.controlnet):
        raise UserError(f"--model {args.model} is a built-in model: drop --base/--controlnet, or drop --model "
                        "to load those weights")
    if not args.model:
        args.base, args.controlnet = args.base or models.DEFAULT_BASE, args.controlnet or models.DEFAULT_CONTROLNET
    for name, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.controlnet_config = args.controlnet_config or os.path.join(HERE, "cldm_v21.yaml")


def validate(args):
    """Check every argument a user can get wrong, before anything loads; round sizes. Raises UserError."""
    apply_model_defaults(args)
    args.controlnet_scale = args.controlnet_scale or [1.0]
    extra = args.control[1:]
    for name in extra:  # the real models' default ControlNet for each extra control
        if getattr(args, f"controlnet_{name}") is None and args.model is None:
            setattr(args, f"controlnet_{name}", controls.DEFAULT_CONTROLNETS[name])
    checks = [
        (args.steps >= 1, "--steps must be at least 1"),
        (args.guidance >= 0, "--guidance must be >= 0"),
        (all(0 <= s <= MAX_CONTROLNET_SCALE for s in args.controlnet_scale),
         f"--controlnet-scale must be in [0, {MAX_CONTROLNET_SCALE}]"),
        (len(args.controlnet_scale) in (1, len(args.control)),
         f"--controlnet-scale takes one value, or one per control ({len(args.control)}: {','.join(args.control)}); "
         f"got {len(args.controlnet_scale)}"),
        (not (extra and args.video is None),
         f"--control {','.join(args.control)} needs --video: the {' and '.join(extra)} maps come from the source clip"),
        (not (extra and args.model == "toy"), "--model toy has a pose ControlNet only: drop the extra controls of "
                                              "--control"),
        (0 <= args.canny_low <= args.canny_high, "need 0 <= --canny-low <= --canny-high"),
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
        (args.noise_flow_threshold >= 0, "--noise-flow-threshold must be >= 0 pixels"),
        (not (args.noise == "flow-gated" and args.video is None),
         "--noise flow-gated needs --video: the gate is the source clip's optical flow"),
        (args.anchor in ("first", "middle") or args.anchor.isdigit(), "--anchor must be first, middle or a frame number"),
        (not (args.save_residuals and args.video is None), "--save-residuals needs --video"),
        (args.residuals is None or os.path.isfile(args.residuals), f"--residuals file not found: {args.residuals}"),
        (not args.save_residuals or os.path.isdir(os.path.dirname(os.path.abspath(args.save_residuals))),
         f"--save-residuals {args.save_residuals}: its folder does not exist; create it or choose another path"),
        (not args.save_residuals or not os.path.exists(args.save_residuals) or args.overwrite,
         f"--save-residuals {args.save_residuals} exists; pass --overwrite to replace it or choose another path"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    for technique in (*registry.TECHNIQUES, KeyframePlan):
        technique.check(args)
    controls.check_available(args.control)
    for source, _ in args.lora:
        adapters.check_source("--lora", source, adapters.LORA_WEIGHTS)
    for source, _ in args.embedding:
        adapters.check_source("--embedding", source)
    if len(planners.requested(args)) > 1:
        raise UserError(f"{' and '.join(planners.requested(args))} both plan the model's calls; choose one")
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


# ---- 3. models, 4. techniques -----------------------------------------------------------------

def load_models(args):
    spec = models.ModelSpec(model=args.model, base=args.base, controlnet=args.controlnet,
                            controlnet_config=args.controlnet_config, scheduler=args.scheduler, vae=args.vae,
                            dtype=args.dtype, device=args.device,
                            local_files_only=args.local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1",
                            attention=args.attention, channels_last=args.channels_last, compile=args.compile,
                            vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling, offload=args.offload,
                            reuse_control_embedding=not args.recompute_control_embedding,
                            loras=tuple(args.lora), embeddings=tuple(args.embedding),
                            extra_controlnets=tuple(getattr(args, f"controlnet_{name}") or name  # tiny: its own
                                                    for name in args.control[1:]))
    return models.load_pipeline(spec)


def noise_settings(args, sources=None):
    """The --noise scheme's settings (flow-gated: the source's motion mask, from ``sources``)."""
    if args.noise == "progressive":
        return {"drift": args.noise_drift}
    if args.noise == "flow-gated" and sources is not None:
        return {"moving": sources.moving(args.noise_flow_threshold)}
    return {}


def controlnet_scales(args):
    """--controlnet-scale for the loop: a float for the pose alone, else one per control."""
    scales = args.controlnet_scale * (len(args.control) if len(args.controlnet_scale) == 1 else 1)
    return scales[0] if len(args.control) == 1 else scales


def generation_config(args, sources=None):
    return pipeline.GenerationConfig(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                                     guidance=args.guidance, controlnet_scale=controlnet_scales(args),
                                     control_start=args.control_start, control_end=args.control_end, seed=args.seed,
                                     noise=args.noise, noise_settings=noise_settings(args, sources),
                                     batch_size=args.batch_size,
                                     eta=args.eta)


def build_techniques(args, sources):
    """The registered techniques the flags ask for, in TECHNIQUES order, and the pass driver."""
    if args.save_residuals:
        sources.save(args.save_residuals)
    found = [t for t in (cls.from_args(args, sources) for cls in registry.TECHNIQUES) if t is not None]
    try:
        pipeline.batch_planner(found)
    except ValueError as error:
        raise UserError(f"{error}; choose one") from None
    return found, KeyframePlan.from_args(args, sources)


# ---- the command ------------------------------------------------------------------------------

def run_command(args):
    """Steps 1-6: validate, inputs, models, techniques and denoising, decoding, the record."""
    validate(args)
    timings, started = {}, time.perf_counter()
    outputs.reset_peak_memory()
    run_folder = outputs.RunFolder(args.out, args.overwrite, args.resume, outputs.resume_settings(args))
    try:
        # 2. poses and source frames (all reading happens before anything is written)
        clip = inputs.load_clip(inputs.ClipSpec.from_args(args))
        timings["inputs_s"] = time.perf_counter() - started
        # 3. models
        mark = time.perf_counter()
        pipe = load_models(args)
        timings["load_models_s"] = time.perf_counter() - mark
        log.info("%d frames at %dx%d, %g fps, on %s (%s)", len(clip.pose_maps), args.width, args.height, clip.fps,
                 pipe._execution_device, args.dtype)
        outputs.write_inputs(run_folder, clip, args.width, args.height)
        # 4. techniques and denoising (skipped when resuming after it finished)
        mark = time.perf_counter()
        sources = Sources(args, pipe, clip)
        found, driver = build_techniques(args, sources)
        latents, stats = denoised(args, run_folder, pipe, clip, found, driver, sources)
        timings["denoise_s"] = time.perf_counter() - mark
        # 5. decode and write frames and videos (frames already written are reused)
        mark = time.perf_counter()
        latents = latents.to(device=pipe._execution_device, dtype=pipe.vae.dtype)
        chunk = args.batch_size or predict.AUTO_BATCH_CPU
        outputs.write_frames(run_folder, outputs.finished_frames(run_folder, pipe, latents, chunk, not args.quiet),
                             clip)
        timings["decode_write_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - started
        # 6. record the run and publish the folder
        run_folder.write_json("run.json", outputs.run_record(args, clip, pipe, found, driver, stats, timings))
        run_folder.finish()
    except OSError as error:  # disk full, file too large, read-only file system, permissions
        if run_folder.lock is None:  # not writing yet: not a failure of the run folder
            raise
        run_folder.discard()
        raise UserError(f"cannot write the run to {run_folder.partial}: {error.strerror or error}; free space or "
                        "choose another --out (nothing of this run was kept)") from None
    finally:
        run_folder.release()
    log.info("wrote %s (video.mp4, side_by_side.mp4, frames/, poses/, run.json) in %.1f s", run_folder.out,
             timings["total_s"])
    return 0


def denoised(args, run_folder, pipe, clip, found, driver, sources):
    """The clip's clean latents and LoopStats: generated, or read back when resuming after them."""
    checkpoint = outputs.load_checkpoint(run_folder) if args.resume else None
    if checkpoint is not None:
        log.info("resuming: denoised latents found in %s", run_folder.partial)
        latents, counts = checkpoint
        return latents, pipeline.LoopStats(**counts)
    try:
        maps = controls.stack(clip.pose_maps, controls.extra_maps(args.control, clip.source_frames, args.canny_low,
                                                                  args.canny_high, args.annotator_path))
        latents, stats = pipeline.generate(pipe, maps, generation_config(args, sources), found, driver,
                                           progress=not args.quiet)
    except torch.OutOfMemoryError:
        raise UserError(f"out of memory at --batch-size {args.batch_size}, {args.width}x{args.height}, "
                        f"{args.dtype}; lower --batch-size or use --dtype fp16") from None
    outputs.save_checkpoint(run_folder, latents, stats)
    return latents, stats
