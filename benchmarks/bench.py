"""Speed and memory of sdvideo against diffusers, measured side by side in one run.

    python benchmarks/bench.py --arch mid            # CPU target: ~40M-parameter UNet, 256x256, 16 frames
    python benchmarks/bench.py --arch full --dtype bf16 --height 512 --width 512   # GPU: SD2.1 + ControlNet shapes
    python benchmarks/bench.py --arch mid --options   # sdvideo (c) under each speed option, side by side

Random weights (speed does not depend on their values). Each configuration runs in a fresh
subprocess, so peak memory is its own:
  (a) diffusers' StableDiffusionControlNetPipeline called once per frame, as a user would script it
  (b) the same pipeline called once with all frames as a batch
  (c) sdvideo with the same settings (its frames are compared with (a))
  (d) sdvideo with latent copying from the first frame at half the schedule
  (e) sdvideo in keyframe mode, K = 8, residual strength 0.3
  (f), (g) sdvideo with RAVE's grid, K = 2 and 3 (not in the default --configs)
  (h), (i) the few-step path, SD-Turbo's setting: Euler with trailing timestep spacing, 4 steps,
      guidance 0 (one branch), the tiny VAE (AutoencoderTiny, TAESD's layout) for decoding; (h)
      diffusers' pipeline with all frames in one call, (i) sdvideo (not in the default --configs)
  (j), (k) the same at 1 step
  (l) cross-frame attention to the first frame, (m) StreamV2V's feature bank (N = 1, fusion 0.8),
      (n), (o) VidToMe's token merging at R = 0.5 and 0.9 (not in the default --configs)
It prints and writes (``--out``) a markdown table: seconds per frame, UNet evaluations per frame,
peak memory, FLOPs (torch's flop counter on one evaluation of each model, times the evaluations
made), achieved fraction of the machine's peak (a matmul measured in the same run), each
configuration's speed-up over (a), and the bound the schedule arithmetic allows. ``--options``
instead times (c) with each speed option against sdvideo's defaults (SDPA attention, the
ControlNet conditioning embedding computed once per frame), each in its own process; the
warm-up time (torch.compile's compilation) is reported apart.
"""
import argparse
import atexit
import copy
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    "a": "diffusers, one call per frame",
    "b": "diffusers, all frames in one call",
    "c": "sdvideo",
    "d": "sdvideo + copy at N/2",
    "e": "sdvideo + keyframes K=8, s=0.3",
    "f": "sdvideo + RAVE grid K=2",
    "g": "sdvideo + RAVE grid K=3",
    "h": "diffusers few-step, all frames in one call: 4 steps, guidance 0, tiny VAE",
    "i": "sdvideo few-step: 4 steps, guidance 0, tiny VAE",
    "j": "diffusers few-step, all frames in one call: 1 step, guidance 0, tiny VAE",
    "k": "sdvideo few-step: 1 step, guidance 0, tiny VAE",
}
CONFIGS.update({"l": "sdvideo + cross-frame attention (anchor)", "m": "sdvideo + StreamV2V feature bank N=1, fusion 0.8",
                "n": "sdvideo + VidToMe token merging R=0.5", "o": "sdvideo + VidToMe token merging R=0.9"})
FEW_STEPS = {"h": 4, "i": 4, "j": 1, "k": 1}  # the few-step configurations' steps (guidance 0, tiny VAE)
DIFFUSERS = "abhj"  # the configurations that call diffusers' pipeline
# Speed options of sdvideo (models.ModelSpec fields, plus the dtype), measured with --options.
OPTIONS = {
    "defaults": {},
    "recompute control embedding": {"reuse_control_embedding": False},
    "attention classic": {"attention": "classic"},
    "attention xformers": {"attention": "xformers"},
    "channels-last": {"channels_last": True},
    "compile": {"compile": True},
    "fp32": {"dtype": "fp32"},
    "bf16": {"dtype": "bf16"},
    "fp16": {"dtype": "fp16"},
}
# UNet / ControlNet / VAE layouts. "full" is SD 2.1 (base): 865M UNet, 1024-d OpenCLIP-H text.
ARCHS = {
    "full": dict(blocks=(320, 640, 1280, 1280), heads=(5, 10, 20, 20), layers=2, context=1024, text_layers=23,
                 text_heads=16, text_ff=4096, vae=(128, 256, 512, 512), vae_layers=2, hint=(16, 32, 96, 256)),
    "mid": dict(blocks=(64, 128, 256, 256), heads=(1, 2, 4, 4), layers=2, context=256, text_layers=4,
                text_heads=4, text_ff=1024, vae=(32, 64, 128, 128), vae_layers=1, hint=(16, 32, 96, 256)),
}


