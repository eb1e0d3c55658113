"""A user's image folder, as datasets' ``imagefolder`` reads it, written from the shipped digits: one subfolder per
class and a ``metadata.jsonl`` with each image's caption (``"a handwritten seven"``) and label (with metadata,
imagefolder takes no labels from the subfolders)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from hfgen.data.captions import caption
from hfgen.data.images import load_images, to_uint8


def digit_image_folder(folder: Path, count: int = 40) -> Path:
    """``count`` training digits as PNG files under ``folder/train/<digit>/``, captions in
    ``folder/train/metadata.jsonl``."""
    data = load_images("digits")
    root = folder / "train"
    rows = []
    for index, (pixels, label) in enumerate(zip(to_uint8(data.train_images[:count]), data.train_labels[:count])):
        name = f"{int(label)}/{index}.png"
        (root / str(int(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(pixels[:, :, 0])).save(root / name)
        rows.append({"file_name": name, "text": caption(int(label)), "label": int(label)})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
