"""Tiny Omniglot look-alikes for the tests, in the official layout.

``write_omniglot_fixture(root)`` writes ``images_background_small1.zip`` and
``images_background_small2.zip`` (or, with ``layout=FULL_LAYOUT``, ``images_background.zip``
and ``images_evaluation.zip``) holding a few alphabets of random-stroke characters:
``<set>/<Alphabet>/character<NN>/<id>_<NN>.png``, 105x105, 1-bit, black strokes on white,
stored uncompressed as the official zips are. A character's drawings depend only on
(seed, alphabet, character), so an alphabet in two sets (Greek and Latin, as in the real
minimal sets) has the same drawings in both.

>>> root = write_omniglot_fixture(tmp_path)          # doctest: +SKIP
>>> sorted(p.name for p in root.iterdir())            # doctest: +SKIP
['images_background_small1.zip', 'images_background_small2.zip']
"""
from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# characters per alphabet: the real sets' alphabets, a few characters each
MINIMAL_LAYOUT = {
    # 26 characters: enough for the default 20 validation characters and a few to train on
    "images_background_small1": {"Balinese": 6, "Early_Aramaic": 5, "Greek": 5, "Korean": 5, "Latin": 5},
    "images_background_small2": {"Greek": 5, "Japanese_(katakana)": 4, "Latin": 5, "Sanskrit": 3,
                                 "Tagalog": 2},
}
FULL_LAYOUT = {
    "images_background": {"Alphabet_of_the_Magi": 4, "Bengali": 5, "Futurama": 4, "Tifinagh": 3},
    "images_evaluation": {"Angelic": 3, "Kannada": 4, "Oriya": 3},
}
SIZE = 105


def _rng(seed, alphabet, character):
    # zlib.crc32, not hash(): str hashes change from one process to the next
    return np.random.default_rng([seed, zlib.crc32(f"{alphabet}/{character}".encode())])


def character_pngs(alphabet: str, character: str, drawings: int = 20, seed: int = 0) -> list:
    """PNG bytes of ``drawings`` drawings of one random-stroke character."""
    rng = _rng(seed, alphabet, character)
    strokes = [rng.uniform(15, 90, size=(rng.integers(2, 5), 2)) for _ in range(rng.integers(1, 4))]
    pngs = []
    for _ in range(drawings):
        image = Image.new("1", (SIZE, SIZE), 1)            # white paper
        pen = ImageDraw.Draw(image)
        for stroke in strokes:
            points = stroke + rng.normal(0, 3, size=stroke.shape)
            pen.line([tuple(p) for p in points], fill=0, width=int(rng.integers(3, 6)))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def write_omniglot_fixture(root, layout=MINIMAL_LAYOUT, drawings: int = 20, unpacked: bool = False,
                           seed: int = 0) -> Path:
    """Write one zip (or, with ``unpacked``, one folder) per set of ``layout`` into ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for set_name, alphabets in layout.items():
        files = {}
        for alphabet, count in alphabets.items():
            for number in range(1, count + 1):
                character = f"character{number:02d}"
                drawer = zlib.crc32(f"{alphabet}/{character}".encode()) % 10000
                for n, png in enumerate(character_pngs(alphabet, character, drawings, seed), start=1):
                    files[f"{set_name}/{alphabet}/{character}/{drawer:04d}_{n:02d}.png"] = png
        if unpacked:
            for name, png in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(png)
        else:
            with zipfile.ZipFile(root / f"{set_name}.zip", "w", zipfile.ZIP_STORED) as archive:
                folders = sorted({name.rsplit("/", i)[0] + "/" for name in files for i in (1, 2, 3)})
                for folder in folders:                    # the official zips list their folders too
                    archive.writestr(folder, b"")
                for name, png in files.items():
                    archive.writestr(name, png)
    return root
