"""Protocol conformance, seen from a third-party producer and result subscriber.

Everything this module knows about the wire protocol comes from ``protocol/SPEC.md``,
``protocol/schema/*.json`` and ``protocol/golden/*``. It imports only the standard library,
numpy, msgpack, pyzmq, jsonschema, h5py and pytest: never ``edx_live``, ``edx_protocol`` or
``edx_adapters`` (``test_module_uses_no_service_code`` checks that, statically and by running the
producer code in a subprocess where those packages cannot be imported).

The service under test is the real command line (``python -m edx_live.cli serve``), started once
for the module as a subprocess on ephemeral ports. Its ``serving`` JSON log line on stderr gives
the bound input and output endpoints. The producer connects a PUSH socket to the input; a SUB
socket on the output decodes every published document (SPEC section 7).

Acquisitions, one after the other on the same service:

1. the eight golden acquisition messages (SPEC section 9.3 step 4), whose image comes back as the
   published mean image;
2. ``core_shell.hspy`` (a real FePt Super-X scan) read with h5py, split into sweeps by binomial
   thinning and sent with this module's own encoder as events, Velox stream chunks and dense blocks;
3. one valid acquisition interleaved with messages the SPEC or schema forbid, each of which
   must be rejected under the reason code of SPEC section 6 without changing the counts.
"""

from __future__ import annotations

import ast
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import jsonschema
import msgpack
import numpy as np
import pytest
import zmq

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "protocol"
GOLDEN = PROTOCOL / "golden"
SCHEMA = PROTOCOL / "schema"
DATA = Path(os.environ.get("EDX_LIVE_DATA", REPO.parent / "shared" / "data"))
CORE_SHELL = DATA / "core_shell.hspy"

#: Packages that make up the service; a third-party producer has none of them.
FORBIDDEN = ("edx_live", "edx_protocol", "edx_adapters")
#: What this module may import besides the standard library.
ALLOWED_THIRD_PARTY = {"numpy", "msgpack", "zmq", "jsonschema", "h5py", "pytest"}

#: Golden acquisition messages in the order of SPEC section 9 (seq 0 to 7).
GOLDEN_ACQUISITION = ["start", "frame_events", "frame_events_detector", "frame_velox",
                      "frame_dense_u8", "frame_dense_u16", "image", "stop"]
GOLDEN_DOCUMENTS = ["status", "clusters", "composition", "mean_image"]

VELOX_NEXT_PIXEL = 65535  # SPEC 4.2
NOISE_LABEL = 65535  # SPEC 7.3

#: Acquisitions this module stops: golden, core_shell, reject. One more is allowed so that a
#: replacement start accepted by a lenient service cannot end the service before the last checks;
#: the fixture terminates the service at the end in any case.
ACQUISITIONS = 4

STARTUP_TIMEOUT_S = 300.0  # the service compiles its kernels before it binds
STATUS_TIMEOUT_S = 30.0  # status documents come at a fixed interval and on every start/stop
FINAL_TIMEOUT_S = 600.0  # final refit: segmentation and quantification of all counts


# ---------------------------------------------------------------------------------------------
# Encoding and decoding (SPEC sections 2, 7, 9.1)
# ---------------------------------------------------------------------------------------------

def read_container(path: Path) -> list[bytes]:
    """Frames of a ``NAME.bin`` container: per frame a little-endian uint32 length, then the bytes."""
    data = path.read_bytes()
    frames, pos = [], 0
    while pos < len(data):
        assert pos + 4 <= len(data), f"{path.name}: truncated length prefix at byte {pos}"
        (n,) = np.frombuffer(data, dtype="<u4", count=1, offset=pos)
        pos += 4
        assert pos + int(n) <= len(data), f"{path.name}: frame of {n} bytes runs past the end"
        frames.append(data[pos:pos + int(n)])
        pos += int(n)
    return frames


def descriptor(name: str, array: np.ndarray) -> dict:
    """Array descriptor of SPEC 2.2: little-endian dtype string, C-order shape."""
    dt = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return {"name": name, "dtype": dt.str, "shape": [int(n) for n in array.shape]}


def encode(header: dict, arrays: dict[str, np.ndarray] | None = None) -> list[bytes]:
    """One protocol message: msgpack header (with its ``arrays`` descriptors), then raw buffers."""
    arrays = arrays or {}
    header = dict(header)
    header["arrays"] = [descriptor(name, a) for name, a in arrays.items()]
    frames = [msgpack.packb(header, use_bin_type=True)]
    for d, a in zip(header["arrays"], arrays.values()):
        frames.append(np.ascontiguousarray(a, dtype=np.dtype(d["dtype"])).tobytes(order="C"))
    return frames


def header_of(frames: list[bytes]) -> dict:
    return msgpack.unpackb(frames[0], raw=False)


@dataclass
class Document:
    """One published document: ``[topic, header, *buffers]`` (SPEC 1.2, 7)."""

    topic: str
    header: dict
    arrays: dict[str, np.ndarray]
    problems: list[str] = field(default_factory=list)
    received_at: float = 0.0


