"""Train the toy world's model: SD + ControlNet-OpenPose in miniature, on diffusers classes only.

    python -m toy.train_toy        # (or `make toy-model`) -> toy_model/, resumable from toy_train/

The recipe is the one that made SD 2.1 + ControlNet, shrunk: (1) an AutoencoderKL trained to
reconstruct toyworld pictures (toy world 2, ``--size 128``: downsamples by 8 to 16x16x4 latents,
SD's ratio, with SD's patch discriminator from half-way; the first world, ``--size 64``: by 4);
(2) a UNet2DConditionModel and a CLIPTextModel (the project's byte-level tokenizer) trained
together on (picture, prompt) with no pose input, the prompt dropped 10% of the time so that
classifier-free guidance works; at 128 px the UNet has self- and cross-attention at the latent
resolution, as SD's first level has; (3) ``ControlNetModel.from_unet`` trained on OpenPose maps
drawn by ``pose_extract.draw_openpose``, with the UNet and text encoder frozen, its timesteps drawn
as T2I-Adapter's (mostly high noise) and half its pictures golfers'. At 128 px every
``--grid-every``-th UNet and ControlNet step trains on 2x2 grids of full-size frames (one look,
four poses, 256 px pictures), the pictures RAVE's grids make (RAVE keeps each frame at full size).
Every stage is seeded, shows a progress bar, checkpoints to ``--work`` and resumes from there; the
result is one ``StableDiffusionControlNetPipeline.save_pretrained`` folder; batches are batches.py's.
"""
import argparse
import logging
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler,
                       StableDiffusionControlNetPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel

from common import files
from loading import builtin
from toy import batches, toyworld
from toy.diffusion import NOISE_OFFSET, PREDICTIONS, Noiser, diffusion_loss
from toy.stages import Stage, run_stage

log = logging.getLogger("train_toy")
TEXT_DIM = 64
DISC_WEIGHT = 0.5  # SD's autoencoder (taming's LPIPSWithDiscriminator): adaptive weight times this
DISC_START = 0.5  # the discriminator joins after this share of the VAE steps, as SD's disc_start


def build_models(tokenizer, size, unet_levels=3):
    """The untrained VAE, text encoder and UNet for pictures of ``size`` px (seeded by the caller).
    unet_levels: the UNet's resolutions (3: toy world 2's 16, 8 and 4; 1: the latent resolution
    alone, with self-attention in every block, a toy world 3 candidate that leaves the convolutions
    no coarse level through which to carry a look across the picture, issue 34)."""
    levels = 4 if size >= toyworld.SIZE else 3  # an 8x VAE for toy world 2, 4x for the first
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(16, 32, 64, 64)[:levels], norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, sample_size=size)
    # toy world 2: attention at the latent resolution and half of it (SD's first two levels);
    # the first world had it at half and a quarter
    down = (("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D") if levels == 4 else
            ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"))
    widths = (32, 64, 64)
    if unet_levels == 1:
        down, widths = ("CrossAttnDownBlock2D",), (64,)
    up = tuple({"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}[d] for d in reversed(down))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=builtin.TINY_MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=TEXT_DIM))
    unet = UNet2DConditionModel(
        sample_size=size // 2 ** (levels - 1), in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=widths, norm_num_groups=16, cross_attention_dim=TEXT_DIM,
        attention_head_dim=8, use_linear_projection=True, down_block_types=down, up_block_types=up)
    return vae, text_encoder, unet


def make_controlnet(unet, vae):
    """ControlNet from the UNet; its hint encoder downsamples as the VAE does (SD's: 4 entries, 8x)."""
    levels = len(vae.config.block_out_channels)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64, 128)[:levels])


class Discriminator(torch.nn.Module):
    """A PatchGAN critic (pix2pix's NLayerDiscriminator, as SD's autoencoder used), trained from
    scratch: (B, 3, H, W) in [-1, 1] -> logits (B, 1, H/4 - 2, W/4 - 2)."""

    def __init__(self, width=32):
        super().__init__()
        act = torch.nn.LeakyReLU(0.2)
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 4, 2, 1), act,
            torch.nn.Conv2d(width, 2 * width, 4, 2, 1), torch.nn.GroupNorm(8, 2 * width), act,
            torch.nn.Conv2d(2 * width, 2 * width, 4, 1, 1), torch.nn.GroupNorm(8, 2 * width), act,
            torch.nn.Conv2d(2 * width, 1, 4, 1, 1))

    def forward(self, images):
        return self.layers(images)


