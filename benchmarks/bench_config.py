"""One benchmark configuration, run and measured in this process: (a)-(s) of bench.py, each
either diffusers' pipeline as a user would call it or sdvideo's loop with a technique, after a
short warm-up; sdvideo's speed options (``OPTIONS``, ``--options``) as the CLI applies them.
"""
import copy
import resource
import time

from bench_models import build_pipeline, demo_pose_maps, few_step, synchronize

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
# DeepCache's configurations: (--cache-interval N, --cache-branch ID, --cache-frames K); branch 0 is DeepCache's
# default (the input conv and the last up layer), 2 the whole first level (two layers a block)
DEEP_CACHE = {"p": (3, 0, 1), "q": (3, 2, 1), "r": (1, 0, 2), "s": (3, 0, 2)}
CONFIGS.update({name: "sdvideo + " + ", ".join([f"DeepCache N={n}"] * (n > 1) + [f"frame cache K={k}"] * (k > 1))
                + f", branch {b}" for name, (n, b, k) in DEEP_CACHE.items()})
FEW_STEPS = {"h": 4, "i": 4, "j": 1, "k": 1}  # the few-step configurations' steps (guidance 0, tiny VAE)
DIFFUSERS = "abhj"  # the configurations that call diffusers' pipeline
EVALUATIONS = ("unet", "controlnet", "embedding", "unet_all", "controlnet_all")  # count_evaluations' counts
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


def count_evaluations(pipe, args):
    """Forward pre-hooks that count the UNet's, the ControlNet's and its pose-map encoder's
    evaluations in frames (a grid picture counts as the frames of its area) -> the counts dict. The
    models' input convolutions run in DeepCache's shallow evaluations too, which call no model's forward:
    "unet_all", "controlnet_all" count both kinds."""
    first_controlnet = getattr(pipe.controlnet, "nets", [pipe.controlnet])[0]
    embedding = first_controlnet.controlnet_cond_embedding  # the pose-map (hint) encoder, reused by sdvideo
    evals = dict.fromkeys(EVALUATIONS, 0)
    latent_area = args.height * args.width // 64
    area = {"unet": latent_area, "controlnet": latent_area, "embedding": args.height * args.width,
            "unet_all": latent_area, "controlnet_all": latent_area}

    def count(positional, keywords, key):
        sample = positional[0] if positional else keywords["sample"]
        evals[key] += sample.shape[0] * sample.shape[-2] * sample.shape[-1] / area[key]

    for model, key in ((pipe.unet, "unet"), (first_controlnet, "controlnet"),
                       (getattr(embedding, "inner", embedding), "embedding"), (pipe.unet.conv_in, "unet_all"),
                       (first_controlnet.conv_in, "controlnet_all")):
        model.register_forward_pre_hook(lambda m, a, kw, key=key: count(a, kw, key), with_kwargs=True)
    return evals


def prepare(name, args):
    """The configuration's pipeline (its speed option and few-step setting applied), pose maps,
    steps and guidance."""
    from loading import models, speed

    option = dict(OPTIONS[args.option]) if args.option else {}
    dtype = models.DTYPES[option.pop("dtype", args.dtype)]
    pipe = build_pipeline(args.arch, args.device, dtype)
    if name in FEW_STEPS:
        few_step(pipe, args.device, dtype)
    maps = demo_pose_maps(args.frames, args.height, args.width)
    if args.canny and name == "c":  # a second ControlNet (the same layout) on the pose maps' Canny edges
        from diffusers import MultiControlNetModel

        from loading import controls

        pipe.controlnet = MultiControlNetModel([pipe.controlnet, copy.deepcopy(pipe.controlnet)])
        maps = controls.stack(maps, [controls.canny_maps(maps, 100, 200)])
    if name not in DIFFUSERS:  # sdvideo: its speed options as the CLI applies them (defaults unless --options)
        speed.apply_speed_options(pipe, models.ModelSpec(**option))
    steps, guidance = (FEW_STEPS[name], 0.0) if name in FEW_STEPS else (args.steps, args.guidance)
    return pipe, maps, steps, guidance