def decode_document(frames: list[bytes]) -> Document:
    """Decode a published document, noting every framing problem instead of raising."""
    problems: list[str] = []
    topic = frames[0].decode("ascii", errors="replace") if frames else ""
    if len(frames) < 2:
        return Document(topic, {}, {}, [f"{len(frames)} frames, expected at least 2"], time.monotonic())
    try:
        header = msgpack.unpackb(frames[1], raw=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a conformance problem
        return Document(topic, {}, {}, [f"header is not msgpack: {exc!r}"], time.monotonic())
    if not isinstance(header, dict):
        return Document(topic, {}, {}, [f"header is a {type(header).__name__}, not a map"], time.monotonic())
    descs = header.get("arrays", [])
    if len(frames) != 2 + len(descs):
        problems.append(f"{len(frames) - 2} buffers for {len(descs)} array descriptors")
    arrays = {}
    for d, buf in zip(descs, frames[2:]):
        dt = np.dtype(d["dtype"])
        expected = math.prod(d["shape"]) * dt.itemsize
        if len(buf) != expected:
            problems.append(f"array {d['name']}: {len(buf)} bytes, descriptor implies {expected}")
            continue
        arrays[d["name"]] = np.frombuffer(buf, dtype=dt).reshape(d["shape"])
    if not topic.startswith(str(header.get("kind", "?"))):
        problems.append(f"topic {topic!r} does not start with kind {header.get('kind')!r}")
    return Document(topic, header, arrays, problems, time.monotonic())


def sidecar(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def sidecar_arrays(side: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(a["data"], dtype=np.dtype(a["dtype"])).reshape(a["shape"])
            for name, a in side["arrays"].items()}


def implied_counts(header: dict, arrays: dict[str, np.ndarray]) -> int:
    """X-ray counts a frame adds, from its payload (SPEC 4.1 to 4.3)."""
    if header.get("kind") != "frame":
        return 0
    payload = header["payload"]
    if payload == "events":
        return int(arrays["pixel"].size)
    if payload == "velox":
        return int(np.count_nonzero(arrays["stream"] != VELOX_NEXT_PIXEL))
    if payload == "dense":
        return int(arrays["counts"].astype(np.uint64).sum())
    raise ValueError(f"unknown payload {payload!r}")


# ---------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------

def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


ACQUISITION_SCHEMA = _validator("acquisition.schema.json")
RESULTS_SCHEMA = _validator("results.schema.json")


def schema_errors(validator, header) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(header)]


def assert_valid_acquisition_header(header: dict) -> None:
    errors = schema_errors(ACQUISITION_SCHEMA, header)
    assert not errors, f"header of {header.get('kind')} seq {header.get('seq')} breaks the schema: {errors}"


# ---------------------------------------------------------------------------------------------
# core_shell.hspy through this module's own encoder
# ---------------------------------------------------------------------------------------------

CORE_SHELL_ID = "conformance-core_shell"
CORE_SHELL_SWEEPS = 5  # sweeps 0-2 events (sweep 1 with detector indices), 3 velox, 4 dense
EVENTS_ROWS_PER_MESSAGE = 16
DENSE_ROWS_PER_MESSAGE = 4
VELOX_CHUNKS = 7
SEED = 20240502


@dataclass
class SpectrumImage:
    cube: np.ndarray  # (rows, columns, channels), uint32
    offset_kev: float
    scale_kev: float
    beam_energy_kev: float
    pixel_size: float
    pixel_unit: str
    elevation_deg: float
    azimuth_deg: float
    resolution_ev: float | None
    elements: list[str]
    xray_lines: list[str]
    instrument: str | None
    title: str | None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_hspy(path: Path) -> SpectrumImage:
    """The spectrum image and its calibration from a HyperSpy HDF5 file (h5py only).

    Layout: ``Experiments/<name>/data`` with ``axis-i`` groups (attributes ``size``, ``scale``,
    ``offset``, ``units``, ``navigate``) describing data dimension ``i``, and the metadata tree
    under ``Experiments/<name>/metadata``.
    """
    with h5py.File(path, "r") as f:
        (name,) = list(f["Experiments"])
        exp = f["Experiments"][name]
        cube = exp["data"][()]
        axes = [dict(exp[f"axis-{i}"].attrs) for i in range(cube.ndim)]
        assert [int(a["size"]) for a in axes] == list(cube.shape)
        assert [bool(a["navigate"]) for a in axes] == [True, True, False], "expected (y, x | energy)"
        energy, nav = axes[2], axes[0]
        assert _text(energy["units"]) == "keV"
        meta = exp["metadata"]
        tem = meta["Acquisition_instrument/TEM"]
        eds = dict(tem["Detector/EDS"].attrs)
        sample = meta["Sample"]
        resolution = eds.get("energy_resolution_MnKa")
        return SpectrumImage(
            cube=cube,
            offset_kev=float(energy["offset"]), scale_kev=float(energy["scale"]),
            beam_energy_kev=float(tem.attrs["beam_energy"]),
            pixel_size=float(nav["scale"]), pixel_unit=_text(nav["units"]),
            elevation_deg=float(eds["elevation_angle"]), azimuth_deg=float(eds["azimuth_angle"]),
            resolution_ev=None if resolution is None else float(resolution),
            elements=[_text(e) for e in sample["elements"][()]],
            xray_lines=[_text(x) for x in sample["xray_lines"][()]],
            instrument=_text(tem.attrs["microscope"]) if "microscope" in tem.attrs else None,
            title=_text(meta["General"].attrs["title"]) if "title" in meta["General"].attrs else None,
        )


def thin_into_sweeps(cube: np.ndarray, sweeps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split counts into ``sweeps`` parts by successive binomial thinning; the parts sum to ``cube``."""
    remaining = cube.astype(np.int64)
    parts = []
    for i in range(sweeps - 1):
        part = rng.binomial(remaining, 1.0 / (sweeps - i))
        remaining = remaining - part
        parts.append(part)
    parts.append(remaining)
    return parts


def events_arrays(block: np.ndarray, pixel0: int, rng: np.random.Generator,
                  with_detector: bool) -> dict[str, np.ndarray]:
    """Events (SPEC 4.1) for a block of pixel spectra (p, channels) starting at pixel ``pixel0``."""
    p, c = np.nonzero(block)
    reps = block[p, c]
    pixel = np.repeat(p + pixel0, reps).astype("<u4")
    channel = np.repeat(c, reps).astype("<u2")
    order = rng.permutation(pixel.size)  # any order is allowed
    arrays = {"pixel": pixel[order], "channel": channel[order]}
    if with_detector:
        arrays["detector"] = np.zeros(pixel.size, dtype="|u1")
    return arrays


def velox_stream(flat: np.ndarray) -> np.ndarray:
    """The SpectrumStream of one sweep (pixels, channels): X-rays of each pixel, then 65535."""
    p, c = np.nonzero(flat)
    reps = flat[p, c]
    channel = np.repeat(c, reps).astype("<u2")
    per_pixel = flat.sum(axis=1)
    markers = np.cumsum(per_pixel) + np.arange(flat.shape[0])  # each pixel closes after its X-rays
    stream = np.empty(channel.size + flat.shape[0], dtype="<u2")
    is_marker = np.zeros(stream.size, dtype=bool)
    is_marker[markers] = True
    stream[is_marker] = VELOX_NEXT_PIXEL
    stream[~is_marker] = channel
    return stream


def velox_chunks(stream: np.ndarray, n_chunks: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """Cut a stream into chunks, at least one of them mid-pixel; returns (pixel_start, chunk)."""
    xray = stream != VELOX_NEXT_PIXEL
    inside = np.flatnonzero(xray[1:] & xray[:-1]) + 1  # cutting here splits one pixel's X-rays
    assert inside.size, "no pixel with two X-rays to cut inside"
    cuts = set(rng.choice(np.arange(1, stream.size), size=n_chunks - 2, replace=False).tolist())
    cuts.add(int(rng.choice(inside)))
    bounds = [0, *sorted(cuts), stream.size]
    chunks, pixel_start = [], 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        chunk = stream[a:b]
        chunks.append((pixel_start, chunk))
        pixel_start += int(np.count_nonzero(chunk == VELOX_NEXT_PIXEL))  # SPEC 4.2 chunking
    return chunks


def decode_velox(chunks: list[tuple[int, np.ndarray]], pixels: int, channels: int) -> np.ndarray:
    """The SPEC 4.2 decoding rule, vectorised: used to check this module's own chunks."""
    out = np.zeros(pixels * channels, dtype=np.int64)
    for pixel_start, chunk in chunks:
        marker = chunk == VELOX_NEXT_PIXEL
        pixel = pixel_start + np.cumsum(marker) - marker
        x = ~marker
        out += np.bincount(pixel[x] * channels + chunk[x], minlength=pixels * channels)
    return out.reshape(pixels, channels)


def narrowest_dtype(block: np.ndarray) -> np.dtype:
    top = int(block.max(initial=0))
    for dt in ("|u1", "<u2", "<u4", "<u8"):
        if top <= np.iinfo(np.dtype(dt)).max:
            return np.dtype(dt)
    raise ValueError("count too large")


def core_shell_messages(image: SpectrumImage, acquisition_id: str = CORE_SHELL_ID) -> list[list[bytes]]:
    """Every message of the core_shell acquisition, seq 0 (start) to the stop, headers validated."""
    rng = np.random.default_rng(SEED)
    rows, columns, channels = image.cube.shape
    sweeps = thin_into_sweeps(image.cube, CORE_SHELL_SWEEPS, rng)
    assert np.array_equal(np.sum(sweeps, axis=0), image.cube), "the sweeps must add up to the file"

    detector = {"name": None, "elevation_deg": image.elevation_deg, "azimuth_deg": image.azimuth_deg}
    if image.resolution_ev is not None:
        detector["energy_resolution_mnka_ev"] = image.resolution_ev
    headers_and_arrays: list[tuple[dict, dict]] = []
    headers_and_arrays.append(({
        "kind": "start",
        "scan_shape": [rows, columns],
        "energy_axis": {"offset_kev": image.offset_kev, "scale_kev": image.scale_kev, "channels": channels},
        "beam_energy_kev": image.beam_energy_kev,
        "detectors": [detector],
        "pixel_size": image.pixel_size,
        "pixel_unit": image.pixel_unit,
        "expected_frames": CORE_SHELL_SWEEPS,
        "elements": image.elements,
        "xray_lines": image.xray_lines,
        "instrument": image.instrument,
        "title": image.title,
    }, {}))

    for index, sweep in enumerate(sweeps):
        flat = sweep.reshape(rows * columns, channels)
        if index < 3:  # events, a block of scan rows per message
            step = EVENTS_ROWS_PER_MESSAGE * columns
            for p0 in range(0, rows * columns, step):
                arrays = events_arrays(flat[p0:p0 + step], p0, rng, with_detector=index == 1)
                headers_and_arrays.append(({"kind": "frame", "payload": "events", "frame_index": index}, arrays))
        elif index == 3:  # one Velox stream, cut into chunks (one cut inside a pixel at least)
            chunks = velox_chunks(velox_stream(flat), VELOX_CHUNKS, rng)
            assert np.array_equal(decode_velox(chunks, rows * columns, channels), flat)
            assert any(c[-1] != VELOX_NEXT_PIXEL for _, c in chunks[:-1]), "no chunk ends mid-pixel"
            for pixel_start, chunk in chunks:
                headers_and_arrays.append(({"kind": "frame", "payload": "velox", "frame_index": index,
                                            "pixel_start": pixel_start}, {"stream": chunk}))
        else:  # dense blocks of a few scan rows, narrowest dtype per block
            step = DENSE_ROWS_PER_MESSAGE * columns
            for p0 in range(0, rows * columns, step):
                block = flat[p0:p0 + step]
                headers_and_arrays.append(({"kind": "frame", "payload": "dense", "frame_index": index,
                                            "pixel_start": p0},
                                           {"counts": block.astype(narrowest_dtype(block))}))
    headers_and_arrays.append(({"kind": "stop", "frames": CORE_SHELL_SWEEPS, "reason": "complete"}, {}))

    messages = []
    for seq, (fields, arrays) in enumerate(headers_and_arrays):
        header = {"protocol": 1, "acquisition_id": acquisition_id, "seq": seq, **fields}
        frames = encode(header, arrays)
        assert_valid_acquisition_header(header_of(frames))
        messages.append(frames)
    return messages


# ---------------------------------------------------------------------------------------------
# Checks that need no service (SPEC 9.3 steps 1 to 3); also run in the isolation subprocess
# ---------------------------------------------------------------------------------------------

def check_golden_encoder() -> None:
    """Steps 1-2: this module's encoder reproduces every golden acquisition message."""
    for name in GOLDEN_ACQUISITION:
        side = sidecar(name)
        container = read_container(GOLDEN / f"{name}.bin")
        assert [len(f) for f in container] == side["frame_lengths"], name
        header = {k: v for k, v in side["header"].items() if k != "arrays"}
        frames = encode(header, sidecar_arrays(side))
        assert header_of(frames) == side["header"], f"{name}: decoded header differs from the sidecar"
        assert header_of(container) == side["header"], f"{name}: golden header differs from its sidecar"
        assert len(frames) == len(container), name
        assert frames[1:] == container[1:], f"{name}: buffers differ byte for byte"
        assert_valid_acquisition_header(header_of(frames))


def check_golden_decoder() -> None:
    """Step 3: the published golden documents decode to their sidecars and match the results schema."""
    for name in GOLDEN_DOCUMENTS:
        side = sidecar(name)
        container = read_container(GOLDEN / f"{name}.bin")
        assert [len(f) for f in container] == side["frame_lengths"], name
        doc = decode_document(container)
        assert not doc.problems, (name, doc.problems)
        assert doc.topic == side["topic"], name
        assert doc.header == side["header"], name
        expected = sidecar_arrays(side)
        assert list(doc.arrays) == list(expected), name
        for key, array in expected.items():
            assert doc.arrays[key].dtype == array.dtype and np.array_equal(doc.arrays[key], array), (name, key)
        errors = schema_errors(RESULTS_SCHEMA, doc.header)
        assert not errors, (name, errors)


def producer_self_check() -> dict:
    """The producer side of this module end to end, without a service (used by the isolation test)."""
    check_golden_encoder()
    check_golden_decoder()
    messages = core_shell_messages(read_hspy(CORE_SHELL))
    return {"core_shell_messages": len(messages)}


def test_golden_encoder_matches_golden_messages():
    check_golden_encoder()


def test_golden_documents_decode_to_their_sidecars():
    check_golden_decoder()


def test_module_uses_no_service_code():
    """Only stdlib + the allowed third-party packages, statically and at run time in a clean process."""
    tree = ast.parse(Path(__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            imported.add(node.module.split(".")[0])
    foreign = {m for m in imported if m not in sys.stdlib_module_names and m not in ALLOWED_THIRD_PARTY}
    assert not foreign, f"imports outside stdlib + {sorted(ALLOWED_THIRD_PARTY)}: {sorted(foreign)}"
    assert not imported & set(FORBIDDEN)

    # Run the producer code with the service's packages made unimportable; no module of theirs
    # may end up loaded.
    script = f"""
import importlib.abc, importlib.util, json, sys
FORBIDDEN = {FORBIDDEN!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError("not available to a third-party producer: " + name)
        return None
sys.meta_path.insert(0, Refuse())
spec = importlib.util.spec_from_file_location("conformance_isolated", {str(Path(__file__))!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
result = module.producer_self_check()
result["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
print(json.dumps(result))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDX_LIVE_") or k == "EDX_LIVE_DATA"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).parent), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["core_shell_messages"] > 0


# ---------------------------------------------------------------------------------------------
# The service as a subprocess
# ---------------------------------------------------------------------------------------------

class ServiceProcess:
    """``edx_live.cli serve`` in a subprocess; a thread drains stderr and keeps its lines."""

    def __init__(self, acquisitions: int):
        import tempfile

        self.sessions = Path(tempfile.mkdtemp(prefix="edx-live-sessions-"))
        self.cmd = [sys.executable, "-m", "edx_live.cli", "serve",
                    "--input", "tcp://127.0.0.1:*", "--output", "tcp://127.0.0.1:*",
                    "--sessions", str(self.sessions),
                    "--log-format", "json", "--refit-interval", "1",
                    "--acquisitions", str(acquisitions),
                    "--kfactor", "Fe_Ka=1.450226", "--kfactor", "Pt_La=5.075602"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDX_LIVE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
        self.lines: list[str] = []
        self.records: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._drain, name="service-stderr", daemon=True)
        self._reader.start()
        self.input = self.output = None

    def _drain(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue  # warnings and other non-JSON output
            if isinstance(record, dict):
                self.records.put(record)
        self.records.put(None)  # end of stream

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    def wait_serving(self, timeout_s: float) -> None:
        """Read log records until the ``serving`` line, which names the bound endpoints."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no 'serving' log line within {timeout_s:.0f} s; stderr:\n{self.tail()}")
            try:
                record = self.records.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if record is None:
                pytest.fail(f"service exited ({self.proc.wait()}) before serving; stderr:\n{self.tail()}")
            if record.get("event") == "serving":
                self.input, self.output = record["input"], record["output"]
                return

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=30)
        finally:
            self._reader.join(timeout=10)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


class Link:
    """The producer's PUSH socket and the subscriber's SUB socket on one running service."""

    def __init__(self, service: ServiceProcess):
        self.service = service
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDTIMEO, 60_000)  # never hang a test on a stuck service
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(service.input)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(service.output)
        self.documents: list[Document] = []

    def close(self) -> None:
        self.push.close(0)
        self.sub.close(0)
        self.ctx.term()

    def send(self, frames: list[bytes]) -> None:
        self.push.send_multipart(frames)

    def _receive(self, timeout_s: float) -> Document | None:
        if not self.sub.poll(int(max(timeout_s, 0) * 1000)):
            return None
        doc = decode_document(self.sub.recv_multipart())
        self.documents.append(doc)
        return doc

    def wait_for(self, predicate, timeout_s: float, what: str) -> Document:
        """The next document that satisfies ``predicate``; fails with context after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            doc = self._receive(min(0.5, deadline - time.monotonic()))
            if doc is not None and doc.header and predicate(doc):
                return doc
            if doc is None and not self.service.alive():
                pytest.fail(f"service exited ({self.service.proc.returncode}) while waiting for {what}; "
                            f"stderr:\n{self.service.tail()}")
        last = self.last_status()
        pytest.fail(f"no {what} within {timeout_s:.0f} s; last status: {last.header if last else None}; "
                    f"stderr:\n{self.service.tail(15)}")

    def status(self, predicate, timeout_s: float = STATUS_TIMEOUT_S, what: str = "status") -> dict:
        return self.wait_for(lambda d: d.topic == "status" and predicate(d.header), timeout_s, what).header

    def last_status(self) -> Document | None:
        return next((d for d in reversed(self.documents) if d.topic == "status"), None)


@pytest.fixture(scope="module")
def service():
    proc = ServiceProcess(ACQUISITIONS)
    try:
        proc.wait_serving(STARTUP_TIMEOUT_S)
        yield proc
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def link(service):
    link = Link(service)
    try:
        # The subscription is live once a status document comes through (SPEC 7: fixed interval).
        link.status(lambda h: True, timeout_s=120, what="first status document")
        yield link
    finally:
        link.close()


def rejected_of(status: dict) -> dict[str, int]:
    return dict(status.get("rejected") or {})


def increase(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Reason codes whose rejection count grew, and by how much."""
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] > before.get(k, 0)}


