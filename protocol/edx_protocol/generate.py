"""Generate ``protocol/schema`` and ``protocol/golden`` from the models.

Run ``python -m edx_protocol.generate`` after changing a model or an example;
``--check`` only compares and exits non-zero when a committed file differs.

Golden container format (``*.bin``): a multipart message on disk is its frames
in order, each written as a little-endian uint32 byte length followed by the
frame's bytes, with nothing before, between or after. An empty frame is a
length of 0. Each ``.bin`` has a ``.json`` sidecar with the decoded header and
every array as dtype, shape and nested lists (see ``protocol/SPEC.md``).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import msgpack
from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from .acquisition import AcquisitionMessage
from .control import COMMANDS, Reply, Request
from .examples import Example, acquisition_examples, control_examples, result_examples
from .results import ResultDocument
from .version import PROTOCOL_VERSION

#: The source checkout's ``protocol`` folder (this file is ``protocol/edx_protocol/generate.py``).
PROTOCOL_DIR = Path(__file__).resolve().parents[1]

#: Folders whose every file is generated.
GENERATED_DIRS = ("schema", "golden")

_SCHEMAS = {
    "acquisition": (AcquisitionMessage, "acquisition message header",
                    "Header (first frame) of a message a producer sends: start, frame, image or stop."),
    "results": (ResultDocument, "published result document header",
                "Header (frame after the topic) of a document the service publishes: status, clusters, "
                "composition, image, targets or advice."),
}
_LENGTH = struct.Struct("<I")


def pack_container(frames: Sequence[bytes]) -> bytes:
    """Write a multipart message in the golden container format.

    Parameters
    ----------
    frames : sequence of bytes-like
        The message's frames, in order.

    Returns
    -------
    bytes
        For each frame, its length as little-endian uint32, then its bytes.
    """
    out = bytearray()
    for frame in frames:
        data = bytes(frame)
        out += _LENGTH.pack(len(data)) + data
    return bytes(out)


def unpack_container(data: bytes) -> list[bytes]:
    """Read the frames of a golden container written by :func:`pack_container`.

    Raises
    ------
    ValueError
        When a length or a frame is cut short.
    """
    frames, pos = [], 0
    while pos < len(data):
        if pos + _LENGTH.size > len(data):
            raise ValueError(f"truncated frame length at byte {pos}")
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        if pos + length > len(data):
            raise ValueError(f"frame at byte {pos} needs {length} bytes, {len(data) - pos} left")
        frames.append(data[pos:pos + length])
        pos += length
    return frames


def json_bytes(document) -> bytes:
    """Serialise ``document`` the one way every generated JSON file is written.

    ASCII, LF line ends, two-space indent, keys in model order; a list of
    scalars stays on one line so that arrays read as rows.
    """
    return (_json(document, 0) + "\n").encode("ascii")


def _json(value, depth: int) -> str:
    if isinstance(value, dict) and value:
        pad = "  " * (depth + 1)
        items = [f"{pad}{_scalar(k)}: {_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) and v for v in value):
        pad = "  " * (depth + 1)
        return "[\n" + ",\n".join(pad + _json(v, depth + 1) for v in value) + "\n" + "  " * depth + "]"
    if isinstance(value, list):
        return "[" + ", ".join(_json(v, depth + 1) for v in value) + "]"
    return _scalar(value)


def _scalar(value) -> str:
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


def json_schema(name: str) -> dict:
    """The JSON Schema (Draft 2020-12) of the ``acquisition`` or ``results`` header union."""
    union, what, description = _SCHEMAS[name]
    generated = TypeAdapter(union).json_schema(mode="validation")
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:edx-live:protocol:{PROTOCOL_VERSION}:{name}",
        "title": f"edx_live protocol {PROTOCOL_VERSION} {what}",
        "description": f"{description} Generated from the pydantic models by "
                       f"python -m edx_protocol.generate; do not edit.",
    }
    return head | generated


def sidecar(example: Example) -> dict:
    """The ``.json`` companion of a golden message: topic, header and arrays as plain values."""
    doc = {"description": example.description}
    if example.topic is not None:
        doc["topic"] = example.topic.decode("ascii")
    doc["frame_lengths"] = [len(f) for f in example.frames()]
    doc["header"] = example.header.model_dump(mode="json")
    doc["arrays"] = {d.name: {"dtype": d.dtype, "shape": list(d.shape), "data": example.arrays[d.name].tolist()}
                     for d in example.header.arrays}
    return doc


def control_schema() -> dict:
    """The JSON Schema of a control request and reply (one msgpack frame each), with every command's args."""
    models = [(Request, "validation"), (Reply, "validation")] + [(m, "validation") for m in COMMANDS.values()]
    refs, defs = models_json_schema(models, ref_template="#/$defs/{model}")
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:edx-live:protocol:{PROTOCOL_VERSION}:control",
        "title": f"edx_live protocol {PROTOCOL_VERSION} control request or reply",
        "description": "A request sent to the service's REP socket, or its reply; each is one msgpack frame. "
                       "The args of a request follow the model of its command: "
                       + ", ".join(f"{name}: {m.__name__}" for name, m in COMMANDS.items())
                       + ". Generated from the pydantic models by python -m edx_protocol.generate; do not edit.",
    }
    return head | {"anyOf": [refs[(Request, "validation")], refs[(Reply, "validation")]]} | defs


