"""Run integrity (issue 15): a result folder never mixes configs, data or corrupt state; bad inputs and
failing disks give one ``pace: error:`` line; strict JSON; logmel-stats masks padding by clip length."""

import errno
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from pace.backbones.registry import build_backbone
from pace.cli import build_parser, main
from pace.config import BackboneConfig, load_config, validate_config
from pace.data.audio import read_audio, samples_used_by
from pace.data.frontend import FbankFrontend
from pace.data.scenario import session_sizes
from pace.runfolder import RunFolderError, load_checkpoint, write_all
from pace.runner import CHECKPOINT, Runner
from reporters import InterruptAfter

# ---------------------------------------------------------------- fixtures built here


def write_clips(root: Path, classes: int, per_class: int, start: int = 0, seconds: float = 0.4) -> None:
    """``root/c<k>/<i>.wav``: 8 kHz tones, one pitch per class, a little seeded noise per clip."""
    sr = 8000
    t = np.arange(int(sr * seconds)) / sr
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            rng = np.random.default_rng([c, i])
            x = 0.4 * np.sin(2 * np.pi * (300 + 250 * c) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / f"c{c}" / f"{i:02d}.wav", x.astype(np.float32), sr)


def folder_cfg(root: Path, sessions: int = 2, **method) -> dict:
    return {"name": "folder", "data": {"dataset": "folder", "root": str(root)},
            "scenario": {"num_sessions": sessions}, "backbone": {"name": "logmel-stats", "target_frames": 48},
            "method": {"name": "simplecil", **method}, "runtime": {"progress": False, "num_threads": 1}}


def synth_raw(sessions: int = 2) -> dict:
    return {"name": "cli", "data": {"dataset": "synthetic", "synthetic_classes": 4, "synthetic_clips_per_class": 6},
            "scenario": {"num_sessions": sessions}, "backbone": {"name": "logmel-stats", "target_frames": 112},
            "method": {"name": "simplecil"}, "runtime": {"progress": False, "num_threads": 1}}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("pace: error: "), err
    return lines[0]


# ---------------------------------------------------------------- 1. configs never mix


def test_changed_config_is_refused_before_anything_is_overwritten(tmp_path):
    out = tmp_path / "out"
    Runner(validate_config(synth_raw(2)), out).run()
    before = snapshot(out)
    with pytest.raises(RunFolderError,
                       match=r"different config .*scenario\.num_sessions: 2 -> 4.*--out NEW.*--no-resume"):
        Runner(validate_config(synth_raw(4)), out).run()
    assert snapshot(out) == before


