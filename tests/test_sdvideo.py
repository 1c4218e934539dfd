"""The command line end to end on the tiny model: outputs, refusals, every user-facing failure."""
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

import sdvideo
from common import video_io
from conftest import ROOT, make_video
from loop import pipeline

FAST = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--quiet"]


def run_cli(*args):
    return sdvideo.main([*FAST, *args])


def frame_count(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_demo_run_writes_videos_frames_poses_and_run_json(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--max-frames", "5", "--out", str(out)) == 0
    assert sorted(os.listdir(out)) == ["frames", "poses", "poses.json", "run.json", "side_by_side.mp4", "video.mp4"]
    assert sorted(os.listdir(out / "frames")) == [f"{i:05d}.png" for i in range(5)]
    assert len(os.listdir(out / "poses")) == 5
    assert frame_count(out / "video.mp4") == 5
    with av.open(str(out / "side_by_side.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (128, 64) and stream.codec_context.pix_fmt == "yuv420p"
    record = json.loads((out / "run.json").read_text())
    assert record["frames"] == 5 and record["fps"] == 30.0 and record["args"]["steps"] == 2
    assert record["models"]["scheduler"] == "DDIMScheduler" and record["versions"]["diffusers"]
    assert record["cost"]["unet_evals_per_frame"] == 2 * 2  # 2 steps x 2 guidance branches
    assert not os.path.exists(f"{out}.partial")


def test_existing_run_is_refused_without_overwrite_and_replaced_with_it(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    assert run_cli("--max-frames", "2", "--out", str(out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "earlier result"
    assert run_cli("--max-frames", "2", "--out", str(out), "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "video.mp4").exists()


def test_video_with_poses_puts_the_source_on_the_left(tmp_path, pose_file):
    video = tmp_path / "clip.mp4"
    make_video(video, num_frames=6, height=128, width=128)
    out = tmp_path / "run"
    assert run_cli("--video", str(video), "--poses", pose_file, "--stride", "2", "--out", str(out)) == 0
    assert len(os.listdir(out / "frames")) == 3
    with av.open(str(out / "side_by_side.mp4")) as container:
        left = next(container.decode(video=0)).to_ndarray(format="rgb24")[:, :64]
    source = video_io.fit_image(make_video(tmp_path / "again.mp4", 6, 128, 128)[0], 64, 64, "crop")
    assert np.abs(left.astype(int) - source).mean() < 6
    assert json.loads((out / "run.json").read_text())["fps"] == 6.0


def test_a_folder_of_pose_images_is_used_as_is(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    for i in range(3):
        image = np.zeros((64, 64, 3), np.uint8)
        image[10:20, 10 + i:20 + i] = 255
        video_io.write_png(str(folder / f"{i:03d}.png"), image)
    out = tmp_path / "run"
    assert run_cli("--poses", str(folder), "--out", str(out)) == 0
    assert len(os.listdir(out / "frames")) == 3


def test_sizes_are_rounded_to_a_multiple_of_8(tmp_path, caplog):
    out = tmp_path / "run"
    assert sdvideo.main(["--model", "tiny", "--height", "61", "--width", "70", "--steps", "1",
                         "--max-frames", "1", "--out", str(out)]) == 0
    assert "multiple of 8" in caplog.text
    assert json.loads((out / "run.json").read_text())["size"] == [72, 64]


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps"),
    (["--guidance", "-1"], "--guidance"),
    (["--controlnet-scale", "9"], "--controlnet-scale"),
    (["--control-start", "0.8", "--control-end", "0.2"], "--control-start"),
    (["--height", "-8"], "--height"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size: must be at least 1 (or 'auto')"),
    (["--height", "4096"], "--height and --width must be in 1..2048"),
    (["--fps", "500"], "--fps must be in (0, 240]"),
    (["--fps", "0"], "--fps must be in (0, 240]"),
    (["--scheduler", "nope"], "invalid choice"),
    (["--base", "some/model"], "--model tiny is a built-in model: drop --base/--controlnet"),
    (["--max-frames", "0"], "--max-frames"),
    (["--stride", "0"], "--stride"),
    (["--fps", "10", "--stride", "2"], "not both"),
    (["--noise-drift", "5"], "--noise-drift"),
    (["--noise-flow-relative", "--noise-flow-threshold", "1.5"], "must be <= 1"),
    (["--start", "100"], "no frames selected"),
    (["--poses", "missing.json"], "not found"),
    (["--video", "x.mp4"], "video not found"),
    (["--device", "cuda"], "CUDA"),
    (["--grid", "2", "--cross-frame-attn", "anchor"], "--cross-frame-attn and --grid both plan the model's calls"),
    (["--grid", "4"], "argument --grid: invalid choice"),
    (["--trajectory-attn"], "--trajectory-attn needs --video"),
])
def test_bad_arguments_fail_with_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    if "--device" in flags and sdvideo_has_cuda():
        pytest.skip("this machine has CUDA")
    assert run_cli(*flags, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("sdvideo: error:")
    assert not out.exists() and not os.path.exists(f"{out}.partial")


def sdvideo_has_cuda():
    import torch

    return torch.cuda.is_available()


def write(path, text):
    path.write_text(text)
    return str(path)


def test_bad_input_files_fail_with_one_line_and_write_nothing(tmp_path, capsys, pose_file):
    good_video = tmp_path / "clip.mp4"
    make_video(good_video, num_frames=5)
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01garbage" * 500)
    cases = [
        (["--video", str(tmp_path / "none.mp4"), "--poses", pose_file], "video not found"),
        (["--video", str(corrupt), "--poses", pose_file], "cannot read video"),
        (["--video", str(good_video), "--poses", pose_file], "6 pose frames but"),
        (["--poses", write(tmp_path / "empty.json", "")], "not valid JSON"),
        (["--poses", write(tmp_path / "nothing.json", "[]")], "holds no frames"),
        (["--poses", write(tmp_path / "nocanvas.json", '[{"people": []}]')], "canvas size"),
        (["--poses", str(empty_folder)], "no images"),
    ]
    for flags, message in cases:
        out = tmp_path / "run"
        assert run_cli(*flags, "--out", str(out)) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (flags, err)
        assert not out.exists() and not os.path.exists(f"{out}.partial")


def test_missing_weights_name_what_and_how_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for flags, message in [(["--base", str(tmp_path / "no-such-folder")], "base model path not found"),
                           (["--controlnet", "someone/not-downloaded"], "hf download someone/not-downloaded")]:
        result = subprocess.run([sys.executable, os.path.join(ROOT, "sdvideo.py"), "--quiet", "--max-frames", "1",
                                 "--out", str(tmp_path / "run"), *flags],
                                capture_output=True, text=True, env=env, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_argparse_errors_exit_2_without_traceback():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "sdvideo.py"), "--scheduler", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr and "Traceback" not in result.stderr


def test_interrupted_run_keeps_finished_frames_and_no_half_video(tmp_path, monkeypatch, capsys):
    real_decode = pipeline.decode

    def decode_then_interrupt(*args, **kwargs):
        for index, frame in enumerate(real_decode(*args, **kwargs)):
            if index == 2:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(pipeline, "decode", decode_then_interrupt)
    out = tmp_path / "run"
    assert run_cli("--max-frames", "4", "--out", str(out)) == 130
    partial = tmp_path / "run.partial"
    assert "kept in" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(os.listdir(partial / "frames")) == ["00000.png", "00001.png"]
    assert not [n for n in os.listdir(partial) if n.endswith(".mp4")]


DEMO_VIDEO = os.path.join(ROOT, "demo", "golf_swing_poses.mp4")
DEMO_POSES = os.path.join(ROOT, "demo", "golf_swing.json")


def test_presets_set_defaults_that_explicit_flags_override():
    args = sdvideo.parse_args(["--preset", "t2v-zero"])
    assert args.noise == "fixed" and args.cross_frame_attn == "anchor"
    args = sdvideo.parse_args(["--preset", "keyframe", "--keyframe-interval", "4", "--noise", "slerp"])
    assert args.mode == "keyframe" and args.keyframe_interval == 4 and args.noise == "slerp"


def test_all_techniques_together_from_the_command_line(tmp_path):
    out, bank = tmp_path / "run", tmp_path / "bank.safetensors"
    flags = ["--video", DEMO_VIDEO, "--poses", DEMO_POSES, "--max-frames", "6", "--steps", "4", "--noise", "fixed",
             "--copy-step", "1", "--diff-steps", "1:3", "--diff-align", "stats", "--blend-steps", "2:3",
             "--blend-weight", "0.2", "--cross-frame-attn", "anchor+previous", "--flow-warp", "0.5",
             "--mode", "keyframe", "--keyframe-interval", "3", "--init-from-source", "--strength", "0.8",
             "--save-residuals", str(bank), "--out", str(out)]
    assert run_cli(*flags) == 0
    record = json.loads((out / "run.json").read_text())
    names = [h["technique"] for h in record["techniques"]["hooks"]]
    assert names == ["StartFromLatents", "Copy", "LatentDifferences", "Blend", "CrossFrameAttention", "FlowFusion",
                     "KeyframePlan"]
    assert frame_count(out / "video.mp4") == 6 and bank.exists()
    # the saved bank drives a run with no source video
    again = tmp_path / "again"
    assert run_cli("--poses", DEMO_POSES, "--max-frames", "6", "--steps", "4", "--residuals", str(bank), "--diff-steps", "1:3",
                   "--diff-align", "pose", "--mode", "keyframe", "--out", str(again)) == 0


@pytest.mark.parametrize("flags, message", [
    (["--flow-warp", "0.5"], "--flow-warp needs --video"),
    (["--init-from-source"], "--init-from-source needs --video"),
    (["--diff-steps", "0:2"], "--diff-steps needs --video or --residuals"),
    (["--preset", "seed"], "needs --video or --residuals"),
    (["--copy-step", "9"], "--copy-step 9: step 9 is outside"),
    (["--blend-steps", "3:1"], "--blend-steps 3:1"),
    (["--anchor", "last"], "--anchor"),
    (["--blend-weight", "2"], "--blend-weight"),
])
def test_bad_technique_flags_fail_with_one_line(tmp_path, capsys, flags, message):
    assert run_cli(*flags, "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_residuals_of_another_size_are_refused(tmp_path, capsys):
    import torch

    from loading import sources

    bank = str(tmp_path / "bank.safetensors")
    sources.save_bank(bank, torch.zeros(3, 4, 8, 8))
    assert run_cli("--max-frames", "4", "--residuals", bank, "--diff-steps", "0:1", "--out", str(tmp_path / "r")) == 2
    assert "same frame count" in capsys.readouterr().err


def test_a_second_run_on_the_same_out_is_refused_while_the_first_writes(tmp_path, capsys):
    from cli import outputs

    out = tmp_path / "run"
    first = outputs.RunFolder(str(out), False, settings={})
    first.create("frames")
    (tmp_path / "run.partial" / "frames" / "00000.png").write_bytes(b"the first run's frame")
    try:
        assert run_cli("--max-frames", "2", "--out", str(out)) == 2
        err = capsys.readouterr().err.strip()
        assert "being written by another run" in err and len(err.splitlines()) == 1
        assert os.listdir(tmp_path / "run.partial" / "frames") == ["00000.png"]
        assert (tmp_path / "run.partial" / "frames" / "00000.png").read_bytes() == b"the first run's frame"
        assert not out.exists()
    finally:
        first.release()
    assert run_cli("--max-frames", "2", "--out", str(out)) == 0  # free again once the first is done


def test_a_run_never_replaces_a_result_published_meanwhile_without_overwrite(tmp_path):
    from cli import outputs

    out = tmp_path / "run"
    late = outputs.RunFolder(str(out), False, settings={})
    late.create("frames")
    out.mkdir()
    (out / "video.mp4").write_bytes(b"published by another run meanwhile")
    with pytest.raises(outputs.UserError, match="--overwrite"):
        late.finish()
    late.release()
    assert (out / "video.mp4").read_bytes() == b"published by another run meanwhile"
    assert (tmp_path / "run.partial" / "frames").is_dir()  # this run's files are kept


def test_out_under_a_file_or_in_a_read_only_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert run_cli("--max-frames", "1", "--out", str(blocker / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file, not a folder" in err and len(err.splitlines()) == 1
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else real_access(path, mode))
    assert run_cli("--max-frames", "1", "--out", str(tmp_path / "run")) == 2  # (root ignores chmod: access is faked)
    assert "is read-only" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), PermissionError(13, "Permission denied")])
def test_a_failed_write_leaves_nothing_half_written(tmp_path, capsys, monkeypatch, error):
    calls = {"n": 0}
    real = video_io.write_png

    def fail_on_fourth(path, image):
        calls["n"] += 1
        if calls["n"] == 4:
            raise error
        real(path, image)

    monkeypatch.setattr(video_io, "write_png", fail_on_fourth)
    assert run_cli("--max-frames", "3", "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert error.strerror in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_a_file_size_limit_ends_in_one_line_and_no_leftovers(tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))  # as `ulimit -f 30`

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "sdvideo.py"), *FAST, "--height", "256", "--width",
                             "256", "--max-frames", "8", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, preexec_fn=limit)
    assert result.returncode == 2, result.stderr
    assert "cannot write the run" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_residual_files_and_multistep_copying_are_checked_before_any_work(tmp_path, capsys):
    existing = tmp_path / "bank.safetensors"
    existing.write_bytes(b"an earlier bank")
    video = ["--video", DEMO_VIDEO, "--poses", DEMO_POSES, "--max-frames", "2"]
    cases = [
        ([*video, "--save-residuals", str(tmp_path / "missing" / "bank.safetensors")], "its folder does not exist"),
        ([*video, "--save-residuals", str(existing)], "exists; pass --overwrite"),
        (["--scheduler", "dpm++", "--copy-step", "1", "--copy-from", "previous"], "--copy-from previous cannot run"),
        (["--scheduler", "unipc", "--copy-step", "1", "--copy-from", "previous"], "use --scheduler ddim"),
    ]
    for flags, message in cases:
        assert run_cli(*flags, "--out", str(tmp_path / "run")) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert existing.read_bytes() == b"an earlier bank" and sorted(os.listdir(tmp_path)) == ["bank.safetensors"]
    assert run_cli("--scheduler", "dpm++", "--copy-step", "1", "--out", str(tmp_path / "run")) == 0  # anchor works


def test_run_json_records_a_quoted_command_and_this_runs_own_peak_memory(tmp_path):
    import shlex

    out = tmp_path / "my run"
    assert run_cli("--max-frames", "2", "--prompt", "a golfer's swing", "--out", str(out)) == 0
    record = json.loads((out / "run.json").read_text())
    assert shlex.split(record["command"]) == ["python", "sdvideo.py", *FAST, "--max-frames", "2", "--prompt",
                                              "a golfer's swing", "--out", str(out)]
    assert record["models"]["base"] is None and record["models"]["controlnet"] is None  # tiny: no SD2.1 named
    # A fresh process (in a long one, freed memory can be reused without raising the peak): it
    # touches 2 GiB and frees them, then runs; the run's peak must not include those 2 GiB.
    script = (f"import sys; sys.path.insert(0, {ROOT!r}); import numpy as np, sdvideo\n"
              "big = np.ones(2 ** 28); del big\n"
              "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
              "rss, hwm = (int(status[k].split()[0]) / 2 ** 20 for k in ('VmRSS', 'VmHWM'))\n"
              f"assert sdvideo.main({[*FAST, '--max-frames', '2', '--out', str(tmp_path / 'fresh')]!r}) == 0\n"
              "print(rss, hwm)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    resident, all_time_peak = map(float, result.stdout.split())
    assert all_time_peak > resident + 1.9  # the premise: the process peaked 2 GiB above where it was
    peak = json.loads((tmp_path / "fresh" / "run.json").read_text())["cost"]["peak_memory_gib"]
    assert 0 < peak < resident + 1.0  # this run's peak (a tiny run), not the 2 GiB before it


def test_quiet_is_silent_and_a_truncated_prompt_is_warned_once(tmp_path):
    import warnings

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, os.path.join(ROOT, "sdvideo.py"), "--model", "tiny", "--height", "64", "--width", "64",
            "--steps", "2", "--max-frames", "3"]
    quiet = subprocess.run([*base, "--quiet", "--out", str(tmp_path / "a")], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
    long_prompt = "a golfer swinging on a sunny course " * 6
    loud = subprocess.run([*base, "--prompt", long_prompt, "--mode", "keyframe", "--keyframe-interval", "2",
                           "--video", DEMO_VIDEO, "--poses", DEMO_POSES, "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, env=env)
    assert loud.returncode == 0 and loud.stderr.count("truncated because CLIP can only handle") == 1  # two passes
    before = list(warnings.filters)
    assert run_cli("--max-frames", "1", "--out", str(tmp_path / "c")) == 0
    assert warnings.filters == before  # no global warning filters


@pytest.mark.parametrize("command", ["run", "evaluate", "sweep", "extract"])
def test_help_shows_real_defaults_only(command, capsys):
    assert sdvideo.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text and ROOT not in text and "--" in text


def test_run_is_the_default_command_and_each_command_has_its_parser(tmp_path):
    assert run_cli("--max-frames", "1", "--out", str(tmp_path / "a")) == 0
    assert sdvideo.main(["run", *FAST, "--max-frames", "1", "--out", str(tmp_path / "b")]) == 0
    assert sdvideo.main(["evaluate", str(tmp_path / "b"), "--no-clip", "--quiet"]) == 0
    assert (tmp_path / "b" / "metrics.json").exists()


def test_flow_gated_noise_on_a_still_source_gives_the_frames_of_fixed_noise(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(0, 255, (1, 8, 8, 3), dtype=np.uint8), 8, axis=1).repeat(8, axis=2)  # 64x64
    video_io.write_video(str(tmp_path / "still.mp4"), [still[0]] * 4, 12)
    poses = ["--video", str(tmp_path / "still.mp4"), "--poses", demo_poses_4(tmp_path)]
    assert run_cli(*poses, "--noise", "fixed", "--out", str(tmp_path / "fixed")) == 0
    assert run_cli(*poses, "--noise", "flow-gated", "--out", str(tmp_path / "gated")) == 0
    for i in range(4):
        name = f"frames/{i:05d}.png"
        assert (tmp_path / "gated" / name).read_bytes() == (tmp_path / "fixed" / name).read_bytes()
    record = json.loads((tmp_path / "gated" / "run.json").read_text())
    assert record["techniques"]["noise_settings"] == {"threshold": 1.0, "threshold_of": "pixels", "gates": "noise"}
    assert run_cli("--noise", "flow-gated", "--out", str(tmp_path / "none")) == 2
    assert "--noise flow-gated needs --video" in capsys.readouterr().err


def demo_poses_4(tmp_path):
    """The demo swing's first 4 poses as their own file."""
    import pose_extract

    demo = pose_extract.read_poses(DEMO_POSES)
    path = str(tmp_path / "poses4.json")
    pose_extract.write_poses(path, pose_extract.PoseSequence(demo.keypoints[:4], demo.canvas_size, 12.0))
    return path


def test_batch_size_auto_with_a_technique_that_encodes_the_source(tmp_path):
    out = tmp_path / "run"  # --batch-size auto encodes the source frames in chunks of the CPU's auto size
    assert run_cli("--video", DEMO_VIDEO, "--poses", DEMO_POSES, "--max-frames", "3", "--batch-size", "auto",
                   "--init-from-source", "--strength", "0.5", "--out", str(out)) == 0
    assert len(os.listdir(out / "frames")) == 3
