"""Where the cases are: the flat layout and grand-challenge's ``images/<slug>/`` layout, and where each mask goes.

The package docstring (:mod:`sam_nnunet.submission`) states both layouts; :func:`find_cases` picks one.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from sam_nnunet.submission.images import (CHANNEL_SUFFIX, DEFAULT_OUTPUT_SLUG, FLAT, GRAND_CHALLENGE,
                                          GRAND_CHALLENGE_EXTENSIONS, INPUT_SLUGS_ENV, SubmissionError,
                                          split_extension)


@dataclass(frozen=True)
class Case:
    """One prediction: its input files in channel order and the mask it writes."""
    name: str
    files: Tuple[Path, ...]
    output: Path


def input_files(folder: Path, extensions: Sequence[str]) -> List[Path]:
    """The files in ``folder`` with one of ``extensions``, sorted by name; other files are named in a note. An entry
    with one of ``extensions`` that is not a readable regular file (a folder, a dangling symbolic link, a link loop)
    is an error: skipping it would give fewer masks than inputs."""
    files, others = [], []
    for p in sorted(folder.iterdir()):
        if split_extension(p.name, extensions)[1]:
            problem = not_a_readable_file(p)
            if problem:
                raise SubmissionError(f"input {p.name} is {problem} ({folder}); every entry named like an input "
                                      f"image must be a readable file")
            files.append(p)
        elif p.is_file():
            others.append(p)
    if others:
        shown = ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else "")
        print(f"note: ignoring {len(others)} file(s) in {folder} that are not {', '.join(extensions)}: {shown}")
    return files


def not_a_readable_file(path: Path) -> str:
    """Why ``path`` cannot be read as an image file, or '' if it can."""
    if path.is_symlink() and not path.exists():  # exists() follows the link: False for a missing target or a loop
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 on a loop
            return "a symbolic link loop"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "a symbolic link loop"
        return f"a symbolic link to a missing file ({os.readlink(path)})"
    if path.is_dir():
        return "a folder"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable (permissions)"
    return ""


def group_channels(files: Sequence[Path], files_per_case: int, extensions: Sequence[str]) -> Dict[str, List[Path]]:
    """Flat layout: case name -> its channel files in channel order (nnU-Net's CASE_XXXX naming)."""
    cases: Dict[str, List[Path]] = {}
    if files_per_case == 1:
        for f in files:
            stem = split_extension(f.name, extensions)[0]
            m = CHANNEL_SUFFIX.match(stem)
            case = m.group("case") if m and m.group("channel") == "0000" else stem
            if case in cases:
                raise SubmissionError(f"two inputs map to case {case!r}: {cases[case][0].name} and {f.name}; keep one")
            cases[case] = [f]
        return cases
    by_case: Dict[str, Dict[int, Path]] = {}
    for f in files:
        stem, ext = split_extension(f.name, extensions)
        m = CHANNEL_SUFFIX.match(stem)
        if not m:
            raise SubmissionError(f"{f.name}: this model takes {files_per_case} channels per case, named "
                                  f"CASE_0000{ext} ... CASE_{files_per_case - 1:04d}{ext}")
        by_case.setdefault(m.group("case"), {})[int(m.group("channel"))] = f
    for case, channels in by_case.items():
        if sorted(channels) != list(range(files_per_case)):
            raise SubmissionError(f"case {case!r} has channel files {sorted(channels)}; the model expects "
                                  f"{list(range(files_per_case))}")
        cases[case] = [channels[i] for i in range(files_per_case)]
    return cases


def flat_cases(input_dir: Path, output_dir: Path, images) -> List[Case]:
    files = input_files(input_dir, images.extensions)
    if not files:
        raise SubmissionError(f"input folder {input_dir} holds no {', '.join(images.extensions)} files (for the "
                              f"grand-challenge layout, put them in {input_dir}/images/<slug>/)")
    cases = []
    for name, channel_files in group_channels(files, images.files_per_case, images.extensions).items():
        extension = split_extension(channel_files[0].name, images.extensions)[1]
        cases.append(Case(name, tuple(channel_files), output_dir / (name + images.mask_extension(extension))))
    return cases


def input_slugs_for(images_dir: Path, given: Sequence[str], images) -> List[str]:
    """The input slugs in channel order: ``given``, or the only folder under ``images_dir``."""
    available = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    how = (f"the model takes {images.describe_case()}: give --input-slug once per channel file, in channel order, "
           f"or set {INPUT_SLUGS_ENV}=SLUG[,SLUG...]")
    if not given:
        if len(available) != 1:
            raise SubmissionError(f"{images_dir} holds {len(available)} input folders {available}, so the input "
                                  f"slug is ambiguous; {how}")
        given = available
    missing = [s for s in given if s not in available]
    if missing:
        raise SubmissionError(f"input slug(s) {missing} not found: {images_dir} holds {available}; {how}")
    if len(given) != images.files_per_case:
        raise SubmissionError(f"got {len(given)} input slug(s) {list(given)}; {how}")
    return list(given)


def grand_challenge_cases(input_dir: Path, output_dir: Path, images, input_slugs: Sequence[str],
                          output_slug: str) -> List[Case]:
    if not output_slug or output_slug in (".", "..") or "/" in output_slug or "\\" in output_slug:
        raise SubmissionError(f"output slug {output_slug!r} must be one folder name: the slug of the algorithm's "
                              f"output interface (default {DEFAULT_OUTPUT_SLUG!r})")
    extensions = tuple(dict.fromkeys(images.extensions + GRAND_CHALLENGE_EXTENSIONS))
    slugs = input_slugs_for(input_dir / "images", input_slugs, images)
    per_slug = [input_files(input_dir / "images" / slug, extensions) for slug in slugs]
    counts = [len(files) for files in per_slug]
    if not all(counts):
        raise SubmissionError(f"{input_dir / 'images' / slugs[counts.index(0)]} holds no {', '.join(extensions)} files")
    if len(set(counts)) > 1:
        raise SubmissionError("cannot pair the channel files: " + ", ".join(
            f"images/{s}/ holds {n}" for s, n in zip(slugs, counts)) + "; grand-challenge gives one file per input "
            "interface; with several, every slug must hold as many files (they are paired by sorted name)")
    groups = list(zip(*per_slug))
    if len(slugs) > 1 and len(groups) > 1:
        print("note: several files per slug, paired by sorted file name: "
              + "; ".join(" + ".join(f.name for f in group) for group in groups))
    masks = output_dir / "images" / output_slug
    return [Case(stem, group, masks / f"{stem}.mha")
            for group in groups for stem in [split_extension(group[0].name, extensions)[0]]]


def find_cases(layout: str, input_dir: Path, output_dir: Path, images, input_slugs: Sequence[str],
               output_slug: str) -> Tuple[str, List[Case]]:
    """(the layout used, its cases); ``layout`` 'auto' is grand-challenge when INPUT/images/ exists."""
    if not input_dir.is_dir():
        raise SubmissionError(f"input folder {input_dir} does not exist")
    has_images = (input_dir / "images").is_dir()
    if layout == "auto":
        layout = GRAND_CHALLENGE if has_images else FLAT
    if layout == FLAT:
        if input_slugs:
            print(f"note: flat layout; the input slugs {list(input_slugs)} are not used")
        return layout, flat_cases(input_dir, output_dir, images)
    if not has_images:
        raise SubmissionError(f"the grand-challenge layout reads {input_dir}/images/<slug>/; {input_dir} has no "
                              f"images/ folder")
    return layout, grand_challenge_cases(input_dir, output_dir, images, input_slugs, output_slug)


def check_outputs(cases: Sequence[Case], output_dir: Path, overwrite: bool) -> None:
    """No two cases may write one mask, and no mask may exist already unless ``overwrite``."""
    writer: Dict[Path, Case] = {}
    for case in cases:
        if case.output in writer:
            raise SubmissionError(f"{writer[case.output].files[0].name} and {case.files[0].name} would both be "
                                  f"written to {case.output.relative_to(output_dir)}; keep one of them")
        writer[case.output] = case
    existing = [str(c.output.relative_to(output_dir)) for c in cases if c.output.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:10]) + (f" and {len(existing) - 10} more" if len(existing) > 10 else "")
        raise SubmissionError(f"{len(existing)} mask(s) already exist in {output_dir}: {shown}; pass --overwrite to "
                              f"replace them, or choose an empty output folder")
