"""``sdvideo.py run`` (the default command): poses and a prompt in, a video and its record out.

``run_command(args)`` checks the flags (declared in cli/run_args.py), loads inputs and models, builds
the techniques, runs the loop and writes the run folder (cli/outputs.py); ``execute`` is that run
for a parsed Namespace, with or without a folder, which cli/api.py's ``generate`` calls too.
"""
import logging
import math
import os
import time

import numpy as np
import torch

from cli import outputs
from cli.run_args import (DEMO_POSES, MAX_CONTROLNET_SCALE, MAX_FPS, MAX_SIDE, MODEL_DEFAULTS, PRESETS,  # noqa: F401
                          SIZE_MULTIPLE, TOY_MODELS, TOY_PROMPT, add_run_parser, preset_defaults,
                          preset_start)
from common.errors import UserError
from common.files import ROOT
from loading import adapters, controls, inputs, models
from loading.sources import Sources
from loop import pipeline, planners, predict, registry
from loop.keyframes import KeyframePlan

log = logging.getLogger("sdvideo")


def run_command_parser(subparsers):
    """``sdvideo.py run``: the flags of cli/run_args.py, calling ``run_command``."""
    parser = add_run_parser(subparsers)
    parser.set_defaults(func=run_command)
    return parser


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
    args.controlnet_config = args.controlnet_config or os.path.join(ROOT, "cldm_v21.yaml")


def validate(args, default_out=True):
    """Check every argument a user can get wrong, before anything loads; round sizes; with
    ``default_out``, a dated --out when none is given. Raises UserError."""
    apply_model_defaults(args)
    args.controlnet_scale = args.controlnet_scale or [1.0]
    for name in args.control[1:]:  # the real models' default ControlNet for each extra control
        if getattr(args, f"controlnet_{name}") is None and args.model is None:
            setattr(args, f"controlnet_{name}", controls.DEFAULT_CONTROLNETS[name])
    start = preset_start(args.preset) if args.preset else None
    if start and args.video is None:
        raise UserError(f"--preset {args.preset} starts from {start}: give the clip with --video")
    for ok, message in value_checks(args):
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
    if args.out is None and default_out:
        args.out = os.path.join("outputs", time.strftime("run-%Y%m%d-%H%M%S"))