def processed(status: dict) -> int:
    """Messages the service has accounted for: accepted in this acquisition plus rejected.

    ``rejected`` counts since the service started (SPEC 7.2), so only its increase over a
    status taken within the same acquisition is attributed to what was sent in between.
    """
    return int(status["messages"]) + sum(rejected_of(status).values())


# ---------------------------------------------------------------------------------------------
# 1. Golden acquisition end to end (SPEC 9.3 step 4)
# ---------------------------------------------------------------------------------------------

def test_golden_acquisition_end_to_end(link):
    messages = [read_container(GOLDEN / f"{name}.bin") for name in GOLDEN_ACQUISITION]
    headers = [header_of(frames) for frames in messages]
    acquisition_id = headers[0]["acquisition_id"]
    expected_counts = sum(implied_counts(side["header"], sidecar_arrays(side))
                          for side in map(sidecar, GOLDEN_ACQUISITION))
    expected_frames = max(h["frame_index"] for h in headers if h["kind"] == "frame") + 1

    before = rejected_of(link.status(lambda h: True, what="a status before the golden start"))
    for frames in messages:
        link.send(frames)
    status = link.status(lambda h: h["acquisition_id"] == acquisition_id
                         and (h["state"] == "stopped" or h["messages"] >= len(messages)),
                         what=f"status of {acquisition_id} after its stop")
    summary = {k: status.get(k) for k in ("state", "messages", "counts", "frames", "gaps", "rejected",
                                          "acquisition_rejected")}
    assert status["messages"] == len(messages), summary
    assert status["gaps"]["count"] == 0 and status["gaps"]["missing"] == [], summary
    assert increase(before, rejected_of(status)) == {}, summary
    assert status.get("acquisition_rejected", {}) == {}, status.get("acquisition_rejected")
    assert status["counts"] == expected_counts, summary
    assert status["frames"] == expected_frames, summary
    assert status["state"] == "stopped", summary
    start = sidecar("start")["header"]
    assert (status["pixel_size"], status["pixel_unit"], status["title"]) == (
        start["pixel_size"], start["pixel_unit"], start["title"])

    # SPEC 7.5: the image message comes back as the mean image, once more at the stop
    sent = sidecar("image")
    rows = slice(sent["header"]["first_row"], sent["header"]["first_row"] + sent["arrays"]["image"]["shape"][0])
    images = [d for d in link.documents if d.topic == "image" and d.header.get("acquisition_id") == acquisition_id]
    assert images and images[-1].header["final"], [d.header for d in images]
    image = images[-1]
    assert image.header["detector"] == sent["header"]["detector"] and image.header["sweeps"] == 1
    assert image.header["pixel_size"] == start["pixel_size"] and image.arrays["image"].dtype == np.dtype("<f4")
    expected = np.zeros(start["scan_shape"], np.float32)
    expected[rows] = sent["arrays"]["image"]["data"]
    np.testing.assert_array_equal(image.arrays["image"], expected)

    final = link.status(lambda h: h["acquisition_id"] == acquisition_id and h["final"],
                        timeout_s=FINAL_TIMEOUT_S, what=f"final status of {acquisition_id}")
    assert final["counts"] == expected_counts
    assert final["messages"] == len(messages)
    assert increase(before, rejected_of(final)) == {}


