"""Render a pose file as a toy-world source video: the "real footage" of the toy world.

    python demo/make_toy_source.py            # writes demo/golf_swing_toy.mp4 from demo/golf_swing.json
    python demo/make_toy_source.py --jacks    # writes demo/jumping_jacks.json and demo/jumping_jacks_toy.mp4

--jacks first writes the second motion of the benchmarks, motions.jumping_jacks on a 512 px
canvas at 24 fps, as a pose file, then renders it in its own look.

One look (from --prompt) and one draw of the nuisances (from --seed) for every frame, as a real
video has: the techniques that take motion or style from a source clip (--init-from-source,
--diff-steps, --mode keyframe, --flow-warp) read it with --video.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import pose_extract  # noqa: E402
from common import video_io  # noqa: E402
from toy import motions  # noqa: E402
from toy import toyworld  # noqa: E402

TOY_SOURCE_PROMPT = "a golfer in a blue shirt and white trousers, on a golf course"
# On the sweeps' prompts' background, as the swing is: pose IoU finds the figure by its distance from it
JACKS_PROMPT = "a person in a green shirt and black trousers, on a golf course"
JACKS_CANVAS, JACKS_FPS = 512, 24.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--poses", default=os.path.join(HERE, "golf_swing.json"), help="pose sequence file")
    parser.add_argument("--prompt", default=TOY_SOURCE_PROMPT, help="the look: shirt, trousers, background")
    parser.add_argument("--seed", type=int, default=0, help="the nuisances' draw (texture, light, cap, ...)")
    parser.add_argument("--size", type=int, default=toyworld.SIZE, help="picture size in pixels")
    parser.add_argument("--out", default=os.path.join(HERE, "golf_swing_toy.mp4"), help="the video to write")
    parser.add_argument("--jacks", action="store_true",
                        help="write and render the jumping-jacks motion instead (demo/jumping_jacks*.*)")
    args = parser.parse_args(argv)
    if args.jacks:
        args.poses, args.out = os.path.join(HERE, "jumping_jacks.json"), os.path.join(HERE, "jumping_jacks_toy.mp4")
        args.prompt = JACKS_PROMPT if args.prompt == TOY_SOURCE_PROMPT else args.prompt
        pose_extract.write_poses(args.poses, pose_extract.PoseSequence(
            motions.jumping_jacks(48, JACKS_CANVAS), (JACKS_CANVAS, JACKS_CANVAS), JACKS_FPS))
    sequence = pose_extract.read_poses(args.poses)
    width, height = sequence.canvas_size
    fit = video_io.fit_params(width, height, args.size, args.size, "crop")
    keypoints = pose_extract.fit_keypoints(sequence.keypoints, fit.scale, (fit.offset_x, fit.offset_y))
    frames, _ = toyworld.render_clip(keypoints, args.prompt, args.seed, args.size)
    video_io.write_video(args.out, frames, sequence.fps or 30.0)
    print(f"wrote {args.out}: {len(frames)} frames at {args.size}x{args.size}")


if __name__ == "__main__":
    main()
