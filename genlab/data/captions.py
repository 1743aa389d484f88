"""Captions of attribute-rendered digits, a word vocabulary and its tokenizer: the data of
text-to-image models.

Each image of ``mnist-attrs`` (see :mod:`genlab.data.attributes`) gets one sentence built from
its class and attributes, e.g. ``"a thick red seven tilted left"`` or ``"a bold 7 leaning
left, drawn in red"``: a template (word order), synonyms and which attributes are mentioned
are drawn per image (thickness, rotation, scale, background and inversion are each left out
when they have their default value, half of the time), so a text encoder cannot read a
fixed slot. The sentence never says something false about the image.

Held-out combinations: the (digit, colour) pairs of :data:`HELDOUT` (one colour per digit,
10 of the 80 pairs) never appear in the train split (their colour is redrawn there); in val
and test every fourth image has one, and the boolean field ``heldout`` marks those rows, so
``data.select(data.heldout)`` is the compositional test set.

Batch fields (source ``mnist-captions``): everything of ``mnist-attrs`` (``x`` (B, 3, 32, 32),
``y``, ``attrs`` (B, 6)), ``text`` (B, MAX_WORDS) int64 token ids padded with 0,
``caption`` (a list of B strings) and ``heldout`` (B,) bool.

:func:`tokenize` (strings -> ids) and :func:`detokenize` use the fixed :data:`VOCAB`, the
same for every run (it is built from the templates, not from data), so a model given raw
strings (``sample(n, cond={"text": [...]})``) tokenizes them exactly as training did.
"""

from __future__ import annotations

import re

import torch

from genlab.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, DEFAULTS, attributed_source
from genlab.data.dataset import Dataset
from genlab.data.seeds import generator, mix
from genlab.data.source import Source

TAG_CAPTIONS = 8  # seed streams of caption draws and held-out redraws

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Each attribute value -> its phrases ([] where the value is the default and may go unsaid).
PHRASES: dict[str, dict[str, list[str]]] = {
    "thickness": {"thin": ["thin", "fine", "slim"], "normal": ["regular"],
                  "thick": ["thick", "bold", "heavy"]},
    "rotation": {"30": ["tilted left", "leaning left", "rotated left"],
                 "0": ["upright", "straight"],
                 "-30": ["tilted right", "leaning right", "rotated right"]},
    "scale": {"small": ["small", "tiny"], "normal": ["medium sized"], "large": ["large", "big"]},
    "inversion": {"no": [], "yes": ["inverted", "in negative"]},
}  # fmt: skip
COLOUR_SYNONYMS = {"magenta": ["magenta", "pink"], "white": ["white"], "grey": ["grey", "gray"]}
# (digit, colour index): one held-out colour per digit, spread over the palette.
HELDOUT: frozenset[tuple[int, int]] = frozenset(
    (d, (3 * d) % len(ATTRIBUTES["colour"])) for d in range(10)
)

PAD, UNK = 0, 1
MAX_WORDS = 16  # the longest template has 14 words


def _words_of_templates() -> list[str]:
    words = {"a", "an", "the", "digit", "number", "drawn", "in", "on", "background", "with",
             "stroke", "written", "coloured", "colored", "and"}
    words |= set(DIGIT_WORDS) | {str(d) for d in range(10)}
    for table in PHRASES.values():
        for phrases in table.values():
            for p in phrases:
                words |= set(p.split())
    for name in (*ATTRIBUTES["colour"], *ATTRIBUTES["background"]):
        words |= set(COLOUR_SYNONYMS.get(name, [name]))
    return sorted(words)


VOCAB: list[str] = ["<pad>", "<unk>", *_words_of_templates()]
WORD_ID: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}


def words(text: str) -> list[str]:
    """Lower-case words of `text` (punctuation dropped): what tokenize reads."""
    return re.findall(r"[a-z0-9]+", text.lower())


