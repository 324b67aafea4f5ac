"""Step 1: open an image as a *raster* that hands out RGB windows on demand.

Readers (:func:`open_raster`):

* TIFF / GeoTIFF (``.tif``, ``.tiff``): :mod:`tifffile` (already a dependency of scikit-image,
  pure Python, maintained). The first page's tiles or strips are read and decoded one at a
  time, with a small cache of the ones the next windows still need, so memory does not grow with
  the image. Deflate, LZW, PackBits and uncompressed files work out of the box; JPEG-, ZSTD- or
  WebP-compressed ones need ``pip install imagecodecs`` (``mdssd[geotiff]``): the error says so.
  A file stored as one huge strip cannot be read in windows: convert it to a tiled TIFF
  (``gdal_translate -co TILED=YES``).
* Other formats (PNG, JPEG, ...): decoded once by Pillow; its decompression-bomb limit only
  applies when no tiles were asked for (``allow_large``), and the error says to pass ``--tile``.
* An ``uint8 [H,W,3]`` array (:class:`ArrayRaster`).

Bands and value rule: 1 band is grey (copied to R, G, B); 3 bands are RGB; 2 or 4 bands whose
last band the file marks as alpha are grey or RGB, and alpha 0 is nodata. Any other layout needs
``bands`` (1-based, one or three, e.g. ``(4, 3, 2)``), or it is an error naming the count. 8-bit
values are taken as they are; other types (16-bit, float) are mapped linearly from ``value_range
= (lo, hi)`` to 0-255 (clipped); without one, ``lo, hi`` are the 0.5th and 99.5th percentiles of
the valid values of up to 16 of the file's tiles spread over the image.

Georeferencing (:class:`GeoReference`): GeoTIFF tags ModelTransformation, or ModelTiepoint +
ModelPixelScale, give the affine pixel -> map transform (PixelIsPoint rasters shifted half a pixel,
as GDAL does); the CRS is the EPSG code of ProjectedCSTypeGeoKey or GeographicTypeGeoKey.
Nodata: the GDAL_NODATA tag (a pixel is nodata when every chosen band equals it) and alpha 0.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["RasterError", "GeoReference", "Raster", "ArrayRaster", "TiffRaster", "open_raster", "TIFF_SUFFIXES"]

TIFF_SUFFIXES = {".tif", ".tiff"}
_SAMPLE_TILES = 16  # tiles read to estimate the value range of 16-bit / float rasters
_MAX_SEGMENT_BYTES = 1 << 30  # a single strip or tile larger than this cannot be read in windows


class RasterError(ValueError):
    """An image that cannot be read as asked: the message names the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


