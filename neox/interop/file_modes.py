"""File modes that follow the umask, like those of files made with open() or torch.save.

safetensors' save_file creates its files 0600 and shutil.copy2 keeps the source's mode, so an
exported model would otherwise be readable by its owner only, on a cluster where others load it.
"""

from __future__ import annotations

import os


def current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


def follow_umask(tree: str) -> None:
    """Every file under ``tree`` gets mode 0666 & ~umask, every directory 0777 & ~umask."""
    mask = current_umask()
    os.chmod(tree, 0o777 & ~mask)
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)
