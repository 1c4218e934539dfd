"""Temporal-consistency and fidelity metrics of a finished run folder; ``evaluate_run`` is the entry point.

    python sdvideo.py evaluate outputs/demo [--clip-model openai/clip-vit-large-patch14] [--pose-backend mediapipe]

Each metric is a pure function of frames (F, H, W, 3) uint8 and, where it needs one, the source
clip: the left half of the run's side_by_side.mp4 (the source video, or the pose maps where the
run had no video). Results go to RUN/metrics.json.
"""
import json
import logging
import os

import av
import cv2
import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

import pose_extract
from common import files, video_io
from common.errors import HelpFormatter, UserError
from loading import builtin, flow
from poses import detectors, pose_tracking
from toy import toy_metrics

log = logging.getLogger(__name__)
STATIC_FLOW = 0.5  # pixels: where the source moves less, it counts as static background
PCK_THRESHOLD = 0.1  # of the person's box size, as in the pose-fidelity metrics of ControlVideo-style papers


def warp_frame(frame, backward_flow):
    """Backward-warp an (H, W, 3) frame: out(p) = frame(p + flow(p)), bilinear."""
    height, width = backward_flow.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), axis=-1).astype(np.float32)
    coordinates = grid + backward_flow
    return cv2.remap(frame, coordinates[..., 0], coordinates[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warping_error(frames, source_frames, motion=None):
    """Pixel MSE between each generated frame and its predecessor warped by the source's flow,
    over pixels that pass the forward-backward check; colours in [0, 1]. Lower is steadier.
    motion: the source's (flows, masks) from flow.backward_flows, when computed already.

    E = mean_t sum_p m_t(p) |F_t(p) - W(F_{t-1})(p)|^2 / (3 sum_p m_t(p))
    """
    flows, masks = motion or flow.backward_flows(np.asarray(source_frames))
    errors = []
    for t in range(1, len(frames)):
        warped = warp_frame(frames[t - 1], flows[t - 1]).astype(np.float64) / 255
        squared = ((frames[t].astype(np.float64) / 255 - warped) ** 2).sum(axis=-1)
        if masks[t - 1].sum() > 0:
            errors.append(float((squared * masks[t - 1]).sum() / (3 * masks[t - 1].sum())))
    return float(np.mean(errors)) if errors else 0.0


def ssim_map(a, b):
    """Per-pixel SSIM of two (H, W, 3) uint8 images, averaged over channels (Wang et al. 2004:
    11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03) -> (H, W).

    SSIM = (2 mu_a mu_b + C1)(2 cov_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(image):
        return cv2.GaussianBlur(image, (11, 11), 1.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    ssim = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim.mean(axis=-1)


def warp_ssim(frames, source_frames, motion=None):
    """RAVE's warp SSIM: SSIM between each frame and its predecessor warped by the source's backward
    flow, over the pixels that pass the forward-backward check (occlusions left out). Higher is
    steadier along the motion; 1 for a clip that follows the source's motion exactly."""
    flows, masks = motion or flow.backward_flows(np.asarray(source_frames))
    scores = []
    for t in range(1, len(frames)):
        if masks[t - 1].sum() > 0:
            ssim = ssim_map(warp_frame(frames[t - 1], flows[t - 1]), frames[t])
            scores.append(float((ssim * masks[t - 1]).sum() / masks[t - 1].sum()))
    return float(np.mean(scores)) if scores else 1.0


def background_flickering(frames, source_frames, motion=None):
    """VBench's temporal flickering, (255 - mean |F_i - F_{i+1}|) / 255, over the static background
    only: the pixels where the source's flow is reliable and under STATIC_FLOW pixels (a swing
    moves; over the whole frame, motion would count as flicker). 1: nothing changes where nothing
    moves; higher is better."""
    flows, masks = motion or flow.backward_flows(np.asarray(source_frames))
    differences = []
    for t in range(1, len(frames)):
        static = (np.linalg.norm(flows[t - 1], axis=-1) < STATIC_FLOW) & (masks[t - 1] > 0)
        if static.any():
            change = np.abs(frames[t].astype(np.float64) - frames[t - 1].astype(np.float64)).mean(axis=-1)
            differences.append(float(change[static].mean()))
    return (255 - float(np.mean(differences))) / 255 if differences else 1.0


def psnr(frames, reference):
    """Peak signal-to-noise ratio in dB of uint8 frames (..., H, W, 3) against ``reference``, over all pixels."""
    error = np.mean((np.asarray(frames, np.float64) - np.asarray(reference, np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0 ** 2 / error))


def mean_temporal_difference(frames):
    """Mean absolute difference of consecutive frames, colours in [0, 1]."""
    frames = np.asarray(frames, dtype=np.float64) / 255
    return float(np.abs(np.diff(frames, axis=0)).mean()) if len(frames) > 1 else 0.0


def flicker(frames, source_frames):
    """Generated frames' mean temporal difference over the source's: 1 moves as much as the source,
    above 1 flickers. Where the source is static, the generated clip's own difference."""
    source = mean_temporal_difference(source_frames)
    generated = mean_temporal_difference(frames)
    return generated / source if source > 1e-6 else generated


def pck(detected, control, threshold=PCK_THRESHOLD):
    """Percentage of correct keypoints: detected (F, 18, 3) within threshold x the control person's
    box size (its larger side) of the control keypoints (F, 18, 3); over joints present in the control."""
    hits, total = 0, 0
    for found, wanted in zip(detected, control):
        present = wanted[:, 2] > 0
        if not present.any():
            continue
        box = wanted[present, :2]
        size = max(float(np.ptp(box[:, 0])), float(np.ptp(box[:, 1])), 1.0)
        close = (found[:, 2] > 0) & (np.linalg.norm(found[:, :2] - wanted[:, :2], axis=1) <= threshold * size)
        hits += int((close & present).sum())
        total += int(present.sum())
    return hits / total if total else 0.0


def clip_scores(frames, prompt, model, processor, batch_size=8):
    """CLIP frame consistency in the field's two forms and prompt consistency:
    (consecutive: mean cosine of consecutive frames' image embeddings, FRESCO's "Tem-Con";
     all pairs: mean cosine over every pair of frames, as LOVEU-TGVE and RAVE compute it;
     prompt: mean cosine between each frame and the prompt)."""
    embeddings = []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            images = [Image.fromarray(f) for f in frames[start:start + batch_size]]
            inputs = processor(images=images, return_tensors="pt").to(model.device)
            embeddings.append(_as_tensor(model.get_image_features(**inputs)))
        text = processor(text=[prompt], return_tensors="pt", padding="max_length", truncation=True).to(model.device)
        text_embedding = _as_tensor(model.get_text_features(**text))
    images = torch.nn.functional.normalize(torch.cat(embeddings).float(), dim=-1)
    text_embedding = torch.nn.functional.normalize(text_embedding.float(), dim=-1)
    count = len(images)
    consecutive = float((images[1:] * images[:-1]).sum(-1).mean()) if count > 1 else 1.0
    pairs = images @ images.T
    all_pairs = float((pairs.sum() - pairs.diagonal().sum()) / (count * (count - 1))) if count > 1 else 1.0
    return consecutive, all_pairs, float((images @ text_embedding.T).mean())


def _as_tensor(features):
    """get_*_features returns a tensor in some transformers versions and an output object in others."""
    return features if hasattr(features, "shape") else features.pooler_output


def load_clip_model(name):
    """CLIPModel and CLIPProcessor from a folder or the Hugging Face cache, never the network: a
    missing model is one line at once (a download attempt offline retries for half a minute)."""
    try:
        return (CLIPModel.from_pretrained(name, local_files_only=True).eval(),
                CLIPProcessor.from_pretrained(name, local_files_only=True))
    except (OSError, ValueError) as error:
        raise UserError(f"CLIP model '{name}' is not in the Hugging Face cache or a folder "
                        f"({str(error).splitlines()[0][:120]}); `hf download {name}` once, pass --clip-model DIR, "
                        "or --no-clip") from None


def read_pngs(run_dir, sub):
    """The frames (F, H, W, 3) of RUN/sub/*.png; a missing, empty or damaged folder is a UserError."""
    folder = os.path.join(run_dir, sub)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png")) if os.path.isdir(folder) else []
    if not names:
        raise UserError(f"{run_dir} has no {sub}/*.png; is it a finished sdvideo run? (run sdvideo again)")
    frames = video_io.read_images([os.path.join(folder, name) for name in names])
    if len({f.shape for f in frames}) != 1:
        raise UserError(f"{folder} holds frames of different sizes; run sdvideo again")
    return np.stack(frames)


def read_frames(run_dir):
    """Generated frames (F, H, W, 3) from RUN/frames/*.png."""
    return read_pngs(run_dir, "frames")


def read_source(run_dir, record, width):
    """What the run was conditioned on, losslessly: RUN/source/ (the video's frames) or RUN/poses/
    (the pose maps); runs from before source/ existed: the left half of side_by_side.mp4.
    record: the run's run.json."""
    if os.path.isdir(os.path.join(run_dir, "source")):
        return read_pngs(run_dir, "source")
    if not record["args"].get("video"):
        return read_pngs(run_dir, "poses")
    path = os.path.join(run_dir, "side_by_side.mp4")
    try:
        with av.open(path) as container:
            return np.stack([f.to_ndarray(format="rgb24")[:, :width] for f in container.decode(video=0)])
    except (OSError, ValueError, av.error.FFmpegError) as error:
        raise UserError(f"{run_dir} has neither source/ nor a readable side_by_side.mp4 ({error}); "
                        "run sdvideo again") from None


def _read_record(run_dir):
    """RUN/run.json as a dict; missing or damaged -> UserError."""
    path = os.path.join(run_dir, "run.json")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir} has no run.json; is it a finished sdvideo run?")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is damaged ({error}); run sdvideo again") from None
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        raise UserError(f"{path} is not an sdvideo run record (no 'args'); run sdvideo again")
    return record


def evaluate_run(run_dir, clip=None, detector=None):
    """All metrics of one run -> dict, also written to RUN/metrics.json.

    clip: (model, processor) or None to skip the CLIP metrics; detector: a pose_extract detector
    or None to skip pose fidelity."""
    record = _read_record(run_dir)
    frames = read_frames(run_dir)
    source = read_source(run_dir, record, frames.shape[2])
    if len(source) != len(frames) or source.shape[1:3] != frames.shape[1:3]:
        raise UserError(f"{run_dir}: {len(frames)} frames but {len(source)} source frames of another size or "
                        "count; run sdvideo again")
    motion = flow.backward_flows(source)  # once, for every metric that follows the source's motion
    results = {"frames": len(frames), "warping_error": warping_error(frames, source, motion),
               "warp_ssim": warp_ssim(frames, source, motion), "flicker": flicker(frames, source),
               "background_flickering": background_flickering(frames, source, motion)}
    if clip is not None:
        (results["clip_consistency_consecutive"], results["clip_consistency_all_pairs"],
         results["clip_prompt_consistency"]) = clip_scores(frames, record["args"]["prompt"], *clip)
    control_path = os.path.join(run_dir, "poses.json")
    if detector is not None and os.path.isfile(control_path):
        control = pose_extract.read_poses(control_path).keypoints
        detected, _ = pose_tracking.track_person([detector(f) for f in frames], frames.shape[2], frames.shape[1])
        results["pose_pck"] = pck(detected, control)
    if record["args"].get("model") in builtin.TOY_DIRS and os.path.isfile(control_path) and frames.shape[1] == frames.shape[2]:
        control = pose_extract.read_poses(control_path).keypoints
        for name in ("pose_iou", "arm_iou", "club_visibility"):  # arms and club: None where none is drawn
            results[name] = getattr(toy_metrics, name)(frames, control, record["args"]["prompt"])
        results["shirt_color_accuracy"] = toy_metrics.color_accuracy(frames, control, record["args"]["prompt"])
    cost = record.get("cost", {})
    results.update({k: cost.get(k) for k in ("seconds_per_frame", "unet_evals_per_frame", "peak_memory_gib")})
    files.write_json(os.path.join(run_dir, "metrics.json"), results)
    return results


def add_evaluation_arguments(parser):
    """The flags of the metrics' models, shared by ``evaluate`` and ``sweep``."""
    parser.add_argument("--clip-model", default="openai/clip-vit-large-patch14",
                        help="CLIP for frame and prompt consistency (a folder, or a hub id in the HF cache)")
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP metrics")
    parser.add_argument("--pose-backend", default=None, choices=("openpose", "dwpose", "mediapipe"),
                        help="detector for pose fidelity (PCK@0.1); default: skip it")
    parser.add_argument("--annotator-path", default=None, help="the detector's weights folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info messages")


def evaluation_options(args):
    """The CLIP model and pose detector the metrics need, loaded once."""
    clip = None if args.no_clip else load_clip_model(args.clip_model)
    detector = detectors.make_detector(args.pose_backend, args.annotator_path) if args.pose_backend else None
    return {"clip": clip, "detector": detector}


def evaluate_command_parser(subparsers):
    parser = subparsers.add_parser("evaluate", help="metrics of finished runs -> a table and RUN/metrics.json",
                                   formatter_class=HelpFormatter)
    add_evaluation_arguments(parser)
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.set_defaults(func=evaluate_command)
    return parser


def evaluate_command(args):
    """sdvideo.py evaluate RUN_DIR... : metrics of finished runs -> a table and RUN/metrics.json."""
    options = evaluation_options(args)
    rows = [{"run": run, **evaluate_run(run, **options)} for run in args.runs]
    columns = ["run"] + [c for c in rows[0] if c not in ("run", "frames") and any(r.get(c) is not None for r in rows)]
    print(format_table(rows, columns))


def format_table(rows, columns):
    """A markdown table of dict rows."""

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