# ---------------------------------------------------------------------------------------------
# 2. core_shell.hspy with this module's encoder: events, Velox chunks and dense blocks
# ---------------------------------------------------------------------------------------------

def _check_session_folder(folder: Path, cube: np.ndarray, timeout_s: float = 180.0) -> None:
    """The service writes the acquisition's session folder after its final refit: the counts are the file's."""
    summary = folder / "summary.json"
    deadline = time.monotonic() + timeout_s
    while not summary.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert summary.exists(), f"no session folder {folder}: {sorted(p.name for p in folder.parent.iterdir())}"
    import h5py

    with h5py.File(folder / "spectrum_image.hspy", "r") as f:  # HyperSpy's format is HDF5: /Experiments/*/data
        (name,) = list(f["Experiments"])
        data = f["Experiments"][name]["data"][()]
    assert np.array_equal(data, cube)
    assert (folder / "report.png").stat().st_size > 10_000
    assert (folder / "composition_pca-gmm.json").exists() and (folder / "labels_umap-hdbscan.hspy").exists()


def test_core_shell_end_to_end(link):
    image = read_hspy(CORE_SHELL)
    rows, columns, _ = image.cube.shape
    total = int(image.cube.astype(np.uint64).sum())
    messages = core_shell_messages(image)
    payloads = {header_of(m).get("payload") for m in messages}
    assert payloads == {None, "events", "velox", "dense"}

    before = rejected_of(link.status(lambda h: True, what="a status before the core_shell start"))
    first_doc = len(link.documents)
    link.send(messages[0])
    link.status(lambda h: h["acquisition_id"] == CORE_SHELL_ID, what=f"status of {CORE_SHELL_ID} start")
    for frames in messages[1:]:
        link.send(frames)
    final = link.status(lambda h: h["acquisition_id"] == CORE_SHELL_ID and h["final"],
                        timeout_s=FINAL_TIMEOUT_S, what=f"final status of {CORE_SHELL_ID}")
    summary = {k: final.get(k) for k in ("state", "messages", "counts", "frames", "gaps", "rejected",
                                         "acquisition_rejected", "refits", "refit_errors")}
    assert final["counts"] == total, summary
    assert final["messages"] == len(messages), summary
    assert increase(before, rejected_of(final)) == {}, summary
    assert final.get("acquisition_rejected", {}) == {}, final.get("acquisition_rejected")
    assert final["gaps"]["count"] == 0 and final["gaps"]["missing"] == [], summary
    assert final["frames"] == CORE_SHELL_SWEEPS, summary
    assert final["scan_shape"] == [rows, columns], summary
    assert final["expected_frames"] == CORE_SHELL_SWEEPS, summary
    assert final["state"] == "stopped", summary
    _check_session_folder(link.service.sessions / CORE_SHELL_ID, image.cube)

    clusters = [d for d in link.documents[first_doc:]
                if d.topic.startswith("clusters/") and d.header.get("acquisition_id") == CORE_SHELL_ID
                and d.header.get("final")]
    assert clusters, "no final clusters document before the final status"
    for doc in clusters:
        h, arrays = doc.header, doc.arrays
        assert not doc.problems, (doc.topic, doc.problems)
        assert doc.topic == f"clusters/{h['workflow']}"
        assert h["counts"] == total, doc.topic
        bf = h["bin_factor"]
        shape = (math.ceil(rows / bf), math.ceil(columns / bf))
        labels, spectra = arrays["labels"], arrays["spectra"]
        assert labels.shape == shape, (doc.topic, labels.shape, shape)
        assert labels.dtype == np.dtype("<u2") and spectra.dtype == np.dtype("<u8"), doc.topic
        assert spectra.ndim == 2 and spectra.shape[0] == len(h["clusters"]), (doc.topic, spectra.shape)
        ids = [c["label"] for c in h["clusters"]]
        assert ids == sorted(set(ids)), (doc.topic, ids)
        assert set(np.unique(labels).tolist()) <= set(ids) | {NOISE_LABEL}, doc.topic
        for row, info in enumerate(h["clusters"]):
            assert int(spectra[row].sum()) == info["counts"], (doc.topic, info)
            assert int(np.count_nonzero(labels == info["label"])) == info["pixels"], (doc.topic, info)
        assert int(np.count_nonzero(labels == NOISE_LABEL)) == h["noise_pixels"], doc.topic
        for name in ("confidence", "outlier"):
            if name in arrays:
                assert arrays[name].shape == shape and arrays[name].dtype == np.dtype("<f4"), (doc.topic, name)


