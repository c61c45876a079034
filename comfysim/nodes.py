"""Node classes: what exists (object_info), what the simulator can run, and how it runs it.

Every class of a real ComfyUI 0.3.64 (the captured /object_info) exists and validates. A small set
runs for real, with Pillow: the model-free image nodes, the savers, primitives, strings, and an
SDXL-shaped text-to-image chain whose sampler just paints a gradient coloured from the prompt
text. Any other class passes validation and then fails at run time with a RuntimeError, the way a
node with a missing model or dependency would.
"""

from __future__ import annotations

import colorsys
import copy
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import random
import struct
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps
from PIL.PngImagePlugin import PngInfo

OBJECT_INFO_PATH = Path(__file__).parent / "data" / "object_info.json"

MODEL_FOLDERS = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
)
DEFAULT_CHECKPOINTS = ("sd_xl_base_1.0.safetensors",)

# Nodes that take the configured render time (the "GPU work") and report progress while doing it.
SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced")
# ComfyUI picks async nodes first when several are ready (ExecutionList.ux_friendly_pick_node).
ASYNC_CLASSES = ("TestSleep",)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")

# The nodes of ComfyUI's test pack that the captures used (loaded with --test-nodes).
TEST_NODE_INFO: dict[str, dict[str, Any]] = {
    "TestSleep": {
        "input": {
            "required": {
                "value": ["*", {}],
                "seconds": [
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 9999.0,
                        "step": 0.01,
                        "tooltip": "The amount of seconds to sleep.",
                    },
                ],
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        },
        "input_order": {"required": ["value", "seconds"], "hidden": ["unique_id"]},
        "output": ["*"],
        "output_is_list": [False],
        "output_name": ["*"],
        "name": "TestSleep",
        "display_name": "Test Sleep",
        "description": "",
        "python_module": "custom_nodes.testing-pack",
        "category": "_for_testing",
        "output_node": False,
    },
    "TestSyncError": {
        "input": {"required": {"value": ["*", {}]}},
        "input_order": {"required": ["value"]},
        "output": ["*"],
        "output_is_list": [False],
        "output_name": ["*"],
        "name": "TestSyncError",
        "display_name": "Test Sync Error",
        "description": "",
        "python_module": "custom_nodes.testing-pack",
        "category": "_for_testing",
        "output_node": False,
    },
}


@dataclass(frozen=True)
class Folders:
    output: Path
    input: Path
    temp: Path

    def by_type(self, kind: str | None) -> Path | None:
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(kind or "")


def annotated_filepath(name: str, folders: Folders) -> tuple[str, Path | None]:
    """Split "x.png [output]" into ("x.png", output dir), like folder_paths.annotated_filepath."""
    for suffix, directory in ((" [output]", folders.output), (" [input]", folders.input), (" [temp]", folders.temp)):
        if name.endswith(suffix.strip()):
            return name[: -len(suffix)], directory
    return name, None


def input_file_path(name: str, folders: Folders) -> Path:
    filename, directory = annotated_filepath(name, folders)
    return (directory or folders.input) / filename