def test_cli_default_folder_refuses_a_changed_config_and_stays_consistent(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("c.yaml").write_text(yaml.safe_dump(synth_raw(2)))
    assert main(["run", "c.yaml", "--quiet"]) == 0
    folder = tmp_path / "runs" / "cli"
    before = snapshot(folder)
    capsys.readouterr()
    assert main(["run", "c.yaml", "--quiet", "--set", "scenario.num_sessions=4"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "runs/cli" in line and "scenario.num_sessions: 2 -> 4" in line
    assert "--out NEW" in line and "--no-resume" in line
    assert snapshot(folder) == before
    # the README's rerun of a result folder's own config still works (and --quiet is no config change)
    assert main(["run", "runs/cli/config.yaml"]) == 0
    assert len((folder / "accuracy_matrix.csv").read_text().splitlines()) == 3
    # starting over is explicit, and leaves a folder that describes one run
    assert main(["run", "c.yaml", "--quiet", "--set", "scenario.num_sessions=4", "--no-resume"]) == 0
    assert yaml.safe_load((folder / "config.yaml").read_text())["scenario"]["num_sessions"] == 4
    assert len((folder / "accuracy_matrix.csv").read_text().splitlines()) == 5
    assert len(list((folder / "splits").glob("session_*.csv"))) == 4


# ---------------------------------------------------------------- 2. the checkpoint binds to the data


def test_grown_data_folder_is_refused_not_resumed(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    write_clips(data, classes=4, per_class=6)
    cfg = validate_config(folder_cfg(data))
    Runner(cfg, out).run()
    assert json.loads((out / "metrics.json").read_text())["train_sizes"] == [10, 10]
    before = snapshot(out)
    write_clips(data, classes=4, per_class=6, start=6)  # 24 -> 48 clips, same config
    with pytest.raises(RunFolderError, match=r"different data .*24 clips.*48 clips.*--no-resume"):
        Runner(cfg, out).run()
    assert snapshot(out) == before
    final = Runner(cfg, out).run(resume=False)  # starting over retrains on all 48 clips
    assert final["train_sizes"] == [20, 20]
    assert json.loads((out / "run_info.json").read_text())["data"]["clips"] == 48


def test_changed_clip_is_refused_even_mid_run(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    write_clips(data, classes=4, per_class=6)
    cfg = validate_config(folder_cfg(data))
    with pytest.raises(KeyboardInterrupt):
        Runner(cfg, out, [InterruptAfter(1)]).run()
    write_clips(data, classes=1, per_class=1, seconds=0.5)  # same keys, one clip re-recorded longer
    with pytest.raises(RunFolderError, match="different data"):
        Runner(cfg, out).run()


# ---------------------------------------------------------------- 3. checkpoints carry a checksum


def _interrupted(tmp_path) -> tuple[dict, Path]:
    raw = synth_raw(2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        Runner(validate_config(raw), out, [InterruptAfter(1)]).run()
    return raw, out


def _flip_tensor_bytes(path: Path, tensor: torch.Tensor) -> None:
    """Flip every byte of ``tensor``'s record inside a torch zip file, leaving the zip itself valid
    (the damage a bad disk or copy does without breaking the file's structure)."""
    blob = tensor.contiguous().numpy().tobytes()
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if z.read(i) == blob)
    head = info.header_offset
    start = head + 30 + int.from_bytes(raw[head + 26:head + 28], "little") + \
        int.from_bytes(raw[head + 28:head + 30], "little")
    for i in range(start, start + info.file_size):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_flipped_checkpoint_bits_are_refused(tmp_path):
    raw, out = _interrupted(tmp_path)
    sums = torch.load(out / CHECKPOINT, weights_only=True)["learner"]["head"]["sums"]  # the class means
    _flip_tensor_bytes(out / CHECKPOINT, sums)
    before = snapshot(out)
    with pytest.raises(RunFolderError, match=r"checkpoint .*checkpoint\.pt is unusable .*--no-resume"):
        Runner(validate_config(raw), out).run()
    assert snapshot(out) == before
    final = Runner(validate_config(raw), out).run(resume=False)  # the way out it names works
    clean = Runner(validate_config(raw), tmp_path / "clean").run()
    assert final["accuracy_per_session"] == clean["accuracy_per_session"]


def test_checksum_catches_a_changed_value(tmp_path):
    raw, out = _interrupted(tmp_path)
    state = torch.load(out / CHECKPOINT, weights_only=True)
    state["results"][0]["acc_all"] -= 12.5  # valid file, different content, stale checksum
    torch.save(state, out / CHECKPOINT)
    with pytest.raises(RunFolderError, match="checksum mismatch"):
        load_checkpoint(out / CHECKPOINT)


def test_truncated_checkpoint_is_one_error_line(tmp_path, capsys):
    raw, out = _interrupted(tmp_path)
    ckpt = out / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(ckpt) in line and "--no-resume" in line


# ---------------------------------------------------------------- 8. failures are one error line


def test_unwritable_cache_dir_says_use_cache_false(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    raw = synth_raw()
    raw["runtime"]["cache_dir"] = str(tmp_path / "file" / "cache")  # cannot be created, even as root
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "file/cache" in line and "runtime.use_cache: false" in line
    assert not (tmp_path / "o").exists()
    raw["runtime"]["use_cache"] = False  # the way out it names works
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0


def test_full_cache_disk_is_one_error_line(tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    def full(*a, **kw):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr("pace.cache.save_file", full)
    raw = synth_raw()
    raw["runtime"]["cache_dir"] = str(tmp_path / "cache")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "runtime.use_cache: false" in line
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_full_out_disk_keeps_the_old_results(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(synth_raw()))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--set", "runtime.use_cache=false"]) == 0
    before = snapshot(out)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pace.runfolder._write_all", full)
    capsys.readouterr()
    for extra in ([], ["--no-resume"]):
        assert main(["run", str(cfg), "--out", str(out), "--quiet", "--set", "runtime.use_cache=false"] + extra) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"cannot write {out}/" in line and "No space left on device" in line
    assert snapshot(out) == before  # resumed or started over, the failed run changed nothing
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_staged_writes_change_nothing_when_one_fails(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "old.csv").write_text("old")
    (tmp_path / "config.yaml").write_text("old")

    def half_then_full(d: Path) -> None:
        (d / "session_01.csv").write_text("new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunFolderError, match=r"cannot write .*splits: No space left on device"):
        write_all({tmp_path / "config.yaml": b"new", tmp_path / "splits": half_then_full})
    assert snapshot(tmp_path) == {"config.yaml": b"old", "splits/old.csv": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "splits"]


def test_fresh_out_disk_full_while_checkpointing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = __import__("pace.runfolder", fromlist=["_write_all"])._write_all

    def full_after_setup(fd, data):
        calls["n"] += 1
        if data[:2] == b"PK":  # the checkpoint (a zip); config, splits and run info went through
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr("pace.runfolder._write_all", full_after_setup)
    with pytest.raises(RunFolderError, match=r"cannot write .*checkpoint\.pt: No space left on device"):
        Runner(validate_config(synth_raw()), tmp_path / "o").run()
    assert not (tmp_path / "o" / CHECKPOINT).exists()
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(synth_raw()))
    (tmp_path / "taken").write_text("x")
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "taken"), "--quiet"]) == 2
    assert "taken is a file" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "taken").read_text() == "x"


def test_manifest_row_of_a_missing_file(tmp_path, capsys):
    write_clips(tmp_path / "d", classes=4, per_class=6)
    rows = ["path,label"] + [f"d/c{c}/{i:02d}.wav,c{c}" for c in range(4) for i in range(6)]
    rows.insert(3, "d/c0/gone.wav,c0")  # manifest line 4
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    raw = folder_cfg(tmp_path / "m.csv")
    raw["data"]["dataset"] = "manifest"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "gone.wav: file not found" in line and f"{tmp_path / 'm.csv'}:4" in line
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "--quiet",
                 "--set", "data.skip_bad=true"]) == 0
    out = capsys.readouterr().out
    assert "24 clips" in out and "d/c0/gone.wav: file not found" in out


# ---------------------------------------------------------------- 9. smaller ones


def test_first_session_larger_than_the_classes():
    with pytest.raises(ValueError, match=r"first_session_classes=6 leaves no classes .* 4 classes") as exc:
        session_sizes(4, 2, 6)
    assert "-2" not in str(exc.value)


def test_long_clip_is_read_only_in_part_with_a_warning(tmp_path):
    sr, seconds = 8000, 130
    t = np.arange(sr * seconds) / sr
    sf.write(tmp_path / "long.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, subtype="PCM_16")
    frontend = FbankFrontend(target_frames=100)
    used = samples_used_by(frontend)
    assert used == 16 * (99 * 10 + 25)
    with pytest.warns(UserWarning, match=r"long\.wav: 130\.0 s long, but only its first 1\.01 s are used"):
        part = read_audio(tmp_path / "long.wav", use_samples=used)
    assert part.numel() == 60 * 16_000  # 60 s, not 130 s
    whole = read_audio(tmp_path / "long.wav")
    assert whole.numel() == 130 * 16_000
    assert torch.allclose(part[:used], whole[:used], atol=1e-6)  # the part that is used is the same


def test_short_clips_read_whole_without_a_warning(tmp_path, recwarn):
    write_clips(tmp_path, classes=1, per_class=1, seconds=2.0)
    clip = tmp_path / "c0" / "00.wav"
    assert torch.equal(read_audio(clip, use_samples=16_000), read_audio(clip))
    assert not recwarn.list


def test_one_class_run_warns(tmp_path, capsys):
    write_clips(tmp_path / "d", classes=1, per_class=6)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(folder_cfg(tmp_path / "d", sessions=1)))
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "pace: warning: the run has a single class ('c0')" in capsys.readouterr().err


def test_run_help_example_is_a_valid_override(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    examples = re.findall(r"e\.g\. --set (\S+=\S+)", text)
    assert examples and "method.lr" not in text
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(synth_raw()))
    for ex in examples:  # valid for a method without an lr (simplecil)
        key, value = ex.rstrip(")").split("=", 1)
        load_config(tmp_path / "c.yaml", {key: yaml.safe_load(value)})


# ---------------------------------------------------------------- 10. logmel-stats masks by length


@pytest.mark.parametrize("num_samples", [8000, 3000, 30_000])
def test_logmel_stats_pools_exactly_the_clip_frames(num_samples):
    wave = torch.randn(num_samples, generator=torch.Generator().manual_seed(0)) * 0.1
    backbone = build_backbone(BackboneConfig(name="logmel-stats", target_frames=100))
    x = backbone.frontend(wave)
    n = min(1 + (num_samples - 400) // 160, 100)  # kaldi frames (snip_edges), cropped to 100
    assert x.shape == (100, 129)
    assert torch.equal(x[:, -1], (torch.arange(100) < n).float())  # the mask comes from the length
    real = FbankFrontend(target_frames=n)(wave)  # the same frames, no padding at all
    assert torch.equal(x[:n, :-1], real)
    pooled = backbone(x[None]).pooled[0]
    assert torch.allclose(pooled[:128], real.mean(0), atol=1e-5)
    assert torch.allclose(pooled[128:], real.std(0, unbiased=False), atol=1e-5)


def test_logmel_stats_ignores_padding_whatever_its_value():
    backbone = build_backbone(BackboneConfig(name="logmel-stats", target_frames=100))
    x = backbone.frontend(torch.randn(8000, generator=torch.Generator().manual_seed(1)) * 0.1)
    y = x.clone()
    y[48:, :-1] = 123.0  # padded frames hold anything: the embedding does not change
    assert torch.equal(backbone(x[None]).pooled, backbone(y[None]).pooled)


# ---------------------------------------------------------------- 11. strict JSON


def _no_constants(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_result_json_is_strict(tmp_path):
    Runner(validate_config(synth_raw(2)), tmp_path).run()
    sessions = json.loads((tmp_path / "sessions.json").read_text(), parse_constant=_no_constants)
    assert sessions[0]["acc_old"] is None and sessions[1]["acc_old"] is not None
    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=_no_constants)
    assert metrics["num_sessions"] == 2
    json.loads((tmp_path / "run_info.json").read_text(), parse_constant=_no_constants)
