"""World v2: the synthetic captioned world the embedded tiny text-to-image model is trained on.

A scene is a plain background with 1-8 flat, textured or outlined shapes; captions come from a small grammar, images
from a deterministic PIL renderer. Two properties make the world a testbed for per-prompt step budgets:

* **Detail decides the step need.** Diffusion settles coarse layout at high noise and fine detail at low noise, so
  content with high spatial frequency -- fine textures (4 px period), many tiny objects, thin outlines -- keeps
  changing late in sampling, while a flat large shape converges in a few steps. The caption names that detail
  ("finely striped", "checkered", "outlined", "many tiny ..."), so the prompt carries the step need.
* **Graded specificity.** Captions run from "a large solid red circle in the center on a white background" to "a
  shape" or "something on the left". What a caption leaves out is drawn at random for every image (never a fixed
  default), so a vague prompt's step need depends on what the seed picks -- the part only a per-sample signal sees.

Three scene kinds: ``single`` (one object), ``count`` (2, 3 or "many" alike objects; positions are arranged, never
named), ``multi`` (2-3 different objects at distinct positions).

Public API: :class:`Obj`, :class:`Scene`, :class:`ObjSpec`, :class:`Spec`, :func:`sample_spec`,
:func:`scene_for` (spec -> a random scene satisfying it), :func:`sample_scene`, :func:`caption`, :func:`parse`
(caption -> spec), :func:`specificity`, :func:`satisfies`, :func:`render`, :func:`difficulty`, :func:`prompt_class`,
:func:`example_prompts`, :func:`render_batch`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds", "star": "stars",
          "shape": "shapes", "object": "objects"}
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
#: "dark"/"light" background words name a group; the image takes one of its members at random.
BACKGROUND_GROUPS = {"dark": ("black", "gray"), "light": ("white", "light blue", "beige")}
#: Texture -> (pattern, period in pixels at 64 px). The period is the world's detail knob: 8 px settles early,
#: 4 px and 1-px outlines are the fine detail that needs late, small denoising steps.
TEXTURES: dict[str, tuple[str, int]] = {
    "solid": ("solid", 0),
    "striped": ("stripes", 8),
    "dotted": ("dots", 8),
    "finely striped": ("stripes", 4),
    "checkered": ("checks", 4),
    "outlined": ("outline", 0),
}
#: Share of each texture when a caption leaves the texture out.
TEXTURE_WEIGHTS = {"solid": 0.4, "striped": 0.12, "dotted": 0.12, "finely striped": 0.12, "checkered": 0.12,
                   "outlined": 0.12}
SIZES = ("small", "large")
SIZE_RADIUS = {"tiny": 0.065, "small": 0.11, "large": 0.2}  # fraction of the image side
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
NUMBER_WORDS = {2: "two", 3: "three"}
MANY = (5, 8)  # "many": this many tiny objects, scattered
NOUNS = ("shape", "object")  # nouns for an unnamed shape; "something" is a third, adjective-after form
#: Caption specificity levels and their shares in training / example prompts.
LEVELS = {"full": 0.4, "partial": 0.35, "vague": 0.25}

#: Every word the grammar can emit (the tiny model's tokenizer gives each of these a single token).
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        set(SHAPES)
        | set(PLURAL.values())
        | set(NOUNS)
        | {w for c in list(COLORS) + list(BACKGROUNDS) + list(BACKGROUND_GROUPS) for w in c.split()}
        | {w for t in TEXTURES for w in t.split()}
        | set(SIZES) | {"tiny"}
        | {w for p in POSITION_PHRASE.values() for w in p.split()}
        | set(NUMBER_WORDS.values())
        | {"a", "an", "and", "on", "background", "many", "some", "something", "one", "with", "of", "image",
           "picture", "photo"}
    )
)


# ----------------------------------------------------------------------------------------------- records


@dataclass
class Obj:
    """One drawn object. ``position`` is a named slot, or "free" (scattered: ``dx``/``dy`` are the offset from the
    centre); the small jitter keeps images of one caption from being pixel-identical."""

    shape: str
    color: str
    texture: str = "solid"
    size: str = "large"
    position: str = "center"
    dx: float = 0.0
    dy: float = 0.0
    dr: float = 0.0
    angle: float = 0.0


@dataclass(frozen=True)
class ObjSpec:
    """What a caption says about one object (or a count group); ``None`` = not said (random in the image)."""

    shape: str | None = None
    color: str | None = None
    texture: str | None = None
    size: str | None = None
    position: str | None = None
    noun: str = "shape"  # the word used when the shape is not said: "shape", "object" or "something"


@dataclass(frozen=True)
class Spec:
    """What a caption says. ``count``: for kind "count", 2, 3 or "many"; ``None`` = a plural without a number."""

    kind: str  # "single" | "count" | "multi"
    objects: tuple[ObjSpec, ...]
    count: int | str | None = None
    background: str | None = None  # a background name or a group ("dark", "light")
    some: bool = False  # "some shapes" vs the bare plural "shapes" (same meaning, a different caption)


@dataclass
class Scene:
    kind: str
    background: str
    objects: list[Obj] = field(default_factory=list)
    said: Spec | None = None  # what its caption says; None = everything (the full caption)


# ----------------------------------------------------------------------------------------------- sampling


def _jitter(rng: random.Random, obj: Obj, amount: float = 0.035) -> Obj:
    obj.dx = rng.uniform(-amount, amount)
    obj.dy = rng.uniform(-amount, amount)
    obj.dr = rng.uniform(-0.015, 0.015)
    obj.angle = rng.uniform(-0.15, 0.15)
    return obj


def _random_texture(rng: random.Random) -> str:
    return rng.choices(list(TEXTURE_WEIGHTS), weights=list(TEXTURE_WEIGHTS.values()))[0]


def _say(rng: random.Random, p: float, value):
    return value if rng.random() < p else None


def sample_spec(rng: random.Random, level: str | None = None) -> Spec:
    """A random caption spec. ``level``: "full" (every attribute said), "partial" or "vague"; random by LEVELS."""
    if level is None:
        level = rng.choices(list(LEVELS), weights=list(LEVELS.values()))[0]
    p_attr = {"full": 1.0, "partial": 0.5, "vague": 0.12}[level]
    p_shape = {"full": 1.0, "partial": 0.75, "vague": 0.1}[level]
    background = None
    u = rng.random()
    if u < p_attr:
        background = rng.choice(list(BACKGROUNDS))
    elif level != "full" and u < p_attr + 0.15:
        background = rng.choice(list(BACKGROUND_GROUPS))

    def obj(position: str | None, size: bool, something: bool) -> ObjSpec:
        shape = _say(rng, p_shape, rng.choice(SHAPES))
        # The noun word only matters when the shape is not said ("a shape", "an object", "something").
        noun = "shape" if shape else rng.choice(NOUNS + (("something",) if something else ()))
        spec = ObjSpec(shape=shape, color=_say(rng, p_attr, rng.choice(list(COLORS))),
                       texture=_say(rng, p_attr, _random_texture(rng)),
                       size=_say(rng, p_attr, rng.choice(SIZES)) if size else None,
                       position=_say(rng, p_attr, position) if position else None, noun=noun)
        if noun == "something":  # "something [colour] [position]": no size or texture words
            spec = replace(spec, texture=None, size=None)
        return spec

    u = rng.random()
    if u < 0.45:
        return Spec("single", (obj(rng.choice(list(POSITIONS)), True, True),), background=background)
    if u < 0.7:
        n = rng.choice((2, 3, "many"))
        count = n if level == "full" or rng.random() < p_attr + 0.3 else None
        return Spec("count", (obj(None, False, False),), count=count,
                    background=background, some=count is None and rng.random() < 0.5)
    positions = rng.sample(list(POSITIONS), rng.choice((2, 2, 3)))  # distinct slots
    return Spec("multi", tuple(obj(p, False, False) for p in positions), background=background)


def scene_for(spec: Spec, rng: random.Random) -> Scene:
    """A random scene that satisfies ``spec``: every attribute the spec leaves out is drawn at random."""
    if spec.background in BACKGROUND_GROUPS:
        background = rng.choice(BACKGROUND_GROUPS[spec.background])
    else:
        background = spec.background or rng.choice(list(BACKGROUNDS))

    def color(c: str | None) -> str:
        return c or rng.choice([k for k in COLORS if k != background])

    if spec.kind == "single":
        o = spec.objects[0]
        obj = Obj(o.shape or rng.choice(SHAPES), color(o.color), o.texture or _random_texture(rng),
                  o.size or rng.choice(SIZES), o.position or rng.choice(list(POSITIONS)))
        return Scene("single", background, [_jitter(rng, obj)], said=spec)
    if spec.kind == "count":
        o = spec.objects[0]
        n = spec.count if spec.count is not None else rng.choice((2, 3, "many"))
        shape, col, tex = o.shape or rng.choice(SHAPES), color(o.color), o.texture or _random_texture(rng)
        if n == "many":
            objs = [Obj(shape, col, tex, "tiny", "free", x - 0.5, y - 0.5, angle=rng.uniform(-0.3, 0.3))
                    for x, y in _scatter(rng, rng.randint(*MANY))]
        else:
            slots = ["left", "right"] if n == 2 else ["left", "center", "right"]
            if rng.random() < 0.5:
                slots = ["top", "bottom"] if n == 2 else ["top", "center", "bottom"]
            objs = [_jitter(rng, Obj(shape, col, tex, "small", pos), 0.02) for pos in slots]
        return Scene("count", background, objs, said=spec)
    said = [o.position for o in spec.objects if o.position]
    free = [p for p in POSITIONS if p not in said]
    rng.shuffle(free)
    objs = []
    for o in spec.objects:
        pos = o.position or free.pop()
        objs.append(_jitter(rng, Obj(o.shape or rng.choice(SHAPES), color(o.color), o.texture or _random_texture(rng),
                                     "small", pos), 0.02))
    return Scene("multi", background, objs, said=spec)


def _scatter(rng: random.Random, n: int) -> list[tuple[float, float]]:
    """``n`` non-overlapping centres for tiny objects (rejection sampling on a margin-padded square)."""
    pts: list[tuple[float, float]] = []
    for _ in range(2000):
        if len(pts) == n:
            break
        x, y = rng.uniform(0.12, 0.88), rng.uniform(0.12, 0.88)
        if all((x - a) ** 2 + (y - b) ** 2 > 0.17 ** 2 for a, b in pts):
            pts.append((x, y))
    return pts


def sample_scene(rng: random.Random, level: str | None = None) -> Scene:
    """A random caption spec and a random scene satisfying it (``caption(scene)`` is its caption)."""
    return scene_for(sample_spec(rng, level), rng)


# ----------------------------------------------------------------------------------------------- captions


def full_spec(scene: Scene) -> Spec:
    """The spec that says everything about ``scene`` (its full caption)."""
    if scene.kind == "count":
        o = scene.objects[0]
        n = "many" if o.position == "free" else len(scene.objects)
        return Spec("count", (ObjSpec(o.shape, o.color, o.texture),), count=n, background=scene.background)
    with_size = scene.kind == "single"
    objs = tuple(ObjSpec(o.shape, o.color, o.texture, o.size if with_size else None, o.position) for o in scene.objects)
    return Spec(scene.kind, objs, background=scene.background)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _phrase(o: ObjSpec, plural: bool = False, count_word: str = "") -> str:
    if o.noun == "something" and not o.shape and not plural:
        words = ["something"] + ([o.color] if o.color else []) + ([POSITION_PHRASE[o.position]] if o.position else [])
        return " ".join(words)
    noun = o.shape or o.noun
    words = [w for w in (o.size, o.color, o.texture) if w]
    words.append(PLURAL[noun] if plural else noun)
    if o.position:
        words.append(POSITION_PHRASE[o.position])
    lead = count_word or ("" if plural else _article(words[0]))
    return " ".join([lead] + words if lead else words)


def caption_of(spec: Spec) -> str:
    """The caption text of a spec (a pure function)."""
    if spec.kind == "count":
        o = spec.objects[0]
        if spec.count == "many":
            text = _phrase(replace(o, size="tiny"), plural=True, count_word="many")
        elif spec.count is None:
            text = _phrase(o, plural=True, count_word="some" if spec.some else "")
        else:
            text = _phrase(o, plural=True, count_word=NUMBER_WORDS[int(spec.count)])
    else:
        text = " and ".join(_phrase(o) for o in spec.objects)
    if spec.background:
        text += f" on {_article(spec.background)} {spec.background} background"
    return text


def caption(scene: Scene) -> str:
    """The caption of a scene: what its spec says (everything, for a scene built without one)."""
    return caption_of(scene.said if scene.said is not None else full_spec(scene))


# Multi-word phrases first so "light blue" is not read as the group "light" + "blue".
_PHRASES: list[tuple[tuple[str, ...], tuple[str, str]]] = sorted(
    [(tuple(k.split()), ("bg", k)) for k in BACKGROUNDS if " " in k]
    + [(tuple(k.split()), ("texture", k)) for k in TEXTURES]
    + [(tuple(v.split()), ("position", k)) for k, v in POSITION_PHRASE.items()],
    key=lambda kv: -len(kv[0]),
)


def _tokens(words: list[str]) -> list[tuple[str, str]]:
    out, i = [], 0
    while i < len(words):
        for ph, tag in _PHRASES:
            if tuple(words[i:i + len(ph)]) == ph:
                out.append(tag)
                i += len(ph)
                break
        else:
            out.append(("word", words[i]))
            i += 1
    return out


def _parse_object(tokens: list[tuple[str, str]]) -> tuple[ObjSpec, int | str | None, bool, bool] | None:
    """(spec, count, plural, some) of one object phrase, or None if it names no object."""
    kw: dict = {}
    count: int | str | None = None
    plural = some = False
    noun = None
    singular_of = {v: k for k, v in PLURAL.items()}
    for kind, value in tokens:
        if kind in ("texture", "position"):
            kw[kind] = value
        elif kind == "word":
            if value in COLORS:
                kw["color"] = value
            elif value in SIZES:
                kw["size"] = value
            elif value in ("two", "three"):
                count = 2 if value == "two" else 3
            elif value == "many":
                count = "many"
            elif value == "some":
                some = True
            elif value in SHAPES or value in NOUNS or value == "something":
                noun = value
            elif value in singular_of:
                noun, plural = singular_of[value], True
    if noun is None:
        return None
    if noun in SHAPES:
        kw["shape"] = noun
    if count == "many":
        kw.pop("size", None)  # "tiny" is implied by "many", not said
    return ObjSpec(noun="shape" if noun in SHAPES else noun, **kw), count, plural, some


def parse(text: str) -> Spec | None:
    """The spec a caption expresses, or None if it names no object of the world (e.g. a real user prompt).

    Words outside the grammar are ignored, so "a photo of a red circle, 4k" parses as "a red circle".
    """
    words = str(text).lower().replace(",", " ").split()
    background = None
    if "background" in words:
        k = words.index("background")
        head = words[:k]
        for name in sorted(list(BACKGROUNDS) + list(BACKGROUND_GROUPS), key=lambda s: -len(s.split())):
            n = len(name.split())
            if head[-n:] == name.split():
                background, head = name, head[:-n]
                break
        while head and head[-1] in ("a", "an", "on"):
            head = head[:-1]
        words = head + words[k + 1:]
    parts, cur = [], []
    for w in words:
        if w == "and":
            parts.append(cur)
            cur = []
        else:
            cur.append(w)
    parts.append(cur)
    objs = [p for p in (_parse_object(_tokens(ws)) for ws in parts) if p is not None]
    if not objs:
        return None
    if len(objs) == 1 and objs[0][2]:  # one plural phrase: a count group
        o, count, _, some = objs[0]
        return Spec("count", (o,), count=count, background=background, some=some)
    if len(objs) == 1:
        return Spec("single", (objs[0][0],), background=background)
    return Spec("multi", tuple(o for o, *_ in objs), background=background)


def _slots(spec: Spec) -> list[float]:
    """Per sayable attribute: 1 said, 0.5 half-said (a background group), 0 left to chance."""
    vals = [1.0 if spec.background in BACKGROUNDS else 0.5 if spec.background else 0.0]
    for o in spec.objects:
        attrs = [o.shape, o.color, o.texture]
        if spec.kind == "single":
            attrs += [o.size, o.position]
        elif spec.kind == "multi":
            attrs += [o.position]
        vals += [1.0 if a else 0.0 for a in attrs]
    if spec.kind == "count":
        vals.append(1.0 if spec.count is not None else 0.0)
    return vals


def specificity(text: str | Spec) -> float:
    """Share of the scene a caption fixes, in [0, 1]: 1 = every attribute said, 0 = nothing of the world named
    (also for text the grammar does not know). A background group ("dark") counts half."""
    spec = text if isinstance(text, Spec) else parse(text)
    if spec is None:
        return 0.0
    v = _slots(spec)
    return float(sum(v) / len(v))


def satisfies(scene: Scene, spec: Spec) -> bool:
    """Whether ``scene`` is one the caption of ``spec`` describes."""
    if spec.background in BACKGROUND_GROUPS:
        if scene.background not in BACKGROUND_GROUPS[spec.background]:
            return False
    elif spec.background and scene.background != spec.background:
        return False
    if spec.kind != scene.kind:
        return False
    if spec.kind == "count":
        many = scene.objects[0].position == "free"
        if spec.count == "many" and not many or spec.count in (2, 3) and (many or len(scene.objects) != spec.count):
            return False
        specs = [spec.objects[0]] * len(scene.objects)
    else:
        if len(spec.objects) != len(scene.objects):
            return False
        specs = list(spec.objects)
    for o, s in zip(scene.objects, specs):
        for a in ("shape", "color", "texture", "size", "position"):
            want = getattr(s, a)
            if want is not None and getattr(o, a) != want:
                return False
    return True


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
    elif shape == "diamond":  # tall rhombus (top/bottom points far)
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


def _pattern(texture: str, rgb: tuple[int, int, int], size: int, px: float) -> Image.Image:
    """A full-canvas fill of ``texture`` (``px`` = supersampled pixels per output pixel)."""
    img = Image.new("RGB", (size, size), rgb)
    pattern, period_px = TEXTURES[texture]
    if pattern in ("solid", "outline"):
        return img
    draw = ImageDraw.Draw(img)
    other = _shade(rgb, 0.45)
    period = max(2, int(round(period_px * px)))
    half = period // 2
    if pattern == "stripes":  # diagonal
        for x0 in range(-size, size, period):
            draw.polygon([(x0, 0), (x0 + half, 0), (x0 + half + size, size), (x0 + size, size)], fill=other)
    elif pattern == "dots":
        rad = period * 0.27
        for y in range(half, size, period):
            for x in range(half, size, period):
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=other)
    elif pattern == "checks":
        for y in range(0, size, half):
            for x in range((y // half) % 2 * half, size, period):
                draw.rectangle([x, y, x + half - 1, y + half - 1], fill=other)
    return img


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render a scene to an RGB PIL image of ``size`` x ``size`` (4x supersampled, anti-aliased)."""
    ss = 4
    big = size * ss
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    px = big / 64.0  # textures and outlines are defined in pixels of a 64 px image
    for o in scene.objects:
        bx, by = POSITIONS.get(o.position, (0.5, 0.5))
        cx, cy = (bx + o.dx) * big, (by + o.dy) * big
        r = (SIZE_RADIUS[o.size] + o.dr) * big
        mask = Image.new("L", (big, big), 0)
        md = ImageDraw.Draw(mask)
        outline = TEXTURES[o.texture][0] == "outline"
        width = max(1, int(round(1.0 * px))) if outline else 0
        if o.shape == "circle":
            md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=None if outline else 255,
                       outline=255 if outline else None, width=width)
        else:
            poly = _polygon(o.shape, cx, cy, r, o.angle)
            if outline:
                md.line(poly + poly[:1], fill=255, width=width, joint="curve")
            else:
                md.polygon(poly, fill=255)
        img.paste(_pattern(o.texture, COLORS[o.color], big, px), (0, 0), mask)
    return img.resize((size, size), Image.LANCZOS)


