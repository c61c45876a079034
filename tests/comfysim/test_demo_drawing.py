"""`--draw-prompt`: the demo's pages show their prompt and seed, so pages differ and a regenerate
(a new seed) visibly changes a page. Without the flag the simulator's images stay ComfyUI's."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageChops, ImageStat

from comfysim.testing import running_simulator
from renders.workflows import template_load


def render(sim, output: Path, text: str, seed: int, prefix: str) -> Image.Image:
    graph = template_load("model-free").fill(
        prompt=text, negative_prompt="", seed=seed, filename_prefix=prefix, width=192, height=256
    )
    entry = sim.wait_for_history(sim.submit(graph)["prompt_id"])
    (image,) = [image for node in entry["outputs"].values() for image in node.get("images", [])]
    return Image.open(output / image["subfolder"] / image["filename"]).convert("RGB")


def difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def test_pages_with_different_prompts_or_seeds_look_different(tmp_path):
    with running_simulator(output_dir=tmp_path, args=["--draw-prompt", "--render-time", "0"]) as sim:
        fox = render(sim, tmp_path, "A fox at dawn", 1, "a")
        heron = render(sim, tmp_path, "A heron in fog", 1, "b")
        fox_again = render(sim, tmp_path, "A fox at dawn", 2, "c")
    # The tint comes from the prompt: whole-image colour differs between prompts.
    assert difference(fox, heron) > 20
    # A new seed moves and recolours the disc: a visible change, the tint the same.
    assert difference(fox, fox_again) > 3
    assert (
        max(abs(a - b) for a, b in zip(ImageStat.Stat(fox).median, ImageStat.Stat(fox_again).median, strict=True)) < 25
    )


def test_without_the_flag_the_prompt_does_not_change_the_image(tmp_path):
    with running_simulator(output_dir=tmp_path, args=["--render-time", "0"]) as sim:
        fox = render(sim, tmp_path, "A fox at dawn", 1, "a")
        heron = render(sim, tmp_path, "A heron in fog", 1, "b")
    assert difference(fox, heron) == 0
