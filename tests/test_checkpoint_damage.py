"""Damaged checkpoints and failed writes: damaged checkpoints are set aside (renamed, never deleted) and reported
truthfully, unsafe or malformed files are caught before they are used, and a full disk gives one clear error.

Tiny states (an ``nn.Linear(3, 2)`` and its AdamW state) keep these fast. The real full-disk test mounts a
2 MiB tmpfs and is skipped where mounting is not permitted; the monkeypatched ones run everywhere.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from rlready.train import checkpoint


def tiny(seed: int = 0) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    return lin, opt


def write(root: Path, step: int, keep: int = 10, **extra) -> Path:
    lin, opt = tiny(step)
    return checkpoint.save(
        root,
        step,
        model_state=lin.state_dict(),
        optimizer_state=opt.state_dict(),
        state={"tokens": step, **extra},
        keep=keep,
    )


def reseal(path: Path) -> None:
    """Rewrite the manifest so that it matches the files as they are now (a tampered but consistent set)."""
    manifest = {
        n: {"size": (path / n).stat().st_size, "sha256": checkpoint._sha256(path / n)}
        for n in checkpoint.FILES
    }
    (path / "manifest.json").write_text(json.dumps(manifest))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:50])


def names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


class RunsCode:
    """Unpickling this runs a shell command: what ``weights_only=True`` must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_malicious_optimizer(ckpt: Path, marker: Path, fmt: str = "torch") -> None:
    planted = {"state": {}, "param_groups": [], "extra": RunsCode(marker)}
    if fmt == "torch":  # torch.save's zip format, as checkpoints are written
        torch.save(planted, ckpt / "optimizer.pt")
    else:  # a bare pickle stream
        with (ckpt / "optimizer.pt").open("wb") as f:
            pickle.dump(planted, f)
    reseal(ckpt)


# -- damaged checkpoints ---------------------------------------------------------------------------------------


def test_every_checkpoint_damaged_is_set_aside_and_progress_is_kept_again(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        truncate(write(root, step) / "model.safetensors")
    warnings: list[str] = []
    assert checkpoint.load_latest(root, warnings.append) is None
    assert len(warnings) == 3
    for step, line in zip((6, 4, 2), warnings, strict=True):
        name = f"step_{step:08d}"
        assert line.startswith(f"checkpoint {name} is damaged (model.safetensors ")
        assert f"moved to {root / ('damaged-' + name)}" in line
        assert line.endswith("no good checkpoint remains; starting from step 0"), line
        assert "previous" not in line and "\n" not in line
    # Set aside, not deleted, and no longer counted as checkpoints.
    assert checkpoint.list_checkpoints(root) == []
    for step in (2, 4, 6):
        assert (root / f"damaged-step_{step:08d}" / "model.safetensors").is_file()
    # A new checkpoint is kept with keep=1: the damaged ones do not count toward it and are never pruned.
    write(root, 2, keep=1)
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step_00000002"]
    write(root, 4, keep=1)
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step_00000004"]
    assert names(root) == [
        "damaged-step_00000002",
        "damaged-step_00000004",
        "damaged-step_00000006",
        "step_00000004",
    ]
    warnings.clear()
    ckpt = checkpoint.load_latest(root, warnings.append)
    assert ckpt is not None and ckpt.step == 4 and warnings == []


def test_damaged_newest_is_set_aside_once_and_the_older_used(tmp_path):
    root = tmp_path / "checkpoints"
    write(root, 2)
    bad = write(root, 4) / "optimizer.pt"
    data = bytearray(bad.read_bytes())
    data[-30] ^= 0xFF
    bad.write_bytes(bytes(data))
    warnings: list[str] = []
    ckpt = checkpoint.load_latest(root, warnings.append)
    assert ckpt is not None and ckpt.step == 2 and ckpt.path.name == "step_00000002"
    assert warnings == [
        "checkpoint step_00000004 is damaged (optimizer.pt does not match its checksum); "
        f"moved to {root / 'damaged-step_00000004'}; using step_00000002 instead"
    ]
    warnings.clear()
    again = checkpoint.load_latest(root, warnings.append)
    assert again is not None and again.step == 2 and warnings == []
    assert names(root) == ["damaged-step_00000004", "step_00000002"]
    lin, opt = tiny(99)
    checkpoint.restore(ckpt, lin, opt)
    assert torch.equal(lin.weight, tiny(2)[0].weight)


def test_a_second_damaged_copy_of_the_same_step_does_not_collide(tmp_path):
    root = tmp_path / "checkpoints"
    write(root, 2)
    for _ in range(2):
        truncate(write(root, 4) / "rng.safetensors")
        warnings: list[str] = []
        assert checkpoint.load_latest(root, warnings.append).step == 2
        assert len(warnings) == 1
    assert f"moved to {root / 'damaged-step_00000004-2'};" in warnings[0]
    assert names(root) == ["damaged-step_00000004", "damaged-step_00000004-2", "step_00000002"]


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_malicious_optimizer_pickle_with_matching_manifest_is_set_aside(tmp_path, fmt):
    root, marker = tmp_path / "checkpoints", tmp_path / "code-ran"
    write(root, 2)
    plant_malicious_optimizer(write(root, 4), marker, fmt)
    assert checkpoint.verify(root / "step_00000004") is None  # the manifest matches
    warnings: list[str] = []
    ckpt = checkpoint.load_latest(root, warnings.append)
    assert ckpt is not None and ckpt.step == 2
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "checkpoint step_00000004 is damaged (optimizer.pt cannot be read safely (a pickle that weights_only "
        "loading refuses: "
    )
    if fmt == "torch":
        assert "posix.system" in warnings[0]
    assert warnings[0].endswith("; using step_00000002 instead") and "\n" not in warnings[0]
    assert (root / "damaged-step_00000004" / "optimizer.pt").is_file()
    lin, opt = tiny(99)
    checkpoint.restore(ckpt, lin, opt)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "state.json is unreadable"),
        ('{"tokens": 4, "rng": {}}', "state.json lacks step"),
        ('{"tokens": 4, "step": 4}', "state.json lacks rng"),
        ("[4]", "state.json is not a JSON object"),
        ('{"step": 6, "rng": {"python": [], "numpy": []}}', "state.json says step 6"),
    ],
)
def test_malformed_state_json_is_damage_not_a_traceback(tmp_path, content, reason):
    root = tmp_path / "checkpoints"
    write(root, 2)
    path = write(root, 4)
    (path / "state.json").write_text(content)
    reseal(path)
    warnings: list[str] = []
    ckpt = checkpoint.load_latest(root, warnings.append)
    assert ckpt is not None and ckpt.step == 2
    assert len(warnings) == 1 and warnings[0].startswith(f"checkpoint step_00000004 is damaged ({reason}")


