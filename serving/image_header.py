"""An encoded image's width and height, read from its header without decoding it.

`image_search` decodes what it is sent: a 522 KB PNG of 23170x23170 pixels
decodes to 1.6 GB. The server reads the size here first and refuses images
larger than `serving.max_image_pixels` before any decoding. Only the formats
tf.io.decode_image takes are read: PNG, JPEG, GIF and BMP.
"""
import struct
from typing import Optional, Tuple

FORMATS = "JPEG, PNG, GIF, BMP"
# JPEG start-of-frame markers (the ones that carry the frame size): C0-CF but
# C4 (Huffman tables), C8 (reserved) and CC (arithmetic coding conditioning).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageHeaderError(ValueError):
    """Not an image of a known format, or its header is cut short."""


def image_size(data: bytes) -> Tuple[str, int, int]:
    """(format, width, height) of an encoded image; ImageHeaderError otherwise."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageHeaderError("PNG header cut short")
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise ImageHeaderError("GIF header cut short")
        width, height = struct.unpack("<HH", data[6:10])
        return "GIF", width, height
    if data[:2] == b"BM":
        return ("BMP",) + _bmp_size(data)
    if data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
        if size is None:
            raise ImageHeaderError("JPEG without a frame header")
        return ("JPEG",) + size
    raise ImageHeaderError(f"Unknown image file format. One of {FORMATS} required.")


def frame_count(data: bytes) -> int:
    """Frames a decoder goes through: a GIF's image blocks (TensorFlow decodes
    every frame of a GIF, even when it keeps the first), 1 for the others.
    Counted without decompressing, by skipping each block's sub-blocks."""
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        return 1
    position, frames = 13, 0
    if data[10] & 0x80:  # global colour table
        position += 3 << ((data[10] & 7) + 1)
    while position < len(data):
        block = data[position]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            position += 2
        elif block == 0x2C:  # image descriptor, local colour table, LZW code size
            if position + 10 > len(data):
                break
            frames += 1
            packed = data[position + 9]
            position += 10 + ((3 << ((packed & 7) + 1)) if packed & 0x80 else 0) + 1
        else:
            break
        while position < len(data) and data[position]:
            position += data[position] + 1
        position += 1
    return max(frames, 1)


def _bmp_size(data: bytes) -> Tuple[int, int]:
    if len(data) < 26:
        raise ImageHeaderError("BMP header cut short")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    # A negative height is a top-down bitmap.
    return abs(width), abs(height)


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ImageHeaderError("JPEG marker expected")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        if length < 2:
            raise ImageHeaderError("JPEG segment of a bad length")
        if marker in _SOF_MARKERS:
            if position + 9 > len(data):
                raise ImageHeaderError("JPEG frame header cut short")
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        position += 2 + length
    return None
