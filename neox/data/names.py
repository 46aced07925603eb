"""What a tokenized data prefix is called in metric names, mixtures and sweeps (light: no megatron)."""

import os
import re


def component_name(prefix: str) -> str:
    """'.../arxiv_validation_text_document' -> 'arxiv' (used in metric names); any text key's
    '_<key>_document' ending (preprocessing names its output by the key) goes like '_text_document'."""
    name = re.sub(r"_[^_/]+_document$", "", os.path.basename(prefix.rstrip("/")))
    for suffix in ("_validation", "_valid", "_test", "_train"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name
