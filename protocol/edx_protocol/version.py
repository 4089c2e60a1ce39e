"""Version of the wire protocol, independent of the package version.

Bump ``PROTOCOL_VERSION`` on any change a peer would notice: a new required
field, a renamed field, a changed dtype or meaning. Adding an optional field
with a default does not need a bump.
"""

PROTOCOL_VERSION = 1
