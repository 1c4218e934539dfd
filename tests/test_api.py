"""cli/api.py: sdvideo.generate and sdvideo.load take the run command's settings as keywords, check
them as the command does, and give the command's frames and record; the README's example runs."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import sdvideo
from conftest import ROOT

FAST = dict(model="tiny", height=64, width=64, steps=2, max_frames=3, quiet=True)
FAST_FLAGS = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--max-frames", "3", "--quiet"]


def pngs(folder):
    return np.stack([np.asarray(Image.open(folder / "frames" / name)) for name in sorted(os.listdir(folder / "frames"))])


def test_generate_gives_the_commands_frames_and_record_and_writes_nothing_without_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sdvideo.main([*FAST_FLAGS, "--noise", "fixed", "--copy-step", "1", "--out", str(tmp_path / "cli")]) == 0
    result = sdvideo.generate(**FAST, noise="fixed", copy_step="1")
    assert result.frames.dtype == np.uint8 and result.frames.shape == (3, 64, 64, 3)
    assert np.array_equal(result.frames, pngs(tmp_path / "cli"))
    recorded = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert result.record["techniques"] == recorded["techniques"] and result.record["seeds"] == recorded["seeds"]
    assert result.record["command"] == recorded["command"].replace(f" --out {tmp_path / 'cli'}", "")
    assert sorted(os.listdir(tmp_path)) == ["cli"]  # out=None: nothing written


def test_generate_with_out_writes_the_commands_run_folder(tmp_path):
    sdvideo.main([*FAST_FLAGS, "--preset", "t2v-zero", "--out", str(tmp_path / "cli")])
    result = sdvideo.generate(**FAST, preset="t2v-zero", out=str(tmp_path / "api"))
    assert sorted(os.listdir(tmp_path / "api")) == sorted(os.listdir(tmp_path / "cli"))
    assert np.array_equal(pngs(tmp_path / "api"), pngs(tmp_path / "cli")) and np.array_equal(result.frames, pngs(tmp_path / "api"))
    assert json.loads((tmp_path / "api" / "run.json").read_text())["techniques"] == result.record["techniques"]
    with pytest.raises(sdvideo.UserError, match="already holds a run; pass --overwrite"):  # never overwritten unasked
        sdvideo.generate(**FAST, out=str(tmp_path / "api"))


def test_a_bad_setting_raises_the_commands_one_line(tmp_path, capsys):
    assert sdvideo.main([*FAST_FLAGS, "--flow-warp", "0.5", "--out", str(tmp_path / "x")]) == 2
    line = capsys.readouterr().err.strip().removeprefix("sdvideo: error: ")
    with pytest.raises(sdvideo.UserError) as raised:
        sdvideo.generate(**FAST, flow_warp=0.5)
    assert str(raised.value) == line
    with pytest.raises(sdvideo.UserError, match="invalid choice"):
        sdvideo.generate(**FAST, noise="loud")
    with pytest.raises(TypeError, match="copy_step for --copy-step"):
        sdvideo.generate(**FAST, copy_stepp="1")


def test_a_loaded_pipeline_is_reused_and_gives_the_fresh_frames():
    pipe = sdvideo.load(model="tiny")
    model_free = {k: v for k, v in FAST.items() if k != "model"}
    for step in ("0", "1"):
        reused = sdvideo.generate(pipe=pipe, **model_free, noise="fixed", copy_step=step)
        fresh = sdvideo.generate(**FAST, noise="fixed", copy_step=step)
        assert np.array_equal(reused.frames, fresh.frames)
    with pytest.raises(TypeError, match="belong to load"):
        sdvideo.generate(pipe=pipe, **FAST)
    with pytest.raises(TypeError, match="load takes the model settings only"):
        sdvideo.load(model="tiny", steps=3)


def test_the_readme_python_example_runs(monkeypatch, capsys):
    text = open(f"{ROOT}/README.md", encoding="utf-8").read()
    code = re.search(r"## From Python.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    # copying at step k of 20 skips the other frames' first k steps, both guidance branches
    assert printed == ["0.2 (8, 128, 128, 3) 33.0", "0.4 (8, 128, 128, 3) 26.0"]
