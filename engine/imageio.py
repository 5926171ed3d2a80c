"""Reading and writing image files for the CLI, keeping bit depth.

Images inside the engine are float32 H×W×C arrays in [0, 1] (C = 1 grey, 2 grey+alpha,
3 RGB, 4 RGBA). Files remember their sample type (``u8``/``u16``/``f32``) so that a 16-bit
PNG comes back out as a 16-bit PNG: Pillow reduces 16-bit colour PNGs to 8 bits, so those
go through pypng; TIFF goes through tifffile.

Metadata goes with the result (`FileMetadata`): an embedded ICC colour profile (a phone's
Display P3, a camera's Adobe RGB), because the pixels are processed as stored and so still
mean colours in the source's space — without it viewers show other colours; and the EXIF
record (camera, date taken, …), with its orientation set to upright (the pixels were turned
upright on reading) and its pixel dimensions set to the result's.
"""
from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WRITABLE = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".bmp"}
_MAX_FOR_DTYPE = {"u8": 255.0, "u16": 65535.0}
CONVERSION_BAND_BYTES = 16 << 20  # float temporaries of from_float stay this small
TIFF_ICC_PROFILE_TAG = 34675  # InterColorProfile
EXIF_ORIENTATION, EXIF_IFD = 0x0112, 0x8769
EXIF_PIXEL_X_DIMENSION, EXIF_PIXEL_Y_DIMENSION = 0xA002, 0xA003
EXIF_HEADER = b"Exif\0\0"  # Pillow's EXIF bytes start with it; a PNG eXIf chunk does not


@dataclass(frozen=True)
class FileMetadata:
    icc_profile: bytes | None = None  # the file's colour profile, when it fits the pixels
    exif: bytes | None = None  # the file's EXIF record as Pillow writes it (EXIF_HEADER first)


@dataclass
class LoadedImage:
    pixels: np.ndarray  # float32 H×W×C in [0, 1] (f32 sources may exceed it)
    sample_type: str  # "u8", "u16" or "f32": what the file stored
    metadata: FileMetadata = FileMetadata()
    # A JPEG's quantisation tables as engine.jpeg_consistency writes them ("" for other files).
    jpeg_tables: str = ""

    @property
    def has_alpha(self) -> bool:
        return self.pixels.shape[2] in (2, 4)


def to_float(pixels: np.ndarray) -> np.ndarray:
    """Integer or float samples → float32 in [0, 1] (H×W×C)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    if pixels.dtype.kind == "f":
        return pixels.astype(np.float32)
    raise BadInput(f"unsupported sample type {pixels.dtype}")


def from_float(pixels: np.ndarray, sample_type: str) -> np.ndarray:
    """float32 [0, 1] → the given sample type, rounding to nearest."""
    if sample_type == "f32":
        return pixels.astype(np.float32)
    top = _MAX_FOR_DTYPE[sample_type]
    dtype = np.uint8 if sample_type == "u8" else np.uint16
    out = np.empty(pixels.shape, dtype)
    # In row bands: a whole-image float temporary would double the peak memory of a big upscale.
    rows = max(1, CONVERSION_BAND_BYTES // max(1, pixels[:1].size * 4))
    for top_row in range(0, pixels.shape[0], rows):
        band = pixels[top_row:top_row + rows] * top
        np.rint(band, out=band)
        np.clip(band, 0, top, out=band)
        out[top_row:top_row + rows] = band
    return out


def _png_bit_depth(path: Path) -> int:
    with path.open("rb") as handle:
        head = handle.read(26)
    return head[24] if head.startswith(PNG_SIGNATURE) and len(head) >= 26 else 8


def profile_fits(profile: bytes | None, channels: int) -> bool:
    """Is ``profile`` an ICC profile for pixels of this many channels? (Its header's colour
    space: 'GRAY' for grey (+ alpha), 'RGB ' for colour; a CMYK file's profile does not
    describe the RGB we convert it to.)"""
    if not profile or len(profile) < 128:
        return False
    return profile[16:20] == (b"GRAY" if channels <= 2 else b"RGB ")


def _pillow_metadata(path: Path) -> tuple[bytes | None, bytes | None]:
    """The file's ICC profile and EXIF record, as Pillow reads them (None where absent)."""
    from PIL import Image

    with Image.open(path) as img:  # reads the header and metadata, not the pixels
        exif = img.getexif()
        return img.info.get("icc_profile"), (exif.tobytes() if len(exif) else None)


