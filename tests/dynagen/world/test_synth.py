import random

import numpy as np
import pytest

from dynagen.world import synth

VAGUE_FORMS = ["a shape", "shapes", "some shapes", "two shapes", "an object", "objects", "something", "something red",
               "a striped shape", "a dotted object", "shapes on a dark background", "an object at the top",
               "something on the left"]


def test_render_size_and_mode():
    s = synth.sample_scene(random.Random(0))
    im = synth.render(s)
    assert im.size == (64, 64) and im.mode == "RGB"
    assert synth.render(s, size=32).size == (32, 32)


def test_caption_deterministic_for_seed():
    a = [synth.caption(synth.sample_scene(random.Random(7))) for _ in range(3)]
    assert len(set(a)) == 1
    assert synth.example_prompts(20, seed=3) == synth.example_prompts(20, seed=3)
    assert synth.example_prompts(20, seed=3) != synth.example_prompts(20, seed=4)


def test_render_deterministic():
    s = synth.sample_scene(random.Random(1))
    assert synth.render(s).tobytes() == synth.render(s).tobytes()


def test_captions_round_trip_to_their_spec_and_scene():
    rng = random.Random(0)
    for _ in range(2000):
        scene = synth.sample_scene(rng)
        text = synth.caption(scene)
        assert set(text.split()) <= set(synth.VOCABULARY), text
        spec = synth.parse(text)
        assert spec == scene.said, text
        assert synth.satisfies(scene, spec), text
        assert synth.caption_of(spec) == text


def test_full_captions_name_everything():
    scene = synth.Scene("single", "white", [synth.Obj("circle", "red")])
    assert synth.caption(scene) == "a large red solid circle in the center on a white background"
    assert synth.specificity(synth.caption(scene)) == 1.0
    assert synth.parse(synth.caption(scene)) == synth.full_spec(scene)


@pytest.mark.parametrize("text", VAGUE_FORMS)
def test_vague_forms_parse_and_sample(text):
    spec = synth.parse(text)
    assert spec is not None, text
    assert synth.caption_of(spec) == text
    rng = random.Random(1)
    for _ in range(20):
        assert synth.satisfies(synth.scene_for(spec, rng), spec)
    assert synth.specificity(text) < 0.35


def test_an_omitted_attribute_varies_and_a_named_one_never_does():
    spec = synth.parse("a red shape at the top")
    rng = random.Random(2)
    scenes = [synth.scene_for(spec, rng) for _ in range(200)]
    objs = [s.objects[0] for s in scenes]
    assert {o.color for o in objs} == {"red"} and {o.position for o in objs} == {"top"}
    assert len({o.shape for o in objs}) == len(synth.SHAPES)  # not said: every shape turns up
    assert len({o.texture for o in objs}) == len(synth.TEXTURES)
    assert len({o.size for o in objs}) == 2 and len({s.background for s in scenes}) == len(synth.BACKGROUNDS)
    dark = [synth.scene_for(synth.parse("shapes on a dark background"), rng).background for _ in range(100)]
    assert set(dark) == set(synth.BACKGROUND_GROUPS["dark"])


def test_specificity_grades_captions():
    order = ["a shape", "a red shape", "a red circle", "a large red circle at the top",
             "a large red solid circle at the top on a white background"]
    values = [synth.specificity(t) for t in order]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
    assert synth.specificity("a portrait of an astronaut, 4k, trending on artstation") == 0.0
    assert synth.parse("a cat") is None and synth.prompt_class("a cat") == "unknown"
    # words outside the grammar are ignored
    assert synth.parse("a photo of a red circle, 4k") == synth.parse("a red circle")


def test_sampled_mix_covers_levels_kinds_and_classes():
    prompts = synth.example_prompts(2000, seed=5)
    classes = {c: sum(synth.prompt_class(p) == c for p in prompts) for c in ("fine", "many", "flat", "vague")}
    assert all(v >= 100 for v in classes.values()), classes
    spec = [synth.specificity(p) for p in prompts]
    assert np.mean(np.array(spec) == 1.0) > 0.3 and np.mean(np.array(spec) < 0.4) > 0.15
    scenes = [synth.sample_scene(random.Random(i)) for i in range(300)]
    assert {s.kind for s in scenes} == {"single", "count", "multi"}


def test_fine_detail_renders_high_frequency_and_difficulty_follows_it():
    def hf(text, n=20):
        rng = random.Random(3)
        out = []
        for _ in range(n):
            im = np.asarray(synth.render(synth.scene_for(synth.parse(text), rng)), dtype=float).mean(-1)
            out.append(np.abs(np.diff(im, axis=0)).mean() + np.abs(np.diff(im, axis=1)).mean())
        return float(np.mean(out))

    flat = "a large red solid square in the center on a white background"
    fine = "a large red checkered square in the center on a white background"
    assert hf(fine) > 1.8 * hf(flat)  # the texture doubles the edge energy of a large square
    rng = random.Random(4)
    assert synth.difficulty(synth.scene_for(synth.parse(fine), rng)) > synth.difficulty(
        synth.scene_for(synth.parse(flat), rng))
    for s in (synth.sample_scene(random.Random(i)) for i in range(200)):
        assert 0.0 <= synth.difficulty(s) <= 1.0


def test_many_objects_do_not_overlap():
    rng = random.Random(6)
    for _ in range(50):
        s = synth.scene_for(synth.parse("many tiny red solid circles"), rng)
        assert synth.MANY[0] <= len(s.objects) <= synth.MANY[1]
        pts = [(o.dx, o.dy) for o in s.objects]
        d = min(np.hypot(a[0] - b[0], a[1] - b[1]) for i, a in enumerate(pts) for b in pts[i + 1:])
        assert d > 2 * synth.SIZE_RADIUS["tiny"]
