"""The ``run`` command's flags: their declarations (argparse groups; each technique adds its own
from its class), the per-model defaults and the presets. ``run_command_parser(subparsers)`` is
the entry point; cli/run.py checks and runs what is parsed, cli/api.py takes the same settings as
keyword arguments.
"""
import argparse
import os

import pose_extract
from common.errors import HelpFormatter
from common.files import ROOT
from loading import adapters, builtin, controls, models
from loop import registry
from loop.keyframes import KeyframePlan
DEMO_POSES = os.path.join(ROOT, "demo", "golf_swing.json")
DEFAULT_PROMPT = "a golfer swinging a club on a sunny golf course, photorealistic, detailed"
DEFAULT_NEGATIVE = "blurry, deformed, extra limbs, low quality"
TOY_PROMPT = "a golfer in a red shirt and black trousers, on a golf course"
# What --height/--width, --prompt and --negative-prompt default to, per --model (None: real weights).
# The toy model knows only its training prompts' words, was trained with "" as the unconditional
# prompt, and draws 128 px pictures (toy world 2; toy64, the first toy world: 64 px).
MODEL_DEFAULTS = {
    None: dict(height=512, width=512, prompt=DEFAULT_PROMPT, negative_prompt=DEFAULT_NEGATIVE),
    "tiny": dict(height=512, width=512, prompt=DEFAULT_PROMPT, negative_prompt=DEFAULT_NEGATIVE),
    "toy": dict(height=128, width=128, prompt=TOY_PROMPT, negative_prompt=""),
    "toy64": dict(height=64, width=64, prompt=TOY_PROMPT, negative_prompt=""),
}
TOY_MODELS = tuple(builtin.TOY_DIRS)  # the trained toy worlds: toy world 2, the first (64 px)
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
    # the newer training-free methods in their papers' own settings (docs/techniques.md cites each code):
    # RAVE: DDIM inversion with the empty prompt and the ControlNet (give_control_inversion), 3x3 grids reshuffled
    "rave": {"inversion": {"on": True, "strength": 1.0, "prompt": "", "control": True}, "grid": {"k": 3, "shuffle": True}},
    # FLATTEN: 100 inversion steps with the empty prompt, trajectory attention
    "flatten": {"inversion": {"on": True, "strength": 1.0, "prompt": "", "steps": 100},
                "trajectory-attention": {"on": True}},
    "flow-gated": {"noise": {"kind": "flow-gated"}},
    # DeepCache at interval 3, its default branch 0: 2.28x on the CPU mid model, pose IoU within 0.02 on the toy world
    "fast": {"deep-cache": {"interval": 3, "branch": 0}},
    # Ground-A-Video's optical-flow-guided smoothing of the inverted latents (inference.py): the DDIM inversion of
    # the source, each latent pixel kept from the previous frame where the flow is under 0.2 of the pair's largest
    "ground-a-video": {"inversion": {"on": True, "strength": 1.0},
                       "noise": {"kind": "flow-gated", "flow_threshold": 0.2, "flow_relative": True}},
    # StreamV2V: img2img at noise strength 0.4 from one fixed noise, a one-frame bank, decoder features fused at
    # 0.8 where cos >= 0.98
    "streamv2v": {"noise": {"kind": "fixed"}, "sdedit": {"on": True, "strength": 0.4},
                  "feature-bank": {"frames": 1, "fusion": 0.8, "threshold": 0.98}},
    # VidToMe: DDIM inversion without control, chunks of 4 frames, local merge 0.9, global merge 0.8
    "vidtome": {"inversion": {"on": True, "strength": 1.0}, "token-merge": {"ratio": 0.9, "chunk": 4, "global_ratio": 0.8}},
    # Rerender-A-Video: img2img at x0_strength 0.75, cross-frame attention to the first and previous frames, flow
    # fusion of x0 in the first 10 % (warp_period) and of the latent from 50 to 80 % at 0.5 (mask_period, mask_strength)
    "rerender": {"sdedit": {"on": True, "strength": 0.75}, "cross-frame-attention": {"mode": "anchor+previous"},
                 "common": {"anchor": "first"},
                 "flow-fusion": {"weight": 0.5, "x0_steps": "0:0.1", "latent_steps": "0.5:0.8"}},
}
COMMON_FLAGS = {"noise": {"kind": "noise", "drift": "noise_drift", "flow_threshold": "noise_flow_threshold",
                          "flow_relative": "noise_flow_relative"},
                "common": {"anchor": "anchor"}}