def _jpeg_tables(path: Path) -> str:
    from PIL import Image

    from .jpeg_consistency import tables_from_pillow

    with Image.open(path) as img:  # the header: tables and sampling, not the pixels
        return tables_from_pillow(img)


def exif_for_result(exif: bytes | None, width: int, height: int) -> bytes | None:
    """The source's EXIF record made true of the result: upright (the reader applied the
    orientation to the pixels) and, where it states them, the result's pixel dimensions."""
    if not exif:
        return None
    from PIL import Image

    record = Image.Exif()
    try:
        record.load(exif)
    except Exception:  # noqa: BLE001 - a damaged EXIF record is dropped, never fatal
        return None
    if EXIF_ORIENTATION in record:
        record[EXIF_ORIENTATION] = 1
    if EXIF_IFD in record:
        details = record.get_ifd(EXIF_IFD)
        for tag, value in ((EXIF_PIXEL_X_DIMENSION, width), (EXIF_PIXEL_Y_DIMENSION, height)):
            if tag in details:
                details[tag] = value
    return record.tobytes()


def _read_png16(path: Path) -> np.ndarray:
    import png  # pypng

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    return data.reshape(height, width, planes)


def _read_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(img, dtype=np.uint16)
        if img.mode == "F":
            return np.asarray(img, dtype=np.float32)
        if img.mode == "I":
            return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
        has_alpha = "A" in img.getbands() or "transparency" in img.info
        grey = img.mode in ("1", "L", "LA") or (img.mode == "P" and _palette_is_grey(img))
        target = ("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB")
        return np.asarray(img.convert(target), dtype=np.uint8)


def _palette_is_grey(img) -> bool:
    palette = np.asarray(img.convert("RGB"))
    return bool(np.all(palette[..., 0] == palette[..., 1]) and np.all(palette[..., 1] == palette[..., 2]))


def read_image(path: str | Path) -> LoadedImage:
    """Load PNG/TIFF/JPEG/WebP/BMP; raise BadInput with a readable reason on failure."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"input file not found: {path}")
    jpeg_tables = ""
    try:
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tiff:
                raw = tiff.asarray()
                tag = tiff.pages[0].tags.get(TIFF_ICC_PROFILE_TAG)
                profile, exif = (bytes(tag.value) if tag is not None else None), None
            if raw.ndim == 3 and raw.shape[0] in (1, 2, 3, 4) and raw.shape[2] > 4:
                raw = np.moveaxis(raw, 0, -1)  # planar TIFF
        elif _png_bit_depth(path) == 16:
            raw = _read_png16(path)
            profile, exif = _pillow_metadata(path)
        else:
            raw = _read_with_pillow(path)
            profile, exif = _pillow_metadata(path)
            jpeg_tables = _jpeg_tables(path)
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
        raise BadInput(f"cannot read {path.name} as an image: {exc}") from None
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if raw.ndim != 3 or raw.shape[2] not in (1, 2, 3, 4):
        raise BadInput(f"{path.name}: unsupported image layout {raw.shape}")
    if raw.dtype == np.uint8:
        sample_type = "u8"
    elif raw.dtype == np.uint16:
        sample_type = "u16"
    elif raw.dtype.kind == "f":
        sample_type = "f32"
    else:
        raise BadInput(f"{path.name}: unsupported sample type {raw.dtype}")
    metadata = FileMetadata(profile if profile_fits(profile, raw.shape[2]) else None, exif)
    return LoadedImage(to_float(raw), sample_type, metadata, jpeg_tables)


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file → bool H×W, True where the mask is light (white = pixels to fill)."""
    loaded = read_image(path)
    pixels = loaded.pixels
    colour = pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1]
    mask = colour.mean(axis=2) > 0.5
    if mask.shape != size:
        raise BadInput(f"mask {Path(path).name} is {mask.shape[1]}×{mask.shape[0]}, "
                       f"the image is {size[1]}×{size[0]}: they must be the same size")
    return mask


