"""What a tokenized data prefix is called in metric names, mixtures and sweeps (light: no megatron)."""

import os


def component_name(prefix: str) -> str:
    """'.../arxiv_validation_text_document' -> 'arxiv' (used in metric names)."""
    name = os.path.basename(prefix.rstrip("/"))
    for suffix in ("_text_document", "_validation", "_valid", "_test", "_train"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name
