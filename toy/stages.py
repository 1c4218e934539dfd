"""A toy-model training stage's loop state and loop: the learning-rate schedule (a cosine, and an
optional added cycle that continues a finished stage), checkpoints from which an interrupted run
resumes exactly, and the step loop with its progress bar.
"""
import logging
import math
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from common import files

log = logging.getLogger("train_toy")

STAGES = ("vae", "unet", "controlnet")
RESTART_PEAK = 0.5  # the peak learning rate of an added cycle (--controlnet-more), a share of the first's


def lr_factor(step, steps, more=0):
    """The learning rate's share of its peak at ``step``: a warmup over 2 % of ``steps``, then a cosine
    to 0 at ``steps``; then, if ``more``, a second such cycle of ``more`` steps peaking at RESTART_PEAK
    (a warm restart, Loshchilov & Hutter 2017), so that a finished stage can be trained on."""
    if step >= steps and more:
        return RESTART_PEAK * lr_factor(step - steps, more)
    warmup = max(1, steps // 50)
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))


class Stage:
    """One training stage's loop state: model(s) trained, optimiser, step, data RNG; saved and
    restored as one checkpoint file so that an interrupted run resumes exactly."""

    def __init__(self, name, work, params, lr, steps, config, more=0):
        self.name, self.main, self.steps, self.step = name, steps, steps + more, 0
        self.config = {**config, "more": more} if more else config  # a checkpoint without "more" continues
        self.path = os.path.join(work, f"{name}.pt")
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, steps, more))
        self.rng = np.random.default_rng([STAGES.index(name), 0])

    def save(self, modules):
        state = {"config": self.config, "step": self.step, "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                 "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "modules": {k: m.state_dict() for k, m in modules.items()}}
        if torch.cuda.is_initialized():  # a GPU run's noise is drawn there (a CPU run's file has no such entry)
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        with files.atomic_path(self.path) as temp:
            torch.save(state, temp)

    def continues(self, state):
        """Whether a checkpoint lies on this stage's run: the same recipe, or the same recipe without
        the added cycle, not yet past its main steps (the main cycle's schedule does not depend on it)."""
        saved = state.get("config")
        shorter = {k: v for k, v in self.config.items() if k != "more"}
        return saved == self.config or (saved == shorter and state["step"] <= self.main)

    def load(self, modules):
        if not os.path.isfile(self.path):
            return False
        state = torch.load(self.path, map_location="cpu", weights_only=False)  # a GPU run's file loads anywhere
        if not self.continues(state):
            raise SystemExit(f"train_toy: {self.path} is a checkpoint of another model ({state.get('config')}); "
                             "move it away or pass another --work")
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        for group, lr in zip(self.optimizer.param_groups, self.schedule.base_lrs):  # a shorter run saved its end's lr
            group["lr"] = lr * self.schedule.lr_lambdas[0](state["step"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = state["step"]
        log.info("%s: resumed at step %d of %d", self.name, self.step, self.steps)
        return True


def run_stage(stage, modules, loss_fn, args):
    """The loop shared by every stage: loss, step, checkpoint every --save-every steps."""
    stage.load(modules)
    bar = tqdm(total=stage.steps, initial=stage.step, desc=stage.name, disable=args.quiet)
    while stage.step < stage.steps:
        loss = loss_fn(stage.rng, stage.step)
        stage.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in stage.optimizer.param_groups for p in group["params"]], 1.0)
        stage.optimizer.step()
        stage.schedule.step()
        stage.step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if stage.step % args.save_every == 0 or stage.step == stage.steps:
            stage.save(modules)
    bar.close()
