"""Commands a controller sends to the service's REP socket, and the service's replies.

A request is one frame, a msgpack map ``{"protocol": 1, "command": NAME, "args": {...}}``;
the reply is one frame, ``{"protocol": 1, "command": NAME, "ok": true, "result": ...}`` or
``{"protocol": 1, "command": NAME, "ok": false, "error": "what is wrong"}``. Every command's
arguments are a model below; an unknown command, or a field its model does not have, is
refused with ``ok: false``. See protocol/SPEC.md section 11.
"""

from __future__ import annotations

from typing import Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .version import PROTOCOL_VERSION

#: Largest request the service reads (ZMQ_MAXMSGSIZE of its control socket).
MAX_REQUEST_BYTES = 2**20

#: A value ``set`` accepts for one parameter.
Value = bool | int | float | str | list[bool | int | float | str] | None


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StatusArgs(_Args):
    """``status``: the service's status document now (the current acquisition's ingest state)."""


class ListArgs(_Args):
    """``list``: the acquisitions the service holds or has finished since it started."""


class RefitArgs(_Args):
    """``refit``: refit the acquiring acquisition now (after the refit running, if any)."""


class SetArgs(_Args):
    """``set``: change parameters while running, by dotted name (``refit.interval_s``)."""

    values: dict[str, Value] = Field(min_length=1, max_length=64, description=(
        "New values by dotted settings name; each is validated with the settings' own ranges, and "
        "all are applied, or none."))


class ResetArgs(_Args):
    """``reset``: discard the acquiring acquisition's counts and results; it stays open and accumulates afresh."""


class ExportArgs(_Args):
    """``export``: write the acquisition's session folder now, from its counts and latest results."""

    folder: str | None = Field(default=None, max_length=4096, description=(
        "Folder to write (must not exist yet); default: a new folder under [output] sessions_dir."))
    acquisition_id: str | None = Field(default=None, max_length=256, description=(
        "Which acquisition (default: the current one)."))


class TargetsArgs(_Args):
    """``targets``: the latest follow-up targets document."""


#: Arguments model of every command: the table the service's handlers follow.
COMMANDS: dict[str, type[_Args]] = {
    "status": StatusArgs, "list": ListArgs, "refit": RefitArgs, "set": SetArgs, "reset": ResetArgs,
    "export": ExportArgs, "targets": TargetsArgs,
}

Command = Literal["status", "list", "refit", "set", "reset", "export", "targets"]


class Request(BaseModel):
    """One command."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal[1] = Field(default=PROTOCOL_VERSION, description="Wire protocol version.")
    command: Command = Field(description="What to do; see COMMANDS.")
    args: dict[str, Any] = Field(default_factory=dict, description="The command's arguments (its Args model).")


class Reply(BaseModel):
    """The answer to one request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal[1] = Field(default=PROTOCOL_VERSION, description="Wire protocol version.")
    command: str | None = Field(default=None, description="The command answered (None when unreadable).")
    ok: bool = Field(description="True when the command was carried out.")
    result: Any = Field(default=None, description="What the command returns (see SPEC section 11).")
    error: str | None = Field(default=None, description="Why the command was refused, when ok is false.")


class ControlError(ValueError):
    """A request that cannot be carried out; the message is the reply's ``error``."""


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors(include_url=False))


def parse_request(frame: bytes) -> tuple[Request, _Args]:
    """Decode a request frame and validate its arguments; raise :class:`ControlError` saying what is wrong."""
    if len(frame) > MAX_REQUEST_BYTES:
        raise ControlError(f"request of {len(frame)} bytes is larger than {MAX_REQUEST_BYTES}")
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for bad bytes
        raise ControlError(f"request is not msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise ControlError(f"request must be a map with protocol, command and args, got {type(body).__name__}")
    command = body.get("command")
    if command not in COMMANDS:
        raise ControlError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
    if body.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ControlError(f"protocol {body.get('protocol')!r} is not supported (this service speaks {PROTOCOL_VERSION})")
    try:
        request = Request.model_validate(body)
        return request, COMMANDS[command].model_validate(request.args)
    except ValidationError as exc:
        raise ControlError(f"{command}: {_errors(exc)}") from None


def encode_request(command: str, **args) -> bytes:
    """The frame of a request (what ``edx-live ctl`` sends)."""
    return msgpack.packb({"protocol": PROTOCOL_VERSION, "command": command, "args": args}, use_bin_type=True)


def encode_reply(reply: Reply) -> bytes:
    return msgpack.packb(reply.model_dump(mode="json"), use_bin_type=True)


def decode_reply(frame: bytes) -> Reply:
    """Decode a reply frame (raises ``ValueError`` when it is not one)."""
    try:
        return Reply.model_validate(msgpack.unpackb(frame, raw=False))
    except (ValidationError, ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a control reply: {exc}") from None