# ---------------------------------------------------------------------------------------------
# 3. Messages the SPEC or schema forbid: rejected under the SPEC 6 reason code, nothing added
# ---------------------------------------------------------------------------------------------

REJECT_ID = "conformance-reject"
REJECT_REPLACEMENT_ID = "conformance-reject-replacement"
REJECT_SCAN = (4, 6)
REJECT_CHANNELS = 32
REJECT_DETECTORS = 4
BAD_EVENTS = {"pixel": [1, 2, 3], "channel": [4, 5, 6]}  # 3 counts: a bad message that slips in shows
PROBE_EVENTS = {"pixel": [0], "channel": [1]}  # 1 count: the valid message sent after each case


def reject_start(acquisition_id: str, offset_kev: float = 0.0) -> dict:
    return {
        "protocol": 1, "acquisition_id": acquisition_id, "seq": 0, "kind": "start",
        "scan_shape": list(REJECT_SCAN),
        "energy_axis": {"offset_kev": offset_kev, "scale_kev": 0.625, "channels": REJECT_CHANNELS},
        "beam_energy_kev": 200.0,
        "detectors": [{"name": f"SDD{i}", "elevation_deg": 18.0, "azimuth_deg": 45.0 + 90.0 * i}
                      for i in range(REJECT_DETECTORS)],
        "expected_frames": 1,
    }