def tokenize(texts: list[str] | str, length: int = MAX_WORDS) -> torch.Tensor:
    """Strings -> (N, length) int64 ids, PAD (0) after the words, UNK (1) for unknown words;
    words past `length` are dropped."""
    if isinstance(texts, str):
        texts = [texts]
    out = torch.full((len(texts), length), PAD, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [WORD_ID.get(w, UNK) for w in words(t)][:length]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def detokenize(ids: torch.Tensor) -> list[str]:
    """(N, L) ids -> N strings of space-separated words (PAD dropped)."""
    return [" ".join(VOCAB[i] for i in row.tolist() if i != PAD) for row in ids]


def _pick(options: list[str], g: torch.Generator) -> str:
    return options[int(torch.randint(0, len(options), (1,), generator=g))]


def caption(label: int, attrs: torch.Tensor, g: torch.Generator, classes: list[str]) -> str:
    """One sentence for class `label` with attribute row `attrs`, synonyms and order from `g`."""
    value = {k: ATTRIBUTES[k][int(i)] for k, i in zip(ATTRIBUTE_NAMES, attrs, strict=True)}

    def said(name: str) -> str:
        # Default values go unsaid half of the time; a non-default value is always said.
        phrases = PHRASES[name][value[name]]
        if not phrases or (value[name] == DEFAULTS[name] and _pick(["", "x"], g) == ""):
            return ""
        return _pick(phrases, g)

    if classes == [str(d) for d in range(10)]:
        noun = _pick([DIGIT_WORDS[label], str(label), f"digit {DIGIT_WORDS[label]}",
                      f"number {label}"], g)
    else:
        noun = classes[label].lower().replace("/", " or ")
    colour = _pick(COLOUR_SYNONYMS.get(value["colour"], [value["colour"]]), g)
    back = _pick(COLOUR_SYNONYMS.get(value["background"], [value["background"]]), g)
    thick, turn, size, inverted = (said(k) for k in ("thickness", "rotation", "scale",
                                                     "inversion"))
    on = f"on {back}" if value["background"] != "black" or _pick(["", "x"], g) else ""
    adjectives = " ".join(filter(None, [size, thick]))
    templates = [
        [adjectives, colour, noun, turn, on, inverted],
        [adjectives, noun, turn, "drawn in", colour, on, inverted],
        [colour, adjectives, noun, on, turn, inverted],
        [adjectives, noun, "with", colour, "stroke", turn, on, inverted],
        [noun, "written in", colour, adjectives and f"and {adjectives}", turn, on, inverted],
    ]
    parts = [p for p in _pick_template(templates, g) if p]
    return " ".join(["a", *parts])


def _pick_template(templates: list[list[str]], g: torch.Generator) -> list[str]:
    return templates[int(torch.randint(0, len(templates), (1,), generator=g))]


def captioned_source(base: Source, name: str, seed: int, limit: int | None) -> Source:
    """`base` rendered as :func:`~genlab.data.attributes.attributed_source`, held-out pairs
    kept out of train and put in every fourth val/test image, each image captioned."""
    src = attributed_source(base, name, seed, limit)
    d = src.data
    attrs, y = d.attrs.clone(), d.y
    col = ATTRIBUTE_NAMES.index("colour")
    n_colours = len(ATTRIBUTES["colour"])
    heldout_colour = torch.tensor([c for _, c in sorted(HELDOUT)])  # digit -> its colour
    g = generator(mix(TAG_CAPTIONS, seed, 0))
    split_of = torch.empty(len(d), dtype=torch.long)
    for i, split in enumerate(("train", "val", "test")):
        split_of[src.splits[split]] = i
    train = split_of == 0
    # Train: a held-out colour moves to another colour (+1..7 steps round the palette).
    shift = torch.randint(1, n_colours, (len(d),), generator=g)
    bad = train & (attrs[:, col] == heldout_colour[y])
    attrs[bad, col] = (attrs[bad, col] + shift[bad]) % n_colours
    # Val / test: every fourth image of each split takes its digit's held-out colour.
    position = torch.zeros(len(d), dtype=torch.long)
    for i in (1, 2):
        rows = (split_of == i).nonzero().flatten()
        position[rows] = torch.arange(len(rows))
    force = ~train & (position % 4 == 0)
    attrs[force, col] = heldout_colour[y[force]]
    from genlab.data.attributes import render

    x = render(base_ink(src, base, limit), attrs)
    heldout = attrs[:, col] == heldout_colour[y]
    classes = list(d.classes or [])
    texts = [caption(int(y[i]), attrs[i], g, classes) for i in range(len(d))]
    fields = {"attrs": attrs, "text": tokenize(texts), "caption": texts, "heldout": heldout}
    data = Dataset(x, y, name, classes=d.classes, fields=fields)
    return Source(data=data, splits=src.splits)


def base_ink(src: Source, base: Source, limit: int | None) -> torch.Tensor:
    """The grey (n, 1, 28, 28) images of `base` behind the rows of the rendered `src`."""
    from genlab.data.attributes import split_rows

    rows = torch.cat(list(split_rows(base, limit).values()))
    return base.data.x[rows]