@dataclass(frozen=True)
class GeoReference:
    """Pixel -> map affine transform in GDAL's order ``(x0, a, b, y0, d, e)``: a pixel corner
    ``(col, row)`` is at ``x = x0 + a*col + b*row``, ``y = y0 + d*col + e*row``; ``crs``: e.g.
    ``"EPSG:32633"`` (None when the file's CRS is not an EPSG code)."""

    transform: tuple[float, float, float, float, float, float]
    crs: str | None = None
    crs_description: str | None = None

    def to_map(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x0, a, b, y0, d, e = self.transform
        return x0 + a * cols + b * rows, y0 + d * cols + e * rows

    def box_polygons(self, boxes: np.ndarray) -> np.ndarray:
        """``[n,5,2]`` closed map polygons of pixel boxes ``[n,4]`` xyxy (corners clockwise in
        pixels: a rotated or flipped transform keeps them exact)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        cols = boxes[:, [0, 2, 2, 0, 0]]
        rows = boxes[:, [1, 1, 3, 3, 1]]
        x, y = self.to_map(cols, rows)
        return np.stack([x, y], axis=-1)


class Raster(abc.ABC):
    """An image read in windows: ``width``, ``height``, ``geo`` (or None), ``has_nodata``;
    ``read(x1, y1, x2, y2)`` -> ``(uint8 [h,w,3], valid bool [h,w] or None)`` for a window
    inside the image."""

    path: str | Path | None = None
    width: int
    height: int
    geo: GeoReference | None = None
    has_nodata: bool = False

    @abc.abstractmethod
    def read(self, x1: int, y1: int, x2: int, y2: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The window's pixels and validity mask (each subclass reads its own storage)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


class ArrayRaster(Raster):
    """A decoded ``uint8 [H,W,3]`` image (``valid``: optional ``bool [H,W]`` nodata mask)."""

    def __init__(self, image: np.ndarray, path=None, geo: GeoReference | None = None, valid: np.ndarray | None = None):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise RasterError(path or "array", f"expected an uint8 [H,W,3] RGB image, got {image.dtype} "
                                               f"{list(image.shape)}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise RasterError(path or "array", f"empty image ({image.shape[1]}x{image.shape[0]} px)")
        self.image, self.path, self.geo, self.valid = image, path, geo, valid
        self.height, self.width = image.shape[:2]
        self.has_nodata = valid is not None

    def read(self, x1, y1, x2, y2):
        return self.image[y1:y2, x1:x2], (None if self.valid is None else self.valid[y1:y2, x1:x2])


def _decode_error(path, error: Exception) -> RasterError:
    text = str(error)
    if "imagecodecs" in text:
        return RasterError(path, f"{text}: this TIFF's compression needs `pip install imagecodecs` "
                                 "(or `pip install mdssd[geotiff]`)")
    return RasterError(path, f"corrupt or truncated TIFF ({type(error).__name__}: {text})")


class TiffRaster(Raster):
    """A TIFF / GeoTIFF read tile by tile (or strip by strip) with tifffile (module docstring)."""

    def __init__(self, path, bands: Sequence[int] | None = None, value_range: tuple[float, float] | None = None):
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(str(path))
            page = self._tif.pages.first
            page.shaped  # noqa: B018 -- parses the layout now, so broken headers fail here
        except Exception as error:  # tifffile raises TiffFileError, ValueError, struct.error, ...
            raise RasterError(path, f"not a readable TIFF ({type(error).__name__}: {error})") from error
        self._page = page
        try:
            self._setup(page, bands, value_range)
        except Exception:
            self._tif.close()
            raise

    def _setup(self, page, bands, value_range) -> None:
        separate, depth, height, width, contig = page.shaped
        if depth != 1:
            raise RasterError(self.path, f"volumetric TIFF (depth {depth}) is not supported")
        if width == 0 or height == 0:
            raise RasterError(self.path, f"empty image ({width}x{height} px)")
        self.width, self.height = int(width), int(height)
        self.samples = int(separate * contig)
        self.separate = separate > 1
        if page.dtype is None or page.dtype.kind not in "uifb":
            raise RasterError(self.path, f"unsupported sample type ({page.bitspersample}-bit, "
                                         f"SampleFormat {page.sampleformat})")
        self.dtype = page.dtype
        # Segments: tiles, or strips (full width).
        if page.is_tiled:
            self.seg_w, self.seg_h = int(page.tilewidth), int(page.tilelength)
        else:
            self.seg_w, self.seg_h = self.width, int(min(page.rowsperstrip or self.height, self.height))
        self.across = math.ceil(self.width / self.seg_w)
        self.down = math.ceil(self.height / self.seg_h)
        seg_bytes = self.seg_w * self.seg_h * contig * self.dtype.itemsize
        if seg_bytes > _MAX_SEGMENT_BYTES:
            raise RasterError(self.path, f"stored as strips of {self.seg_w}x{self.seg_h} px ({seg_bytes / 2**30:.1f} "
                                         "GiB each): it cannot be read in windows; convert it to a tiled TIFF, e.g. "
                                         "`gdal_translate -co TILED=YES -co COMPRESS=DEFLATE IN OUT`")
        expected = self.across * self.down * separate
        if len(page.dataoffsets) < expected or len(page.databytecounts) < expected:
            raise RasterError(self.path, f"corrupt TIFF: {len(page.dataoffsets)} data segments for a "
                                         f"{self.width}x{self.height} image that needs {expected}")
        self._decode = page.decode
        self._jpegtables = getattr(page, "jpegtables", None)
        self._file_size = self._tif.filehandle.size
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}
        self.bands, self.alpha = self._choose_bands(page, bands)
        self.geo = _georeference(page)
        self.nodata = _nodata(page, self.dtype)
        self.has_nodata = self.nodata is not None or self.alpha is not None
        if self.dtype == np.uint8:
            self.value_range = None
        elif self.dtype.kind == "b":
            self.value_range = (0.0, 1.0)
        else:
            self.value_range = tuple(map(float, value_range)) if value_range else self._sample_range()
            if not self.value_range[1] > self.value_range[0]:
                raise RasterError(self.path, f"value range {self.value_range} is empty: every sampled value is "
                                             "the same (an all-nodata or constant raster?); pass --value-range LO,HI")

    def _choose_bands(self, page, bands):
        n = self.samples
        alpha = None
        extras = tuple(int(v) for v in (page.extrasamples or ()))
        if bands is not None:
            bands = tuple(int(b) for b in bands)
            if len(bands) not in (1, 3) or not all(1 <= b <= n for b in bands):
                raise RasterError(self.path, f"bands {list(bands)}: choose one or three of the file's bands 1..{n}")
        elif n == 1 or n == 3:
            bands = tuple(range(1, n + 1))
        elif n in (2, 4) and extras and extras[-1] in (1, 2):  # associated / unassociated alpha
            bands, alpha = tuple(range(1, n)), n
        else:
            raise RasterError(self.path, f"{n} bands ({self.dtype}): pick the model's input with --bands, one band "
                                         "(grey) or three (R,G,B), 1-based, e.g. --bands 3,2,1")
        return tuple(b - 1 for b in bands), (alpha - 1 if alpha else None)

    # -- segments --------------------------------------------------------------------------
    def _segment(self, plane: int, r: int, c: int) -> np.ndarray:
        """Decoded segment ``[seg_h, seg_w, samples of the plane]`` (padded to the full size)."""
        key = (plane, r, c)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        index = plane * self.across * self.down + r * self.across + c
        offset, count = int(self._page.dataoffsets[index]), int(self._page.databytecounts[index])
        contig = self.samples if not self.separate else 1
        if count == 0 or offset == 0:  # a sparse file's empty segment
            out = np.zeros((self.seg_h, self.seg_w, contig), self.dtype)
            if self.nodata is not None:
                out[:] = self.nodata
        else:
            if offset + count > self._file_size:
                raise RasterError(self.path, f"truncated TIFF: segment {index} needs bytes {offset}..{offset + count} "
                                             f"but the file has {self._file_size}")
            fh = self._tif.filehandle
            fh.seek(offset)
            data = fh.read(count)
            try:
                decoded, _, shape = self._decode(data, index, jpegtables=self._jpegtables)
            except Exception as error:
                raise _decode_error(self.path, error) from error
            if decoded is None:
                raise RasterError(self.path, f"corrupt TIFF: segment {index} decodes to nothing")
            decoded = decoded.reshape(decoded.shape[-3:])
            out = np.zeros((self.seg_h, self.seg_w, contig), self.dtype)
            h, w = min(decoded.shape[0], self.seg_h), min(decoded.shape[1], self.seg_w)
            out[:h, :w] = decoded[:h, :w]
        self._cache[key] = out
        return out

    def _raw(self, x1, y1, x2, y2, planes: Sequence[int]) -> np.ndarray:
        """Samples ``[h,w,len(planes)]`` of the window, native dtype."""
        # Windows come in row-major order: segments above the window are done with.
        for key in [k for k in self._cache if (k[1] + 1) * self.seg_h <= y1]:
            del self._cache[key]
        out = np.empty((y2 - y1, x2 - x1, len(planes)), self.dtype)
        for r in range(y1 // self.seg_h, (y2 - 1) // self.seg_h + 1):
            for c in range(x1 // self.seg_w, (x2 - 1) // self.seg_w + 1):
                sx, sy = c * self.seg_w, r * self.seg_h
                ax1, ay1, ax2, ay2 = max(x1, sx), max(y1, sy), min(x2, sx + self.seg_w), min(y2, sy + self.seg_h)
                for k, band in enumerate(planes):
                    plane, sample = (band, 0) if self.separate else (0, band)
                    seg = self._segment(plane, r, c)
                    out[ay1 - y1:ay2 - y1, ax1 - x1:ax2 - x1, k] = seg[ay1 - sy:ay2 - sy, ax1 - sx:ax2 - sx, sample]
        return out

    def _sample_range(self) -> tuple[float, float]:
        picks = np.unique(np.linspace(0, self.across * self.down - 1, min(_SAMPLE_TILES, self.across * self.down))
                          .round().astype(int))
        values = []
        for p in picks:
            r, c = divmod(int(p), self.across)
            x1, y1 = c * self.seg_w, r * self.seg_h
            raw = self._raw(x1, y1, min(x1 + self.seg_w, self.width), min(y1 + self.seg_h, self.height),
                            self.bands + ((self.alpha,) if self.alpha is not None else ()))
            valid = self._valid(raw)
            chosen = raw[..., :len(self.bands)].astype(np.float64)
            values.append(chosen[valid] if valid is not None else chosen.reshape(-1, len(self.bands)))
        self._cache.clear()
        values = np.concatenate(values).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise RasterError(self.path, "no valid pixels in the sampled tiles (all nodata?); pass --value-range LO,HI")
        lo, hi = np.percentile(values, [0.5, 99.5])
        return float(lo), float(hi)

    def _valid(self, raw: np.ndarray) -> np.ndarray | None:
        valid = None
        chosen = raw[..., :len(self.bands)]
        if self.nodata is not None:
            if isinstance(self.nodata, float) and math.isnan(self.nodata):
                valid = ~np.isnan(chosen).all(-1)
            else:
                valid = ~(chosen == self.nodata).all(-1)
        if self.alpha is not None:
            alpha_ok = raw[..., -1] > 0
            valid = alpha_ok if valid is None else valid & alpha_ok
        return valid

    def read(self, x1, y1, x2, y2):
        raw = self._raw(x1, y1, x2, y2, self.bands + ((self.alpha,) if self.alpha is not None else ()))
        valid = self._valid(raw)
        chosen = raw[..., :len(self.bands)]
        if self.value_range is not None:
            lo, hi = self.value_range
            scaled = (chosen.astype(np.float32) - lo) * np.float32(255.0 / (hi - lo))
            chosen = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)
        if chosen.shape[-1] == 1:
            chosen = np.repeat(chosen, 3, axis=-1)
        return np.ascontiguousarray(chosen), valid

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()


def _georeference(page) -> GeoReference | None:
    try:
        tags = page.geotiff_tags
    except Exception:  # a broken GeoKey directory: treat as plain pixels, not a crash
        return None
    if not tags:
        return None
    if "ModelTransformation" in tags:
        m = np.asarray(tags["ModelTransformation"], np.float64).reshape(4, 4)
        transform = (m[0, 3], m[0, 0], m[0, 1], m[1, 3], m[1, 0], m[1, 1])
    elif "ModelTiepoint" in tags and "ModelPixelScale" in tags:
        i, j, _, x, y, _ = np.asarray(tags["ModelTiepoint"], np.float64)[:6]
        sx, sy = np.asarray(tags["ModelPixelScale"], np.float64)[:2]
        transform = (x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
    else:
        return None
    if int(tags.get("GTRasterTypeGeoKey", 1)) == 2:  # PixelIsPoint: tie points are pixel centres
        x0, a, b, y0, d, e = transform
        transform = (x0 - 0.5 * (a + b), a, b, y0 - 0.5 * (d + e), d, e)
    crs = None
    for key in ("ProjectedCSTypeGeoKey", "GeographicTypeGeoKey"):
        code = tags.get(key)
        if code is not None and 1024 <= int(code) < 32767:
            crs = f"EPSG:{int(code)}"
            break
    description = tags.get("GTCitationGeoKey") or tags.get("PCSCitationGeoKey") or tags.get("GeogCitationGeoKey")
    return GeoReference(tuple(float(v) for v in transform), crs, str(description) if description else None)


def _nodata(page, dtype):
    tag = page.tags.get(42113)  # GDAL_NODATA, ASCII
    if tag is None:
        return None
    text = str(tag.value).strip().strip("\x00")
    try:
        value = float(text)
    except ValueError:
        return None
    if dtype.kind in "ui":
        return int(value) if value == int(value) else None
    return value


def probe_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (no pixels decoded)."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tif:
                _, _, height, width, _ = tif.pages.first.shaped
                return int(width), int(height)
        except Exception as error:
            raise RasterError(path, f"not a readable TIFF ({type(error).__name__}: {error})") from error
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise RasterError(path, f"cannot decode image ({error})") from error


def open_raster(path: str | Path, bands: Sequence[int] | None = None,
                value_range: tuple[float, float] | None = None, allow_large: bool = False) -> Raster:
    """A :class:`Raster` of an image file (module docstring). ``allow_large``: decode non-TIFF
    images above Pillow's decompression-bomb limit (the caller streams them in tiles)."""
    path = Path(path)
    if not path.is_file():
        raise RasterError(path, "no such file")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return TiffRaster(path, bands, value_range)
    if bands is not None or value_range is not None:
        raise RasterError(path, "--bands and --value-range apply to TIFF files only")
    return ArrayRaster(_decode_pillow(path, allow_large), path)


def _decode_pillow(path: Path, allow_large: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # checked here, with a message that says what to do
        with Image.open(path) as im:
            width, height = im.size
            if not allow_large and limit and width * height > limit:
                raise RasterError(path, f"{width}x{height} px ({width * height / 1e6:.0f} megapixels) is over the "
                                        f"decoder's limit of {limit / 1e6:.0f} megapixels for a whole image: pass "
                                        "--tile N to detect it in tiles (tiled TIFFs are streamed in bounded "
                                        "memory, other formats decoded once)")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, RasterError):
            raise
        raise RasterError(path, f"cannot decode image ({error})") from error
    finally:
        Image.MAX_IMAGE_PIXELS = limit