def events_header(seq: int) -> dict:
    return {"protocol": 1, "acquisition_id": REJECT_ID, "seq": seq, "kind": "frame",
            "payload": "events", "frame_index": 0}


def events_frames(header: dict, events: dict, detector: list[int] | None = None) -> list[bytes]:
    arrays = {"pixel": np.asarray(events["pixel"], "<u4"), "channel": np.asarray(events["channel"], "<u2")}
    if detector is not None:
        arrays["detector"] = np.asarray(detector, "|u1")
    return encode(header, arrays)


def with_header(frames: list[bytes], **changes) -> list[bytes]:
    """The same message with header fields replaced (buffers unchanged)."""
    header = {**header_of(frames), **changes}
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def _schema_invalid(frames: list[bytes]) -> list[bytes]:
    header = msgpack.unpackb(frames[0], raw=False)
    assert schema_errors(ACQUISITION_SCHEMA, header), f"test bug: header is valid: {header}"
    return frames


def _not_json_data(frames: list[bytes]) -> list[bytes]:
    header = msgpack.unpackb(frames[0], raw=False)
    with pytest.raises(ValueError):  # SPEC 2.1: the header, read as JSON data, must validate
        json.dumps(header, allow_nan=False)
    return frames


def _schema_valid(frames: list[bytes]) -> list[bytes]:
    assert_valid_acquisition_header(header_of(frames))
    return frames


