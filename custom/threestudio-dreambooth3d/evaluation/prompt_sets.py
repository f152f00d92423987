"""The prompts a render is retrieved among for CLIP R-precision (see docs/EVALUATION.md).

DreamBooth3D reports R-precision on the DreamBooth dataset: for a subject, every prompt
of its list differs from the others only in its context ("in the jungle", "wearing a red
hat"). The retrieval set is therefore built so that only a render showing the *context*
retrieves its prompt:

1. the evaluated prompt (index 0);
2. the subject's other prompts: a sweep's prompts for the subject, or ``--prompts FILE``,
   or by default the DreamBooth dataset's list for the class (live subjects: dogs and cats);
3. the bare subject prompt ``a {class}``, so a render that shows the subject and none of
   its context retrieves that and not the evaluated prompt;
4. object-centric captions in the style of DreamFusion's evaluation set (one object in a
   scene, COCO-like), as further distractors.

The rare identifier ("sks") is removed from every prompt first: CLIP has never seen it.
Duplicates (case and spacing aside) are dropped, the evaluated prompt kept first.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

from ..errors import EvalInputError
from ..formats import remove_identifier

LIVE_CLASSES = ("dog", "cat")  # the DreamBooth dataset's live subjects

# The DreamBooth dataset's prompt lists (github.com/google/dreambooth, dataset/prompts_and_classes.txt),
# with {0} {1} written {identifier} {class}.
_SHARED = (
    "in the jungle", "in the snow", "on the beach", "on a cobblestone street", "on top of pink fabric",
    "on top of a wooden floor", "with a city in the background", "with a mountain in the background",
    "with a blue house in the background", "on top of a purple rug in a forest",
)
_OBJECT_ONLY = (
    "with a wheat field in the background", "with a tree and autumn leaves in the background",
    "with the Eiffel Tower in the background", "floating on top of water", "floating in an ocean of milk",
    "on top of green grass with sunflowers around it", "on top of a mirror",
    "on top of the sidewalk in a crowded street", "on top of a dirt road", "on top of a white rug",
)
_LIVE_ONLY = (
    "wearing a red hat", "wearing a santa hat", "wearing a rainbow scarf", "wearing a black top hat and a monocle",
    "in a chef outfit", "in a firefighter outfit", "in a police outfit", "wearing pink glasses",
    "wearing a yellow shirt", "in a purple wizard outfit",
)
_ADJECTIVES = ("red", "purple", "shiny", "wet", "cube shaped")
OBJECT_PROMPTS = tuple(f"a {{identifier}} {{class}} {c}" for c in _SHARED + _OBJECT_ONLY) + tuple(
    f"a {a} {{identifier}} {{class}}" for a in _ADJECTIVES)
LIVE_PROMPTS = tuple(f"a {{identifier}} {{class}} {c}" for c in _SHARED + _LIVE_ONLY) + tuple(
    f"a {a} {{identifier}} {{class}}" for a in _ADJECTIVES)

# Object-centric captions in the style of DreamFusion's evaluation prompts (object-centric
# MS-COCO captions: one main object, often with its setting). Written for this project.
OBJECT_CENTRIC_CAPTIONS = (
    "a red fire hydrant on a city sidewalk", "a wooden chair in an empty room", "a bowl of fruit on a kitchen table",
    "a vintage car parked on a street", "a teddy bear sitting on a bed", "a pair of sneakers on a white floor",
    "a ceramic vase with flowers on a windowsill", "a cat sleeping on a couch", "a dog running on a beach",
    "a backpack leaning against a tree", "a clock on a brick wall", "a bicycle parked by a fence",
    "a plate of spaghetti on a table", "a green apple on a wooden desk", "a teapot on a stove",
    "a yellow school bus on a road", "a sailboat on a calm lake", "a small airplane on a runway",
    "a horse standing in a field", "an elephant walking in the savanna", "a giraffe eating leaves from a tree",
    "a laptop on an office desk", "a stack of books on a shelf", "an umbrella open in the rain",
    "a slice of chocolate cake on a plate", "a hamburger with fries", "a potted plant on a balcony",
    "a lamp on a bedside table", "a pair of sunglasses on the sand", "a lit candle in the dark",
    "a robot toy on a carpet", "a rubber duck in a bathtub", "a leather boot in the mud",
    "a mushroom growing on a log", "a castle on a hill", "a guitar leaning against an amplifier",
    "a bird perched on a branch", "a motorcycle parked in a garage", "a pizza in a cardboard box",
    "a suitcase at an airport", "a stuffed animal on a shelf", "a skull on a stone table",
)


def dataset_prompts(class_noun: str, identifier: str = "sks") -> List[str]:
    """The DreamBooth dataset's prompt list for a class (live list for dogs and cats), filled in."""
    noun = " ".join(class_noun.split())
    templates = LIVE_PROMPTS if noun.lower() in LIVE_CLASSES else OBJECT_PROMPTS
    return [t.format(identifier=identifier, **{"class": noun}) for t in templates]


def read_prompt_file(path: Union[str, Path], what: str = "--prompts") -> List[str]:
    """One prompt a line (UTF-8); blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{what} file {path} does not exist. Write one prompt a line.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise EvalInputError(f"{what} file {path}, line {line}, is not UTF-8 text. Save it as UTF-8.") from None
    prompts = [s.strip() for s in text.splitlines()]
    prompts = [s for s in prompts if s and not s.startswith("#")]
    if not prompts:
        raise EvalInputError(f"{what} file {path} holds no prompts. Write one prompt a line.")
    return prompts


def _key(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def retrieval_prompts(prompt: str, class_noun: Optional[str], subject_prompts: Sequence[str] = (),
                      captions: Sequence[str] = OBJECT_CENTRIC_CAPTIONS, identifier: str = "sks") -> List[str]:
    """The retrieval set for ``prompt`` (module docstring): identifier removed, the evaluated
    prompt first, then the subject's other prompts, the bare ``a {class}``, the captions."""
    true = remove_identifier(prompt, identifier)
    if not true:
        raise EvalInputError("the evaluated prompt is empty once the identifier is removed.")
    candidates = [true, *(remove_identifier(p, identifier) for p in subject_prompts)]
    if class_noun and class_noun.strip():
        candidates.append(f"a {' '.join(class_noun.split())}")
    candidates += list(captions)
    seen, out = set(), []
    for c in candidates:
        if c and _key(c) not in seen:
            seen.add(_key(c))
            out.append(c)
    if len(out) < 2:
        raise EvalInputError("R-precision needs at least one prompt that differs from the evaluated prompt.")
    return out
