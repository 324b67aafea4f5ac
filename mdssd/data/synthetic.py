"""The built-in data set: small traffic-sign-like objects on real photographs, made from a seed.

Hard the way TT100K is: objects are mostly 6-48 px on 300-1024 px images; backgrounds are real
photographs shipped with scikit-image (no download); objects are blurred, squashed (viewing
angle), unevenly lit and sometimes partly occluded; every image also holds *distractors* drawn
with the same shapes and colours as the classes but in combinations that are not a class (a red
ring with nothing inside, an orange disc, a yellow square, digits on a white plate...), so colour
or shape alone does not identify a class.

Everything is a function of ``(seed, split, index)``: an item is generated when asked for (about a
few ms; nothing is cached or written), so workers, epochs and machines see the same pixels.
:meth:`SyntheticSigns.annotation` draws only the layout (no pixels), so the ground truth of a
whole split is cheap to read. :func:`mdssd.data.export.export_coco` writes a split out as a COCO
data set.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .base import Annotation

__all__ = ["SIGN_CLASSES", "SyntheticSigns", "background_names"]

SIGN_CLASSES = (
    "speed_limit",     # white disc, red ring, two black digits
    "no_entry",        # red disc, white bar
    "stop",            # red octagon, white rim and white text strokes
    "warning",         # white triangle, red rim, black "!"
    "give_way",        # inverted white triangle, red rim
    "mandatory_arrow", # blue disc, white arrow
    "parking",         # blue square, white "P"
    "priority_road",   # yellow diamond, white rim
    "no_parking",      # blue disc, red ring, red slash
    "crossing",        # blue square, white triangle with a black figure
)
_DISTRACTORS = ("red_ring", "red_disc", "orange_disc", "green_disc", "grey_disc", "yellow_square",
                "digit_plate", "blue_plate", "white_triangle", "polygon")
_SPLITS = {"train": 0, "val": 1, "test": 2}

# scikit-image photographs bundled with the package (these need no pooch download).
_BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera", "grass",
                "gravel", "brick", "coins", "clock", "immunohistochemistry", "motorcycle_left",
                "motorcycle_right", "moon", "cat")

RED, WHITE, BLACK = (200, 20, 30), (245, 245, 240), (20, 20, 20)
BLUE, YELLOW, ORANGE = (20, 70, 180), (250, 200, 20), (240, 120, 20)


def background_names() -> tuple[str, ...]:
    return _BACKGROUNDS


@functools.lru_cache(maxsize=None)
def _photos() -> tuple[np.ndarray, ...]:
    """Decoded background photographs (RGB uint8), loaded once per process."""
    try:
        import skimage.data as data
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("the synthetic data set needs scikit-image: pip install scikit-image") from error
    photos = []
    for name in _BACKGROUNDS:
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            array = left if name.endswith("left") else right
        else:
            array = getattr(data, name)()
        array = np.asarray(array)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(array[:, :, :3].astype(np.uint8)))
    return tuple(photos)


# ----------------------------------------------------------------------------------------------
# Glyphs, drawn on a supersampled RGBA canvas of side D (coordinates as fractions of D).

_SEGMENTS = {  # seven-segment digits: a b c d e f g
    0: "abcdef", 1: "bc", 2: "abdeg", 3: "abcdg", 4: "bcfg", 5: "acdfg", 6: "acdefg", 7: "abc", 8: "abcdefg",
    9: "abcdfg",
}


def _digit(draw: ImageDraw.ImageDraw, value: int, x: float, y: float, w: float, h: float, fill) -> None:
    t = max(1.0, 0.18 * w)  # stroke thickness
    bars = {
        "a": (x, y, x + w, y + t), "g": (x, y + h / 2 - t / 2, x + w, y + h / 2 + t / 2), "d": (x, y + h - t, x + w, y + h),
        "f": (x, y, x + t, y + h / 2), "b": (x + w - t, y, x + w, y + h / 2),
        "e": (x, y + h / 2, x + t, y + h), "c": (x + w - t, y + h / 2, x + w, y + h),
    }
    for segment in _SEGMENTS[value]:
        draw.rectangle(bars[segment], fill=fill)


def _poly(draw, points, d, fill, outline=None, width=0):
    draw.polygon([(px * d, py * d) for px, py in points], fill=fill, outline=outline, width=int(width))


def _regular(n: int, rotation: float, radius: float = 0.5) -> list[tuple[float, float]]:
    return [(0.5 + radius * math.cos(rotation + 2 * math.pi * k / n), 0.5 + radius * math.sin(rotation + 2 * math.pi * k / n))
            for k in range(n)]


def _draw_shape(kind: str, d: int, params: np.ndarray) -> Image.Image:
    """An RGBA sprite of side ``d`` whose shape touches all four sides (so its box is the sprite)."""
    sprite = Image.new("RGBA", (d, d), (0, 0, 0, 0))
    draw = ImageDraw.Draw(sprite)
    rim = 0.12 * d
    full = (0, 0, d - 1, d - 1)
    inset = lambda f: (f * d, f * d, (1 - f) * d - 1, (1 - f) * d - 1)  # noqa: E731
    up_triangle = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    down_triangle = [(0.0, 0.0), (1.0, 0.0), (0.5, 1.0)]
    if kind == "speed_limit":
        draw.ellipse(full, fill=RED)
        draw.ellipse(inset(0.12), fill=WHITE)
        tens, units = int(params[0] * 9) + 1, 0 if params[1] < 0.7 else 5
        _digit(draw, tens, 0.24 * d, 0.32 * d, 0.22 * d, 0.36 * d, BLACK)
        _digit(draw, units, 0.54 * d, 0.32 * d, 0.22 * d, 0.36 * d, BLACK)
    elif kind == "no_entry":
        draw.ellipse(full, fill=RED)
        draw.rectangle((0.18 * d, 0.41 * d, 0.82 * d, 0.59 * d), fill=WHITE)
    elif kind == "stop":
        octagon = _regular(8, math.pi / 8, 0.5 / math.cos(math.pi / 8))
        octagon = [(min(max(px, 0.0), 1.0), min(max(py, 0.0), 1.0)) for px, py in octagon]
        _poly(draw, octagon, d, WHITE)
        _poly(draw, [(0.5 + 0.9 * (px - 0.5), 0.5 + 0.9 * (py - 0.5)) for px, py in octagon], d, RED)
        for k in range(4):  # "STOP" as four white blocks
            draw.rectangle(((0.2 + 0.16 * k) * d, 0.4 * d, (0.32 + 0.16 * k) * d, 0.6 * d), fill=WHITE)
    elif kind == "warning":
        _poly(draw, up_triangle, d, RED)
        _poly(draw, [(0.5, 0.22), (0.83, 0.88), (0.17, 0.88)], d, WHITE)
        draw.rectangle((0.46 * d, 0.42 * d, 0.54 * d, 0.7 * d), fill=BLACK)
        draw.rectangle((0.46 * d, 0.75 * d, 0.54 * d, 0.82 * d), fill=BLACK)
    elif kind == "give_way":
        _poly(draw, down_triangle, d, RED)
        _poly(draw, [(0.17, 0.12), (0.83, 0.12), (0.5, 0.78)], d, WHITE)
    elif kind == "mandatory_arrow":
        draw.ellipse(full, fill=BLUE)
        arrow = [(0.42, 0.8), (0.42, 0.45), (0.28, 0.45), (0.5, 0.2), (0.72, 0.45), (0.58, 0.45), (0.58, 0.8)]
        turns = int(params[0] * 3)  # up, right, left
        angle = (0.0, math.pi / 2, -math.pi / 2)[turns]
        c, s = math.cos(angle), math.sin(angle)
        arrow = [(0.5 + c * (px - 0.5) - s * (py - 0.5), 0.5 + s * (px - 0.5) + c * (py - 0.5)) for px, py in arrow]
        _poly(draw, arrow, d, WHITE)
    elif kind == "parking":
        draw.rounded_rectangle(full, radius=0.1 * d, fill=BLUE)
        draw.rectangle((0.3 * d, 0.18 * d, 0.42 * d, 0.82 * d), fill=WHITE)
        draw.ellipse((0.24 * d, 0.18 * d, 0.72 * d, 0.56 * d), outline=WHITE, width=int(max(1, 0.12 * d)))
        draw.rectangle((0.24 * d, 0.18 * d, 0.3 * d, 0.56 * d), fill=BLUE)
    elif kind == "priority_road":
        diamond = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
        _poly(draw, diamond, d, WHITE)
        _poly(draw, [(0.5, 0.14), (0.86, 0.5), (0.5, 0.86), (0.14, 0.5)], d, YELLOW)
    elif kind == "no_parking":
        draw.ellipse(full, fill=RED)
        draw.ellipse(inset(0.12), fill=BLUE)
        _poly(draw, [(0.22, 0.3), (0.3, 0.22), (0.78, 0.7), (0.7, 0.78)], d, RED)
    elif kind == "crossing":
        draw.rectangle(full, fill=BLUE)
        _poly(draw, [(0.5, 0.12), (0.9, 0.85), (0.1, 0.85)], d, WHITE)
        draw.rectangle((0.46 * d, 0.42 * d, 0.54 * d, 0.76 * d), fill=BLACK)
        draw.ellipse((0.44 * d, 0.32 * d, 0.56 * d, 0.42 * d), fill=BLACK)
    # Distractors: same parts, combinations that are not a class.
    elif kind == "red_ring":
        draw.ellipse(full, outline=RED, width=int(max(1, rim)))
    elif kind == "red_disc":
        draw.ellipse(full, fill=(170 + int(60 * params[0]), 20, 20))
    elif kind == "orange_disc":
        draw.ellipse(full, fill=ORANGE)
    elif kind == "green_disc":
        draw.ellipse(full, fill=(30, 150 + int(80 * params[0]), 60))
    elif kind == "grey_disc":
        grey = 90 + int(120 * params[0])
        draw.ellipse(full, fill=(grey, grey, grey))
    elif kind == "yellow_square":
        draw.rectangle(full, fill=YELLOW)
    elif kind == "digit_plate":
        draw.rectangle(full, fill=WHITE)
        _digit(draw, int(params[0] * 10) % 10, 0.2 * d, 0.2 * d, 0.25 * d, 0.6 * d, BLACK)
        _digit(draw, int(params[1] * 10) % 10, 0.55 * d, 0.2 * d, 0.25 * d, 0.6 * d, BLACK)
    elif kind == "blue_plate":
        draw.rectangle(full, fill=BLUE)
        for k in range(3):
            draw.rectangle((0.15 * d, (0.2 + 0.22 * k) * d, (0.5 + 0.35 * params[k % 2]) * d, (0.3 + 0.22 * k) * d),
                           fill=WHITE)
    elif kind == "white_triangle":
        _poly(draw, up_triangle, d, WHITE)
    elif kind == "polygon":
        colour = tuple(int(255 * v) for v in params[:3])
        _poly(draw, _regular(3 + int(params[3] * 5), params[4] * math.pi, 0.5), d, colour)
    else:  # pragma: no cover - closed set
        raise ValueError(kind)
    return sprite


# ----------------------------------------------------------------------------------------------


class SyntheticSigns:
    """A split of the synthetic sign data set (a :class:`~mdssd.data.base.DetectionSource`).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent random streams).
        num_images: length of the split.
        seed: everything is a function of ``(seed, split, index)``.
        min_size, max_size: image width and height are drawn uniformly from this range.
        objects: range (inclusive) of signs per image; distractors: of look-alike clutter.
        small_fraction: share of objects with side 6-48 px; the rest are 48-128 px.
        object_sizes: ``(min, max)`` side in px of every object and distractor (log-uniform),
            replacing the small/large mix (e.g. ``(6, 32)`` on 1024-2048 px images: the
            large-image benchmark of crop training and sliced inference).
    """

    class_names = SIGN_CLASSES

    def __init__(self, split: str = "train", num_images: int = 2000, seed: int = 0, min_size: int = 300,
                 max_size: int = 1024, objects: tuple[int, int] = (1, 6), distractors: tuple[int, int] = (2, 10),
                 small_fraction: float = 0.85, object_sizes: tuple[float, float] | None = None):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if not 8 <= min_size <= max_size:
            raise ValueError(f"need 8 <= min_size <= max_size, got {min_size}, {max_size}")
        self.split, self.num_images, self.seed = split, int(num_images), int(seed)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.objects, self.distractors, self.small_fraction = objects, distractors, small_fraction
        if object_sizes is not None and not 1 <= object_sizes[0] <= object_sizes[1]:
            raise ValueError(f"need 1 <= min <= max object size, got {object_sizes}")
        self.object_sizes = None if object_sizes is None else (float(object_sizes[0]), float(object_sizes[1]))

    def __len__(self) -> int:
        return self.num_images

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return np.random.default_rng([self.seed, _SPLITS[self.split], index, stream])

    def _layout(self, index: int) -> dict:
        """Every random choice of an image except pixel noise (cheap: no drawing)."""
        rng = self._rng(index, 0)
        width, height = (int(v) for v in rng.integers(self.min_size, self.max_size + 1, size=2))
        side = min(width, height)
        photo = int(rng.integers(len(_BACKGROUNDS)))
        layout = {"width": width, "height": height, "photo": photo, "crop": rng.random(3),
                  "flip": bool(rng.random() < 0.5), "tint": rng.uniform(0.7, 1.2, size=3),
                  "light": rng.random(4), "noise": float(rng.uniform(0, 10)), "blur": float(rng.random())}

        def size() -> float:
            if self.object_sizes is not None:
                lo, hi = self.object_sizes
            else:
                small = rng.random() < self.small_fraction
                lo, hi = (6.0, 48.0) if small else (48.0, 128.0)
            hi = min(hi, side / 3)
            lo = min(lo, hi)
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

        def place(w: float, h: float) -> tuple[int, int]:
            return int(rng.integers(0, width - math.ceil(w) + 1)), int(rng.integers(0, height - math.ceil(h) + 1))

        items = []
        for _ in range(int(rng.integers(self.distractors[0], self.distractors[1] + 1))):
            s = size()
            w, h = s * rng.uniform(0.7, 1.3), s
            x, y = place(w, h)
            items.append({"kind": _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))], "label": 0, "box": (x, y, w, h),
                          "params": rng.random(5), "light": float(rng.uniform(0.5, 1.2)), "blur": float(rng.random()),
                          "occlude": None})
        boxes: list[tuple[float, float, float, float]] = []
        for _ in range(int(rng.integers(self.objects[0], self.objects[1] + 1))):
            s = size()
            w, h = s * rng.uniform(0.75, 1.0), s  # squashed horizontally: signs seen at an angle
            for _try in range(20):  # signs do not overlap each other (occluders do that)
                x, y = place(w, h)
                if all(x + w <= bx1 or bx2 <= x or y + h <= by1 or by2 <= y for bx1, by1, bx2, by2 in boxes):
                    break
            else:
                continue
            label = int(rng.integers(len(SIGN_CLASSES))) + 1
            occlude = rng.random(5) if rng.random() < 0.25 else None
            items.append({"kind": SIGN_CLASSES[label - 1], "label": label, "box": (x, y, w, h),
                          "params": rng.random(5), "light": float(rng.uniform(0.5, 1.2)), "blur": float(rng.random()),
                          "occlude": occlude})
            boxes.append((x, y, x + w, y + h))
        layout["items"] = items
        return layout

    def annotation(self, index: int) -> Annotation:
        layout = self._layout(index)
        signs = [item for item in layout["items"] if item["label"] > 0]
        boxes = [[x, y, x + _sprite_size(w), y + _sprite_size(h)] for x, y, w, h in (item["box"] for item in signs)]
        return Annotation(index, f"{self.split}_{index:06d}.png", layout["width"], layout["height"],
                          np.array(boxes, dtype=np.float64).reshape(-1, 4), [item["label"] for item in signs])

    def image(self, index: int) -> np.ndarray:
        layout = self._layout(index)
        noise_rng = self._rng(index, 1)
        width, height = layout["width"], layout["height"]
        canvas = _background(_photos()[layout["photo"]], width, height, layout)
        for item in layout["items"]:
            _paste_item(canvas, item)
        if layout["blur"] < 0.3:  # some images are globally out of focus
            canvas = canvas.filter(ImageFilter.GaussianBlur(0.4 + layout["blur"] * 2))
        array = np.asarray(canvas, dtype=np.float32)
        # Lighting: a linear gradient of gain across the image in a random direction.
        a, b, lo, hi = layout["light"]
        angle = 2 * math.pi * a
        ramp = (np.cos(angle) * np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
                + np.sin(angle) * np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None])
        gain = (0.55 + 0.45 * lo) + (0.3 + 0.5 * hi) * ramp * (b - 0.5) * 2
        array *= gain[:, :, None]
        # Sensor noise: a window of a fixed Gaussian field at a random offset (drawing millions of
        # normals per image would cost more than everything else here).
        field = _noise_field(*(max(1024, ((v + 255) // 256) * 256) for v in (height, width)))
        oy, ox = (int(v) for v in noise_rng.integers(0, _NOISE_MARGIN, size=2))
        array += field[oy:oy + height, ox:ox + width] * np.float32(layout["noise"] / _NOISE_STD)
        return np.clip(array, 0, 255).astype(np.uint8)


_NOISE_MARGIN, _NOISE_STD = 127, 16.0


@functools.lru_cache(maxsize=4)
def _noise_field(height: int, width: int) -> np.ndarray:
    """int8 Gaussian noise (std 16) covering any image up to ``height x width`` plus the margin."""
    side = max(1024, ((max(height, width) + 255) // 256) * 256) + _NOISE_MARGIN
    field = np.random.default_rng(12345).standard_normal((side, side, 3), dtype=np.float32) * _NOISE_STD
    return np.clip(field, -127, 127).astype(np.int8)


def _sprite_size(length: float) -> int:
    """Integer pixel extent of a sprite of nominal size ``length`` (at least 2 px)."""
    return max(2, int(round(length)))


def _background(photo: np.ndarray, width: int, height: int, layout: dict) -> Image.Image:
    """A random crop of a photograph, resized to ``width x height``, flipped and tinted."""
    ph, pw = photo.shape[:2]
    scale, fx, fy = layout["crop"]
    # Crop of the photo with the target's aspect ratio, 50-100 % of the largest that fits.
    aspect = width / height
    cw = min(pw, ph * aspect) * (0.5 + 0.5 * scale)
    ch = cw / aspect
    x0, y0 = (pw - cw) * fx, (ph - ch) * fy
    image = Image.fromarray(photo).resize((width, height), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if layout["flip"]:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    # Per-channel gain (a white-balance change) through Pillow's lookup table.
    return image.point(_gain_lut(layout["tint"]))


def _gain_lut(gains) -> list[int]:
    """Pillow ``point`` table multiplying band ``c`` by ``gains[c]`` (saturating at 255)."""
    ramp = np.arange(256, dtype=np.float64)
    return np.concatenate([np.minimum(255, ramp * g).astype(np.int64) for g in gains]).tolist()


def _paste_item(canvas: Image.Image, item: dict) -> None:
    x, y, w, h = item["box"]
    out_w, out_h = _sprite_size(w), _sprite_size(h)
    d = int(min(256, max(32, 4 * max(out_w, out_h))))  # supersampled drawing, then downsampled
    sprite = _draw_shape(item["kind"], d, item["params"])
    sprite = sprite.resize((out_w, out_h), Image.BOX)
    if item["occlude"] is not None:
        # An occluder (pole, branch, another vehicle) covering at most ~40 % of the sign: a band
        # of dark or foliage colour entering from one side.
        o = item["occlude"]
        colour = (60, 55, 50, 255) if o[0] < 0.5 else (40, 100 + int(60 * o[1]), 40, 255)
        frac = 0.15 + 0.25 * o[2]
        draw = ImageDraw.Draw(sprite)
        side = int(o[3] * 4)
        box = ((0, 0, frac * out_w, out_h), (out_w * (1 - frac), 0, out_w, out_h),
               (0, 0, out_w, frac * out_h), (0, out_h * (1 - frac), out_w, out_h))[side]
        draw.rectangle(box, fill=colour)
    if item["blur"] < 0.6:
        sprite = sprite.filter(ImageFilter.GaussianBlur(0.3 + item["blur"]))
    # Sign in shade or sun: scale RGB, keep alpha.
    sprite = sprite.point(_gain_lut((item["light"],) * 3 + (1.0,)))
    canvas.paste(sprite, (int(x), int(y)), sprite)