def bad_message(case: str, seq: int) -> list[bytes]:
    """The forbidden message of one case, numbered ``seq`` (the next expected number)."""
    good = events_frames(events_header(seq), BAD_EVENTS)
    if case == "protocol_boolean":
        return _schema_invalid(with_header(good, protocol=True))
    if case == "seq_boolean":
        return _schema_invalid(with_header(good, seq=True))
    if case == "seq_numeric_string":
        return _schema_invalid(with_header(good, seq=str(seq)))
    if case == "acquisition_id_bin":
        return _schema_invalid(with_header(good, acquisition_id=REJECT_ID.encode()))
    if case == "unknown_key":
        return _schema_invalid(with_header(good, colour="red"))
    if case == "nan_offset_second_start":
        header = reject_start(REJECT_REPLACEMENT_ID, offset_kev=float("nan"))
        return _not_json_data(encode(header))
    if case == "buffer_wrong_length":
        frames = _schema_valid(good)
        return [frames[0], frames[1][:-4], *frames[2:]]  # pixel buffer one element short
    if case == "header_not_msgpack":
        return [b"\xc1 this is not msgpack", *good[1:]]  # 0xc1 is never used by msgpack
    if case == "pixel_beyond_scan":
        return _schema_valid(events_frames(events_header(seq), {"pixel": [1, REJECT_SCAN[0] * REJECT_SCAN[1]],
                                                                 "channel": [4, 5]}))
    if case == "channel_beyond_channels":
        return _schema_valid(events_frames(events_header(seq), {"pixel": [1, 2], "channel": [4, REJECT_CHANNELS]}))
    if case == "detector_beyond_detectors":
        return _schema_valid(events_frames(events_header(seq), BAD_EVENTS, detector=[0, 1, REJECT_DETECTORS]))
    if case.startswith("image_"):
        return image_message(case, seq)
    raise ValueError(case)


def image_message(case: str, seq: int) -> list[bytes]:
    """An image message (SPEC 3.5) that breaks one rule."""
    rows, columns = REJECT_SCAN
    header = {"protocol": 1, "acquisition_id": REJECT_ID, "seq": seq, "kind": "image", "frame_index": 0,
              "detector": "HAADF"}
    if case == "image_u8_dtype":
        return _schema_invalid(encode(header, {"image": np.ones((rows, columns), "<u8")}))
    if case == "image_wrong_columns":
        return _schema_valid(encode(header, {"image": np.ones((rows, columns + 1), "<u2")}))
    if case == "image_rows_beyond_scan":
        return _schema_valid(encode({**header, "first_row": rows - 1}, {"image": np.ones((2, columns), "<f4")}))
    raise ValueError(case)


#: case -> reason code of SPEC section 6. The replacement start comes last: if a lenient service
#: accepted it, it would close the acquisition the other cases use.
REJECT_CASES = {
    "protocol_boolean": "version",
    "seq_boolean": "schema",
    "seq_numeric_string": "schema",
    "acquisition_id_bin": "schema",
    "unknown_key": "schema",
    "buffer_wrong_length": "buffer_size",
    "header_not_msgpack": "not_msgpack",
    "pixel_beyond_scan": "pixel_out_of_range",
    "channel_beyond_channels": "channel_out_of_range",
    "detector_beyond_detectors": "detector_out_of_range",
    "image_u8_dtype": "schema",
    "image_wrong_columns": "shape_mismatch",
    "image_rows_beyond_scan": "pixel_out_of_range",
    "nan_offset_second_start": "schema",
}


