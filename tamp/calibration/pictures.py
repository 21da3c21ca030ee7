"""Generated picture question-answer data of the smoke tasks' kind: the trained tiny model's training stream,
the `picture-qa` calibration and the held-out tasks (tasks/tamp_heldout) all draw from here.

PIL only (no torch), so the lmms-eval task hooks can import it cheaply.

A scene is one coloured shape (circle, square, triangle) above a word, on a white 64 x 64 picture, as
tasks/tamp_smoke draws it; here the shape's place and size vary, so a question can also ask where the
shape is. ``SMOKE_LAYOUT`` is the smoke tasks' own layout: :func:`render` of a scene with it gives their
pictures pixel for pixel.

Training, calibration and evaluation draw scenes from separate seeds (``TRAIN_SEED``, ``CALIB_SEED``,
``HELDOUT_SEED``); :func:`scenes` also skips every scene of the held-out split and every picture
in the smoke layout, so no training picture is an evaluation picture.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw, ImageFont

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "dog", "sun", "car", "tree", "bird")
POSITIONS = ("left", "middle", "right")
RGB = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 205, 20)}
SIZE = 64

# question kind -> (question, the answers it can have)
QUESTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "colour": ("What colour is the shape in the image?", COLOURS),
    "shape": ("What shape is in the image?", SHAPES),
    "word": ("What word is written in the image?", WORDS),
    "position": ("Where is the shape in the image?", POSITIONS),
}
# the post prompts of the smoke tasks (tasks/tamp_smoke/*.yaml) and of the held-out tasks
SINGLE_WORD = "\nAnswer the question using a single word."
COLOUR_NAME = "\nAnswer with the colour name."
COLOUR_NAME_SHARE = 0.25  # of colour questions in training and calibration, asked in the smoke MC wording

TRAIN_SEED = 20_250_101
CALIB_SEED = 20_250_202
HELDOUT_SEED = 20_250_303
HELDOUT_ROWS = 320


@dataclass(frozen=True)
class Scene:
    """What a picture shows and where: the shape's box centre and side, the word's offset from (32, 50)."""

    colour: str
    shape: str
    word: str
    cx: int = 32
    cy: int = 20
    side: int = 32
    word_dx: int = 0
    word_dy: int = 0

    @property
    def position(self) -> str:
        """left / middle / right: which third of the picture holds the shape's centre."""
        return POSITIONS[min(2, self.cx * 3 // SIZE)]

    def answer(self, kind: str) -> str:
        return self.position if kind == "position" else getattr(self, kind)

    def layout(self) -> tuple[int, int, int, int, int]:
        return (self.cx, self.cy, self.side, self.word_dx, self.word_dy)


SMOKE_LAYOUT = Scene("red", "circle", "cat").layout()


def render(scene: Scene) -> Image.Image:
    """The scene's picture (deterministic): the shape in its colour, the word in black below it."""
    img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    fill = RGB[scene.colour]
    half = scene.side // 2
    left, top, right, bottom = scene.cx - half, scene.cy - half, scene.cx + half, scene.cy + half
    if scene.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    else:
        draw.polygon([(scene.cx, top), (right, bottom), (left, bottom)], fill=fill)
    draw.text((SIZE // 2 + scene.word_dx, 50 + scene.word_dy), scene.word, fill=(0, 0, 0), anchor="mm",
              font=ImageFont.load_default())
    return img


def random_scene(rng: random.Random) -> Scene:
    """A scene with a random content and layout: the shape in one third of the picture, above the word."""
    colour, shape, word = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(WORDS)
    side = rng.randrange(20, 33, 2)
    half = side // 2
    place = rng.randrange(3)
    # centres stay well inside their third (thirds split at 21.3 and 42.7), so `position` is unambiguous
    cx = (rng.randint(half, 16), rng.randint(28, 36), rng.randint(48, SIZE - half))[place]
    cy = rng.randint(max(half, 18), 38 - half)  # the shape's bottom stays above the word
    return Scene(colour, shape, word, cx, cy, side, rng.randint(-6, 6), rng.randint(-2, 3))


def heldout_scenes(n: int = HELDOUT_ROWS, seed: int = HELDOUT_SEED) -> list[Scene]:
    """The held-out evaluation split's scenes (tasks/tamp_heldout)."""
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


def scenes(seed: int = TRAIN_SEED) -> Iterator[Scene]:
    """An endless, seeded stream of scenes for training or calibration, none of them a held-out or
    smoke-layout picture."""
    excluded = set(heldout_scenes())
    rng = random.Random(seed)
    while True:
        scene = random_scene(rng)
        if scene not in excluded and scene.layout() != SMOKE_LAYOUT:
            yield scene


@dataclass(frozen=True)
class Conversation:
    """Questions about one scene: each turn is a question kind and the post prompt an evaluation task appends."""

    scene: Scene
    turns: tuple[tuple[str, str], ...]

    def messages(self) -> list[dict[str, str]]:
        """Chat messages as lmms-eval's LLaVA wrapper writes the first turn ("<image>\n" + question + post)."""
        out = []
        for i, (kind, post) in enumerate(self.turns):
            out.append({"role": "user", "content": ("<image>\n" if i == 0 else "") + QUESTIONS[kind][0] + post})
            out.append({"role": "assistant", "content": self.scene.answer(kind)})
        return out


def conversations(scenes: Iterator[Scene], seed: int, turns: int = 1,
                  first_kind_weights: dict[str, float] | None = None) -> Iterator[Conversation]:
    """``turns`` questions of different kinds per scene, in a seeded order; colour questions are asked in the
    smoke MC task's wording a quarter of the time, every other question in the exact-match tasks' wording.

    ``first_kind_weights`` skews the first question's kind (the hardest kind can be asked more often).
    """
    rng = random.Random(seed)
    all_kinds = tuple(QUESTIONS)
    weights = [(first_kind_weights or {}).get(k, 1.0) for k in all_kinds]
    for scene in scenes:
        first = rng.choices(all_kinds, weights)[0]
        kinds = [first, *rng.sample([k for k in all_kinds if k != first], turns - 1)]
        yield Conversation(scene, tuple(
            (kind, COLOUR_NAME if kind == "colour" and rng.random() < COLOUR_NAME_SHARE else SINGLE_WORD)
            for kind in kinds))


def heldout_rows(n: int = HELDOUT_ROWS, seed: int = HELDOUT_SEED) -> list[dict]:
    """Rows of the held-out split: a scene and a question; kinds cycle colour, shape, word, position."""
    kinds = tuple(QUESTIONS)
    rows = []
    for i, scene in enumerate(heldout_scenes(n, seed)):
        kind = kinds[i % len(kinds)]
        question, choices = QUESTIONS[kind]
        rows.append({"id": f"heldout-{i:03d}", **asdict(scene), "kind": kind, "question": question,
                     "answer": scene.answer(kind), "choices": list(choices),
                     "label": choices.index(scene.answer(kind))})
    return rows


def scene_of(row: dict) -> Scene:
    """The scene a data row describes (the smoke tasks' rows carry no layout: theirs is the default)."""
    fields = {k: row[k] for k in Scene.__dataclass_fields__ if k in row}
    return Scene(**fields)