def build_pipeline(arch, device, dtype):
    """A random-weight SD + ControlNet pipeline of the given layout, built on ``device``."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from loading import builtin

    spec = ARCHS[arch]
    tokenizer = builtin.build_tiny_tokenizer()
    attention = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    blocks = dict(block_out_channels=spec["blocks"], layers_per_block=spec["layers"], down_block_types=attention,
                  cross_attention_dim=spec["context"], attention_head_dim=spec["heads"], use_linear_projection=True)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **blocks)
        controlnet = ControlNetModel(conditioning_embedding_out_channels=spec["hint"], **blocks)
        vae = AutoencoderKL(block_out_channels=spec["vae"], layers_per_block=spec["vae_layers"], latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=spec["context"],
                                            num_hidden_layers=spec["text_layers"], num_attention_heads=spec["text_heads"],
                                            intermediate_size=spec["text_ff"], max_position_embeddings=77,
                                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                            pad_token_id=tokenizer.pad_token_id, hidden_act="gelu"))
    from diffusers import DDIMScheduler

    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                             controlnet=controlnet, scheduler=DDIMScheduler(**builtin.SD_SCHEDULE),
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def few_step(pipe, device, dtype):
    """SD-Turbo's setting on a pipeline: its Euler scheduler with trailing spacing, and a random-weight
    AutoencoderTiny of TAESD's layout (diffusers' defaults) as the VAE."""
    import torch
    from diffusers import AutoencoderTiny, EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    torch.manual_seed(1)
    pipe.vae = AutoencoderTiny().to(device=device, dtype=dtype).eval()
    return pipe


def demo_pose_maps(frames, height, width):
    """The demo swing's first frames, rendered at the benchmark size -> (F, H, W, 3) uint8."""
    import numpy as np

    import pose_extract  # not video_io: PyAV need not be installed where the benchmark runs

    sequence = pose_extract.read_poses(os.path.join(ROOT, "demo", "golf_swing.json"))
    canvas_width, canvas_height = sequence.canvas_size
    scale = max(width / canvas_width, height / canvas_height)  # centre crop, as --fit crop
    offset = ((width - canvas_width * scale) / 2, (height - canvas_height * scale) / 2)
    looped = np.concatenate([sequence.keypoints] * (frames // len(sequence.keypoints) + 1))[:frames]
    keypoints = pose_extract.fit_keypoints(looped, scale, offset)
    return np.stack([pose_extract.draw_openpose(k, height, width) for k in keypoints])


def synchronize(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_config(name, args):
    """Run one configuration (after a short warm-up) and return its measurements."""
    import numpy as np
    import torch
    from PIL import Image

    from loading import models, speed
    from loop import pipeline, planners, techniques
    from loop.keyframes import KeyframePlan

    option = dict(OPTIONS[args.option]) if args.option else {}
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[option.pop("dtype", args.dtype)]
    pipe = build_pipeline(args.arch, args.device, dtype)
    if name in FEW_STEPS:
        few_step(pipe, args.device, dtype)
    steps, guidance = (FEW_STEPS[name], 0.0) if name in FEW_STEPS else (args.steps, args.guidance)
    maps = demo_pose_maps(args.frames, args.height, args.width)
    first_controlnet = pipe.controlnet
    if args.canny and name == "c":  # a second ControlNet (the same layout) on the pose maps' Canny edges
        from diffusers import MultiControlNetModel

        from loading import controls

        pipe.controlnet = MultiControlNetModel([pipe.controlnet, copy.deepcopy(pipe.controlnet)])
        maps = controls.stack(maps, [controls.canny_maps(maps, 100, 200)])
    if name not in DIFFUSERS:  # sdvideo: its speed options as the CLI applies them (defaults unless --options)
        speed.apply_speed_options(pipe, models.ModelSpec(**option))
    evals = {"unet": 0, "controlnet": 0, "embedding": 0}
    embedding = first_controlnet.controlnet_cond_embedding  # the pose-map (hint) encoder, reused by sdvideo
    counted = ((pipe.unet, "unet"), (first_controlnet, "controlnet"), (getattr(embedding, "inner", embedding), "embedding"))
    # evaluations in frames: a grid picture (f, g) counts as the frames of its area
    area = {"unet": args.height * args.width // 64, "controlnet": args.height * args.width // 64,
            "embedding": args.height * args.width}

    def count(module, positional, keywords, key):
        sample = positional[0] if positional else keywords["sample"]
        evals[key] += sample.shape[0] * sample.shape[-2] * sample.shape[-1] / area[key]

    for model, key in counted:
        model.register_forward_pre_hook(lambda m, a, kw, key=key: count(m, a, kw, key), with_kwargs=True)
    prompt, negative = "a golfer on a sunny course", "blurry"
    config = pipeline.GenerationConfig(prompt=prompt, negative_prompt=negative, steps=steps,
                                       guidance=guidance, seed=0, batch_size=args.batch_size,
                                       controlnet_scale=[1.0, 1.0] if maps.shape[-1] == 6 else 1.0)

    def diffusers_call(ids, steps):
        images = [Image.fromarray(maps[i]) for i in ids]
        generators = [torch.Generator("cpu").manual_seed(i) for i in ids]
        out = pipe([prompt] * len(ids), image=images, negative_prompt=[negative] * len(ids), num_inference_steps=steps,
                   guidance_scale=guidance, height=args.height, width=args.width, output_type="np",
                   generator=generators)
        return (out.images * 255).round().astype(np.uint8)

    def sdvideo_call(ids, steps):
        ids = list(ids)
        found, keyframes = [], None
        if name == "d":
            found = [techniques.Copy(steps // 2, "anchor", "first")]
        if name in "fg":
            found = [planners.Grid(2 if name == "f" else 3)]
        if name in "lmno":  # the attention techniques of the comparison, against (c) and each other
            found = [{"l": lambda: planners.CrossFrameAttention("anchor"),
                      "m": lambda: planners.FeatureBank(1, 0.8, 0.98),
                      "n": lambda: planners.TokenMerge(0.5), "o": lambda: planners.TokenMerge(0.9)}[name]()]
        if name == "e":
            source = pipeline.encode(pipe, maps[ids], args.batch_size)  # a stand-in source video
            keyframes = KeyframePlan(8, 0.3, source)
        run_config_ = pipeline.GenerationConfig(**{**config.__dict__, "steps": steps})
        latents, _ = pipeline.generate(pipe, maps[ids], run_config_, found, keyframes, progress=False)
        return np.stack(list(pipeline.decode(pipe, latents, args.batch_size, progress=False)))

    def work(ids, steps):
        if name == "a":
            return np.concatenate([diffusers_call([i], steps) for i in ids])
        if name in DIFFUSERS:
            return diffusers_call(ids, steps)
        return sdvideo_call(ids, steps)

    start = time.perf_counter()
    # warm-up: kernels, allocator, lazy initialisation, compilation, at the timed run's batch shape
    # (torch.compile recompiles for a new one)
    warm_frames = 2 if name == "a" else args.frames if name in DIFFUSERS else max(2, args.batch_size)
    work(range(min(warm_frames, args.frames)), min(2, steps))
    warm_up = time.perf_counter() - start
    evals.update(unet=0, controlnet=0, embedding=0)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronize(args.device)
    start = time.perf_counter()
    frames = work(range(args.frames), steps)
    synchronize(args.device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if args.save_frames:
        np.save(args.save_frames, frames)
    return {"config": name, "option": args.option, "warm_up_seconds": warm_up, "seconds": seconds,
            "seconds_per_frame": seconds / args.frames,
            "unet_evals_per_frame": evals["unet"] / args.frames,
            "controlnet_evals_per_frame": evals["controlnet"] / args.frames, "peak_bytes": peak,
            "unet_evals": evals["unet"], "controlnet_evals": evals["controlnet"],
            "control_embeddings": evals["embedding"]}


def unit_flops(args):
    """FLOPs of one UNet, one ControlNet evaluation (batch 1) and one VAE decode and encode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    pipe = build_pipeline(args.arch, args.device, dtype)
    tiny_vae = few_step(build_pipeline(args.arch, args.device, dtype), args.device, dtype).vae
    h, w = args.height // 8, args.width // 8
    sample = torch.randn(1, 4, h, w, device=args.device, dtype=dtype)
    context = torch.randn(1, 77, ARCHS[args.arch]["context"], device=args.device, dtype=dtype)
    hint = torch.rand(1, 3, args.height, args.width, device=args.device, dtype=dtype)
    image = torch.rand(1, 3, args.height, args.width, device=args.device, dtype=dtype)
    counts = {}
    with torch.no_grad():
        for key, fn in (("unet", lambda: pipe.unet(sample, 500, encoder_hidden_states=context)),
                        ("controlnet", lambda: pipe.controlnet(sample, 500, encoder_hidden_states=context,
                                                               controlnet_cond=hint)),
                        ("control_embedding", lambda: pipe.controlnet.controlnet_cond_embedding(hint)),
                        ("vae_decode", lambda: pipe.vae.decode(sample)),
                        ("tiny_vae_decode", lambda: tiny_vae.decode(sample)),
                        ("vae_encode", lambda: pipe.vae.encode(image))):
            with FlopCounterMode(display=False) as counter:
                fn()
            counts[key] = counter.get_total_flops()
    counts["parameters_unet"] = sum(p.numel() for p in pipe.unet.parameters())
    counts["parameters_controlnet"] = sum(p.numel() for p in pipe.controlnet.parameters())
    return counts


def machine_peak(args):
    """Measured matmul rate (FLOP/s) in the benchmark's dtype: the ceiling to compare against."""
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.device == "cpu":
        dtype = torch.float32  # the CPU path runs fp32
    n = 8192 if args.device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=args.device, dtype=dtype)
    b = torch.randn(n, n, device=args.device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(args.device)
    repeats = 20 if args.device.startswith("cuda") else 5
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(args.device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def machine_name(device):
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def bounds(args):
    """Best-case speed-up over (a) from the frame-steps each configuration skips."""
    n, f = args.steps, args.frames
    keys = len(set(range(0, f, 8)) | {f - 1})
    s_steps = n - (n - min(int(round(n * 0.3)), n))
    branches = 2 if args.guidance > 1 else 1  # (a)'s; the few-step configurations compute one
    return {"a": 1.0, "b": 1.0, "c": 1.0, "d": f * n / (n // 2 + f * (n - n // 2)),
            "e": f * n / (keys * n + (f - keys) * s_steps),
            "f": f / (-(-f // 4) * 4), "g": f / (-(-f // 9) * 9),  # a grid's fill is computed too
            **{k: n * branches / steps for k, steps in FEW_STEPS.items()},
            "l": f / (f + -(-f // args.batch_size)), "m": 1.0, "n": 1.0, "o": 1.0}  # (l): the anchor rides along


def memory_scaling(args):
    """Peak memory of configuration (c) at several clip lengths, each in a fresh process."""
    counts = [int(n) for n in args.memory_frames.split(",")]
    peaks = {}
    for count in counts:
        result, error = run_subprocess(args, "c", ["--frames", str(count)])
        if result is None:
            sys.exit(f"{count} frames failed: {error}")
        peaks[count] = result["peak_bytes"]
        print(f"{count} frames: peak {peaks[count] / 2 ** 30:.3f} GiB", flush=True)
    first = peaks[counts[0]]
    table = (f"machine: {machine_name(args.device)}; {time.strftime('%Y-%m-%d')}\n\n"
             f"`python benchmarks/bench.py {' '.join(sys.argv[1:])}`: sdvideo (c), {args.arch} architecture, "
             f"{args.dtype}, {args.width}x{args.height}, {args.steps} steps, batch {args.batch_size}; peak "
             f"{'GPU memory allocated' if args.device.startswith('cuda') else 'resident memory of the process'}.\n\n"
             "| frames | peak memory (GiB) | ratio to the first |\n|---|---|---|\n"
             + "".join(f"| {n} | {p / 2 ** 30:.3f} | {p / first:.3f} |\n" for n, p in peaks.items()))
    print("\n" + table)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(table)


def run_subprocess(args, name, extra):
    """One configuration in a fresh process -> its result dict, or (None, the error's last line)."""
    argv = [a for a in sys.argv[1:] if a != "--options"]
    command = [sys.executable, __file__, *argv, "--only", name, "--device", args.device, *extra]
    output = subprocess.run(command, capture_output=True, text=True)
    line = [x for x in output.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        last = (output.stderr.strip().splitlines() or ["no output"])[-1]
        return None, last.split("UserError: ")[-1]  # the exception's line, without its type
    return json.loads(line[0][7:]), None


def speed_options(args):
    """Time sdvideo (c) under each speed option, each in its own process, against its defaults."""
    import numpy as np

    header = (f"machine: {machine_name(args.device)}; torch {__import__('torch').__version__}; "
              f"{time.strftime('%Y-%m-%d')}\n\n"
              f"`python benchmarks/bench.py {' '.join(sys.argv[1:])}`: sdvideo (c), {args.arch} architecture, "
              f"{args.dtype} unless the option says otherwise, {args.width}x{args.height}, {args.frames} frames, "
              f"{args.steps} DDIM steps, guidance {args.guidance}, batch {args.batch_size}. Speed-up is against the "
              "first row (sdvideo's defaults); warm-up is the untimed 2-step run before, at the timed run's "
              "batch shape (compilation included); pixel difference against the first row's frames.\n\n"
              "| option | s / frame | speed-up | warm-up (s) | peak memory (GiB) | max pixel difference |\n"
              "|---|---|---|---|---|---|\n")
    rows, reference = [], None
    scratch = tempfile.mkdtemp(prefix="sdvideo-bench-")  # this run's own: two benchmarks never share files
    atexit.register(shutil.rmtree, scratch, True)
    for index, option in enumerate(OPTIONS):
        path = os.path.join(scratch, f"option-{index}.npy")
        result, error = run_subprocess(args, "c", ["--option", option, "--save-frames", path])
        if result is None:
            print(f"{option}: failed ({error})", flush=True)
            rows.append(f"| {option} | - | - | - | - | failed: {error[:120]} |")
        else:
            frames = np.load(path).astype(int)
            reference = reference or (result, frames)
            ratio = reference[0]["seconds_per_frame"] / result["seconds_per_frame"]
            difference = int(np.abs(frames - reference[1]).max())
            print(f"{option}: {result['seconds_per_frame']:.3f} s/frame", flush=True)
            rows.append(f"| {option} | {result['seconds_per_frame']:.3f} | {ratio:.2f}x | "
                        f"{result['warm_up_seconds']:.1f} | {result['peak_bytes'] / 2 ** 30:.2f} | {difference}/255 |")
        if args.out:  # after every row: a benchmark stopped part-way keeps the rows it measured
            with open(args.out + ".md", "w") as f:
                f.write(header + "\n".join(rows) + "\n")
    print("\n" + header + "\n".join(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="mid")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="sdvideo's frames per model call")
    parser.add_argument("--configs", default="abcde")
    parser.add_argument("--out", default=None, help="write the markdown table and JSON here (prefix)")
    parser.add_argument("--canny", action="store_true",
                        help="sdvideo (c) with a second ControlNet on Canny edges (--control pose,canny)")
    parser.add_argument("--memory-frames", default=None,
                        help="instead: peak memory of sdvideo (c) at these clip lengths, e.g. 16,256")
    parser.add_argument("--options", action="store_true",
                        help="instead: sdvideo (c) under each speed option against its defaults")
    parser.add_argument("--option", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save-frames", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if args.frames < 1 or args.steps < 1 or args.height < 8 or args.width < 8 or args.batch_size < 1:
        parser.error("--frames, --steps and --batch-size must be at least 1, --height/--width at least 8")
    if unknown or not args.configs:
        parser.error(f"--configs takes letters of {''.join(CONFIGS)} (got {args.configs!r})")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.only:
        print("RESULT " + json.dumps(run_config(args.only, args)), flush=True)
        return

    import numpy as np

    if args.memory_frames:
        return memory_scaling(args)
    if args.options:
        return speed_options(args)
    results, frames = {}, {}
    scratch = tempfile.mkdtemp(prefix="sdvideo-bench-")
    atexit.register(shutil.rmtree, scratch, True)
    for name in args.configs:
        path = os.path.join(scratch, f"frames-{name}.npy")
        results[name], error = run_subprocess(args, name, ["--save-frames", path])
        if error:
            sys.exit(f"configuration {name} failed: {error}")
        frames[name] = np.load(path)
        print(f"{name}: {results[name]['seconds_per_frame']:.3f} s/frame", flush=True)
    flops, peak = unit_flops(args), machine_peak(args)
    best = bounds(args)
    base = results.get("a", {}).get("seconds_per_frame")
    rows = []
    for name, r in results.items():
        # a ControlNet evaluation includes its pose-map embedding, which sdvideo computes once per frame
        total = (r["unet_evals"] * flops["unet"] + r["controlnet_evals"] * (flops["controlnet"] - flops["control_embedding"])
                 + r["control_embeddings"] * flops["control_embedding"]
                 + args.frames * flops["tiny_vae_decode" if name in FEW_STEPS else "vae_decode"]
                 + (args.frames * flops["vae_encode"] if name == "e" else 0))
        r["tflop_per_frame"] = total / args.frames / 1e12
        r["fraction_of_peak"] = total / r["seconds"] / peak
        r["speedup_vs_a"] = base / r["seconds_per_frame"] if base else None
        r["bound_vs_a"] = best[name]
        rows.append(f"| ({name}) {CONFIGS[name]} | {r['seconds_per_frame']:.3f} | {r['unet_evals_per_frame']:.1f} | "
                    f"{r['peak_bytes'] / 2 ** 30:.2f} | {r['tflop_per_frame']:.3f} | {100 * r['fraction_of_peak']:.1f} % | "
                    + (f"{r['speedup_vs_a']:.2f}x | {best[name]:.2f}x |" if base else "- | - |"))
    # how far batching alone (b) and sdvideo (c) move pixels from (a) in this dtype
    differences = {k: np.abs(frames["a"].astype(int) - frames[k].astype(int))
                   for k in "bc" if "a" in frames and k in frames}
    ratio_cb = results["c"]["seconds_per_frame"] / results["b"]["seconds_per_frame"] if {"b", "c"} <= results.keys() else None
    header = (f"machine: {machine_name(args.device)}; torch {__import__('torch').__version__}; "
              f"{time.strftime('%Y-%m-%d')}\n\n"
              f"`python benchmarks/bench.py {' '.join(sys.argv[1:])}`: {args.arch} architecture (UNet "
              f"{flops['parameters_unet'] / 1e6:.0f}M, ControlNet {flops['parameters_controlnet'] / 1e6:.0f}M parameters), "
              f"{args.dtype}, {args.width}x{args.height}, {args.frames} frames, {args.steps} DDIM steps, guidance "
              f"{args.guidance}, sdvideo batch {args.batch_size}; measured matmul peak {peak / 1e12:.2f} TFLOP/s. "
              "FLOPs: each model's count for one evaluation times the evaluations made, ControlNet's pose-map "
              "embedding counted each time it is computed. The bound counts skipped frame-steps only.\n\n"
              "| configuration | s / frame | UNet evals / frame | peak memory (GiB) | TFLOP / frame | of peak | "
              "speed-up vs (a) | bound |\n|---|---|---|---|---|---|---|---|\n")
    footer = ""
    if ratio_cb is not None:
        footer += f"\n(c) / (b) time ratio: {ratio_cb:.3f}. "
    footer += "".join(f"Pixel difference between ({k}) and (a): largest {d.max()}/255, mean {d.mean():.2f}/255, "
                      f"{100 * (d > 8).mean():.3f} % of values over 8/255. " for k, d in differences.items())
    for ours, theirs in (("i", "h"), ("k", "j")):  # the few-step path: sdvideo against diffusers, and the plain run
        if {ours, theirs} <= results.keys():
            footer += (f"Few-step ({ours}): {results[theirs]['seconds_per_frame'] / results[ours]['seconds_per_frame']:.2f}x "
                       f"diffusers' few-step pipeline ({theirs})")
            if "c" in results:
                footer += (f", {results['c']['seconds_per_frame'] / results[ours]['seconds_per_frame']:.2f}x the "
                           f"{args.steps}-step plain run (c)")
            footer += f", {1 / results[ours]['seconds_per_frame']:.1f} frames/s. "
    footer += "\n"
    table = header + "\n".join(rows) + "\n" + footer
    print("\n" + table)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(table)
        with open(args.out + ".json", "w") as f:
            json.dump({"args": vars(args), "unit_flops": flops, "peak_flops": peak, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
