"""User text inside threestudio configs, taken literally.

threestudio reads a stage's config through OmegaConf, which treats ``${...}`` in any string
as an interpolation: ``--prompt 'a sks toy in ${oc.env:HOME}'`` would train on the home
folder's path, ``${nope}`` would crash. Escaping (``\\${``) does not survive: threestudio's
``load_config`` resolves the config once (the escape is spent) and the parts parse their
configs again, reading the now bare ``${`` as an interpolation. So a text holding ``${`` is
passed percent-encoded behind a prefix, with no ``${`` left, and the component that reads it
(our prompt processor, the DreamBooth3D system) decodes it. Other text is passed unchanged.
"""
from __future__ import annotations

from urllib.parse import quote, unquote

LITERAL_PREFIX = "dreambooth3d-literal:"
_SAFE = " !#&'()*+,-./:;<=>?@[]^_`|~\""  # kept readable; %, $, {, }, \ are encoded


def encode_literal(text: str) -> str:
    """``text`` as a config value OmegaConf leaves alone (unchanged when it needs nothing)."""
    if "${" not in text and not text.startswith(LITERAL_PREFIX):
        return text
    return LITERAL_PREFIX + quote(text, safe=_SAFE)


def decode_literal(value):
    """The user's text back from :func:`encode_literal` (anything else unchanged)."""
    if isinstance(value, str) and value.startswith(LITERAL_PREFIX):
        return unquote(value[len(LITERAL_PREFIX):])
    return value