def grid_of(step, args):
    """The grid a UNet/ControlNet step trains on: 2 every --grid-every steps (toy world 2), else 1."""
    return 2 if args.size >= toyworld.SIZE and args.grid_every and step % args.grid_every == args.grid_every - 1 else 1


def encode_text(tokenizer, text_encoder, prompts):
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def adaptive_weight(reconstruction, adversarial, last_layer):
    """taming's balance of the two losses at the decoder's last layer: |grad rec| / |grad adv|."""
    rec = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    adv = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (rec.norm() / (adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def train_vae(vae, swing, args):
    """L1 + MSE reconstruction, the figure weighted 4x (its limbs are what pose IoU measures; toy
    world 2's arms and club 11x), a small KL term as in SD's autoencoder, and (toy world 2, --disc-weight) SD's patch
    discriminator with hinge losses from DISC_START of the steps on; then the latent scaling factor."""
    disc = Discriminator().to(args.device)
    disc_optimizer = torch.optim.AdamW(disc.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=0.0)
    gan_from = int(DISC_START * args.vae_steps) if args.disc_weight > 0 else args.vae_steps + 1

    thin = args.size >= toyworld.SIZE  # toy world 2's arms and club: what its measures look at

    def vae_loss(rng, step):
        images, masks, _, _ = batches.batch(rng, args.vae_batch, swing, args.size, thin=thin, device=args.device)
        posterior = vae.encode(images).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        # figure 4x, its arms and club 11x (masks 1 and 2: 1 + 3 * 2 + 4): few pixels of the loss
        weight = 1 + 3 * masks[:, None] + (masks[:, None] > 1.5) * 4
        error = (weight * ((decoded - images).abs() + (decoded - images) ** 2)).mean()
        loss = error + 1e-6 * posterior.kl().mean()
        if step < gan_from:
            return loss
        # the critic's own step first (hinge: real pictures against the detached reconstructions),
        # so that the generator's graph below holds the critic's updated weights
        critic = F.relu(1 - disc(images)).mean() + F.relu(1 + disc(decoded.detach())).mean()
        disc_optimizer.zero_grad(set_to_none=True)
        (0.5 * critic).backward()
        disc_optimizer.step()
        disc.requires_grad_(False)  # the generator's term moves the decoder only
        adversarial = -disc(decoded).mean()
        disc.requires_grad_(True)
        return loss + args.disc_weight * adaptive_weight(error, adversarial, vae.decoder.conv_out.weight) * adversarial

    config = {"size": args.size, "disc_weight": args.disc_weight, "steps": args.vae_steps, "thin": thin}
    run_stage(Stage("vae", args.work, vae.parameters(), 1e-3, args.vae_steps, config),
              {"vae": vae, "disc": disc, "disc_optimizer": disc_optimizer}, vae_loss, args)
    vae.requires_grad_(False).eval()
    set_scaling_factor(vae, swing, args.size, args.device)


def set_scaling_factor(vae, swing, size, device="cpu"):
    """Unit-variance latents, as SD's 0.18215 was measured; from a fixed batch, so that a resumed run
    (or a probe of a checkpoint, toy/checkpoints.py) finds the same factor."""
    with torch.no_grad():
        images = torch.cat([batches.batch(np.random.default_rng([9, k]), 32, swing, size, device=device)[0]
                            for k in range(8)])
        std = vae.encode(images).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)


def recipe_options(args):
    """The options added since the first toy world (the noise offset, the prediction type, the UNet's
    levels, the accent, the clip grids) as entries in a stage's recorded recipe: none at their old
    values (no offset, epsilon, 3 levels, neither), so older checkpoints match."""
    return {**({"noise_offset": args.noise_offset} if args.noise_offset else {}),
            **({"prediction": args.prediction} if args.prediction != "epsilon" else {}),
            **({"unet_levels": args.unet_levels} if args.unet_levels != 3 else {}),
            **({"accent": True} if args.accent else {}),
            **({"grid_clips": True} if args.grid_clips else {})}


def unet_loss(unet, text_encoder, tokenizer, noiser, swing, args):
    """The UNet stage's loss(rng, step) on batches.batch's pictures (toy/finetune.py's too)."""
    def loss(rng, step):
        grid = grid_of(step, args)
        images, _, _, prompts = batches.batch(rng, max(1, args.batch // grid ** 2), swing, args.size, grid,
                                              device=args.device, accent=args.accent, clips=args.grid_clips)
        noisy, target, timesteps = noiser(images)
        text = encode_text(tokenizer, text_encoder, prompts)
        return diffusion_loss(unet(noisy, timesteps, encoder_hidden_states=text).sample, target, timesteps,
                              noiser.scheduler)
    return loss


def train_unet(unet, text_encoder, tokenizer, noiser, swing, args):
    """UNet + text encoder on (picture, prompt), no pose; the prompt dropped as in batches.batch()."""
    params = list(unet.parameters()) + list(text_encoder.parameters())
    config = {"size": args.size, "grid_every": args.grid_every, "steps": args.unet_steps, **recipe_options(args)}
    loss = unet_loss(unet, text_encoder, tokenizer, noiser, swing, args)
    run_stage(Stage("unet", args.work, params, args.lr, args.unet_steps, config),
              {"unet": unet, "text_encoder": text_encoder}, loss, args)
    unet.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()


def train_controlnet(unet, vae, text_encoder, tokenizer, swing, args):
    """ControlNet from the UNet, on pose maps, the UNet and text encoder frozen; timesteps and the
    share of golfers as --controlnet-timesteps and --golfer-share say (toy world 2: cubic, a half,
    so that control is learnt where the layout is decided and the club along the forearms)."""
    controlnet = make_controlnet(unet, vae).to(args.device)
    noiser = Noiser(vae, args.controlnet_timesteps, args.noise_offset, args.prediction)

    def controlnet_loss(rng, step):
        grid = grid_of(step, args)
        images, _, maps, prompts = batches.batch(rng, max(1, args.batch // grid ** 2), swing, args.size, grid,
                                                 golfer_share=args.golfer_share, device=args.device,
                                                 accent=args.accent, clips=args.grid_clips)
        noisy, target, timesteps = noiser(images)
        with torch.no_grad():
            text = encode_text(tokenizer, text_encoder, prompts)
        down, mid = controlnet(noisy, timesteps, encoder_hidden_states=text, controlnet_cond=maps, return_dict=False)
        model_output = unet(noisy, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample
        return diffusion_loss(model_output, target, timesteps, noiser.scheduler)

    config = {"size": args.size, "grid_every": args.grid_every, "steps": args.controlnet_steps,
              "timesteps": args.controlnet_timesteps, "golfer_share": args.golfer_share, **recipe_options(args)}
    run_stage(Stage("controlnet", args.work, controlnet.parameters(), args.lr, args.controlnet_steps, config,
                    args.controlnet_more),
              {"controlnet": controlnet}, controlnet_loss, args)
    return controlnet.eval()


def export(pipe, out):
    """One diffusers folder, written whole under a temporary name, then moved into place."""
    parent = os.path.dirname(os.path.abspath(out))
    with tempfile.TemporaryDirectory(dir=parent, prefix=".toy-model-") as temp:
        pipe.save_pretrained(temp, safe_serialization=True)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(temp, out)
        os.chmod(out, 0o755)  # mkdtemp made it private
        os.makedirs(temp)  # TemporaryDirectory removes it on exit
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    log.info("wrote %s (%.1f MB)", out, total / 1e6)


def train(args):
    """The three stages in order, each resumed from its checkpoint, then the folder."""
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    tokenizer = builtin.build_tiny_tokenizer()
    vae, text_encoder, unet = (m.to(args.device) for m in build_models(tokenizer, args.size, args.unet_levels))
    swing = batches.swing_poses(args.size)
    # 1. VAE, 2. UNet + text encoder, 3. ControlNet, 4. the folder
    train_vae(vae, swing, args)
    noiser = Noiser(vae, offset=args.noise_offset, prediction=args.prediction)
    train_unet(unet, text_encoder, tokenizer, noiser, swing, args)
    controlnet = train_controlnet(unet, vae, text_encoder, tokenizer, swing, args)
    export(assemble(vae, text_encoder, tokenizer, unet, controlnet, args.prediction), args.out)


def assemble(vae, text_encoder, tokenizer, unet, controlnet, prediction="epsilon"):
    """The trained parts as a pipeline with SD's DDIM schedule, predicting as they were trained to."""
    return StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=DDIMScheduler(**builtin.SD_SCHEDULE, prediction_type=prediction), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(files.ROOT, "toy_model"), help="the trained model folder")
    parser.add_argument("--work", default=os.path.join(files.ROOT, "toy_train"), help="checkpoints (resumed from)")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    parser.add_argument("--size", type=int, choices=(toyworld.FIRST_SIZE, toyworld.SIZE), default=toyworld.SIZE,
                        help="picture size: 128, toy world 2 (8x VAE); 64, the first toy world (4x VAE)")
    parser.add_argument("--disc-weight", type=float, default=DISC_WEIGHT,
                        help="weight of the VAE's patch discriminator (0: reconstruction losses only)")
    parser.add_argument("--grid-every", type=int, default=8,
                        help="every Nth UNet/ControlNet step trains on 2x2 grids (128 px only; 0: never)")
    parser.add_argument("--grid-clips", action="store_true", help="grids of one clip's frames, sharing their "
                        "nuisances, as RAVE's are (toy world 2's drew them per frame; docs/toy_world.md)")
    parser.add_argument("--vae-steps", type=int, default=3000, help="VAE training steps")
    parser.add_argument("--unet-steps", type=int, default=3000, help="UNet + text encoder training steps")
    parser.add_argument("--controlnet-steps", type=int, default=3500, help="ControlNet training steps")
    parser.add_argument("--controlnet-more", type=int, default=0,
                        help="a second cosine cycle of this many ControlNet steps after --controlnet-steps, "
                             "continuing a finished checkpoint (a longer ControlNet stage)")
    parser.add_argument("--controlnet-timesteps", choices=("cubic", "uniform"), default="cubic",
                        help="the ControlNet's training timesteps: cubic (T2I-Adapter's, mostly high noise) or uniform")
    parser.add_argument("--golfer-share", type=float, default=0.5,
                        help="share of golfers among the ControlNet's training pictures (the UNet's: a quarter)")
    parser.add_argument("--noise-offset", type=float, default=NOISE_OFFSET,
                        help="offset noise in the UNet's and ControlNet's training (diffusers' --noise_offset; "
                             "without it toy world 2 draws night too bright, docs/toy_world.md; 0: none)")
    parser.add_argument("--prediction", choices=PREDICTIONS, default="epsilon",
                        help="what the UNet learns to predict: epsilon (toy world 2, SD 2.1-base) or v_prediction "
                             "(SD 2.1 at 768 px; issue 34)")
    parser.add_argument("--unet-levels", type=int, choices=(1, 3), default=3,
                        help="the UNet's resolutions: 3 (toy world 2) or 1, the latent resolution alone (issue 34)")
    parser.add_argument("--accent", action="store_true",
                        help="a toy world 3 candidate's pictures: one random accent colour on the cap, the shoes and "
                             "the background's stripes (issue 34; the VAE stage ignores it)")
    parser.add_argument("--batch", type=int, default=32, help="UNet/ControlNet batch size (frames; a grid is 4)")
    parser.add_argument("--vae-batch", type=int, default=16, help="VAE batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="UNet/ControlNet peak learning rate")
    parser.add_argument("--save-every", type=int, default=100, help="checkpoint interval in steps")
    parser.add_argument("--device", default="cpu",
                        help="torch device to train on, e.g. cuda (the data is drawn on the CPU either way; "
                             "the committed model was trained on the CPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for flag in ("controlnet_more", "noise_offset"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be at least 0, got {getattr(args, flag)}")
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as error:
        parser.error(f"--device {args.device}: not usable here ({str(error).splitlines()[0]})")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    train(args)


if __name__ == "__main__":
    sys.exit(main())
