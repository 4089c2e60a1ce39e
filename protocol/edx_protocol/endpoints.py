"""The default endpoints of the service (protocol/SPEC.md sections 1 and 11): loopback, this computer only.

Producers, the service, the viewer and the control client share them; another host reaches the
service only when its configuration names an interface.
"""

LOOPBACK = "127.0.0.1"
#: The service's input (it binds PULL; producers PUSH here).
DEFAULT_INPUT = f"tcp://{LOOPBACK}:5556"
#: The service's results (it binds PUB; viewers and controllers subscribe here).
DEFAULT_OUTPUT = f"tcp://{LOOPBACK}:5557"
#: The service's control socket (it binds REP; ``edx-live ctl`` connects here).
DEFAULT_CONTROL = f"tcp://{LOOPBACK}:5558"