@dataclass
class Observed:
    rejected: dict[str, int]  # increase of the status `rejected` map
    messages: int  # increase of accepted messages of the acquisition
    counts: int  # increase of its counts
    acquisition_id: str | None  # the acquisition the status reported afterwards


@pytest.fixture(scope="module")
def reject_run(link):
    """One valid acquisition; after each forbidden message a valid 1-count probe with the same seq.

    The probe uses the seq the forbidden message had: when the forbidden message is rejected the
    probe is accepted (no gap); when a lenient service accepted it, the probe shows up as
    ``duplicate_seq`` and the forbidden message's 3 counts show up in ``counts``.
    """
    link.send(encode(reject_start(REJECT_ID)))
    baseline_events = {"pixel": [0, 5, 6, 23], "channel": [0, 10, 11, 31]}
    link.send(events_frames(events_header(1), baseline_events))
    status = link.status(lambda h: h["acquisition_id"] == REJECT_ID and h["messages"] >= 2,
                         what=f"status of {REJECT_ID} after its first frame")
    assert status["messages"] == 2 and status["counts"] == len(baseline_events["pixel"]), status
    seq = 2
    observed: dict[str, Observed] = {}
    for case in REJECT_CASES:
        before = status
        link.send(bad_message(case, seq))
        link.send(events_frames(events_header(seq), PROBE_EVENTS))
        target = processed(before) + 2

        def settled(h, target=target):
            if h["acquisition_id"] != REJECT_ID:  # a replacement start was accepted
                return True
            return processed(h) >= target

        status = link.status(settled, what=f"status accounting for case {case}")
        same = status["acquisition_id"] == REJECT_ID
        observed[case] = Observed(
            rejected=increase(rejected_of(before), rejected_of(status)),
            messages=status["messages"] - before["messages"] if same else 0,
            counts=status["counts"] - before["counts"] if same else 0,
            acquisition_id=status["acquisition_id"])
        # Whichever of the two was accepted took this seq (a forbidden seq=true is read as 1 at
        # most, which is already behind), so the next expected number is seq + 1 either way.
        seq += 1
    for case, seen in observed.items():  # shown by pytest on failure (or with -s)
        print(f"{case:28s} expected {REJECT_CASES[case]:22s} rejected +{seen.rejected} "
              f"messages +{seen.messages} counts +{seen.counts} status of {seen.acquisition_id}")
    link.send(encode({"protocol": 1, "acquisition_id": REJECT_ID, "seq": seq, "kind": "stop", "frames": 1}))
    final = link.status(lambda h: h["final"] and h["acquisition_id"] in (REJECT_ID, REJECT_REPLACEMENT_ID),
                        timeout_s=FINAL_TIMEOUT_S, what=f"final status of {REJECT_ID}")
    return {"observed": observed, "final": final, "baseline_counts": len(baseline_events["pixel"]),
            "counts_before_last_case": before["counts"] if before["acquisition_id"] == REJECT_ID else None}


@pytest.mark.parametrize("case", list(REJECT_CASES))
def test_forbidden_message_is_rejected(reject_run, case):
    code = REJECT_CASES[case]
    seen = reject_run["observed"][case]
    detail = (f"{case}: expected rejected +1 under {code!r} and the probe accepted; observed rejected "
              f"increase {seen.rejected}, messages +{seen.messages}, counts +{seen.counts}, status of "
              f"acquisition {seen.acquisition_id!r}")
    assert seen.acquisition_id == REJECT_ID, detail + " (the forbidden start was accepted)"
    assert seen.rejected == {code: 1}, detail
    assert seen.counts == len(PROBE_EVENTS["pixel"]), detail + " (the forbidden message added counts)"
    assert seen.messages == 1, detail


def test_rejections_leave_the_acquisition_unchanged(reject_run):
    """The acquisition holds exactly its valid counts: the first frame plus one per probe."""
    final, observed = reject_run["final"], reject_run["observed"]
    *others, last = REJECT_CASES  # the last case is the replacement start
    valid = reject_run["baseline_counts"] + len(others) * len(PROBE_EVENTS["pixel"])
    slipped = {case: o.counts - len(PROBE_EVENTS["pixel"]) for case, o in observed.items()
               if o.counts > len(PROBE_EVENTS["pixel"])}
    assert not slipped, f"counts added by forbidden messages: {slipped}"
    assert reject_run["counts_before_last_case"] == valid, reject_run["counts_before_last_case"]
    assert final["acquisition_id"] == REJECT_ID, (
        f"final status reports {final['acquisition_id']!r}: the forbidden start ({last}) closed the acquisition")
    assert final["counts"] == valid + len(PROBE_EVENTS["pixel"]), final["counts"]
    assert final["gaps"]["count"] == 0, final["gaps"]


# ---------------------------------------------------------------------------------------------
# Every document the subscriber received follows SPEC 7 and the results schema
# ---------------------------------------------------------------------------------------------

def test_published_documents_follow_the_results_schema(link):
    assert link.documents, "no documents received"
    problems = {}
    for doc in link.documents:
        errs = doc.problems + schema_errors(RESULTS_SCHEMA, doc.header)
        if errs:
            problems.setdefault(doc.topic, errs[:3])
    topics = sorted({d.topic for d in link.documents})
    assert not problems, f"{problems} (topics seen: {topics})"
