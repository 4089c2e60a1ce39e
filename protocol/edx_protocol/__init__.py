"""edx_live wire protocol: message models, codec and version.

Light on purpose (pydantic, msgpack, numpy) so that producers beside the
microscope can import it without the analysis stack.
"""

from .acquisition import (
    VELOX_NEXT_PIXEL,
    AcquisitionMessage,
    ArrayDescriptor,
    DenseFrame,
    Detector,
    EnergyAxis,
    EventsFrame,
    Image,
    StagePosition,
    Start,
    Stop,
    VeloxFrame,
)
from .check import RULES, DocumentChecker, Inconsistency, check_document
from .codec import Decoded, ProtocolError, decode, decode_result, describe, encode
from .results import (
    NOISE_LABEL,
    TARGET_REASONS,
    WORKFLOWS,
    Advice,
    ClusterComposition,
    ClusterInfo,
    Clusters,
    Composition,
    ElementResult,
    Gaps,
    MeanImage,
    Plan,
    Status,
    Target,
    Targets,
    TimeToTarget,
    topic_for,
)
from .version import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION", "VELOX_NEXT_PIXEL", "NOISE_LABEL", "WORKFLOWS", "TARGET_REASONS",
    "AcquisitionMessage", "ArrayDescriptor", "DenseFrame", "Detector", "EnergyAxis", "EventsFrame",
    "Image", "StagePosition", "Start", "Stop", "VeloxFrame", "Status", "MeanImage", "Clusters", "ClusterInfo", "Composition",
    "ClusterComposition", "ElementResult", "TimeToTarget", "Gaps", "Targets", "Target", "Plan", "Advice", "Decoded", "ProtocolError",
    "decode", "decode_result", "describe", "encode", "topic_for",
    "RULES", "DocumentChecker", "Inconsistency", "check_document",
]
