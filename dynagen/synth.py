"""The synthetic captioned world the embedded tiny text-to-image model is trained on.

A scene is a plain background with 1-3 flat or textured shapes. Captions come from a small grammar,
images from a deterministic PIL renderer, so the project can render as much training data as it wants
and knows, for every prompt, how "hard" the scene is (see :func:`difficulty`).

Three scene kinds:

* ``single``  -- one object:                "a large red circle in the center on a white background"
* ``count``   -- 2-3 identical objects:     "three small blue squares on a black background"
* ``multi``   -- 2-3 different objects at distinct positions:
                 "a yellow striped triangle on the left and a green circle on the right on a gray background"

Public API: :class:`Scene`, :func:`sample_scene`, :func:`caption`, :func:`render`,
:func:`example_prompts`, :func:`difficulty`, :func:`sample` (scene + caption + image).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds", "star": "stars"}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "light blue": (170, 205, 240),
    "beige": (225, 210, 170),
}
TEXTURES = ("plain", "striped", "dotted")
SIZES = ("small", "large")
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
POSITION_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
# Relative radius (fraction of the image side) per size word.
SIZE_RADIUS = {"small": 0.11, "large": 0.2}

#: Every word the grammar can emit (the tiny model's tokenizer gives each of these a single token).
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        set(SHAPES)
        | set(PLURAL.values())
        | {w for c in list(COLORS) + list(BACKGROUNDS) for w in c.split()}
        | set(TEXTURES)
        | set(SIZES)
        | {w for p in POSITION_PHRASE.values() for w in p.split()}
        | set(COUNT_WORDS.values())
        | {"and", "on", "background", "one", "with", "of", "an", "image", "picture", "photo", "shape", "shapes"}
    )
)


@dataclass
class Obj:
    shape: str
    color: str
    texture: str = "plain"
    size: str = "large"
    position: str = "center"
    # Small deterministic jitter (fractions of the image side / radians) so images are not pixel-identical.
    dx: float = 0.0
    dy: float = 0.0
    dr: float = 0.0
    angle: float = 0.0


@dataclass
class Scene:
    kind: str  # "single" | "count" | "multi"
    background: str
    objects: list[Obj] = field(default_factory=list)
    mention_position: bool = True
    mention_size: bool = True


def _jitter(rng: random.Random, obj: Obj, amount: float = 0.035) -> Obj:
    obj.dx = rng.uniform(-amount, amount)
    obj.dy = rng.uniform(-amount, amount)
    obj.dr = rng.uniform(-0.015, 0.015)
    obj.angle = rng.uniform(-0.15, 0.15)
    return obj


def _texture(rng: random.Random, p_plain: float) -> str:
    return "plain" if rng.random() < p_plain else rng.choice(TEXTURES[1:])


def sample_scene(rng: random.Random) -> Scene:
    """Sample a random scene. Roughly 45% single objects, 20% counts, 35% multi-object scenes."""
    background = rng.choice(list(BACKGROUNDS))
    colors = [c for c in COLORS if c != background]
    u = rng.random()
    if u < 0.45:
        obj = Obj(
            shape=rng.choice(SHAPES),
            color=rng.choice(colors),
            texture=_texture(rng, 0.6),
            size=rng.choice(SIZES),
            position=rng.choice(list(POSITIONS)),
        )
        scene = Scene(
            "single", background, [_jitter(rng, obj)], mention_position=rng.random() < 0.8, mention_size=rng.random() < 0.7
        )
        if not scene.mention_position:
            obj.position = "center"
        if not scene.mention_size:
            obj.size = "large"
        return scene
    if u < 0.65:
        n = rng.choice((2, 3))
        shape, color, texture = rng.choice(SHAPES), rng.choice(colors), _texture(rng, 0.7)
        slots = ["left", "right"] if n == 2 else ["left", "center", "right"]
        if rng.random() < 0.5:  # vertical arrangement
            slots = ["top", "bottom"] if n == 2 else ["top", "center", "bottom"]
        objs = [_jitter(rng, Obj(shape, color, texture, "small", pos), 0.02) for pos in slots]
        return Scene("count", background, objs, mention_position=False, mention_size=False)
    n = rng.choice((2, 2, 3))
    pairs = [("left", "right"), ("top", "bottom")]
    if n == 2:
        positions = list(rng.choice(pairs))
        if rng.random() < 0.5:
            positions.reverse()
    else:
        positions = list(rng.choice(pairs)) + ["center"]
        rng.shuffle(positions)
    objs = []
    for pos in positions:
        objs.append(
            _jitter(
                rng, Obj(rng.choice(SHAPES), rng.choice(colors), _texture(rng, 0.6), "small", pos), 0.02
            )
        )
    return Scene("multi", background, objs, mention_position=True, mention_size=False)


def _describe(obj: Obj, with_size: bool, with_position: bool) -> str:
    words = ["a"]
    if with_size:
        words.append(obj.size)
    words.append(obj.color)
    if obj.texture != "plain":
        words.append(obj.texture)
    words.append(obj.shape)
    if with_position:
        words.append(POSITION_PHRASE[obj.position])
    return " ".join(words)


def caption(scene: Scene) -> str:
    """The caption of a scene (a pure function of the scene)."""
    bg = f"on a {scene.background} background"
    if scene.kind == "count":
        o = scene.objects[0]
        tex = f" {o.texture}" if o.texture != "plain" else ""
        return f"{COUNT_WORDS[len(scene.objects)]} small {o.color}{tex} {PLURAL[o.shape]} {bg}"
    if scene.kind == "single":
        return f"{_describe(scene.objects[0], scene.mention_size, scene.mention_position)} {bg}"
    parts = [_describe(o, False, True) for o in scene.objects]
    return " and ".join(parts) + f" {bg}"


def difficulty(scene: Scene) -> float:
    """A 0..1 heuristic of how hard a scene is to draw (objects, textures, star/triangle edges)."""
    score = 0.0
    for o in scene.objects:
        score += 1.0
        score += {"plain": 0.0, "striped": 0.8, "dotted": 0.8}[o.texture]
        score += {"circle": 0.0, "square": 0.1, "diamond": 0.2, "triangle": 0.3, "star": 0.6}[o.shape]
        score += 0.2 if o.size == "small" else 0.0
    if scene.kind == "multi":
        score += 0.5 * (len(scene.objects) - 1)
    return min(1.0, (score - 1.0) / 6.0)


# ----------------------------------------------------------------------------------------------- rendering


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    """Darken (f<1) or lighten (f>1) a colour; a texture's second colour."""
    if sum(rgb) < 150:  # near black: lighten
        return tuple(int(min(255, c + 110)) for c in rgb)  # type: ignore[return-value]
    return tuple(int(max(0, min(255, c * f))) for c in rgb)  # type: ignore[return-value]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.pi / 4 + k * math.pi / 2) for k in range(4)]
        rr = [r * 1.0] * 4
    elif shape == "diamond":
        pts = [(k * math.pi / 2) for k in range(4)]
        rr = [r * 1.15, r * 0.8, r * 1.15, r * 0.8]
        # diamond: tall rhombus (top/bottom points far)
        pts = [-math.pi / 2, 0.0, math.pi / 2, math.pi]
        rr = [r * 1.2, r * 0.8, r * 1.2, r * 0.8]
    elif shape == "triangle":
        pts = [(-math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
        rr = [r * 1.2] * 3
        cy = cy + r * 0.15
    elif shape == "star":
        pts = [(-math.pi / 2 + k * math.pi / 5) for k in range(10)]
        rr = [r * 1.25 if k % 2 == 0 else r * 0.55 for k in range(10)]
    else:
        raise ValueError(shape)
    return [(cx + q * math.cos(a + angle), cy + q * math.sin(a + angle)) for a, q in zip(pts, rr)]


def _texture_image(texture: str, rgb: tuple[int, int, int], size: int, scale: float) -> Image.Image:
    img = Image.new("RGB", (size, size), rgb)
    if texture == "plain":
        return img
    draw = ImageDraw.Draw(img)
    other = _shade(rgb, 0.45)
    if texture == "striped":
        period = max(2, int(round(8 * scale)))
        for x0 in range(-size, size, period):  # diagonal stripes
            draw.polygon([(x0, 0), (x0 + period // 2, 0), (x0 + period // 2 + size, size), (x0 + size, size)], fill=other)
    elif texture == "dotted":
        period = max(2, int(round(8 * scale)))
        rad = period * 0.27
        for y in range(period // 2, size, period):
            for x in range(period // 2, size, period):
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=other)
    return img


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render a scene to an RGB PIL image of ``size`` x ``size`` (4x supersampled, anti-aliased)."""
    ss = 4
    big = size * ss
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    scale = big / 64.0
    for o in scene.objects:
        px, py = POSITIONS[o.position]
        cx, cy = (px + o.dx) * big, (py + o.dy) * big
        r = (SIZE_RADIUS[o.size] + o.dr) * big
        mask = Image.new("L", (big, big), 0)
        md = ImageDraw.Draw(mask)
        if o.shape == "circle":
            md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            md.polygon(_polygon(o.shape, cx, cy, r, o.angle), fill=255)
        img.paste(_texture_image(o.texture, COLORS[o.color], big, scale), (0, 0), mask)
    return img.resize((size, size), Image.LANCZOS)


def sample(rng: random.Random, size: int = 64) -> tuple[Scene, str, Image.Image]:
    scene = sample_scene(rng)
    return scene, caption(scene), render(scene, size)


def example_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` captions from the grammar (deterministic for a seed): the project's own demo/bench prompts."""
    rng = random.Random(seed)
    return [caption(sample_scene(rng)) for _ in range(n)]


def render_batch(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, list[str], list[float]]:
    """``n`` rendered samples as a uint8 array (n, size, size, 3), their captions and difficulties."""
    rng = random.Random(seed)
    imgs, caps, diffs = [], [], []
    for _ in range(n):
        s = sample_scene(rng)
        imgs.append(np.asarray(render(s, size), dtype=np.uint8))
        caps.append(caption(s))
        diffs.append(difficulty(s))
    return np.stack(imgs), caps, diffs
