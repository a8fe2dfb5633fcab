import random

from dynagen import synth


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


def test_grammar_covers_kinds_and_words():
    rng = random.Random(0)
    scenes = [synth.sample_scene(rng) for _ in range(300)]
    assert {s.kind for s in scenes} == {"single", "count", "multi"}
    for s in scenes:
        c = synth.caption(s)
        assert c.endswith("background")
        assert set(c.split()) <= set(synth.VOCABULARY)
        assert 0.0 <= synth.difficulty(s) <= 1.0


def test_difficulty_orders_easy_and_hard():
    easy = synth.Scene("single", "white", [synth.Obj("circle", "red")])
    hard = synth.Scene(
        "multi",
        "gray",
        [synth.Obj("star", "red", "striped", "small", "left"), synth.Obj("triangle", "blue", "dotted", "small", "right"),
         synth.Obj("diamond", "green", "striped", "small", "center")],
    )
    assert synth.difficulty(easy) < synth.difficulty(hard)
    assert synth.caption(easy) == "a large red circle in the center on a white background"


def test_example_prompts_count():
    ps = synth.example_prompts(16)
    assert len(ps) == 16 and all(isinstance(p, str) and p for p in ps)
