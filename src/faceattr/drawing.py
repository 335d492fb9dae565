"""Annotated copies of photos: each face's box, landmarks and a short label drawn on the photo,
written atomically under a name that never overwrites an input."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from faceattr.atomic import atomic_path
from faceattr.predictor import Face


def top_class(probs: dict[str, float] | None) -> str:
    """'name p' of the most likely class, '-' without a head."""
    if not probs:
        return "-"
    name = max(probs, key=probs.get)
    return f"{name} {probs[name]:.2f}"


ANNOTATE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}


def annotated_name(source: Path, folder: Path, used: set[str], inputs: set[Path]) -> Path:
    """folder/<name of the photo>, in a format Pillow writes (PNG otherwise); never one of the
    inputs, never a name already written in this run."""
    suffix = source.suffix.lower() if source.suffix.lower() in ANNOTATE_FORMATS else ".png"
    stem = source.name[: -len(source.suffix)] if source.suffix else source.name
    k = 1
    while True:
        name = f"{stem}{suffix}" if k == 1 else f"{stem}-{k}{suffix}"
        target = folder / name
        if name not in used and target.resolve() not in inputs:
            used.add(name)
            return target
        k += 1


def label_text(face: Face) -> str:
    """The short label drawn on a photo: gender, age, most likely ethnicity."""
    parts = []
    if face.gender:
        g = max(face.gender, key=face.gender.get)
        parts.append(f"{g} {face.gender[g]:.2f}")
    if face.age is not None:
        parts.append(f"{face.age:.0f} y")
    if face.ethnicity:
        parts.append(top_class(face.ethnicity))
    return " | ".join(parts)


def draw_faces(image: Image.Image, faces: list[Face]) -> Image.Image:
    """A copy of the RGB photo with each face's box, landmarks and label drawn on it."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    side = min(image.size)
    line = max(2, round(side / 300))
    font = ImageFont.load_default(size=max(11, round(side / 40)))
    for f in faces:
        x1, y1, x2, y2 = f.box
        draw.rectangle([x1, y1, x2, y2], outline=(255, 220, 0), width=line)
        if f.landmarks is not None:
            r = line
            for x, y in f.landmarks:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 255, 255))
        text = label_text(f)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 2 * line if y1 - th - 2 * line >= 0 else y1 + line  # above the box, inside if no room
        tx = min(max(0, x1), max(0, image.size[0] - tw - 2 * line))
        draw.rectangle([tx, ty, tx + tw + 2 * line, ty + th + 2 * line], fill=(0, 0, 0))
        draw.text((tx + line - left, ty + line - top), text, fill=(255, 255, 255), font=font)
    return image


def write_annotated(image: Image.Image, faces: list[Face], path: Path) -> Path:
    """Draw the faces on the photo and write it atomically, format chosen by the suffix."""
    fmt = ANNOTATE_FORMATS.get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        draw_faces(image, faces).save(tmp, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
    return path