def control_files() -> dict[str, bytes]:
    """Golden control frames (``control_*.bin``, a one-frame container) and their sidecars."""
    files = {}
    for name, description, body in control_examples():
        frame = msgpack.packb(body, use_bin_type=True)
        files[f"golden/control_{name}.bin"] = pack_container([frame])
        files[f"golden/control_{name}.json"] = json_bytes({"description": description,
                                                           "frame_lengths": [len(frame)], "message": body})
    return files


def examples() -> list[Example]:
    """Every golden message: the acquisition stream, then the result documents."""
    return acquisition_examples() + result_examples()


def _golden_index(items: list[Example], control: dict[str, bytes]) -> bytes:
    last_seq = sum(ex.topic is None for ex in items) - 1
    lines = [f"# Golden messages, protocol {PROTOCOL_VERSION}", "",
             "Generated by `python -m edx_protocol.generate`; do not edit. Each `NAME.bin` is one "
             "multipart message in the container format of `../SPEC.md` (per frame: little-endian "
             "uint32 length, then the bytes); `NAME.json` holds its decoded header and arrays. "
             f"The acquisition messages, in the order below, are a valid stream (seq 0 to {last_seq}); "
             "the result documents start with their topic frame.", "",
             "| file | frames | bytes | content |", "|---|---|---|---|"]
    for ex in items:
        frames = ex.frames()
        lines.append(f"| `{ex.name}.bin` | {len(frames)} | {len(pack_container(frames))} | {ex.description} |")
    for name, description, _ in control_examples():
        data = control[f"golden/control_{name}.bin"]
        lines.append(f"| `control_{name}.bin` | 1 | {len(data)} | {description} (control, SPEC section 11) |")
    return ("\n".join(lines) + "\n").encode("utf-8")


def render() -> dict[str, bytes]:
    """Every generated file, by path relative to the protocol folder (``/`` separated)."""
    files = {f"schema/{name}.schema.json": json_bytes(json_schema(name)) for name in _SCHEMAS}
    items = examples()
    for ex in items:
        files[f"golden/{ex.name}.bin"] = pack_container(ex.frames())
        files[f"golden/{ex.name}.json"] = json_bytes(sidecar(ex))
    control = control_files()
    files.update(control)
    files["schema/control.schema.json"] = json_bytes(control_schema())
    files["golden/README.md"] = _golden_index(items, control)
    return files


def differences(root: Path, files: dict[str, bytes]) -> list[str]:
    """Generated files that are missing, changed or unexpected under ``root``, as ``state: path``."""
    out = []
    for rel, data in files.items():
        path = root / rel
        if not path.is_file():
            out.append(f"missing: {rel}")
        elif path.read_bytes() != data:
            out.append(f"changed: {rel}")
    for rel in sorted(_existing(root) - set(files)):
        out.append(f"unexpected: {rel}")
    return out


def _existing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for d in GENERATED_DIRS if (root / d).is_dir()
            for p in (root / d).rglob("*") if p.is_file()}


def write(root: Path, files: dict[str, bytes]) -> list[str]:
    """Write ``files`` under ``root`` and delete stale files in the generated folders; return what changed."""
    changed = differences(root, files)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
    for rel in sorted(_existing(root) - set(files)):
        (root / rel).unlink()
    return changed


def _check_root(root: Path) -> None:
    if not (root / "SPEC.md").is_file() or not (root / "edx_protocol").is_dir():
        raise SystemExit(f"{root} is not the protocol folder of a source checkout (no SPEC.md beside "
                         f"edx_protocol/); install edx_live editable or pass --root")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: generate, or with ``--check`` compare, the schema and golden files."""
    parser = argparse.ArgumentParser(prog="python -m edx_protocol.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files, write nothing; exit 1 if any differs")
    parser.add_argument("--root", type=Path, default=PROTOCOL_DIR,
                        help=f"the protocol folder (default: {PROTOCOL_DIR})")
    args = parser.parse_args(argv)
    _check_root(args.root)
    files = render()
    if args.check:
        diff = differences(args.root, files)
        if diff:
            print(f"protocol files out of date in {args.root}:\n  " + "\n  ".join(diff)
                  + "\nregenerate with: python -m edx_protocol.generate", file=sys.stderr)
            return 1
        print(f"{len(files)} protocol files up to date in {args.root}")
        return 0
    changed = write(args.root, files)
    print(f"{len(files)} protocol files in {args.root}; {len(changed)} written or removed"
          + "".join(f"\n  {c}" for c in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