# ----------------------------------------------------------------------------------------------- difficulty


#: Detail weight per texture: high-frequency content the sampler resolves late (see the module docstring).
_DETAIL = {"solid": 0.0, "striped": 0.35, "dotted": 0.35, "finely striped": 1.0, "checkered": 1.0, "outlined": 0.8}


def difficulty(scene: Scene) -> float:
    """A 0..1 score of a scene's fine detail: per object its texture's detail weight × its area share, plus the
    edge length of many tiny objects. The calibration (README, world v2 probe) measured that this detail -- not
    the object count or the caption's vagueness -- is what raises the step need."""
    area = {"tiny": 0.25, "small": 0.5, "large": 1.0}
    score = 0.0
    for o in scene.objects:
        score += _DETAIL[o.texture] * area[o.size] + (0.12 if o.size == "tiny" else 0.0)
    return float(min(1.0, score))


def prompt_class(text: str) -> str:
    """A coarse class of a prompt for tables: "fine" (names fine detail), "many", "flat" (names only solid or
    coarse textures), "vague" (leaves texture to chance), "unknown" (not a caption of the world)."""
    spec = parse(text)
    if spec is None:
        return "unknown"
    if spec.kind == "count" and spec.count == "many":
        return "many"
    textures = [o.texture for o in spec.objects]
    if any(t in ("finely striped", "checkered", "outlined") for t in textures if t):
        return "fine"
    if any(t is None for t in textures):
        return "vague"
    return "flat"


# ----------------------------------------------------------------------------------------------- batches


def sample(rng: random.Random, size: int = 64) -> tuple[Scene, str, Image.Image]:
    scene = sample_scene(rng)
    return scene, caption(scene), render(scene, size)


def example_prompts(n: int, seed: int = 0, level: str | None = None) -> list[str]:
    """``n`` captions from the grammar (deterministic for a seed): the project's own demo/bench prompts."""
    rng = random.Random(seed)
    return [caption(sample_scene(rng, level)) for _ in range(n)]


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