def check_writable(path: str | Path) -> Path:
    """Fail before any work is done if ``path`` cannot be written as an image."""
    path = Path(path)
    if path.suffix.lower() not in WRITABLE:
        raise BadInput(f"cannot write {path.name}: use one of {', '.join(sorted(WRITABLE))}")
    if not path.parent.is_dir():
        raise BadInput(f"output folder does not exist: {path.parent}")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"cannot write {path}: permission denied")
    if not path.exists():
        # os.access says yes to root and on some mounts that refuse writes (read-only file
        # systems, /proc, network shares): create and remove a probe file to be sure.
        probe = path.with_name(f".{path.name}.neural-restore-probe")
        try:
            probe.open("xb").close()
            probe.unlink()
        except FileExistsError:
            pass
        except OSError as exc:
            raise BadInput(f"cannot write {path}: {exc.strerror or exc} (choose another output folder)") from None
    return path


def _with_png_metadata(png_bytes: bytes, profile: bytes | None, exif: bytes | None) -> bytes:
    """A PNG file with an iCCP chunk (profile name, compression method 0, zlib data) and an
    eXIf chunk added right after IHDR (the PNG spec wants both before IDAT)."""
    import png

    chunks = list(png.Reader(bytes=png_bytes).chunks())
    added = []
    if profile:
        added.append((b"iCCP", b"ICC profile\0\0" + zlib.compress(profile)))
    if exif:
        added.append((b"eXIf", exif.removeprefix(EXIF_HEADER)))
    out = io.BytesIO()
    png.write_chunks(out, [chunks[0], *added, *chunks[1:]])
    return out.getvalue()


def write_image(path: str | Path, pixels: np.ndarray, sample_type: str, metadata: FileMetadata | None = None) -> None:
    """Write float32 H×W×C pixels; keep ``sample_type`` where the format can hold it, and the
    source's ``metadata`` where the format can: the ICC profile in PNG, TIFF, JPEG and WebP,
    EXIF in PNG, JPEG and WebP (BMP holds neither)."""
    path = check_writable(path)
    suffix = path.suffix.lower()
    channels = pixels.shape[2]
    metadata = metadata or FileMetadata()
    profile = metadata.icc_profile if profile_fits(metadata.icc_profile, channels) else None
    exif = exif_for_result(metadata.exif, pixels.shape[1], pixels.shape[0])
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            data = from_float(pixels, sample_type)
            photometric = "rgb" if channels >= 3 else "minisblack"
            extrasamples = ["unassalpha"] if channels in (2, 4) else None
            extratags = [(TIFF_ICC_PROFILE_TAG, 7, len(profile), profile, True)] if profile else []
            tifffile.imwrite(str(path), data if channels > 1 else data[:, :, 0],
                             photometric=photometric, extrasamples=extrasamples, extratags=extratags)
        elif suffix == ".png" and sample_type in ("u16", "f32"):
            import png

            data = from_float(pixels, "u16")
            writer = png.Writer(width=data.shape[1], height=data.shape[0], bitdepth=16,
                                greyscale=channels <= 2, alpha=channels in (2, 4))
            encoded = io.BytesIO()
            # Row by row: a whole-image .tolist() would hold every sample as a Python int.
            writer.write(encoded, (row.tolist() for row in data.reshape(data.shape[0], -1)))
            path.write_bytes(_with_png_metadata(encoded.getvalue(), profile, exif))
        else:
            from PIL import Image

            data = from_float(pixels, "u8")
            if suffix in (".jpg", ".jpeg", ".bmp") and channels in (2, 4):
                data = data[:, :, :channels - 1]  # these formats have no alpha
                channels -= 1
            # fromarray infers L / LA / RGB / RGBA from the channel count
            image = Image.fromarray(np.ascontiguousarray(data[:, :, 0] if channels == 1 else data))
            # Lossy formats at 95: Pillow's WebP default (80) would blur a restoration again.
            options: dict = {"quality": 95} if suffix in (".jpg", ".jpeg", ".webp") else {}
            if suffix != ".bmp":  # Pillow's BMP writer takes neither
                options.update({k: v for k, v in (("icc_profile", profile), ("exif", exif)) if v})
            image.save(path, **options)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror or exc}") from None