class Catalog:
    """The node classes this server knows, as /object_info describes them."""

    def __init__(self, *, folders: Folders, test_nodes: bool, checkpoints: tuple[str, ...]) -> None:
        self.folders = folders
        self.checkpoints = checkpoints
        with OBJECT_INFO_PATH.open(encoding="utf-8") as f:
            self._info: dict[str, dict[str, Any]] = json.load(f)
        if test_nodes:
            self._info.update(copy.deepcopy(TEST_NODE_INFO))
        # Inputs whose options depend on files on disk; everything else is static.
        self._dynamic: dict[str, list[str]] = {}
        for class_type, info in self._info.items():
            names = [
                name
                for category in ("required", "optional")
                for name, spec in info["input"].get(category, {}).items()
                if isinstance(spec[0], list) and (name == "ckpt_name" or class_type in ("LoadImage", "LoadImageMask"))
            ]
            if names:
                self._dynamic[class_type] = names

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and class_type in self._info

    def names(self) -> list[str]:
        return list(self._info)

    def info(self, class_type: str) -> dict[str, Any]:
        info = self._info[class_type]
        if class_type not in self._dynamic:
            return info
        info = copy.deepcopy(info)
        for category in ("required", "optional"):
            for name, spec in info["input"].get(category, {}).items():
                if name in self._dynamic[class_type]:
                    spec[0] = self.checkpoints_list() if name == "ckpt_name" else self.input_images()
        return info

    def input_types(self, class_type: str) -> dict[str, dict[str, Any]]:
        return self.info(class_type)["input"]  # type: ignore[no-any-return]

    def is_output(self, class_type: str) -> bool:
        return bool(self._info[class_type].get("output_node"))

    def return_types(self, class_type: str) -> list[Any]:
        return self._info[class_type]["output"]  # type: ignore[no-any-return]

    def checkpoints_list(self) -> list[str]:
        return list(self.checkpoints)

    def input_images(self) -> list[str]:
        try:
            names = [p.name for p in self.folders.input.iterdir() if p.is_file()]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))

    def models(self, folder: str) -> list[str] | None:
        if folder not in MODEL_FOLDERS:
            return None
        return self.checkpoints_list() if folder == "checkpoints" else []


# --- values that flow along links -------------------------------------------------------------


def _pointer(tag: str) -> str:
    # str() of a Python object in ComfyUI shows its address; make a stable fake one.
    return "0x7f" + hashlib.sha1(tag.encode()).hexdigest()[:10]


def tensor_repr(shape: tuple[int, ...], value: Callable[[tuple[int, ...]], float]) -> str:
    """Format like torch's repr: 4 decimals, and '...' with 3 edge items past 1000 elements."""
    summarize = math.prod(shape) > 1000

    def indices(n: int) -> list[int | None]:
        if summarize and n > 6:
            return [0, 1, 2, None, n - 3, n - 2, n - 1]
        return list(range(n))

    def fmt(index: tuple[int, ...], dim: int, indent: int) -> str:
        if dim == len(shape) - 1:
            cells = ["..." if i is None else f"{value((*index, i)):.4f}" for i in indices(shape[dim])]
            return "[" + ", ".join(cells) + "]"
        separator = "," + "\n" * (len(shape) - dim - 1) + " " * (indent + 1)
        parts = ["..." if i is None else fmt((*index, i), dim + 1, indent + 1) for i in indices(shape[dim])]
        return "[" + separator.join(parts) + "]"

    return "tensor(" + fmt((), 0, len("tensor(")) + ")"


def _hash_float(*parts: object) -> float:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 2**32 * 2 - 1


@dataclass
class ImageBatch:
    images: list[Image.Image]

    @property
    def size(self) -> tuple[int, int]:
        return self.images[0].size

    def __str__(self) -> str:
        width, height = self.size

        def value(index: tuple[int, ...]) -> float:
            b, y, x, c = index
            pixel = self.images[b].getpixel((x, y))
            assert isinstance(pixel, tuple)
            return float(pixel[c]) / 255

        return tensor_repr((len(self.images), height, width, 3), value)


@dataclass
class MaskBatch:
    masks: list[Image.Image]

    def __str__(self) -> str:
        width, height = self.masks[0].size

        def value(index: tuple[int, ...]) -> float:
            b, y, x = index
            pixel = self.masks[b].getpixel((x, y))
            assert isinstance(pixel, (int, float))
            return float(pixel) / 255

        return tensor_repr((len(self.masks), height, width), value)


