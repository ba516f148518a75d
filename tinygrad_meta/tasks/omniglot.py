"""Omniglot (Lake, Salakhutdinov and Tenenbaum, Science 2015) from the official files.

The loader reads what the user downloaded, from a folder they name; it never downloads.
That folder holds, as zips or unpacked folders (the zips unpack to a folder of the same name):

* the full set: ``images_background`` (964 characters, 30 alphabets) and
  ``images_evaluation`` (659 characters, 20 alphabets), or
* the minimal set: ``images_background_small1`` (136 characters, 5 alphabets) and
  ``images_background_small2`` (156 characters, 5 alphabets).

Each is laid out ``<set>/<Alphabet>/character<NN>/<id>_<NN>.png``: 20 drawings per
character, 105x105, 1-bit, black strokes on white.

Images. Every drawing is resized to ``image_size`` (28) with ``resample="nearest"``,
which gives what the MAML code (Finn et al. 2017, ``data/omniglot_resized/resize_images.py``)
and the ProtoNet code (Snell et al. 2017, ``protonets/data/omniglot.py``) train on: both
call Pillow's ``resize`` on the 1-bit image, and Pillow resizes 1-bit images by nearest
neighbour whatever filter is asked for (MAML asks for LANCZOS), so their 28x28 images
are binary. ``resample="lanczos"`` is the anti-aliased alternative (8-bit grey, then
LANCZOS). Both codes then invert the image (``1.0 - image``); so does this one: pixels
are float32 in [0, 1] with strokes 1.0 and paper 0.0. (In memory and in the cache they
are uint8 ink, 255 for a stroke; the episode sampler divides by 255.)

Splits (:func:`load_omniglot`):

* full: the split of the MAML code (``data_generator.py``): the 1,623 characters of both
  sets shuffled together (seed ``split_seed``), the first 1,200 for meta-training of which
  the last 100 are held out for validation, the remaining 423 for meta-testing. The
  counts follow Vinyals et al. (2016, "Matching networks"): 1,200 characters plus
  rotations to train, 423 to test. MAML's own order came from ``os.listdir`` and Python's
  ``random.seed(1)``, which no other machine reproduces; here the characters are sorted
  (background set first) and shuffled by ``numpy.random.default_rng(split_seed)``, so the
  counts are MAML's and the split is the same on every machine, but its characters are
  not MAML's. (ProtoNet's "vinyals" split files, which hold out whole alphabets, e.g.
  Hebrew and Armenian for validation, are not shipped here.)
* minimal: meta-train on small1 less ``num_val`` (20) characters held out for validation
  (chosen with ``split_seed``); meta-test on the alphabets of small2 that small1 lacks
  (Japanese_(katakana), Sanskrit, Tagalog: 106 characters). Greek and Latin, in both
  sets with identical drawings, are left out of the test split.

Rotations. With ``rotations="train"`` (the default) every meta-train character is four
classes, at 0, 90, 180 and 270 degrees (Vinyals et al. 2016), and validation and test
classes are upright. Both codes rotate their evaluation classes too (ProtoNet's
``splits/vinyals/val.txt`` lists rot000..rot270 classes; MAML rotates meta-test classes
at random): ``rotations="all"`` does that, ``"none"`` rotates nothing.

Caching. Decoding is done once per source: the arrays go to a ``.npz`` in ``cache_dir``
(default :func:`default_cache_dir`; ``False`` for none), keyed on the source's size and
modification time (every PNG's, for a folder), the resize settings and a format version.
A cache that does not match, or does not load, is rebuilt, never trusted.

>>> splits = load_omniglot("~/data/omniglot")                          # doctest: +SKIP
>>> splits.train.num_classes, splits.val.num_classes, splits.test.num_classes  # doctest: +SKIP
(4400, 100, 423)
>>> sampler = EpisodeSampler(splits.train, ways=5, shots=1, queries=15, meta_batch_size=32, seed=0)  # doctest: +SKIP
>>> sampler.sample().support_x.shape                                   # doctest: +SKIP
(32, 5, 1, 28, 28)
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .episodes import ClassPool, EpisodeSampler, FewShotSplits, split_rotations

__all__ = ["FULL_SETS", "MINIMAL_SETS", "OmniglotSet", "default_cache_dir", "load_set", "find_sets",
           "load_omniglot", "EpisodeSampler"]

FULL_SETS = ("images_background", "images_evaluation")
MINIMAL_SETS = ("images_background_small1", "images_background_small2")
RESAMPLE_MODES = ("nearest", "lanczos")
CACHE_FORMAT = 1      # bump when the decoded arrays would change for the same source
_DRAWING_NAME = re.compile(r"^\d+_\d+\.png$", re.IGNORECASE)
_LAYOUT = "<set>/<Alphabet>/<character>/<id>_<NN>.png"


@dataclass(frozen=True)
class OmniglotSet:
    """One decoded Omniglot set: ``images`` uint8 (characters, drawings, size, size), ink 255
    on paper 0, and ``names`` ("<Alphabet>/<character>", sorted) for its characters."""
    images: np.ndarray
    names: tuple
    source: str

    @property
    def alphabets(self) -> tuple:
        """The sorted alphabet names."""
        return tuple(sorted({name.split("/")[0] for name in self.names}))

    def alphabet_of(self) -> np.ndarray:
        """The alphabet of every character, a str array (characters,)."""
        return np.array([name.split("/")[0] for name in self.names])

    def pool(self, indices=None, rotations=(0,), name="pool") -> ClassPool:
        """A :class:`ClassPool` of the characters at ``indices`` (default all, in order)."""
        indices = np.arange(len(self.names)) if indices is None else np.asarray(indices, dtype=np.int64)
        return ClassPool(self.images[indices], tuple(self.names[i] for i in indices), rotations, name)


def default_cache_dir() -> Path:
    """Where decoded sets are cached: ``$TGM_CACHE_DIR/omniglot``, else
    ``$XDG_CACHE_HOME/tinygrad_meta/omniglot``, else ``~/.cache/tinygrad_meta/omniglot``."""
    if os.environ.get("TGM_CACHE_DIR"):
        return Path(os.environ["TGM_CACHE_DIR"]).expanduser() / "omniglot"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "tinygrad_meta" / "omniglot"


def _pillow_image():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError('decoding the Omniglot PNGs needs Pillow, the optional "vision" extra: '
                          'pip install "tinygrad-meta[vision]" (from a checkout: pip install -e ".[vision]")'
                          ) from None
    return Image


# ---------------------------------------------------------------------------------------------
# Reading a source: which drawings it holds (validating the layout), and their bytes


class _Source:
    """A zip or a folder holding one set; ``drawings`` maps "<Alphabet>/<character>" to the
    sorted keys (zip members or file paths) of its PNGs."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self.kind = "folder"
            self.root = _set_root(path)
            self.drawings = _group(self.root, [p.relative_to(self.root).as_posix()
                                          for p in sorted(self.root.glob("*/*/*")) if p.is_file()])
        else:
            self.kind = "zip"
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [info.filename for info in archive.infolist() if not info.is_dir()]
            except (zipfile.BadZipFile, OSError) as error:
                raise ValueError(f"{path} is not a readable zip file ({error})") from None
            self.drawings = _group_zip(path, members)

    def signature(self) -> dict:
        """Size and modification time of what was read: the zip, or every PNG of a folder."""
        if self.kind == "zip":
            stat = self.path.stat()
            return {"zip": str(self.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        digest = hashlib.sha256()
        for keys in self.drawings.values():
            for key in keys:
                stat = os.stat(key)
                digest.update(f"{key}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"folder": str(self.path), "files": digest.hexdigest()}

    def read_all(self):
        """Yield (character name, drawing label, PNG bytes) in order."""
        if self.kind == "zip":
            with zipfile.ZipFile(self.path) as archive:
                for name, members in self.drawings.items():
                    for member in members:
                        label = f"{member} in {self.path}"
                        try:
                            data = archive.read(member)
                        except (zipfile.BadZipFile, OSError, EOFError) as error:   # e.g. a bad CRC
                            raise ValueError(f"{label}: unreadable zip member ({error})") from None
                        yield name, label, data
        else:
            for name, paths in self.drawings.items():
                for path in paths:
                    yield name, path, Path(path).read_bytes()


def _set_root(folder: Path) -> Path:
    """The folder that holds the alphabets: ``folder`` itself, or its only subfolder when an
    unzip tool nested the set one level deeper (``images_background/images_background/...``)."""
    def has_drawings(candidate):
        return any(p.suffix.lower() == ".png" for p in candidate.glob("*/*/*"))

    if has_drawings(folder):
        return folder
    children = [child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")]
    if len(children) == 1 and has_drawings(children[0]):
        return children[0]
    raise ValueError(f"{folder} is not an Omniglot set folder: expected <Alphabet>/<character>/<id>_<NN>.png "
                     f"files inside it")


def _hidden(parts) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _group(folder: Path, relative_paths) -> dict:
    drawings = {}
    for relative in relative_paths:
        parts = relative.split("/")
        if _hidden(parts) or not parts[-1].lower().endswith(".png"):
            continue              # Thumbs.db, .DS_Store and the like
        if not _DRAWING_NAME.match(parts[-1]):
            raise ValueError(f"{folder / relative} does not look like Omniglot: drawings are named <id>_<NN>.png")
        drawings.setdefault(f"{parts[0]}/{parts[1]}", []).append(str(folder / relative))
    if not drawings:
        raise ValueError(f"{folder} is not an Omniglot set folder: no <Alphabet>/<character>/<id>_<NN>.png files")
    return _check_counts(folder, drawings)


def _group_zip(path: Path, members) -> dict:
    drawings, roots, examples = {}, set(), []
    for member in members:
        parts = member.split("/")
        if _hidden(parts) or not parts[-1].lower().endswith(".png"):
            examples.append(member)
            continue
        if len(parts) != 4 or not _DRAWING_NAME.match(parts[-1]):
            raise ValueError(f"{path} is not an Omniglot zip: member {member!r} is not laid out as {_LAYOUT}")
        roots.add(parts[0])
        drawings.setdefault(f"{parts[1]}/{parts[2]}", []).append(member)
    if not drawings:
        raise ValueError(f"{path} is not an Omniglot zip: no members laid out as {_LAYOUT} among its "
                         f"{len(members)} files (e.g. {examples[:3]})")
    if len(roots) > 1:
        raise ValueError(f"{path} is not an Omniglot zip: it holds several top folders {sorted(roots)}")
    return _check_counts(path, drawings)


def _check_counts(where, drawings: dict) -> dict:
    drawings = {name: sorted(keys) for name, keys in sorted(drawings.items())}
    counts = {len(keys) for keys in drawings.values()}
    if len(counts) > 1:
        usual = max(counts, key=lambda c: sum(len(k) == c for k in drawings.values()))
        odd = next(name for name, keys in drawings.items() if len(keys) != usual)
        raise ValueError(f"{where}: character {odd} has {len(drawings[odd])} drawings, most have {usual}; "
                         f"every character needs the same number")
    return drawings


# ---------------------------------------------------------------------------------------------
# Decoding and caching


def _decode(image_module, data: bytes, label: str, image_size: int, resample: str) -> np.ndarray:
    try:
        with image_module.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ValueError(f"a {image.format} image, not a PNG")
            # 8-bit grey first: Pillow would resize a 1-bit image by nearest neighbour whatever
            # filter is asked for; "nearest" on grey gives exactly the same pixels
            grey = image.convert("L")
    except Exception as error:        # Pillow raises OSError, SyntaxError, ValueError... for broken files
        raise ValueError(f"{label}: corrupt or unreadable PNG ({type(error).__name__}: {error})") from None
    if grey.size != (image_size, image_size):
        method = image_module.Resampling.NEAREST if resample == "nearest" else image_module.Resampling.LANCZOS
        grey = grey.resize((image_size, image_size), resample=method)
    return 255 - np.asarray(grey, dtype=np.uint8)


def _decode_source(source: _Source, image_size: int, resample: str) -> np.ndarray:
    image_module = _pillow_image()
    row_of = {name: row for row, name in enumerate(source.drawings)}
    per_character = len(next(iter(source.drawings.values())))
    images = np.empty((len(row_of), per_character, image_size, image_size), dtype=np.uint8)
    filled = [0] * len(row_of)
    for name, label, data in source.read_all():
        row = row_of[name]
        images[row, filled[row]] = _decode(image_module, data, label, image_size, resample)
        filled[row] += 1
    return images


def _cache_file(cache_dir: Path, path: Path, image_size: int, resample: str) -> Path:
    # one file per (source path, settings): a changed source overwrites its own entry
    where = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    stem = path.name[:-4] if path.name.lower().endswith(".zip") else path.name
    return cache_dir / f"{stem}-{image_size}px-{resample}-{where}.npz"


def _read_cache(file: Path, key: str):
    try:
        with np.load(file, allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                return None
            images, names = saved["images"], tuple(str(n) for n in saved["names"])
    except Exception:                 # missing, truncated, not an npz...: rebuild it
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(names):
        return None
    return images, names


def _write_cache(file: Path, key: str, images: np.ndarray, names) -> None:
    temporary = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            np.savez(handle, key=np.array(key), images=images, names=np.array(names))
        os.replace(temporary, file)      # readers never see a half-written cache
    except OSError as error:
        warnings.warn(f"could not write the Omniglot cache {file} ({error}); decoding again next time")
        temporary.unlink(missing_ok=True)


def load_set(source, image_size: int = 28, resample: str = "nearest", cache_dir=None) -> OmniglotSet:
    """Decode one Omniglot set from its zip or unpacked folder, through the cache.

    In: ``source``, e.g. ``".../images_background.zip"`` or ``".../images_background"``;
    ``image_size`` (28); ``resample``, "nearest" (MAML's and ProtoNet's pixels) or
    "lanczos"; ``cache_dir`` (None: :func:`default_cache_dir`, False: no cache).
    Out: an :class:`OmniglotSet`. Errors: FileNotFoundError for a missing path, ValueError
    for a file that is not an Omniglot zip or folder and for a corrupt PNG (naming it),
    ImportError naming the "vision" extra when decoding is needed and Pillow is missing.

    >>> images = load_set("~/data/omniglot/images_background_small1.zip")   # doctest: +SKIP
    >>> images.images.shape, images.names[0]                                 # doctest: +SKIP
    ((136, 20, 28, 28), 'Balinese/character01')
    """
    if resample not in RESAMPLE_MODES:
        raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"Omniglot set {path} does not exist")
    data = _Source(path)
    key = json.dumps({"format": CACHE_FORMAT, "source": data.signature(), "image_size": image_size,
                      "resample": resample}, sort_keys=True)
    file = None
    if cache_dir is not False:
        cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        file = _cache_file(cache_dir, path, image_size, resample)
        cached = _read_cache(file, key)
        if cached is not None and cached[1] == tuple(data.drawings):
            return OmniglotSet(cached[0], cached[1], str(path))
    images = _decode_source(data, image_size, resample)
    names = tuple(data.drawings)
    if file is not None:
        _write_cache(file, key, images, names)
    return OmniglotSet(images, names, str(path))


# ---------------------------------------------------------------------------------------------
# Finding the sets and splitting them


def find_sets(data_dir) -> dict:
    """The official sets found in ``data_dir``: {set name: path of its zip or folder}.
    An unpacked folder is preferred to a zip of the same name."""
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Omniglot data folder {folder} does not exist"
                                if not folder.exists() else f"Omniglot data folder {folder} is not a folder")
    found = {}
    for name in FULL_SETS + MINIMAL_SETS:
        if (folder / name).is_dir():
            found[name] = folder / name
        elif (folder / f"{name}.zip").is_file():
            found[name] = folder / f"{name}.zip"
    return found


def _choose_variant(data_dir, found: dict, variant: str) -> str:
    wanted = {"full": FULL_SETS, "minimal": MINIMAL_SETS}
    if variant == "auto":
        for candidate in ("full", "minimal"):
            if all(name in found for name in wanted[candidate]):
                return candidate
        have = ", ".join(str(path.name) for path in found.values()) or "nothing of Omniglot"
        raise FileNotFoundError(
            f"{data_dir} holds neither the full Omniglot set (images_background and images_evaluation, "
            f"as .zip or unpacked) nor the minimal one (images_background_small1 and "
            f"images_background_small2); it has {have}")
    if variant not in wanted:
        raise ValueError(f"variant must be 'auto', 'full' or 'minimal', got {variant!r}")
    missing = [name for name in wanted[variant] if name not in found]
    if missing:
        raise FileNotFoundError(f"{data_dir} lacks {', '.join(missing)} (.zip or unpacked folder) for the "
                                f"{variant} Omniglot set")
    return variant


def load_omniglot(data_dir, variant: str = "auto", image_size: int = 28, resample: str = "nearest",
                  cache_dir=None, rotations: str = "train", split_seed: int = 1, num_train: int = 1100,
                  num_val: int | None = None) -> FewShotSplits:
    """Meta-train, validation and meta-test class pools from the Omniglot files in ``data_dir``.

    In: ``data_dir`` holding the full or the minimal set (see the module docstring);
    ``variant`` "auto" (full when present, else minimal), "full" or "minimal";
    ``image_size``, ``resample``, ``cache_dir`` as :func:`load_set`; ``rotations``
    "train", "all" or "none" (:func:`split_rotations`); ``split_seed``;
    ``num_train`` (full set only, default 1,100) and ``num_val`` (default 100 for the full
    set, 20 for the minimal one) characters. Out: a :class:`FewShotSplits` of ClassPools.

    >>> splits = load_omniglot("~/data/omniglot", variant="minimal")     # doctest: +SKIP
    >>> [splits[s].num_classes for s in ("train", "val", "test")]         # doctest: +SKIP
    [464, 20, 106]
    """
    found = find_sets(data_dir)
    variant = _choose_variant(data_dir, found, variant)
    turns = split_rotations(rotations)

    def load(name):
        return load_set(found[name], image_size, resample, cache_dir)

    if variant == "full":
        return _full_splits(load(FULL_SETS[0]), load(FULL_SETS[1]), turns, split_seed, num_train,
                            100 if num_val is None else num_val)
    return _minimal_splits(load(MINIMAL_SETS[0]), load(MINIMAL_SETS[1]), turns, split_seed,
                           20 if num_val is None else num_val)


def _full_splits(background, evaluation, turns, split_seed, num_train, num_val) -> FewShotSplits:
    if background.images.shape[1:] != evaluation.images.shape[1:]:
        raise ValueError(f"{background.source} holds {background.images.shape[1:]} (drawings, H, W) per "
                         f"character, {evaluation.source} holds {evaluation.images.shape[1:]}")
    both = OmniglotSet(np.concatenate([background.images, evaluation.images]),
                       background.names + evaluation.names, f"{background.source} + {evaluation.source}")
    total = len(both.names)
    _check_split_sizes(total, num_train, num_val, "the full set")
    order = np.random.default_rng(split_seed).permutation(total)
    train, val, test = (np.sort(part) for part in np.split(order, [num_train, num_train + num_val]))
    description = (f"Omniglot full set: {num_train} meta-train, {num_val} validation and {len(test)} meta-test "
                   f"characters ({_rotation_note(turns)}); the MAML code's split sizes "
                   f"(Finn et al. 2017, after Vinyals et al. 2016), shuffled with split_seed={split_seed}")
    return FewShotSplits(both.pool(train, turns[0], "train"), both.pool(val, turns[1], "val"),
                         both.pool(test, turns[2], "test"), description)


def _minimal_splits(small1, small2, turns, split_seed, num_val) -> FewShotSplits:
    _check_split_sizes(len(small1.names), 1, num_val, MINIMAL_SETS[0], test_split=False)
    order = np.random.default_rng(split_seed).permutation(len(small1.names))
    val, train = np.sort(order[:num_val]), np.sort(order[num_val:])
    new_alphabets = sorted(set(small2.alphabets) - set(small1.alphabets))
    if not new_alphabets:
        raise ValueError(f"{small2.source} has no alphabet that {small1.source} lacks: nothing to meta-test on")
    test = np.flatnonzero(np.isin(small2.alphabet_of(), new_alphabets))
    description = (f"Omniglot minimal set: meta-train on {len(train)} characters of {MINIMAL_SETS[0]} "
                   f"({num_val} more held out for validation), meta-test on the alphabets of "
                   f"{MINIMAL_SETS[1]} it lacks ({', '.join(new_alphabets)}: {len(test)} characters); "
                   f"{_rotation_note(turns)}")
    return FewShotSplits(small1.pool(train, turns[0], "train"), small1.pool(val, turns[1], "val"),
                         small2.pool(test, turns[2], "test"), description)


def _rotation_note(turns) -> str:
    rotated = [split for split, angles in zip(("meta-train", "validation", "meta-test"), turns) if len(angles) > 1]
    return f"{', '.join(rotated)} characters x 4 rotations" if rotated else "no rotations"


def _check_split_sizes(total: int, num_train: int, num_val: int, what: str, test_split: bool = True) -> None:
    for value, name in ((num_train, "num_train"), (num_val, "num_val")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_train + num_val + test_split > total:
        rest = " and a test split" if test_split else ""
        raise ValueError(f"{what} has {total} characters: not enough for {num_train} meta-train + "
                         f"{num_val} validation characters{rest}")