SOURCE_STARTS = {"inversion": "the DDIM inversion of the source clip", "sdedit": "the source clip, noised (img2img)"}


def preset_start(name):
    """What a preset starts frames from, where that is the source clip (it then needs --video), else None."""
    return next((SOURCE_STARTS[t] for t in PRESETS[name] if t in SOURCE_STARTS), None)


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


def scale_list(value):
    """--controlnet-scale: "1.0,0.5" (as --control takes commas) or "1.0" -> a list of floats."""
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: scales are numbers, e.g. 1.0 or 1.0,0.5") from None


class ExtendFlat(argparse.Action):
    """Extend the list with every value's items: --controlnet-scale 1.0,0.5 and 1.0 0.5 alike."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), *(v for value in values for v in value)])


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


def add_run_parser(subparsers):
    """The run command's parser with every flag (run.run_command_parser sets what it calls)."""
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
                           "random walk, a slerp between two seeds, or gated by the source's optical flow (with "
                           "--invert-source the gate smooths the inverted latents, as Ground-A-Video does)")
    tech.add_argument("--noise-drift", type=float, default=0.1,
                      help="progressive noise: radians per frame, z_i = cos(d) z_(i-1) + sin(d) e_i")
    tech.add_argument("--noise-flow-threshold", type=float, default=1.0,
                      help="flow-gated noise: a latent pixel keeps the previous frame's noise where the source "
                           "moves less than this many pixels between the two frames (needs --video)")
    tech.add_argument("--noise-flow-relative", action="store_true",
                      help="flow-gated noise: --noise-flow-threshold is a fraction of each frame pair's largest "
                           "flow instead (Ground-A-Video: 0.2)")
    tech.add_argument("--anchor", default="first",
                      help="reference frame of copying, blending, differences, cross-frame attention: first|middle|N")
    for technique in (*registry.TECHNIQUES, KeyframePlan):
        technique.add_arguments(tech)
    tech.add_argument("--save-residuals", default=None, help="save the source latents and poses to this file")
    tech.add_argument("--residuals", default=None,
                      help="source latents from a --save-residuals file instead of --video (same frame count and size)")
    pose_extract.add_extraction_arguments(parser)
    add_output_and_performance_arguments(parser)
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
                         help=f"output {side}, rounded to a multiple of 8 (default: 512; 128 with --model toy, 64 with toy64)")
    inp.add_argument("--fit", choices=("crop", "pad"), default="crop", help="keep aspect by centre crop or padding")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=tuple(k for k in MODEL_DEFAULTS if k), default=None,
                       help="a built-in model instead of --base/--controlnet: 'toy', the trained toy world 2 "
                            "(128 px, toy_model/); 'toy64', the first toy world (64 px, toy_model_64/); "
                            "'tiny', random weights (noise pictures; for tests)")
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
                            "another), decoding and encoding the source (a 512 px decode: 141 GFLOP, SD's VAE 2480)")
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
    gen.add_argument("--controlnet-scale", type=scale_list, nargs="+", action=ExtendFlat, default=None,
                     metavar="SCALE", help="ControlNet conditioning scale: one for all controls, or one per --control "
                                           "in its order, by spaces or commas (default: 1)")
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


NEGATABLE = ("grid_shuffle",)  # the run flags on by default, with a --no- form (tests check the list)


def to_flags(settings):
    """{"copy_step": "0.3", "overwrite": True, "grid_shuffle": False} -> ["--copy-step", "0.3",
    "--overwrite", "--no-grid-shuffle"]: false leaves a switch off, or turns off one on by default."""
    flags = []
    for key, value in settings.items():
        if value is False and key in NEGATABLE:
            flags.append("--no-" + key.replace("_", "-"))
        if value is None or value is False:
            continue
        for item in value if isinstance(value, list) else [value]:  # a list repeats the flag (--lora a --lora b)
            flags.append("--" + key.replace("_", "-"))
            if item is not True:
                flags.append(str(item))
    return flags