def test_restore_names_a_file_that_cannot_be_read(tmp_path):
    root, marker = tmp_path / "checkpoints", tmp_path / "code-ran"
    path = write(root, 2)
    ckpt = checkpoint.load_latest(root, pytest.fail)
    plant_malicious_optimizer(path, marker)  # replaced after load_latest checked it
    lin, opt = tiny(99)
    for call in (lambda: checkpoint.restore(ckpt, lin, opt), lambda: checkpoint.read_optimizer_state(ckpt)):
        with pytest.raises(ValueError, match="optimizer.pt") as info:
            call()
        assert str(path / "optimizer.pt") in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    (path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="model.safetensors") as info:
        checkpoint.restore(ckpt, lin, None)
    assert "\n" not in str(info.value)


# -- failed writes ---------------------------------------------------------------------------------------------


def assert_failed_write_left_earlier_intact(root: Path, err: pytest.ExceptionInfo, full: bool) -> None:
    message = str(err.value)
    assert isinstance(err.value, OSError) and "\n" not in message
    assert str(root) in message
    assert ("no space left on device" in message) is full, message
    assert names(root) == ["step_00000002"]  # no temporary directory left, the earlier checkpoint kept
    assert checkpoint.verify(root / "step_00000002") is None
    ckpt = checkpoint.load_latest(root, pytest.fail)
    assert ckpt is not None and ckpt.step == 2


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs, so that writing fills the disk for real."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("overflowing", ["model.safetensors", "optimizer.pt", "state.json"])
def test_full_disk_is_one_clear_error_and_earlier_checkpoints_stay(small_fs, overflowing):
    root = small_fs / "checkpoints"
    write(root, 2)
    lin, opt = tiny()
    big = torch.zeros(1_000_000)  # 4 MB: more than the filesystem holds
    model_state = {"w": big} if overflowing == "model.safetensors" else lin.state_dict()
    opt_state = (
        {"state": {0: {"exp_avg": big}}, "param_groups": []}
        if overflowing == "optimizer.pt"
        else opt.state_dict()
    )
    extra = {"blob": "x" * 4_000_000} if overflowing == "state.json" else {}
    with pytest.raises(OSError) as err:
        checkpoint.save(root, 4, model_state=model_state, optimizer_state=opt_state, state=extra, keep=2)
    assert str(root / "step_00000004") in str(err.value)
    assert_failed_write_left_earlier_intact(root, err, full=True)


def test_full_disk_from_safetensors_is_reported(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    root = tmp_path / "checkpoints"
    write(root, 2)

    def no_space(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    with pytest.raises(OSError) as err:
        write(root, 4)
    assert_failed_write_left_earlier_intact(root, err, full=True)


def test_full_disk_from_torch_save_is_recognised_from_free_space(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    write(root, 2)
    real_save = torch.save

    def lost_errno(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # leave a partial file behind, as a real failure does
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", lost_errno)
    total = shutil.disk_usage(tmp_path).total
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(total, total, 0))
    with pytest.raises(OSError) as err:
        write(root, 4)
    assert_failed_write_left_earlier_intact(root, err, full=True)


def test_other_write_failure_gives_its_first_line(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    write(root, 2)

    def broken(*args, **kwargs):
        raise RuntimeError("something else broke\nsecond line")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError) as err:
        write(root, 4)
    assert "something else broke" in str(err.value) and "second line" not in str(err.value)
    assert_failed_write_left_earlier_intact(root, err, full=False)