def sdvideo_plan(name, pipe, maps, steps, args):
    """The technique(s) and keyframe plan of an sdvideo configuration."""
    from loop import pipeline, planners, techniques
    from loop.deep_cache import DeepCache
    from loop.keyframes import KeyframePlan

    if name in DEEP_CACHE:
        return [DeepCache(*DEEP_CACHE[name])], None
    if name == "d":
        return [techniques.Copy(steps // 2, "anchor", "first")], None
    if name in "fg":
        return [planners.Grid(2 if name == "f" else 3)], None
    if name in "lmno":  # the attention techniques of the comparison, against (c) and each other
        return [{"l": lambda: planners.CrossFrameAttention("anchor"), "m": lambda: planners.FeatureBank(1, 0.8, 0.98),
                 "n": lambda: planners.TokenMerge(0.5), "o": lambda: planners.TokenMerge(0.9)}[name]()], None
    if name == "e":  # the pose maps' own latents stand in for a source video
        return [], KeyframePlan(8, 0.3, pipeline.encode(pipe, maps, args.batch_size))
    return [], None


def frames_maker(name, pipe, maps, guidance, args):
    """work(frame ids, steps) -> frames (F, H, W, 3) uint8, the way configuration ``name`` makes them."""
    import numpy as np
    import torch
    from PIL import Image

    from loop import pipeline

    prompt, negative = "a golfer on a sunny course", "blurry"

    def diffusers_call(ids, steps):
        images = [Image.fromarray(maps[i]) for i in ids]
        generators = [torch.Generator("cpu").manual_seed(i) for i in ids]
        out = pipe([prompt] * len(ids), image=images, negative_prompt=[negative] * len(ids), num_inference_steps=steps,
                   guidance_scale=guidance, height=args.height, width=args.width, output_type="np",
                   generator=generators)
        return (out.images * 255).round().astype(np.uint8)

    def sdvideo_call(ids, steps):
        ids = list(ids)
        found, keyframes = sdvideo_plan(name, pipe, maps[ids], steps, args)
        config = pipeline.GenerationConfig(prompt=prompt, negative_prompt=negative, steps=steps, guidance=guidance,
                                           seed=0, batch_size=args.batch_size,
                                           controlnet_scale=[1.0, 1.0] if maps.shape[-1] == 6 else 1.0)
        latents, _ = pipeline.generate(pipe, maps[ids], config, found, keyframes, progress=False)
        return np.stack(list(pipeline.decode(pipe, latents, args.batch_size, progress=False)))

    if name == "a":
        return lambda ids, steps: np.concatenate([diffusers_call([i], steps) for i in ids])
    return diffusers_call if name in DIFFUSERS else sdvideo_call


def run_config(name, args):
    """Run one configuration (after a short warm-up) and return its measurements."""
    import numpy as np
    import torch

    pipe, maps, steps, guidance = prepare(name, args)
    evals = count_evaluations(pipe, args)
    work = frames_maker(name, pipe, maps, guidance, args)
    start = time.perf_counter()
    # warm-up: kernels, allocator, lazy initialisation, compilation, at the timed run's batch shape
    # (torch.compile recompiles for a new one)
    warm_frames = 2 if name == "a" else args.frames if name in DIFFUSERS else max(2, args.batch_size)
    work(range(min(warm_frames, args.frames)), min(2, steps))
    warm_up = time.perf_counter() - start
    evals.update(dict.fromkeys(EVALUATIONS, 0))
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
            "seconds_per_frame": seconds / args.frames, "unet_evals_per_frame": evals["unet"] / args.frames,
            "controlnet_evals_per_frame": evals["controlnet"] / args.frames, "peak_bytes": peak,
            "unet_evals": evals["unet"], "controlnet_evals": evals["controlnet"],
            "control_embeddings": evals["embedding"], "unet_shallow_evals": evals["unet_all"] - evals["unet"],
            "controlnet_shallow_evals": evals["controlnet_all"] - evals["controlnet"]}
