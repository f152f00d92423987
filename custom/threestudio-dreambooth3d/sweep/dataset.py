"""Subjects and prompt templates for a sweep.

The DreamBooth dataset (github.com/google/dreambooth) is laid out as::

    dataset/prompts_and_classes.txt
    dataset/<subject>/00.jpg 01.jpg ...      4-6 photos, up to 2048 px

``prompts_and_classes.txt`` holds a ``subject_name,class`` table ("bear_plushie,stuffed
animal": a class may be several words) and two Python prompt lists, "Object Prompts" and
"Live Subject Prompts", each line ``'a {0} {1} in the jungle'.format(unique_token,
class_token)``. The dataset's README says the live subjects are the dogs and cats, so
subjects of those classes get the live list and every other subject the object list.

Our templates name the two slots ``{identifier}`` and ``{class}``:
``'a {identifier} {class} in the jungle'``.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..errors import SweepInputError

PROMPTS_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = ("dog", "cat")  # the dataset README: "9 ... are live subjects (dogs and cats)"
DEFAULT_TEMPLATE = "a {identifier} {class}"
TEMPLATE_FIELDS = ("identifier", "class")

_CLASS_LINE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*,\s*(.+?)\s*$")
_PROMPT_LINE = re.compile(r"""^\s*(['"])(.*)\1\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)\s*,?\s*$""")


@dataclass(frozen=True)
class Subject:
    name: str  # the dataset's subject_name (or the folder's name): cell folders and report rows use it
    folder: Path
    class_noun: str
    live: bool = False


@dataclass
class DreamBoothDataset:
    root: Path
    subjects: List[Subject]
    object_prompts: List[str] = field(default_factory=list)  # templates with {identifier} {class}
    live_prompts: List[str] = field(default_factory=list)
    unlisted: List[str] = field(default_factory=list)  # folders of photos the table does not name (not swept)

    def prompts_for(self, subject: Subject) -> List[str]:
        return list(self.live_prompts if subject.live else self.object_prompts)


def check_template(template: str, where: str = "--prompt") -> str:
    """A prompt template must name ``{identifier}`` and ``{class}`` and nothing else."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise SweepInputError(f"{where} {template!r} is not a valid template ({e}); write e.g. "
                              f"'{DEFAULT_TEMPLATE} wearing a hat'.") from None
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise SweepInputError(f"{where} {template!r} uses {{{unknown[0]}}}; a template may only use "
                              "{identifier} and {class}, e.g. 'a {identifier} {class} in the snow'.")
    missing = [f for f in TEMPLATE_FIELDS if f not in names]
    if missing:
        raise SweepInputError(f"{where} {template!r} lacks {{{missing[0]}}}: the subject must appear as "
                              "'{identifier} {class}', e.g. 'a {identifier} {class} in the snow'.")
    return template


def fill_template(template: str, identifier: str, class_noun: str) -> str:
    return template.format(identifier=identifier, **{"class": class_noun})


def parse_prompts_and_classes(text: str, source: str = PROMPTS_FILE) -> Dict:
    """``{"classes": {subject: class}, "object": [templates], "live": [templates]}``.

    The ``Classes`` heading is optional: the table may open the file. A subject listed twice
    is refused (which line should win is the user's call, not ours)."""
    classes: Dict[str, str] = {}
    class_lines: Dict[str, int] = {}
    lists: Dict[str, List[str]] = {"object": [], "live": []}
    section: Optional[str] = "classes"  # lines before any heading are the table
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip().lstrip("\ufeff")  # a byte-order mark some editors write
        low = line.lower()
        if not line or low.startswith("prompt_list") or line in ("]", "],"):
            continue
        if low == "classes":
            section = "classes"
        elif low == "prompts":
            section = None
        elif "prompts" in low and "object" in low:
            section = "object"
        elif "prompts" in low and "live" in low:
            section = "live"
        elif section == "classes":
            if _PROMPT_LINE.match(line):
                raise SweepInputError(f"{source}:{lineno}: a prompt line before an 'Object Prompts' or 'Live Subject "
                                      f"Prompts' heading: {line!r}. Put the heading on the line above the prompt list.")
            m = _CLASS_LINE.match(line)
            if m is None:
                raise SweepInputError(f"{source}:{lineno}: expected 'subject_name,class' (e.g. 'dog,dog' or "
                                      f"'bear_plushie,stuffed animal'), got {line!r}.")
            name, class_noun = m.group(1), m.group(2)
            if (name, class_noun) == ("subject_name", "class"):  # the table's header
                continue
            if name in classes:
                raise SweepInputError(f"{source}: subject {name!r} is listed twice, line {class_lines[name]} "
                                      f"({name},{classes[name]}) and line {lineno} ({line}). Keep one of them.")
            classes[name], class_lines[name] = class_noun, lineno
        elif section in lists:
            m = _PROMPT_LINE.match(line)
            if m is None:
                raise SweepInputError(f"{source}:{lineno}: expected a line like "
                                      f"\"'a {{0}} {{1}} in the snow'.format(unique_token, class_token),\", got {line!r}.")
            lists[section].append(m.group(2).replace("{0}", "{identifier}").replace("{1}", "{class}"))
        else:
            raise SweepInputError(f"{source}:{lineno}: {line!r} is under the 'Prompts' heading but not in a list: "
                                  "expected an 'Object Prompts' or 'Live Subject Prompts' heading first.")
    if not classes:
        raise SweepInputError(f"{source} lists no subjects: expected lines 'subject_name,class' (e.g. 'dog,dog') "
                              "before the prompt lists.")
    for kind, templates in lists.items():
        for t in templates:
            check_template(t, where=f"{source} ({kind} prompts)")
    return {"classes": classes, **lists}


def read_text_utf8(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is reported with its line, not as a raw UnicodeDecodeError."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SweepInputError(f"{path}:{line}: byte 0x{data[e.start]:02x} at column {column} is not UTF-8. "
                              "Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


def find_prompts_file(root: Union[str, Path]) -> Path:
    """``ROOT/prompts_and_classes.txt``, or ``ROOT/dataset/...`` (a checkout of google/dreambooth)."""
    root = Path(root)
    for candidate in (root / PROMPTS_FILE, root / "dataset" / PROMPTS_FILE):
        if candidate.is_file():
            return candidate
    if not root.is_dir():
        raise SweepInputError(f"Dataset folder {root} does not exist. Pass --dataset DIR holding <subject>/ "
                              f"folders and {PROMPTS_FILE} (the DreamBooth dataset layout).")
    raise SweepInputError(f"No {PROMPTS_FILE} in {root} (nor in {root / 'dataset'}). Pass the DreamBooth "
                          "dataset's folder, or list subjects with --subject FOLDER:CLASS instead of --dataset.")


def read_dreambooth_dataset(root: Union[str, Path], only: Optional[Sequence[str]] = None) -> DreamBoothDataset:
    """The subjects (folders checked to exist) and prompt lists of a DreamBooth-style dataset;
    ``only`` keeps the named subjects, in the order given."""
    path = find_prompts_file(root)
    parsed = parse_prompts_and_classes(read_text_utf8(path), str(path))
    folder = path.parent
    names = list(parsed["classes"])
    unlisted = sorted(d.name for d in folder.iterdir()
                      if d.is_dir() and d.name not in parsed["classes"] and _holds_photos(d))
    if only:
        unknown = [n for n in only if n not in parsed["classes"]]
        if unknown:
            raise SweepInputError(f"--subjects: {unknown[0]!r} is not in {path}; its subjects are {', '.join(names)}.")
        names = list(dict.fromkeys(only))
    missing = [n for n in names if not (folder / n).is_dir()]
    if missing:
        raise SweepInputError(f"{path} lists subject {missing[0]!r} but {folder / missing[0]} is not a folder. "
                              "Put its photos there, or pick subjects with --subjects NAME ...")
    subjects = [Subject(n, (folder / n).resolve(), parsed["classes"][n], parsed["classes"][n] in LIVE_CLASSES)
                for n in names]
    return DreamBoothDataset(folder.resolve(), subjects, parsed["object"], parsed["live"], unlisted)


def _holds_photos(folder: Path) -> bool:
    from ..core.subject import IMAGE_EXTENSIONS  # torch-heavy module: only when a dataset is read

    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file())


def parse_subject_spec(spec: str) -> Subject:
    """``FOLDER:CLASS`` (the class may hold spaces: ``photos/bear:stuffed animal``)."""
    folder, sep, class_noun = spec.rpartition(":")
    if not sep or not folder or not class_noun.strip():
        raise SweepInputError(f"--subject {spec!r}: expected FOLDER:CLASS, e.g. photos/my_dog:dog or "
                              "'photos/bear:stuffed animal'.")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise SweepInputError(f"--subject {spec!r}: {path} is not a folder of photos.")
    class_noun = " ".join(class_noun.split())
    return Subject(path.resolve().name, path.resolve(), class_noun, class_noun in LIVE_CLASSES)


def unique_names(subjects: Sequence[Subject]) -> List[Subject]:
    """Subjects named by folder may collide (a/dog, b/dog): that would share an output folder."""
    seen: Dict[str, Path] = {}
    for s in subjects:
        if s.name in seen and seen[s.name] != s.folder:
            raise SweepInputError(f"Two subjects are named {s.name!r} ({seen[s.name]} and {s.folder}); "
                                  "their cells would share output folders. Rename one folder.")
        seen[s.name] = s.folder
    return list({s.name: s for s in subjects}.values())
