"""Fine-tune a trained toy model's UNet and text encoder on another grid recipe, its VAE and
ControlNet kept: how a toy world 3 direction is tried in minutes instead of a full training.

    python -m toy.finetune --grid-clips --steps 600 --work toy_train3g --out toy_model3g
    python benchmarks/attention_probe.py --folder toy_model3g

The loss, noise and batches are train_toy's UNet stage's (batches.batch, Min-SNR weights, offset
noise as --noise-offset says); --prediction v_prediction turns the UNet to v prediction
(docs/toy_world.md, D); a cosine schedule from --lr; seeded, checkpointed to --work every
--save-every steps and resumed from there, with a progress bar; the result is a model folder like
toy_model/.
"""
import argparse
import logging
import os
import sys

import torch

from common.errors import UserError
from loading import builtin
from toy import batches
from toy.diffusion import NOISE_OFFSET, PREDICTIONS, Noiser
from toy.stages import Stage, run_stage
from toy.train_toy import export, unet_loss


def finetune(args):
    """The base folder's UNet + text encoder trained --steps more on the recipe; -> the pipeline."""
    torch.manual_seed(args.seed)
    pipe = builtin.load_toy_pipeline(args.base)
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    pipe.vae.requires_grad_(False)
    pipe.controlnet.requires_grad_(False)
    prediction = pipe.scheduler.config.prediction_type if args.prediction == "base" else args.prediction
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)
    loss = unet_loss(unet, text_encoder, tokenizer, Noiser(pipe.vae, offset=args.noise_offset, prediction=prediction),
                     batches.swing_poses(args.size), args)
    for module in (unet, text_encoder):
        module.requires_grad_(True).train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    config = {"base": os.path.abspath(args.base), "grid_every": args.grid_every, "grid_clips": args.grid_clips,
              "steps": args.steps, "lr": args.lr, "batch": args.batch, "noise_offset": args.noise_offset,
              "prediction": prediction, **({"accent": True} if args.accent else {})}
    os.makedirs(args.work, exist_ok=True)
    run_stage(Stage("unet", args.work, params, args.lr, args.steps, config),
              {"unet": unet, "text_encoder": text_encoder}, loss, args)
    for module in (unet, text_encoder):
        module.requires_grad_(False).eval()
    return pipe


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--base", default=builtin.TOY_DIRS["toy"], help="the trained toy model folder to start from")
    parser.add_argument("--work", required=True, help="checkpoints (resumed from)")
    parser.add_argument("--out", required=True, help="the fine-tuned model folder")
    parser.add_argument("--steps", type=int, default=600, help="fine-tuning steps")
    parser.add_argument("--grid-every", type=int, default=2, help="every Nth step trains on 2x2 grids (0: never)")
    parser.add_argument("--grid-clips", action="store_true",
                        help="grids of one clip's frames, sharing their nuisances (train_toy --grid-clips)")
    parser.add_argument("--accent", action="store_true",
                        help="pictures with one random accent colour on the cap, the shoes and the background's "
                             "stripes (train_toy --accent)")
    parser.add_argument("--noise-offset", type=float, default=NOISE_OFFSET,
                        help="offset noise in the loss (toy world 2 trained with it; 0: none, as SD)")
    parser.add_argument("--prediction", choices=("base", *PREDICTIONS), default="base",
                        help="what the UNet learns to predict: the base model's, or epsilon (SD 2.1-base's) or "
                             "v_prediction (SD 2.1's at 768 px); the folder's scheduler says it")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    parser.add_argument("--batch", type=int, default=32, help="batch size (frames; a grid is 4)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (the data's is the stage's own)")
    parser.add_argument("--save-every", type=int, default=100, help="checkpoint interval in steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    # toy world 2's pictures, on the CPU: the UNet stage's loss reads these
    args.size, args.device = 128, "cpu"
    if args.steps < 1 or args.grid_every < 0:
        parser.error("--steps must be at least 1 and --grid-every at least 0")
    if os.path.abspath(args.out) == os.path.abspath(args.base):
        parser.error("--out must not be --base: the base model is read, never overwritten")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        pipe = finetune(args)
    except UserError as error:  # a missing base model: one line, nothing written
        parser.error(str(error))
    export(pipe, args.out)


if __name__ == "__main__":
    sys.exit(main())
