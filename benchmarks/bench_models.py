"""The benchmarks' models and inputs: random-weight SD + ControlNet pipelines of a layout
(``ARCHS``: "full" is SD 2.1's shapes, "mid" a ~40M-parameter UNet for CPUs), SD-Turbo's few-step
setting, the demo swing's pose maps at any size, and the machine's measures (FLOPs of one
evaluation of each model, a matmul's rate, the device's name). Speed does not depend on the
weights' values.
"""
import os
import platform
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def unit_flops(args, branches=()):
    """FLOPs of one UNet, one ControlNet evaluation (batch 1), their shallow evaluations at DeepCache's
    ``branches`` and one VAE decode and encode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from loading import models

    dtype = models.DTYPES[args.dtype]
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
        counts.update(shallow_flops(pipe, sample, context, hint, branches))
    counts["parameters_unet"] = sum(p.numel() for p in pipe.unet.parameters())
    counts["parameters_controlnet"] = sum(p.numel() for p in pipe.controlnet.parameters())
    return counts


def shallow_flops(pipe, sample, context, hint, branches):
    """FLOPs of one DeepCache shallow evaluation of the UNet and of the ControlNet (pose-map embedding
    included, as in "controlnet") per branch id -> {"unet_shallow_ID": ..., "controlnet_shallow_ID": ...}."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from loop.deep_cache import deep_capture, shallow_controlnet, shallow_unet

    counts, timestep = {}, torch.tensor(500)
    for branch in sorted(set(branches)):
        with deep_capture(pipe.unet, branch) as seen:
            pipe.unet(sample, timestep, encoder_hidden_states=context)
        for key, fn in (("unet", lambda: shallow_unet(pipe.unet, sample, timestep, context, seen[-1], branch)),
                        ("controlnet", lambda: shallow_controlnet(pipe.controlnet, sample, timestep, context, hint,
                                                                  1.0, branch))):
            with FlopCounterMode(display=False) as counter:
                fn()
            counts[f"{key}_shallow_{branch}"] = counter.get_total_flops()
    return counts


def machine_peak(args):
    """Measured matmul rate (FLOP/s) in the benchmark's dtype: the ceiling to compare against."""
    import torch

    from loading import models

    dtype = models.DTYPES[args.dtype]
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
