"""Prompt methods place their prompts at the official relative depth of any backbone."""

from __future__ import annotations

import pytest

from pace.config import validate_config
from pace.methods.prompt_base import relative_blocks
from pace.runner import Runner


def test_relative_blocks_is_the_identity_on_the_reference_depth():
    assert relative_blocks([0, 1, 2, 3, 4], 12) == [0, 1, 2, 3, 4]
    assert relative_blocks([2, 3, 4], 12, above=1) == [2, 3, 4]


@pytest.mark.parametrize("depth, blocks, g, e", [
    (2, [0], [0], [1]),
    (4, [0, 1], [0], [1]),          # Whisper tiny.en
    (6, [0, 1, 2], [0], [1, 2]),    # Whisper base
    (24, list(range(10)), [0, 1, 2, 3], list(range(4, 10))),  # EAT-large
])
def test_relative_blocks_keep_the_share_of_depth(depth, blocks, g, e):
    assert relative_blocks([0, 1, 2, 3, 4], depth) == blocks  # the first 5/12 of the depth, rounded up
    assert relative_blocks([0, 1], depth) == g
    assert relative_blocks([2, 3, 4], depth, above=g[-1]) == e  # E-prompts above the G-prompt


@pytest.mark.parametrize("method", ["dualprompt", "codaprompt", "sprompt", "hideprompt"])
def test_prompt_methods_run_with_their_defaults_on_a_shallow_backbone(tmp_path, method):
    # whisper-test has 2 blocks: the official 12-block placements (blocks 0-4) used to stop the run
    cfg = validate_config({
        "name": method, "data": {"dataset": "synthetic", "synthetic_classes": 4, "synthetic_clips_per_class": 6},
        "scenario": {"num_sessions": 2}, "backbone": {"name": "whisper-test", "seconds": 0.5},
        "method": {"name": method, "train": {"epochs": 1}},
        "runtime": {"progress": False, "use_cache": False}})
    runner = Runner(cfg, tmp_path / method)
    runner.run()
    placed = {k: v for k, v in runner.learner.cfg.model_dump().items() if k.endswith("blocks")}
    assert placed == ({"g_blocks": [0], "e_blocks": [1]} if method == "dualprompt" else {"blocks": [0]})


def test_a_block_outside_the_backbone_is_refused(tmp_path):
    cfg = validate_config({
        "name": "x", "data": {"dataset": "synthetic", "synthetic_classes": 4, "synthetic_clips_per_class": 6},
        "scenario": {"num_sessions": 2}, "backbone": {"name": "whisper-test", "seconds": 0.5},
        "method": {"name": "hideprompt", "blocks": [0, 4]}, "runtime": {"progress": False, "use_cache": False}})
    with pytest.raises(ValueError, match=r"hideprompt: blocks \[4\] outside the backbone's blocks 0..1"):
        Runner(cfg, tmp_path / "x").run()