def value_checks(args):
    """(holds, the one line if not) for each setting checked on its own value."""
    extra = args.control[1:]
    return [
        (args.steps >= 1, "--steps must be at least 1"),
        (args.guidance >= 0, "--guidance must be >= 0"),
        (all(0 <= s <= MAX_CONTROLNET_SCALE for s in args.controlnet_scale),
         f"--controlnet-scale must be in [0, {MAX_CONTROLNET_SCALE}]"),
        (len(args.controlnet_scale) in (1, len(args.control)),
         f"--controlnet-scale takes one value, or one per control ({len(args.control)}: {','.join(args.control)}); "
         f"got {len(args.controlnet_scale)}"),
        (not (extra and args.video is None),
         f"--control {','.join(args.control)} needs --video: the {' and '.join(extra)} maps come from the source clip"),
        (not (extra and args.model in TOY_MODELS), f"--model {args.model} has a pose ControlNet only: drop the "
                                                   "extra controls of --control"),
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
        (not args.noise_flow_relative or args.noise_flow_threshold <= 1,
         "--noise-flow-relative: --noise-flow-threshold is a fraction of the largest flow and must be <= 1"),
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
        return {"moving": sources.moving(args.noise_flow_threshold, args.noise_flow_relative)}
    return {}


def generation_config(args, sources=None):
    return pipeline.GenerationConfig(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                                     guidance=args.guidance,
                                     controlnet_scale=controls.loop_scales(args.control, args.controlnet_scale),
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
        pipeline.evaluation_planner(found, pipeline.batch_planner(found))
    except ValueError as error:
        raise UserError(f"{error}; choose one") from None
    return found, KeyframePlan.from_args(args, sources)


# ---- the command ------------------------------------------------------------------------------

def run_command(args):
    """Steps 1-6: validate, inputs, models, techniques and denoising, decoding, the record."""
    validate(args)
    execute(args)
    return 0


def execute(args, pipe=None, keep_frames=False):
    """A validated run -> (frames (F, H, W, 3) uint8 where ``keep_frames`` or there is no --out,
    else None; the run record). With args.out the run folder is written (atomic, locked, resumable);
    without, nothing is. ``pipe``: a loaded pipeline to reuse (api.load), else loaded from args."""
    timings, started = {}, time.perf_counter()
    outputs.reset_peak_memory()
    if args.out is None:
        return _execute_in_memory(args, pipe, timings, started)
    run_folder = outputs.RunFolder(args.out, args.overwrite, args.resume, outputs.resume_settings(args))
    kept = [] if keep_frames else None
    try:
        # 2. poses and source frames (all reading happens before anything is written)
        clip = inputs.load_clip(inputs.ClipSpec.from_args(args))
        timings["inputs_s"] = time.perf_counter() - started
        # 3. models
        mark = time.perf_counter()
        pipe = pipe or load_models(args)
        timings["load_models_s"] = time.perf_counter() - mark
        log.info("%d frames at %dx%d, %g fps, on %s (%s)", len(clip.pose_maps), args.width, args.height, clip.fps,
                 pipe._execution_device, args.dtype)
        outputs.write_inputs(run_folder, clip, args.width, args.height)
        # 4. techniques and denoising (skipped when resuming after it finished)
        mark = time.perf_counter()
        sources = Sources(args, pipe, clip)
        found, driver = build_techniques(args, sources)
        latents, stats = denoised(args, run_folder, pipe, found, driver, sources)
        timings["denoise_s"] = time.perf_counter() - mark
        # 5. decode and write frames and videos (frames already written are reused)
        mark = time.perf_counter()
        latents = latents.to(device=pipe._execution_device, dtype=pipe.vae.dtype)
        chunk = args.batch_size or predict.AUTO_BATCH_CPU
        frames = outputs.finished_frames(run_folder, pipe, latents, chunk, not args.quiet)
        outputs.write_frames(run_folder, frames if kept is None else _kept(frames, kept), clip)
        timings["decode_write_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - started
        # 6. record the run and publish the folder
        record = outputs.run_record(args, clip, pipe, found, driver, stats, timings)
        run_folder.write_json("run.json", record)
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
    return (None if kept is None else np.stack(kept)), record


def _kept(frames, kept):
    for frame in frames:
        kept.append(frame)
        yield frame


def _execute_in_memory(args, pipe, timings, started):
    """execute's steps 2-6 with no folder: the frames and the record, nothing written."""
    clip = inputs.load_clip(inputs.ClipSpec.from_args(args))
    pipe = pipe or load_models(args)
    sources = Sources(args, pipe, clip)
    found, driver = build_techniques(args, sources)
    latents, stats = generate_latents(args, pipe, found, driver, sources)
    latents = latents.to(device=pipe._execution_device, dtype=pipe.vae.dtype)
    frames = np.stack(list(pipeline.decode(pipe, latents, args.batch_size or predict.AUTO_BATCH_CPU, not args.quiet)))
    timings["total_s"] = time.perf_counter() - started
    return frames, outputs.run_record(args, clip, pipe, found, driver, stats, timings)


def generate_latents(args, pipe, found, driver, sources):
    """The loop over the clip's control maps (pose, then the extra controls) -> latents, LoopStats."""
    try:
        return pipeline.generate(pipe, sources.control_maps(), generation_config(args, sources), found, driver,
                                 progress=not args.quiet)
    except torch.OutOfMemoryError:
        raise UserError(f"out of memory at --batch-size {args.batch_size}, {args.width}x{args.height}, "
                        f"{args.dtype}; lower --batch-size or use --dtype fp16") from None


def denoised(args, run_folder, pipe, found, driver, sources):
    """The clip's clean latents and LoopStats: generated, or read back when resuming after them."""
    checkpoint = outputs.load_checkpoint(run_folder) if args.resume else None
    if checkpoint is not None:
        log.info("resuming: denoised latents found in %s", run_folder.partial)
        latents, counts = checkpoint
        return latents, pipeline.LoopStats(**counts)
    latents, stats = generate_latents(args, pipe, found, driver, sources)
    outputs.save_checkpoint(run_folder, latents, stats)
    return latents, stats