@dataclass
class Latent:
    batch: int
    width: int
    height: int
    # What the sampler "drew": VAEDecode colours the picture from it. Empty for an empty latent.
    content: str = ""

    def __str__(self) -> str:
        shape = (self.batch, 4, max(1, self.height // 8), max(1, self.width // 8))
        if not self.content:
            return "{'samples': " + tensor_repr(shape, lambda i: 0.0) + "}"
        return "{'samples': " + tensor_repr(shape, lambda i: _hash_float(self.content, i) * 3) + "}"


@dataclass
class ModelHandle:
    kind: str
    name: str

    def __str__(self) -> str:
        module = {"MODEL": "comfy.model_patcher.ModelPatcher", "CLIP": "comfy.sd.CLIP", "VAE": "comfy.sd.VAE"}
        return f"<{module[self.kind]} object at {_pointer(self.kind + self.name)}>"


@dataclass
class Conditioning:
    text: str
    clip: str

    def __str__(self) -> str:
        cond = tensor_repr((1, 77, 2048), lambda i: _hash_float(self.text, i))
        pooled = tensor_repr((1, 1280), lambda i: _hash_float("pooled", self.text, i))
        return f"[[{cond}, {{'pooled_output': {pooled}}}]]"


def format_value(value: object) -> object:
    """How execution_error.current_inputs shows a value (execution.format_value)."""
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


# --- running nodes ----------------------------------------------------------------------------


class SimulatedError(Exception):
    """An exception whose ComfyUI-side class name is not a Python class here (torch OOM, ...)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


@dataclass
class NodeCall:
    node_id: str
    class_type: str
    inputs: dict[str, Any]
    prompt: dict[str, Any]
    extra_pnginfo: Any
    folders: Folders
    disable_metadata: bool
    # --draw-prompt: SaveImage draws the prompt and seed on its images (see demo_drawing).
    draw_prompt: bool = False


@dataclass
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, list[Any]] | None = None
    # PNG bytes that SaveImageWebsocket streams as binary frames.
    previews: list[bytes] = field(default_factory=list)


NodeFunction = Callable[[NodeCall], NodeResult]

RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "bislerp": Image.Resampling.BICUBIC,
}

# Past this many pixels in one batch the simulator refuses, like a CPU allocation failure would,
# instead of eating the test machine's memory.
MAX_PIXELS = 1 << 26
SIMULATED_RAM_BYTES = 64 * 1024**3


def _allocation_error(nbytes: int) -> RuntimeError:
    return RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
        f"you tried to allocate {nbytes} bytes. Error code 12 (Cannot allocate memory)"
    )


def _check_allocation(batch: int, width: int, height: int) -> None:
    # EmptyImage's first torch.full([batch, height, width, 1]) is float32.
    nbytes = batch * width * height * 4
    if nbytes > SIMULATED_RAM_BYTES or batch * width * height > MAX_PIXELS:
        raise _allocation_error(nbytes)


def _map_images(call: NodeCall, fn: Callable[[Image.Image], Image.Image]) -> NodeResult:
    batch: ImageBatch = call.inputs["image"]
    return NodeResult((ImageBatch([fn(img) for img in batch.images]),))


def empty_image(call: NodeCall) -> NodeResult:
    width, height = call.inputs["width"], call.inputs["height"]
    batch, color = call.inputs.get("batch_size", 1), call.inputs.get("color", 0)
    _check_allocation(batch, width, height)
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    return NodeResult((ImageBatch([Image.new("RGB", (width, height), rgb) for _ in range(batch)]),))


def image_invert(call: NodeCall) -> NodeResult:
    return _map_images(call, ImageOps.invert)


def _scaled_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    old_w, old_h = size
    if width == 0 and height == 0:
        return old_w, old_h
    if width == 0:
        width = max(1, round(old_w * height / old_h))
    elif height == 0:
        height = max(1, round(old_h * width / old_w))
    return width, height


def image_scale(call: NodeCall) -> NodeResult:
    resample = RESAMPLE[call.inputs["upscale_method"]]
    batch: ImageBatch = call.inputs["image"]
    width, height = _scaled_size(batch.size, call.inputs["width"], call.inputs["height"])

    def scale(img: Image.Image) -> Image.Image:
        if call.inputs.get("crop") == "center":
            return ImageOps.fit(img, (width, height), method=resample)
        return img.resize((width, height), resample)

    return _map_images(call, scale)


def image_scale_by(call: NodeCall) -> NodeResult:
    resample = RESAMPLE[call.inputs["upscale_method"]]
    batch: ImageBatch = call.inputs["image"]
    old_w, old_h = batch.size
    size = (max(1, round(old_w * call.inputs["scale_by"])), max(1, round(old_h * call.inputs["scale_by"])))
    return _map_images(call, lambda img: img.resize(size, resample))


def image_blur(call: NodeCall) -> NodeResult:
    if call.inputs["blur_radius"] == 0:
        return NodeResult((call.inputs["image"],))
    radius = min(float(call.inputs["sigma"]), float(call.inputs["blur_radius"]))
    return _map_images(call, lambda img: img.filter(ImageFilter.GaussianBlur(radius)))


def image_sharpen(call: NodeCall) -> NodeResult:
    sharpen = ImageFilter.UnsharpMask(
        radius=float(call.inputs["sigma"]), percent=int(call.inputs["alpha"] * 100), threshold=0
    )
    return _map_images(call, lambda img: img.filter(sharpen))


def image_add_noise(call: NodeCall) -> NodeResult:
    rng = random.Random(call.inputs["seed"])
    strength = float(call.inputs["strength"])

    def add_noise(img: Image.Image) -> Image.Image:
        noise = Image.frombytes("RGB", img.size, rng.randbytes(img.width * img.height * 3))
        return Image.blend(img, noise, strength)

    return _map_images(call, add_noise)


def image_flip(call: NodeCall) -> NodeResult:
    if call.inputs["flip_method"].startswith("x-axis"):
        return _map_images(call, ImageOps.flip)
    return _map_images(call, ImageOps.mirror)


def _compute_vars(prefix: str, width: int, height: int) -> str:
    now = datetime.datetime.now()
    for name, value in (
        ("%width%", width),
        ("%height%", height),
        ("%year%", now.year),
        ("%month%", f"{now.month:02}"),
        ("%day%", f"{now.day:02}"),
        ("%hour%", f"{now.hour:02}"),
        ("%minute%", f"{now.minute:02}"),
        ("%second%", f"{now.second:02}"),
    ):
        prefix = prefix.replace(name, str(value))
    return prefix


def save_path(prefix: str, output_dir: Path, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """folder_paths.get_save_image_path: (folder, file stem, next counter, subfolder).

    The counter comes from the files already on disk, so it carries on across restarts.
    """
    if "%" in prefix:
        prefix = _compute_vars(prefix, width, height)
    normalized = os.path.normpath(prefix)
    subfolder = os.path.dirname(normalized)
    filename = os.path.basename(normalized)
    output_root = os.path.abspath(output_dir)
    folder = os.path.abspath(os.path.join(output_root, subfolder))
    if os.path.commonpath((output_root, folder)) != output_root:
        raise Exception(  # ComfyUI raises a bare Exception: clients see type "Exception"
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {folder}\n         output_dir: {output_root}"
            f"\n         commonpath: {os.path.commonpath((output_root, folder))}"
        )
    prefix_len = len(os.path.basename(prefix))
    counter = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    for name in names:
        head = name[: prefix_len + 1]
        try:
            digits = int(name[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        if os.path.normcase(head[:-1]) == os.path.normcase(filename) and head[-1:] == "_":
            counter = max(counter, digits)
    return Path(folder), filename, counter + 1, subfolder


def _png_info(call: NodeCall) -> PngInfo | None:
    if call.disable_metadata:
        return None
    info = PngInfo()
    info.add_text("prompt", json.dumps(call.prompt))
    if isinstance(call.extra_pnginfo, dict):
        for key, value in call.extra_pnginfo.items():
            info.add_text(key, json.dumps(value))
    return info


def _save_images(call: NodeCall, *, prefix: str, directory: Path, kind: str, compress_level: int) -> NodeResult:
    batch: ImageBatch = call.inputs["images"]
    width, height = batch.size
    folder, filename, counter, subfolder = save_path(prefix, directory, width, height)
    results = []
    for number, img in enumerate(batch.images):
        name = f"{filename.replace('%batch_num%', str(number))}_{counter:05}_.png"
        img.save(folder / name, pnginfo=_png_info(call), compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return NodeResult((), ui={"images": results})


def save_image(call: NodeCall) -> NodeResult:
    prefix = call.inputs.get("filename_prefix", "ComfyUI")
    if call.draw_prompt:
        batch: ImageBatch = call.inputs["images"]
        drawn = ImageBatch([demo_drawing(img, call.prompt) for img in batch.images])
        call = dataclasses.replace(call, inputs={**call.inputs, "images": drawn})
    return _save_images(call, prefix=prefix, directory=call.folders.output, kind="output", compress_level=4)


def image_batch(call: NodeCall) -> NodeResult:
    """ImageBatch: image2 (rescaled to image1's size, as ComfyUI does) after image1."""
    first: ImageBatch = call.inputs["image1"]
    second: ImageBatch = call.inputs["image2"]
    rescaled = [
        img if img.size == first.size else img.resize(first.size, Image.Resampling.BICUBIC) for img in second.images
    ]
    return NodeResult((ImageBatch([*first.images, *rescaled]),))


def save_animated_webp(call: NodeCall) -> NodeResult:
    """SaveAnimatedWEBP (comfy_extras/nodes_images.py): the whole batch as one animated WebP,
    ``ui = {"images": [file], "animated": [true]}`` (num_frames 0: every frame in one file)."""
    batch: ImageBatch = call.inputs["images"]
    width, height = batch.size
    folder, filename, counter, subfolder = save_path(
        call.inputs.get("filename_prefix", "ComfyUI"), call.folders.output, width, height
    )
    name = f"{filename}_{counter:05}_.webp"
    frames = [img.convert("RGB") for img in batch.images]
    frames[0].save(
        folder / name,
        save_all=True,
        duration=int(1000.0 / float(call.inputs.get("fps", 6.0))),
        append_images=frames[1:],
        lossless=bool(call.inputs.get("lossless", False)),
        quality=int(call.inputs.get("quality", 80)),
        method={"default": 4, "fastest": 0, "slowest": 6}.get(str(call.inputs.get("method", "default")), 4),
    )
    entry = {"filename": name, "subfolder": subfolder, "type": "output"}
    return NodeResult((), ui={"images": [entry], "animated": [len(frames) != 1]})


# Inputs that hold a graph's prompt text and its seed, in the core nodes bookrender's workflows use.
_TEXT_INPUTS = ("text", "value", "string")
_SEED_INPUTS = ("seed", "noise_seed")


def demo_drawing(img: Image.Image, prompt: dict[str, Any]) -> Image.Image:
    """``--draw-prompt``: the image tinted with a colour taken from the prompt text, a disc placed
    and coloured by the seed, and the text itself, so every page of a demo book looks different
    and a regenerate (a new seed) visibly changes the page."""
    text, seed = _prompt_text_and_seed(prompt)
    digest = hashlib.sha256(text.encode()).digest()
    hue = digest[0] / 255
    tint = tuple(round(255 * c) for c in colorsys.hls_to_rgb(hue, 0.55, 0.55))
    out = Image.blend(img.convert("RGB"), Image.new("RGB", img.size, tint), 0.6)
    draw = ImageDraw.Draw(out)
    rng = random.Random(seed)
    radius = max(8, min(out.size) // rng.randint(5, 9))
    x, y = rng.randint(radius, max(radius, out.width - radius)), rng.randint(radius, max(radius, out.height // 2))
    disc = tuple(round(255 * c) for c in colorsys.hls_to_rgb(rng.random(), 0.5, 0.8))
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=disc, outline="white", width=3)
    size = max(12, out.width // 18)
    font = ImageFont.load_default(size=size)
    lines = textwrap.wrap(text or "(no prompt)", width=max(8, int(out.width / (size * 0.55))))[:8]
    top = out.height - (len(lines) + 2) * size * 1.3 - size
    draw.rectangle((0, top, out.width, out.height), fill=(255, 255, 255))
    for number, line in enumerate(lines):
        draw.text((size, top + size * 0.6 + number * size * 1.3), line, fill=(16, 24, 40), font=font)
    draw.text((size, out.height - size * 1.6), f"seed {seed}", fill=(102, 112, 133), font=font)
    return out


def _prompt_text_and_seed(prompt: dict[str, Any]) -> tuple[str, int]:
    text, seed = "", 0
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        for key, value in inputs.items():
            if key in _TEXT_INPUTS and isinstance(value, str) and len(value) > len(text):
                text = value
            elif key in _SEED_INPUTS and isinstance(value, int) and not seed:
                seed = value
    return text, seed


def preview_image(call: NodeCall) -> NodeResult:
    # PreviewImage appends "_temp_" and five random letters (from this very alphabet) per node.
    letters = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    prefix = "ComfyUI_temp_" + letters
    return _save_images(call, prefix=prefix, directory=call.folders.temp, kind="temp", compress_level=1)


def save_image_websocket(call: NodeCall) -> NodeResult:
    batch: ImageBatch = call.inputs["images"]
    previews = []
    for img in batch.images:
        buffer = io.BytesIO()
        img.save(buffer, format="PNG", compress_level=1)
        previews.append(buffer.getvalue())
    return NodeResult((), previews=previews)


def primitive(call: NodeCall) -> NodeResult:
    return NodeResult((call.inputs["value"],))


def preview_any(call: NodeCall) -> NodeResult:
    source = call.inputs.get("source")
    if isinstance(source, str):
        text = source
    elif isinstance(source, (int, float, bool)):
        text = str(source)
    elif source is None:
        text = "None"
    else:
        try:
            text = json.dumps(source)
        except TypeError:
            text = str(source)
    return NodeResult((), ui={"text": [text]})


def string_concatenate(call: NodeCall) -> NodeResult:
    return NodeResult((call.inputs["delimiter"].join([call.inputs["string_a"], call.inputs["string_b"]]),))


def empty_latent_image(call: NodeCall) -> NodeResult:
    batch, width, height = call.inputs["batch_size"], call.inputs["width"], call.inputs["height"]
    return NodeResult((Latent(batch, width, height),))


def checkpoint_loader(call: NodeCall) -> NodeResult:
    name = call.inputs["ckpt_name"]
    return NodeResult((ModelHandle("MODEL", name), ModelHandle("CLIP", name), ModelHandle("VAE", name)))


def clip_text_encode(call: NodeCall) -> NodeResult:
    clip: ModelHandle = call.inputs["clip"]
    return NodeResult((Conditioning(call.inputs["text"], clip.name),))


def _sample(call: NodeCall, seed: int) -> NodeResult:
    latent: Latent = call.inputs["latent_image"]
    positive: Conditioning = call.inputs["positive"]
    negative: Conditioning = call.inputs["negative"]
    model: ModelHandle = call.inputs["model"]
    content = json.dumps(
        [
            positive.text,
            negative.text,
            seed,
            call.inputs["steps"],
            call.inputs["cfg"],
            call.inputs["sampler_name"],
            call.inputs["scheduler"],
            model.name,
            latent.content,
        ]
    )
    return NodeResult((Latent(latent.batch, latent.width, latent.height, content),))


def ksampler(call: NodeCall) -> NodeResult:
    return _sample(call, call.inputs["seed"])


def ksampler_advanced(call: NodeCall) -> NodeResult:
    return _sample(call, call.inputs["noise_seed"])


def _gradient(width: int, height: int, content: str, number: int) -> Image.Image:
    if not content:
        return Image.new("RGB", (width, height), (128, 128, 128))
    digest = hashlib.sha256(f"{content}#{number}".encode()).digest()
    top = (digest[0], digest[1], digest[2])
    bottom = (digest[3], digest[4], digest[5])
    ramp = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    return ImageOps.colorize(ramp, top, bottom)


def vae_decode(call: NodeCall) -> NodeResult:
    latent: Latent = call.inputs["samples"]
    width, height = max(8, latent.width // 8 * 8), max(8, latent.height // 8 * 8)
    _check_allocation(latent.batch, width, height)
    images = [_gradient(width, height, latent.content, n) for n in range(latent.batch)]
    return NodeResult((ImageBatch(images),))


def vae_encode(call: NodeCall) -> NodeResult:
    batch: ImageBatch = call.inputs["pixels"]
    width, height = batch.size
    content = hashlib.sha256(batch.images[0].tobytes()).hexdigest()
    return NodeResult((Latent(len(batch.images), width, height, content),))


def _safetensors(tensors: dict[str, tuple[list[int], bytes]], metadata: dict[str, str] | None) -> bytes:
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(data for _, data in tensors.values())


def save_latent(call: NodeCall) -> NodeResult:
    latent: Latent = call.inputs["samples"]
    prefix = call.inputs.get("filename_prefix", "latents/ComfyUI")
    folder, filename, counter, subfolder = save_path(prefix, call.folders.output)
    metadata: dict[str, str] | None = None
    if not call.disable_metadata:
        metadata = {"prompt": json.dumps(call.prompt)}
        if isinstance(call.extra_pnginfo, dict):
            metadata.update({key: json.dumps(value) for key, value in call.extra_pnginfo.items()})
    shape = [latent.batch, 4, max(1, latent.height // 8), max(1, latent.width // 8)]
    data = bytes(4 * math.prod(shape))
    name = f"{filename}_{counter:05}_.latent"
    (folder / name).write_bytes(
        _safetensors({"latent_tensor": (shape, data), "latent_format_version_0": ([0], b"")}, metadata)
    )
    return NodeResult((), ui={"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]})


def load_image(call: NodeCall) -> NodeResult:
    path = input_file_path(call.inputs["image"], call.folders)
    # Image.open raises PIL.UnidentifiedImageError for a file that is not an image, as in ComfyUI.
    with Image.open(path) as opened:
        img = ImageOps.exif_transpose(opened) or opened
        rgb = img.convert("RGB")
        # ComfyUI's mask is 1 - alpha, or a 64x64 zero mask for images without alpha.
        has_alpha = "A" in img.getbands()
        mask = ImageOps.invert(img.getchannel("A")) if has_alpha else Image.new("L", (64, 64), 0)
    return NodeResult((ImageBatch([rgb]), MaskBatch([mask])))


def test_sleep(call: NodeCall) -> NodeResult:
    # The waiting happens in the executor (interruptible, with progress); this just passes through.
    return NodeResult((call.inputs["value"],))


def test_sync_error(call: NodeCall) -> NodeResult:
    raise RuntimeError("Intentional sync execution error for testing")


NODE_FUNCTIONS: dict[str, NodeFunction] = {
    "EmptyImage": empty_image,
    "ImageInvert": image_invert,
    "ImageScale": image_scale,
    "ImageScaleBy": image_scale_by,
    "ImageBlur": image_blur,
    "ImageSharpen": image_sharpen,
    "ImageAddNoise": image_add_noise,
    "ImageFlip": image_flip,
    "SaveImage": save_image,
    "ImageBatch": image_batch,
    "SaveAnimatedWEBP": save_animated_webp,
    "PreviewImage": preview_image,
    "SaveImageWebsocket": save_image_websocket,
    "PrimitiveString": primitive,
    "PrimitiveStringMultiline": primitive,
    "PrimitiveInt": primitive,
    "PrimitiveFloat": primitive,
    "PrimitiveBoolean": primitive,
    "PreviewAny": preview_any,
    "StringConcatenate": string_concatenate,
    "EmptyLatentImage": empty_latent_image,
    "CheckpointLoaderSimple": checkpoint_loader,
    "CLIPTextEncode": clip_text_encode,
    "KSampler": ksampler,
    "KSamplerAdvanced": ksampler_advanced,
    "VAEDecode": vae_decode,
    "VAEEncode": vae_encode,
    "SaveLatent": save_latent,
    "LoadImage": load_image,
    "TestSleep": test_sleep,
    "TestSyncError": test_sync_error,
}


def run_node(call: NodeCall) -> NodeResult:
    function = NODE_FUNCTIONS.get(call.class_type)
    if function is None:
        raise RuntimeError(f"simulator does not implement {call.class_type}")
    return function(call)


def is_changed(class_type: str, inputs: dict[str, Any], folders: Folders) -> str:
    """The IS_CHANGED part of a node's cache key: LoadImage re-runs when the file changes."""
    if class_type in ("LoadImage", "LoadImageMask") and isinstance(inputs.get("image"), str):
        path = input_file_path(inputs["image"], folders)
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return ""
    if class_type == "SaveImageWebsocket":
        return repr(time.time())  # IS_CHANGED is the time: never cached
    return ""
